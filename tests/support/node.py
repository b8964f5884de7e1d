"""A real node (`drimbox.node.Node`) running on its own event-loop thread, as `serve` runs it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from drimbox.config import Config, load_config
from drimbox.db import Report
from drimbox.node import Node
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.psc import LocalPsc
from support.dmp import DmpEnvironment

# The origin of the RIS/DPI pages that post contextual launches in the tests: declared in every
# test node's `[conso] launch_origins`, sent as `Origin` by the tests' launches.
RIS_ORIGIN = "http://ris.site-b.test"


def node_config(
    tmp_path: Path,
    orthanc: LocalOrthanc | None,
    environ_extra: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> Config:
    """A Source node on loopback: MLLP on a free port, SQLite in tmp_path, fast retries."""
    viewer_port = free_port()
    environ = {
        "DRIMBOX_HL7__PORT": "0",
        "DRIMBOX_STORE__DATABASE_URL": f"sqlite:///{tmp_path / 'node.db'}",
        "DRIMBOX_STORE__CACHE_DIR": str(tmp_path / "cache"),
        "DRIMBOX_SITE__PUBLIC_BASE_URL": "https://db.site-a.test",
        "DRIMBOX_SITE__UID_ROOT": "1.2.250.1.999.77",
        "DRIMBOX_SOURCE__POLL_INTERVAL_S": "0.05",
        "DRIMBOX_SOURCE__RETRY_INITIAL_S": "0.2",
        "DRIMBOX_SOURCE__RETRY_MAX_S": "0.5",
        # Work leased by a node killed mid-way comes back after this (crash tests).
        "DRIMBOX_SOURCE__LEASE_S": "5",
        "DRIMBOX_PACS__TIMEOUT_S": "5",
        "DRIMBOX_PACS__SCP_PORT": "0",
        "DRIMBOX_HTTP__PORT": "0",
        # Most tests talk to the peer origin in plain HTTP; the trust tests configure TLS.
        "DRIMBOX_HTTP__INSECURE_PLAIN_HTTP": "true",
        # Off unless a test turns it on; then on a free port.
        "DRIMBOX_METRICS__PORT": "0",
        # A known port: PSC redirects the browser back to the viewer's public URL.
        "DRIMBOX_VIEWER__PORT": str(viewer_port),
        "DRIMBOX_VIEWER__PUBLIC_URL": f"http://127.0.0.1:{viewer_port}",
        "DRIMBOX_STORE__SECRET_KEY_FILE": str(tmp_path / "secret.key"),
        "DRIMBOX_CONSO__LAUNCH_ORIGINS": RIS_ORIGIN,
    }
    if orthanc is not None:
        environ |= {
            "DRIMBOX_PACS__HOST": "127.0.0.1",
            "DRIMBOX_PACS__PORT": str(orthanc.dicom_port),
            "DRIMBOX_PACS__CALLED_AET": orthanc.aet,
        }
    environ |= environ_extra or {}
    for section, values in sections.items():
        for key, value in values.items():
            environ[f"DRIMBOX_{section.upper()}__{key.upper()}"] = str(value)
    return load_config(environ=environ)


def network_environ(
    dmp: DmpEnvironment, psc: LocalPsc, whitelist: Path, ca_file: Path
) -> dict[str, str]:
    """The settings every node of a test network shares: the DMP simulator, the PSC simulator,
    the whitelist signed at test time and the test PKI's authority (anchors and peers' CA)."""
    return dmp.node_environ() | {
        "DRIMBOX_TRUST__WHITELIST_SOURCE": str(whitelist),
        "DRIMBOX_TRUST__ANCHORS": str(ca_file),
        "DRIMBOX_TRUST__EXPECTED_SIGNER_CN": "Liste Blanche DRIM-M",
        "DRIMBOX_TRUST__TLS_CA": str(ca_file),
        **psc.node_environ(),
    }


class RunningNode:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = Node(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RunningNode:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.node.start(), self.loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def flush_audit(self) -> int:
        """Write the image accesses counted so far (`drimbox.trust.tally`), as a stop would;
        returns how many events."""
        assert self.node.web is not None
        written = 0
        for server in (self.node.web.peer, self.node.web.viewer):
            tally = server.app.state.wado.tally
            written += tally.flush(everything=True)
        return written

    @property
    def metrics_url(self) -> str:
        assert self.node.web is not None and self.node.web.metrics is not None
        return f"{self.node.web.metrics.url}/metrics"

    @property
    def peer_url(self) -> str:
        assert self.node.web is not None
        return self.node.web.peer.url

    @property
    def viewer_url(self) -> str:
        assert self.node.web is not None
        return self.node.web.viewer.url

    @property
    def hl7_port(self) -> int:
        assert self.node.mllp is not None
        return self.node.mllp.port

    def wait_for_report(self, report_id: int, states: set[str], timeout_s: float = 60) -> Report:
        deadline = time.monotonic() + timeout_s
        while True:
            with self.node.db.session() as session:
                report = session.get(Report, report_id)
                if report is not None and report.state in states:
                    return report
            if time.monotonic() > deadline:
                raise AssertionError(f"report {report_id} never reached {states}: {report}")
            time.sleep(0.05)

    def reports(self) -> list[Report]:
        with self.node.db.session() as session:
            return list(session.scalars(select(Report).order_by(Report.id)))


def signed_in(node: RunningNode, user: str) -> httpx.Client:
    """A browser signed in to the node's viewer origin through the PSC simulator as `user`; its
    requests say they come from the origin's own pages (`Origin`), as a browser's forms do."""
    browser = httpx.Client(follow_redirects=True, timeout=30, headers={"Origin": node.viewer_url})
    browser.get(f"{node.viewer_url}/connexion", params={"login_hint": user, "next": "/admin"})
    return browser
