"""Mutual TLS between DRIMboxes: SSL contexts, the whitelist check of a peer, its certificate.

Owns `server_ssl_context` (client certificate required), `client_ssl_context` (both under the
box's TLS policy, `http.tlspolicy`: TLS ≥ 1.2 without CBC, TLS 1.3 preferred),
`PeerCheck` (a peer is accepted only if its certificate subject is the `DNCertificatOperateur`
of a whitelist entry and no CRL of its issuer lists it; for outgoing calls the URL host must also
be that entry's `db`) and the ways to get the peer certificate of a connection: an asyncio
transport or `ssl` object (`peer_certificate`), an ASGI scope (`peer_certificate_from_scope`,
filled by `MtlsH11Protocol`; an outgoing `http.multipart_client` response gives its `ssl_object`).

Chain and validity are the handshake's job: an expired certificate or one from another CA never
reaches `PeerCheck`. This module must not load or refresh the whitelist (it reads whatever
`current()` gives) nor log audit events (callers do, with the `Domain` it returns).

ASGI wiring: uvicorn 0.54 puts nothing about TLS in the scope. Serve with
`uvicorn.Config(app, http=MtlsH11Protocol, ssl_context_factory=lambda c, d:
server_ssl_context(...))`: the protocol adds the ASGI TLS extension
`scope["extensions"]["tls"]` (`client_cert_chain`, `client_cert_name`, `tls_version`) to every
request of a TLS connection, and the app calls `peer_certificate_from_scope(scope)`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drimbox.config import Config
from drimbox.http.rawbody import RawBodyH11Protocol
from drimbox.http.tlspolicy import harden, server_context
from drimbox.trust.dn import DistinguishedName
from drimbox.trust.keys import load_cert_chain
from drimbox.trust.revocation import RevocationStore
from drimbox.trust.whitelist import Domain, Whitelist

PathLike = str | Path
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _files(value: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(value, str | Path):
        return [str(value)]
    return [str(v) for v in value]


def server_ssl_context(
    cert: PathLike,
    key: PathLike,
    client_ca: PathLike | Sequence[PathLike],
    passphrase_env: str = "",
) -> ssl.SSLContext:
    """Server side of mutual TLS: our certificate (`cert` may hold the chain) and the CA files
    whose certificates peers must present. No client certificate, no connection."""
    context = server_context()  # TLS ≥ 1.2, AEAD suites only (http.tlspolicy)
    load_cert_chain(context, cert, key, passphrase_env)
    for ca in _files(client_ca):
        context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED
    # Lets a site trust an IGC-Santé intermediate CA ("AC … ORGANISATIONS") without its root.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def client_ssl_context(
    cert: PathLike,
    key: PathLike,
    server_ca: PathLike | Sequence[PathLike],
    passphrase_env: str = "",
) -> ssl.SSLContext:
    """Client side of mutual TLS: our certificate for the peer, its CA, host name checked."""
    # check_hostname and CERT_REQUIRED; TLS ≥ 1.2, AEAD suites only (http.tlspolicy)
    context = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    load_cert_chain(context, cert, key, passphrase_env)
    for ca in _files(server_ca):
        context.load_verify_locations(cafile=ca)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def mllp_ssl_context(config: Config) -> ssl.SSLContext | None:
    """MLLP over TLS (`[hl7] tls_cert`), the RIS's client certificate required when
    `[hl7] tls_client_ca` names its CA; None: plain MLLP."""
    hl7 = config.hl7
    if not hl7.tls_cert:
        return None
    context = server_context()
    load_cert_chain(context, hl7.tls_cert, hl7.tls_key, hl7.key_passphrase_env)
    if hl7.tls_client_ca:
        context.load_verify_locations(cafile=hl7.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class PeerRefused(Exception):
    """The peer is not a DRIMbox of the whitelist; `message` is French for the site's staff."""

    def __init__(self, message: str, detail: str) -> None:
        self.message = message
        self.detail = detail
        super().__init__(f"{message} ({detail})")


Certificate = bytes | x509.Certificate


def _certificate(value: Certificate | None) -> x509.Certificate | None:
    if value is None or isinstance(value, x509.Certificate):
        return value
    return x509.load_der_x509_certificate(value)


class PeerCheck:
    """Accept a TLS peer only if the list in force names it.

    `whitelist` is a list or, better, a callable returning the list in force
    (`WhitelistStore.current`), so that a refresh applies to the next connection; `revocation`
    (`WhitelistStore.revocation`) refuses a certificate its issuer's CRL lists.
    """

    def __init__(
        self,
        whitelist: Whitelist | Callable[[], Whitelist | None],
        revocation: RevocationStore | None = None,
    ) -> None:
        self._whitelist = whitelist
        self.revocation = revocation

    def _current(self) -> Whitelist:
        whitelist = self._whitelist() if callable(self._whitelist) else self._whitelist
        if whitelist is None:
            raise PeerRefused(
                "Aucune liste blanche valide n'est en vigueur : les échanges entre DRIMbox sont "
                "suspendus.",
                "no whitelist in force",
            )
        return whitelist

    def _valid(self, peer: Certificate | None, now: datetime | None) -> x509.Certificate:
        certificate = _certificate(peer)
        if certificate is None:
            raise PeerRefused(
                "Le correspondant n'a pas présenté de certificat.", "no peer certificate"
            )
        # The handshake already checked it; this keeps PeerCheck safe when used on its own.
        at = now or datetime.now(UTC)
        if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            raise PeerRefused(
                "Le certificat du correspondant n'est pas valide à cette date.",
                f"{certificate.subject.rfc4514_string()} valid until "
                f"{certificate.not_valid_after_utc:%Y-%m-%d}",
            )
        if self.revocation is not None:
            self.revocation.note(certificate)  # its CRL is fetched from the next refresh on
            revoked = self.revocation.revoked(certificate)
            if revoked is not None:
                raise PeerRefused(
                    "Le certificat du correspondant est révoqué (liste de révocation IGC-Santé) : "
                    "connexion refusée.",
                    f"{certificate.subject.rfc4514_string()} serial "
                    f"{certificate.serial_number:x} revoked {revoked.revoked_at:%Y-%m-%d} "
                    f"({revoked.source})",
                )
        return certificate

    def check_incoming(self, peer: Certificate | None, *, now: datetime | None = None) -> Domain:
        """The whitelist entry of a connecting peer (its certificate subject = the entry's DN)."""
        certificate = self._valid(peer, now)
        domain = self._current().by_dn(certificate.subject)
        if domain is None:
            raise PeerRefused(
                "Ce correspondant n'est pas dans la liste blanche DRIM-M : connexion refusée.",
                f"subject {certificate.subject.rfc4514_string()} is no DNCertificatOperateur",
            )
        return domain

    def check_outgoing_host(self, url: str) -> Domain:
        """Before calling a peer: its host must be the `db` of a whitelist entry."""
        host = urlsplit(url).hostname or ""
        domain = self._current().by_db(host)
        if domain is None:
            raise PeerRefused(
                "Cette DRIMbox n'est pas dans la liste blanche DRIM-M : appel refusé.",
                f"host {host!r} of {url} is no db of the whitelist",
            )
        return domain

    def check_outgoing(
        self, url: str, peer: Certificate | None, *, now: datetime | None = None
    ) -> Domain:
        """After the handshake with a peer: host listed as `db` and server certificate subject =
        that entry's `DNCertificatOperateur`."""
        domain = self.check_outgoing_host(url)
        certificate = self._valid(peer, now)
        if domain.dn != DistinguishedName.from_name(certificate.subject):
            raise PeerRefused(
                "Le certificat de la DRIMbox appelée n'est pas celui de la liste blanche.",
                f"{certificate.subject.rfc4514_string()} is not {domain.operator_dn}",
            )
        return domain


def peer_certificate(
    source: ssl.SSLObject | ssl.SSLSocket | asyncio.BaseTransport | None,
) -> x509.Certificate | None:
    """The certificate the peer presented, from an `ssl` object/socket or an asyncio transport
    (`transport.get_extra_info("ssl_object")`)."""
    ssl_object = (
        source.get_extra_info("ssl_object") if isinstance(source, asyncio.BaseTransport) else source
    )
    if ssl_object is None:
        return None
    # Positional on purpose: httpcore hands out the internal `_ssl._SSLSocket`, whose
    # getpeercert takes no keyword arguments.
    der = ssl_object.getpeercert(True)
    return x509.load_der_x509_certificate(der) if der else None


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension dict for a connection, or None when it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    certificate = peer_certificate(ssl_object)
    chain = []
    if certificate is not None:
        chain.append(certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": certificate.subject.rfc4514_string() if certificate else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }


class MtlsH11Protocol(RawBodyH11Protocol):
    """The node's h11 protocol, plus the ASGI TLS extension (the peer certificate) in each
    scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        extension = tls_extension(transport)
        if extension is None:
            return
        app = self.app

        async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
            # One connection, one certificate: every request on it carries the same extension.
            scope.setdefault("extensions", {})["tls"] = extension
            await app(scope, receive, send)

        self.app = app_with_tls


def peer_certificate_from_scope(scope: Mapping[str, Any]) -> x509.Certificate | None:
    """The client certificate of the connection an ASGI request came on (see the module doc)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(str(chain[0]).encode("ascii"))
