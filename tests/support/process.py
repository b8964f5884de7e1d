"""A node as a real process (`drimbox serve`), for crash tests: SIGKILLed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from drimbox.config import Config
from drimbox.sim.ports import free_port

# The sections a Source node process needs from a test's `Config` (lists cannot be passed).
PROCESS_SECTIONS = ("dmp", "pacs", "site", "source", "store", "http", "viewer")


def config_environ(config: Config) -> dict[str, str]:
    """`config` as `DRIMBOX_<SECTION>__<KEY>` variables, for a node started as a process."""
    return {
        f"DRIMBOX_{section.upper()}__{key.upper()}": str(value)
        for section, values in config.model_dump().items()
        if section in PROCESS_SECTIONS
        for key, value in values.items()
        if not isinstance(value, list)
    }


def wait_for_port(
    port: int, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


class NodeProcess:
    """`drimbox serve --config FILE` in a subprocess, with an MLLP port chosen here."""

    def __init__(
        self,
        config_file: Path,
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        http_port: int | None = None,
    ) -> None:
        self.config_file = config_file
        self.hl7_port = free_port()
        self.http_port = http_port  # waited for as well when given
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or config_file.parent / "node.log"

    def start(self, **env: str) -> NodeProcess:
        environ = {
            **os.environ,
            "DRIMBOX_HL7__PORT": str(self.hl7_port),
            **self.extra_env,
            **env,
        }
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "drimbox", "serve", "--config", str(self.config_file)],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # Generous: a loaded CI machine may take long to import and start a node.
        wait_for_port(self.hl7_port, 120, process=self.process)
        if self.http_port is not None:
            wait_for_port(self.http_port, 120, process=self.process)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup by the process (the kernel still flushes what it was given)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def wait_dead(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
