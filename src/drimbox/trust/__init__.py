"""The trust space: the ANS whitelist (signed XAdES list of DRIMboxes), mutual TLS between boxes and
the peer checks, the audit trail.

Modules: `dn` (distinguished-name comparison), `xades_verify` (the enveloped XAdES-B signature and
its signer), `whitelist` (the list model, hardened parsing, `verify_whitelist`, the
`drimbox whitelist verify` command), `store` (the list in force, its refresh and the refusals),
`tls` (SSL contexts for mutual TLS, `PeerCheck`, the peer certificate of a connection), `audit`.
"""
