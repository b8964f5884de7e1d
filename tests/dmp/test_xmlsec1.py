"""The Debian `xmlsec1` CLI, run from the outside, verifies what the box signs for the DMP: the
VIHF assertion (enveloped) and the IHE DSG signature document (XAdES-B, its manifest reference
resolved to the KOS file with `--url-map`), with the default rsa-sha1 and with rsa-sha256; and
refuses them once altered or against another anchor (issue 18 §5).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import get_args

import pytest
from lxml import etree
from test_vihf import CONTEXT

from drimbox.cda.model import ImagingReport
from drimbox.dicom.kos import manifest_from_bytes
from drimbox.dmp import codes
from drimbox.dmp.vihf import VihfSubject, build_vihf, vihf_bytes
from drimbox.dmp.xades import (
    SignatureAlgorithm,
    SignedDocument,
    XmlSigner,
    build_signature_document,
)
from drimbox.sim.pki import Issued, TestPki

SAML_ASSERTION = f"{codes.SAML_NS}:Assertion"
DIGESTS = {"rsa-sha1": "sha1", "rsa-sha256": "sha256", "rsa-sha512": "sha512"}


def xmlsec1(*arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["xmlsec1", "--verify", *arguments], capture_output=True, timeout=60, check=False
    )


def _signer(signing: Issued, algorithm: SignatureAlgorithm) -> XmlSigner:
    return XmlSigner(signing.certificate, signing.key_pem, algorithm, DIGESTS[algorithm])  # type: ignore[arg-type]


def _anchor(tmp_path: Path, pki: TestPki, name: str = "anchor") -> Path:
    path = tmp_path / f"{name}.pem"
    path.write_bytes(pki.ca.cert_pem)
    return path


def _vihf(report: ImagingReport, signer: XmlSigner) -> etree._Element:
    return build_vihf(
        VihfSubject.from_report(report),
        patient_ins=report.patient.ins,
        patient_ins_oid=report.patient.ins_oid,
        context=CONTEXT,
        signer=signer,
    )


@pytest.mark.parametrize("algorithm", ["rsa-sha1", "rsa-sha256"])
def test_xmlsec1_verifies_the_vihf(
    tmp_path: Path, pki: TestPki, signing: Issued, report: ImagingReport, algorithm: str
) -> None:
    assert algorithm in get_args(SignatureAlgorithm)
    assertion = _vihf(report, _signer(signing, algorithm))  # type: ignore[arg-type]
    good = tmp_path / "vihf.xml"
    good.write_bytes(vihf_bytes(assertion))
    anchor = _anchor(tmp_path, pki)
    options = ("--id-attr:ID", SAML_ASSERTION, "--enabled-reference-uris", "same-doc")
    result = xmlsec1("--trusted-pem", str(anchor), *options, str(good))
    assert result.returncode == 0, result.stderr.decode()
    # Altered after signing: the NameID of another professional.
    name_id = assertion.find(f"{{{codes.SAML_NS}}}Subject/{{{codes.SAML_NS}}}NameID")
    assert name_id is not None
    name_id.text = "899999999999"
    altered = tmp_path / "altered.xml"
    altered.write_bytes(vihf_bytes(assertion))
    assert xmlsec1("--trusted-pem", str(anchor), *options, str(altered)).returncode != 0
    # Another CA: the signer is not trusted.
    stranger = _anchor(tmp_path, TestPki("AC AUTRE"), "stranger")
    assert xmlsec1("--trusted-pem", str(stranger), *options, str(good)).returncode != 0


@pytest.mark.parametrize("algorithm", ["rsa-sha1", "rsa-sha256"])
def test_xmlsec1_verifies_the_signature_document_and_its_manifest(
    tmp_path: Path, pki: TestPki, signing: Issued, kos_bytes: bytes, algorithm: str
) -> None:
    kos_uid = str(manifest_from_bytes(kos_bytes).SOPInstanceUID)
    document = build_signature_document(
        [SignedDocument(kos_uid, kos_bytes)],
        _signer(signing, algorithm),  # type: ignore[arg-type]
    )
    signature = tmp_path / "signature.xml"
    signature.write_bytes(document)
    kos = tmp_path / "kos.dcm"
    kos.write_bytes(kos_bytes)
    anchor = _anchor(tmp_path, pki)
    options = (
        "--trusted-pem", str(anchor), "--id-attr:Id", "SignedProperties",
        "--id-attr:Id", "Manifest", f"--url-map:urn:oid:{kos_uid}", str(kos),
    )  # fmt: skip
    result = xmlsec1(*options, str(signature))
    assert result.returncode == 0, result.stderr.decode()
    assert b"Manifests References (ok/all): 1/1" in result.stdout + result.stderr
    # Another KOS under the same uniqueId: the manifest reference no longer verifies.
    kos.write_bytes(kos_bytes[:-1] + bytes([kos_bytes[-1] ^ 0xFF]))
    tampered = xmlsec1(*options, str(signature))
    assert b"Manifests References (ok/all): 0/1" in tampered.stdout + tampered.stderr
