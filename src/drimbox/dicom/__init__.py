"""DICOM: the PACS adapter (associations, C-ECHO/C-FIND/retrieval), the KOS manifest builder, and
the DICOM data model snapshots that the rest of the box works with. Nothing outside this package
sees DIMSE or builds datasets by hand.
"""
