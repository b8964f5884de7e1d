"""The TLS policy of every connection the box makes or accepts: TLS 1.2 at least, TLS 1.3
preferred, and in TLS 1.2 only AEAD suites with forward secrecy (no CBC, no RSA key exchange).

Owns `harden` (applied to every `ssl.SSLContext` of the box, server or client) and
`client_context` (a verifying client context: the system's CAs or `cafile`). Lives in the lowest
layer so that the HTTP and DICOM clients use it too; `trust.tls` builds the mutual-TLS contexts
on it. OpenSSL negotiates the highest version both sides speak, so TLS 1.3 is chosen whenever the
other side has it; its suites are all AEAD and are not touched by `set_ciphers`.
"""

from __future__ import annotations

import ssl

# ECDHE (and finite-field DHE) with AES-GCM or ChaCha20-Poly1305: the ANSSI-recommended TLS 1.2
# suites. CBC suites (padding oracles: Lucky13, POODLE-style) and static RSA key exchange (no
# forward secrecy) are left out.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!DSS:!aNULL:!eNULL:!SHA1"


def harden(context: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the box's TLS policy to `context` (in place) and return it."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (host name included) against `cafile`, or the
    system's authorities, under the box's policy."""
    return harden(ssl.create_default_context(cafile=cafile or None))


def server_context() -> ssl.SSLContext:
    """A bare server context under the box's policy (the caller loads its certificate)."""
    return harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
