"""Whitelist test helpers: the official lists and their certificates, test domains, the test
"ANS", and altered variants of a signed list built in memory (samples are never edited)."""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drimbox.http.tlspolicy import server_context
from drimbox.samples import ANS_DIR
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.whitelist import build_whitelist, sign_whitelist
from drimbox.trust.whitelist import Domain

WHITELIST_DIR = ANS_DIR / "whitelist"
SIGNED = WHITELIST_DIR / "LISTEBLANCHE_DRIM-M_SIGNEE_TEST.xml"
UNSIGNED = WHITELIST_DIR / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST.xml"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # the official signer is valid 2026-09 → 2029-09


def official_certificates() -> list[x509.Certificate]:
    """KeyInfo of the official list: signer, TEST intermediate, TEST root."""
    text = SIGNED.read_text("utf-8")
    return [
        x509.load_der_x509_certificate(base64.b64decode(b64))
        for b64 in re.findall(r"<ds:X509Certificate>(.*?)</ds:X509Certificate>", text, re.S)
    ]


def official_root() -> x509.Certificate:
    return official_certificates()[2]


def pem_file(folder: Path, name: str, certificates: Sequence[x509.Certificate]) -> Path:
    path = folder / f"{name}.pem"
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))
    return path


def domain(n: int, **changes: str) -> Domain:
    values = {
        "identifier": str(n),
        "db": f"db{n}.test.mesimagesmedicales.fr",
        "vi": f"vi{n}.test.mesimagesmedicales.fr",
        "name": f"Éditeur {n}",
        "operator_dn": f"CN=db{n}.test.mesimagesmedicales.fr,OU=30000000183{n:04d},"
        f"O=MINISTERE DE TEST{n},ST=Côte-d'Or (21),C=FR",
        "support_contact": f"support{n}@example.fr",
    }
    values.update(changes)
    return Domain(updated_at=datetime(2026, 1, 1, tzinfo=UTC), **values)


@dataclass
class Ans:
    """A test IGC-Santé and the "ANS" that signs lists with it."""

    root: TestPki
    intermediate: TestPki
    signer: Issued

    def sign(self, xml: bytes, *, signer: Issued | None = None, **algorithms: str) -> bytes:
        return sign_whitelist(xml, signer or self.signer, self.intermediate.chain, **algorithms)

    def signed_list(self, domains: Sequence[Domain], generated_at: datetime) -> bytes:
        return self.sign(build_whitelist(domains, generated_at))


# -- in-memory variants of a signed list ---------------------------------------------------------


def change_field(xml: bytes, field: str, occurrence: int = 0) -> bytes:
    """The list with the text of the `occurrence`-th `<field>` changed (one character)."""
    pattern = re.compile(rb"(<" + field.encode() + rb">)([^<]+)(</" + field.encode() + rb">)")
    match = list(pattern.finditer(xml))[occurrence]
    value = match.group(2)
    changed = value[:-1] + (b"0" if value[-1:] != b"0" else b"1")
    return xml[: match.start(2)] + changed + xml[match.end(2) :]


def remove_domain(xml: bytes, occurrence: int = 0) -> bytes:
    match = list(re.finditer(rb"\s*<Domaine>.*?</Domaine>", xml, re.S))[occurrence]
    return xml[: match.start()] + xml[match.end() :]


def alter_signature_value(xml: bytes) -> bytes:
    match = re.search(rb"(<ds:SignatureValue[^>]*>)([^<]+)(</ds:SignatureValue>)", xml)
    assert match
    raw = bytearray(base64.b64decode(match.group(2)))
    raw[len(raw) // 2] ^= 0x01
    return xml[: match.start(2)] + base64.b64encode(bytes(raw)) + xml[match.end(2) :]


def localhost_tls(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts of a test CA's `localhost` server certificate, written to
    `folder`: a DICOM-over-TLS peer in a test."""
    pki = TestPki()
    server = pki.issue("localhost", usage="server", dns_names=("localhost",)).write(folder, "s")
    ca = pki.ca.write(folder, "ca").cert_path
    assert server.cert_path and server.key_path and ca
    server_tls = server_context()
    server_tls.load_cert_chain(str(server.cert_path), str(server.key_path))
    return server_tls, ssl.create_default_context(cafile=str(ca))
