"""A whole Source site for end-to-end tests: Orthanc with exam C, the DMP and PSC simulators, a
test PKI, a whitelist signed at test time naming one peer, and a running node with mTLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian

from drimbox.db import ReportState
from drimbox.hl7.message import parse_report_message
from drimbox.samples import ans_file
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.pki import Issued, TestPki
from drimbox.sim.psc import LocalPsc
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from drimbox.sim.whitelist import (
    LocalWhitelistServer,
    build_whitelist,
    issue_ans_signer,
    sign_whitelist,
)
from support.dmp import DmpEnvironment, local_dmp
from support.node import RunningNode, node_config
from support.samples import hl7_text
from support.trust import domain

PEER_DN = "CN=db2.test.fr,OU=300000001830002,O=SITE B,ST=Paris (75),C=FR"
OFFICIAL_ACCEPT = (
    ans_file("validators/wado-rs-series-request.txt")
    .read_text()
    .splitlines()[1]
    .removeprefix("Accept:")
)


@dataclass
class Site:
    node: RunningNode
    dmp: DmpEnvironment
    psc: LocalPsc
    trusted_peer: Issued
    unknown_peer: Issued
    ca_file: Path
    study_uid: str
    kos_uid: str
    series_uids: list[str]
    pki: TestPki
    ans: Issued  # signs whitelists chained to `ca_file`
    box: Issued  # the node's own certificate (CN=localhost)
    revoked_peer: Issued  # the trusted peer's former certificate (same DN), on the CA's CRL
    crl: LocalWhitelistServer  # serves the CA's CRL at `pki.crl_url`


def peer_view(site: Site, folder: Path, certificate: Issued) -> dict[str, str]:
    """The configuration (environment) of another box that calls this site's node as a peer:
    `certificate` for mutual TLS, and a whitelist signed at test time naming the node as
    `localhost` (its certificate's host name) and the trusted peer."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = [domain(1, db="localhost", operator_dn=site.box.subject),
              domain(2, db="db2.test.fr", operator_dn=PEER_DN)]  # fmt: skip
    whitelist = sign_whitelist(
        build_whitelist(listed, datetime.now(UTC)), site.ans, [site.pki.ca.certificate]
    )
    (folder / "whitelist.xml").write_bytes(whitelist)
    assert certificate.cert_path and certificate.key_path
    return {
        "DRIMBOX_TRUST__WHITELIST_SOURCE": str(folder / "whitelist.xml"),
        "DRIMBOX_TRUST__ANCHORS": str(site.ca_file),
        "DRIMBOX_TRUST__STATE_DIR": str(folder / "trust"),
        "DRIMBOX_TRUST__TLS_CERT": str(certificate.cert_path),
        "DRIMBOX_TRUST__TLS_KEY": str(certificate.key_path),
        "DRIMBOX_TRUST__TLS_CA": str(site.ca_file),
    }


def peer_client(site: Site, peer: Issued) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(site.ca_file))
    assert peer.cert_path and peer.key_path
    context.load_cert_chain(str(peer.cert_path), str(peer.key_path))
    return httpx.Client(verify=context, timeout=30)


@contextmanager
def source_site(
    orthanc: LocalOrthanc,
    tmp_path: Path,
    series: tuple[SeriesSpec, ...] = (SeriesSpec("CT", "a", 4), SeriesSpec("CT", "b", 2)),
    size: int = 32,
    environ_extra: dict[str, str] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Iterator[Site]:
    orthanc.delete_all()
    crl = LocalWhitelistServer()  # started below, with the simulators
    pki = TestPki(crl_url=crl.url_for("ac-test.crl"))  # in every certificate, as IGC-Santé
    folder = tmp_path / "pki"
    box = pki.issue("localhost", usage="server", dns_names=("localhost", "127.0.0.1"),
                    organizational_unit="101235555").write(folder, "box")  # fmt: skip
    trusted = pki.issue(
        "db2.test.fr", usage="auth", organizational_unit="300000001830002",
        organization="SITE B", state="Paris (75)",
    ).write(folder, "peer-b")  # fmt: skip
    revoked = pki.issue(
        "db2.test.fr", usage="auth", organizational_unit="300000001830002",
        organization="SITE B", state="Paris (75)",
    ).write(folder, "peer-b-revoked")  # fmt: skip
    pki.revoke(revoked.certificate)
    crl.publish(pki.crl_der())
    unknown = pki.issue(
        "db9.test.fr", usage="auth", organizational_unit="300000001830009",
        organization="SITE Z", state="Paris (75)",
    ).write(folder, "peer-z")  # fmt: skip
    ans = issue_ans_signer(pki)
    whitelist = sign_whitelist(
        build_whitelist([domain(2, db="db2.test.fr", operator_dn=PEER_DN)], datetime.now(UTC)),
        ans,
        [pki.ca.certificate],
    )
    (tmp_path / "whitelist.xml").write_bytes(whitelist)
    assert pki.ca.cert_path is None
    ca = pki.ca.write(folder, "ca")
    report = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert report is not None
    files = generate_study_for_report(
        tmp_path / "study",
        report,
        list(series),
        rows=size,
        columns=size,
        transfer_syntax=transfer_syntax,
    )
    orthanc.store_files(files)
    with (
        crl,
        local_dmp(tmp_path / "dmp", pki) as dmp,
        LocalPsc.with_mtls(tmp_path / "psc", pki) as psc,
    ):
        environ = (
            dmp.node_environ()
            | {
                "DRIMBOX_TRUST__WHITELIST_SOURCE": str(tmp_path / "whitelist.xml"),
                "DRIMBOX_TRUST__ANCHORS": str(ca.cert_path),
                "DRIMBOX_TRUST__EXPECTED_SIGNER_CN": "Liste Blanche DRIM-M",
                "DRIMBOX_TRUST__STATE_DIR": str(tmp_path / "trust"),
                "DRIMBOX_TRUST__TLS_CERT": str(box.cert_path),
                "DRIMBOX_TRUST__TLS_KEY": str(box.key_path),
                "DRIMBOX_TRUST__TLS_CA": str(ca.cert_path),
                **psc.node_environ(),
                "DRIMBOX_PSC__PEER_CLIENTS": psc.client.client_id,
            }
            | (environ_extra or {})
        )
        with RunningNode(node_config(tmp_path, orthanc, environ)) as node:
            with RisClient("127.0.0.1", node.hl7_port) as ris:
                assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
            settled = {ReportState.PUBLISHED.value, ReportState.PARKED.value}
            published = node.wait_for_report(node.reports()[0].id, settled)
            assert published.state == ReportState.PUBLISHED.value, published.reason
            assert published.kos is not None and published.kos_sop_uid is not None
            kos = dcmread(DicomBytesIO(published.kos))
            series = [
                s.SeriesInstanceUID
                for e in kos.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence
            ]
            yield Site(node, dmp, psc, trusted, unknown, ca.cert_path, published.study_uid,
                       published.kos_sop_uid, series, pki, ans, box, revoked, crl)  # fmt: skip
    orthanc.delete_all()


def series_url(site: Site, index: int = 0) -> str:
    return (
        f"{site.node.peer_url}/dicom-web-rs/studies/{site.study_uid}"
        f"/series/{site.series_uids[index]}"
    )


def official_headers(site: Site, token: str) -> dict[str, str]:
    return {
        "Accept": OFFICIAL_ACCEPT,
        "Authorization": f"Bearer {token}",
        "KOS-SOPInstanceUID": site.kos_uid,
    }
