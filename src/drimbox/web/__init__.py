"""The HTTP side of a node: the peer-facing origin (`db…`: WADO-RS for DRIM-M peers, later
/status), the viewer origin (`vi…`: OHIF, its DICOMweb endpoints, IHE IID links), the Accept
header negotiation and the embedded uvicorn server that runs them inside the node's event loop.
"""
