"""CDA R2 imaging reports (IMG-CR-IMG): parsing the report the RIS sends into typed facts.

Owns the XML reading of the CDA and the `ImagingReport` model; knows nothing of HL7, DICOM or
the DMP.
"""

from drimbox.cda.parser import CdaError, parse_report

__all__ = ["CdaError", "parse_report"]
