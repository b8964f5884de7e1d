"""A test PKI shaped like IGC-Santé, generated at run time (no key or certificate is committed).

Issues a root CA, and under it the certificates a DRIMbox deployment handles: ORG authentication
(mutual TLS client), ORG signing (VIHF, XAdES), server (TLS of the DMP, of a peer box), and the
"ANS" whitelist signer. Subjects follow the IGC-Santé pattern `CN=…, OU=<structure id>, O=…,
ST=…, C=FR`. Used by the tests, the simulators and the demo.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Usage = Literal["auth", "sign", "server", "ca"]


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory and (after `write`) as PEM files."""

    certificate: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path | None = None
    key_path: Path | None = None

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def subject(self) -> str:
        """RFC 4514 subject, e.g. `CN=DRIMbox,OU=499700367909006,O=…`."""
        return self.certificate.subject.rfc4514_string()

    def write(self, folder: Path, name: str) -> Issued:
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)
        return Issued(self.certificate, self.key, cert_path, key_path)

    def write_pkcs12(
        self, folder: Path, name: str, passphrase: bytes, chain: tuple[x509.Certificate, ...] = ()
    ) -> Path:
        """The key and certificate as one PKCS#12 file encrypted with `passphrase` (0600)."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.p12"
        data = pkcs12.serialize_key_and_certificates(
            name.encode(),
            self.key,
            self.certificate,
            list(chain) or None,
            serialization.BestAvailableEncryption(passphrase),
        )
        _write_private(path, data)
        return path


def _write_private(path: Path, data: bytes) -> None:
    """Created 0600 (never readable by others, not even between write and chmod), as the box
    requires of its keys (drimbox.trust.keys)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def subject_name(
    common_name: str,
    *,
    organizational_unit: str = "",
    organization: str = "",
    state: str = "",
    country: str = "FR",
) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, country)]
    if state:
        attributes.append(x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, state))
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if organizational_unit:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, organizational_unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


class TestPki:
    """One CA and what it issues. `TestPki("AC IGC-Santé TEST")`, then `issue(...)`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        ca_name: str = "AC RACINE IGC-SANTE TEST",
        *,
        key_size: int = 2048,
        crl_url: str = "",
    ) -> None:
        self.key_size = key_size
        # Where this CA publishes its CRL: written in every certificate it issues, as IGC-Santé
        # does (CRL distribution point); `revoke` then `crl()` make the list to serve there.
        self.crl_url = crl_url
        self.revoked: dict[int, dt.datetime] = {}
        self.ca = self._issue(
            subject_name(ca_name, organization="ASIP-SANTE", organizational_unit="IGC-SANTE"),
            usage="ca",
            issuer=None,
            not_before=None,
            days=3650,
            dns_names=(),
        )
        # CA certificates from this CA up to the root (a root: itself only). TLS peers and the
        # whitelist's KeyInfo send this chain along with a leaf.
        self.chain: tuple[x509.Certificate, ...] = (self.ca.certificate,)

    @property
    def root(self) -> x509.Certificate:
        """The self-signed certificate at the top of `chain`: what a verifier trusts."""
        return self.chain[-1]

    def intermediate(self, ca_name: str, *, days: int = 3650) -> TestPki:
        """A CA issued by this one, as IGC-Santé issues leaves from intermediate CAs
        (e.g. "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS" under the root)."""
        sub = TestPki.__new__(TestPki)
        sub.key_size = self.key_size
        sub.crl_url = ""
        sub.revoked = {}
        sub.ca = self._issue(
            subject_name(ca_name, organization="ASIP-SANTE", organizational_unit="IGC-SANTE"),
            usage="ca",
            issuer=self.ca,
            not_before=None,
            days=days,
            dns_names=(),
        )
        sub.chain = (sub.ca.certificate, *self.chain)
        return sub

    def revoke(self, certificate: x509.Certificate, at: dt.datetime | None = None) -> None:
        """List `certificate` in this CA's next `crl()`."""
        self.revoked[certificate.serial_number] = at or dt.datetime.now(dt.UTC)

    def crl(
        self,
        *,
        last_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        signer: Issued | None = None,
    ) -> x509.CertificateRevocationList:
        """The CA's CRL (signed by it, or by `signer` to forge one), valid a week by default."""
        start = last_update or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca.certificate.subject)
            .last_update(start)
            .next_update(next_update or start + dt.timedelta(days=7))
        )
        for serial, at in self.revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
        return builder.sign((signer or self.ca).key, hashes.SHA256())

    def crl_der(
        self,
        *,
        last_update: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        signer: Issued | None = None,
    ) -> bytes:
        crl = self.crl(last_update=last_update, next_update=next_update, signer=signer)
        return crl.public_bytes(serialization.Encoding.DER)

    def issue(
        self,
        common_name: str,
        *,
        usage: Usage,
        organizational_unit: str = "",
        organization: str = "",
        state: str = "",
        dns_names: tuple[str, ...] = (),
        days: int = 365,
        not_before: dt.datetime | None = None,
        subject: x509.Name | None = None,
    ) -> Issued:
        """A leaf certificate; `not_before`/`days` make expired or not-yet-valid ones for tests,
        `subject` a name written otherwise (e.g. RDNs reversed) than `subject_name` does."""
        name = subject or subject_name(
            common_name,
            organizational_unit=organizational_unit,
            organization=organization,
            state=state,
        )
        return self._issue(
            name, usage=usage, issuer=self.ca, not_before=not_before, days=days, dns_names=dns_names
        )

    def _issue(
        self,
        name: x509.Name,
        *,
        usage: Usage,
        issuer: Issued | None,
        not_before: dt.datetime | None,
        days: int,
        dns_names: tuple[str, ...],
    ) -> Issued:
        key = rsa.generate_private_key(public_exponent=65537, key_size=self.key_size)
        start = not_before or (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.certificate.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
            )
            if self.crl_url:
                point = x509.DistributionPoint(
                    [x509.UniformResourceIdentifier(self.crl_url)], None, None, None
                )
                builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
        builder = builder.add_extension(_key_usage(usage), critical=True)
        if usage in ("auth", "server"):
            purposes = [ExtendedKeyUsageOID.CLIENT_AUTH]
            if usage == "server":
                purposes = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
        if dns_names:
            alt_names: list[x509.GeneralName] = []
            for dns in dns_names:
                try:
                    alt_names.append(x509.IPAddress(ipaddress.ip_address(dns)))
                except ValueError:
                    alt_names.append(x509.DNSName(dns))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), False)
        signer = issuer.key if issuer else key
        certificate = builder.sign(signer, hashes.SHA256())
        return Issued(certificate, key)


def _key_usage(usage: Usage) -> x509.KeyUsage:
    # As IGC-Santé: ORG AUTH (and server) certificates authenticate (digitalSignature, TLS),
    # ORG SIGN certificates only sign documents (nonRepudiation); a DMP tells them apart.
    return x509.KeyUsage(
        digital_signature=usage in ("auth", "server"),
        content_commitment=usage == "sign",
        key_encipherment=usage in ("auth", "server"),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=usage == "ca",
        crl_sign=usage == "ca",
        encipher_only=False,
        decipher_only=False,
    )


DEMO_STRUCTURE = "499700367909006"


@dataclass(frozen=True)
class SiteCertificates:
    """What a site holds for the DMP: the CA, its ORG certificates, and the DMP's server cert."""

    ca: Issued
    auth: Issued  # ORG authentication: mutual TLS client
    signing: Issued  # ORG signing: VIHF, XAdES
    server: Issued  # the (simulated) DMP's TLS server certificate


@dataclass(frozen=True)
class StructureCertificates:
    """The two IGC-Santé ORG certificates of one structure (subject OU = its id)."""

    structure_id: str
    auth: Issued  # ORG AUTH: mutual TLS client (digitalSignature, clientAuth)
    signing: Issued  # ORG SIGN: VIHF and XAdES (nonRepudiation)


def structure_certificates(
    folder: Path,
    pki: TestPki,
    structure_id: str = DEMO_STRUCTURE,
    *,
    organization: str = "CABINET M DOC0036790",
    prefix: str = "org",
) -> StructureCertificates:
    """ORG AUTH and ORG SIGN certificates of one structure, written under `folder` as
    `<prefix>-auth.crt/.key` and `<prefix>-sign.crt/.key`."""

    def org(usage: Usage) -> Issued:
        return pki.issue(
            "DRIMbox",
            usage=usage,
            organizational_unit=structure_id,
            organization=organization,
            state="Paris (75)",
        )

    return StructureCertificates(
        structure_id,
        auth=org("auth").write(folder, f"{prefix}-auth"),
        signing=org("sign").write(folder, f"{prefix}-sign"),
    )


def site_certificates(
    folder: Path, pki: TestPki | None = None, *, structure_id: str = DEMO_STRUCTURE
) -> SiteCertificates:
    """A fresh set of site certificates written as PEM files under `folder`."""
    pki = pki or TestPki()
    org = structure_certificates(folder, pki, structure_id)
    return SiteCertificates(
        ca=pki.ca.write(folder, "ca"),
        auth=org.auth,
        signing=org.signing,
        server=pki.issue("dmp.test", usage="server", dns_names=("localhost", "127.0.0.1")).write(
            folder, "dmp-server"
        ),
    )
