"""The Source role: report intake (store, then ACK), the report pipeline (PACS query, identity
check, KOS manifest) and, in later stages, publication to the DMP and the image service for peers.
"""
