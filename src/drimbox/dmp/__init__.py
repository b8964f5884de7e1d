"""The DMP (national IHE XDS.b registry/repository): SOAP/MTOM transport, VIHF, XAdES signature
documents, ebRIM metadata, and the client the Source and Conso roles use."""
