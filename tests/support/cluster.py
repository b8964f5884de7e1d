"""Several `drimbox serve` processes sharing one PostgreSQL database, as a multi-node site runs
them: one configuration file for all, a name and ports per node, the schema upgraded once before
they start, and HAProxy in front of their MLLP ports (balanced per connection, docs/deploy.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from drimbox.cda import parse_report
from drimbox.db import Database
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from drimbox.sim.ris import RisClient
from drimbox.sim.studies import SeriesSpec, generate_study_for_report
from support.dmp import DmpEnvironment
from support.metrics import Samples, scrape
from support.node import node_config
from support.process import NodeProcess, config_environ, wait_for_port
from support.samples import cda_of
from support.tools import missing

HAPROXY_CONFIG = """\
global
    maxconn 512

defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    retries 3
    option redispatch

listen mllp
    bind 127.0.0.1:{port}
    balance roundrobin
{servers}
"""
HAPROXY_SERVER = (
    "    server {name} 127.0.0.1:{port} check inter 500ms fall 1 rise 2 "
    "on-marked-down shutdown-sessions\n"
)


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout_s} s")
        time.sleep(0.2)


def count(db: Database, query: object) -> int:
    with db.session() as session:
        return int(session.scalar(query) or 0)  # type: ignore[call-overload]


def source_environ(
    folder: Path, url: str, orthanc: LocalOrthanc | None, dmp: DmpEnvironment | None
) -> dict[str, str]:
    """The settings every node of the site shares: the database at `url`, the PACS (none: an
    unreachable port), the DMP."""
    extra = {"DRIMBOX_STORE__DATABASE_URL": url, **(dmp.node_environ() if dmp else {})}
    pacs = {} if orthanc else {"pacs": {"port": 9, "timeout_s": 1}}
    environ = config_environ(node_config(folder, orthanc, extra, **pacs))
    # One secret key file for all the nodes of the site (docs/deploy.md).
    return environ | {"DRIMBOX_STORE__SECRET_KEY_FILE": str(folder / "shared-secret.key")}


class RisSenders:
    """`connections` RIS connections sending `messages` to `port` (the balancer) in background
    threads: each connection goes to one node and, when it breaks, re-sends on a new one."""

    def __init__(
        self, port: int, messages: list[str], connections: int = 4, max_attempts: int = 200
    ) -> None:
        self.acked: list[str] = []
        self.unanswered: list[str] = []
        self.threads = [
            threading.Thread(
                target=self._send, args=(port, messages[first::connections], max_attempts)
            )
            for first in range(connections)
        ]

    def _send(self, port: int, messages: list[str], max_attempts: int) -> None:
        with RisClient("127.0.0.1", port, timeout_s=10, max_attempts=max_attempts) as client:
            for message in messages:
                result = client.send(message)
                (self.acked if result.code == "AA" else self.unanswered).append(result.control_id)

    def start(self) -> RisSenders:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        for thread in self.threads:
            thread.join(timeout_s)


def store_exams(orthanc: LocalOrthanc, folder: Path, messages: list[str]) -> None:
    """A small study in the PACS for each report message (distinct exams: no report waits for
    another one's publication, as versions of one exam do)."""
    for index, message in enumerate(messages):
        report = parse_report(cda_of(message))
        orthanc.store_files(generate_study_for_report(
            folder / str(index), report, [SeriesSpec("CT", "x", 2)], rows=32, columns=32
        ))  # fmt: skip


class Cluster:
    """Nodes named `names`, with the same settings (`environ`) and each its own name, ports,
    image cache and log; `node_env` adds per-node variables (failpoints)."""

    def __init__(
        self,
        folder: Path,
        environ: dict[str, str],
        names: list[str],
        node_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config_file = folder / "drimbox.toml"
        self.config_file.write_text("[roles]\nsource = true\n")
        self.environ = environ
        self.nodes: dict[str, NodeProcess] = {}
        self.metrics_ports: dict[str, int] = {}
        for name in names:
            http_port, viewer_port = free_port(), free_port()
            self.metrics_ports[name] = free_port()
            env = {
                **environ,
                "DRIMBOX_NODE__NAME": name,
                "DRIMBOX_HTTP__PORT": str(http_port),
                "DRIMBOX_VIEWER__PORT": str(viewer_port),
                "DRIMBOX_VIEWER__PUBLIC_URL": f"http://127.0.0.1:{viewer_port}",
                "DRIMBOX_PACS__SCP_PORT": "0",
                "DRIMBOX_METRICS__ENABLED": "true",
                "DRIMBOX_METRICS__PORT": str(self.metrics_ports[name]),
                "DRIMBOX_STORE__CACHE_DIR": str(folder / name / "cache"),
                **(node_env or {}).get(name, {}),
            }
            self.nodes[name] = NodeProcess(
                self.config_file, env=env, log_path=folder / f"{name}.log", http_port=http_port
            )
        self.balancer: subprocess.Popen[bytes] | None = None
        self.balancer_port = 0

    def upgrade(self) -> None:
        """The schema upgrade, run once before the nodes start (docs/deploy.md)."""
        done = subprocess.run(
            [sys.executable, "-m", "drimbox", "db", "upgrade", "--config", str(self.config_file)],
            env={**os.environ, **self.environ},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"db upgrade failed ({done.returncode}): {done.stderr[-3000:]}")

    def start(self) -> Cluster:
        self.upgrade()
        for node in self.nodes.values():
            node.start()
        return self

    def start_balancer(self) -> int:
        """HAProxy in TCP mode in front of every node's MLLP port; its port."""
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(haproxy).exists():
            missing("HAProxy not installed (Debian package haproxy)")
        self.balancer_port = free_port()
        servers = "".join(
            HAPROXY_SERVER.format(name=name, port=node.hl7_port)
            for name, node in self.nodes.items()
        )
        config = self.folder / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.balancer_port, servers=servers))
        log = (self.folder / "haproxy.log").open("ab")
        self.balancer = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for_port(self.balancer_port, process=self.balancer)
        return self.balancer_port

    def status(self, name: str) -> dict[str, Any]:
        port = self.nodes[name].http_port
        response = httpx.get(f"http://127.0.0.1:{port}/status", timeout=30)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def metrics(self, name: str) -> Samples:
        return scrape(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics")

    def stop(self) -> None:
        if self.balancer is not None and self.balancer.poll() is None:
            self.balancer.terminate()
            self.balancer.wait(10)
        for node in self.nodes.values():
            node.stop()


@contextmanager
def running_cluster(
    folder: Path,
    environ: dict[str, str],
    names: list[str],
    node_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[Cluster]:
    cluster = Cluster(folder, environ, names, node_env)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
