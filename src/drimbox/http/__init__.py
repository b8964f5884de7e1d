"""HTTP plumbing that knows nothing of DRIM-M: multipart/related reader and writer, the lean
streaming client, raw-body writes, Accept negotiation and the embedded server."""
