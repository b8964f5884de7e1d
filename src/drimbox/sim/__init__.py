"""Simulators and local stand-ins for the demo and tests: national services (DMP, PSC, whitelist),
the RIS, a local PACS (Orthanc) and synthetic studies."""
