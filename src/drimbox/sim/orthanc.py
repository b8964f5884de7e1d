"""A throw-away local PACS: the Debian `Orthanc` binary started on loopback for tests and the demo.

Owns the Orthanc subprocess (generated JSON configuration, temporary storage, free ports, log
file) and its lifetime: `stop()` and the context manager always terminate it, also when start-up
fails. Uploads go through Orthanc's REST API for speed. It must not be used by production code:
the box talks to a real PACS only through `drimbox.dicom.pacs`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from drimbox.sim.ports import free_port

ORTHANC_BINARY = "/usr/sbin/Orthanc"
# Debian's orthanc-dicomweb package puts the plugin here (`dpkg -L orthanc-dicomweb`).
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)


class OrthancError(RuntimeError):
    """Orthanc could not be started or refused a request."""


@dataclass(frozen=True)
class RemoteModality:
    """A DICOM peer Orthanc may send to (C-MOVE destination, C-STORE SCU target)."""

    aet: str
    host: str
    port: int


def find_dicomweb_plugin() -> str | None:
    for candidate in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    return None


def orthanc_available() -> bool:
    return Path(ORTHANC_BINARY).exists() or shutil.which("Orthanc") is not None


class LocalOrthanc:
    """An Orthanc PACS on 127.0.0.1, its storage in a temporary directory.

    Use as a context manager (`with LocalOrthanc() as pacs: ...`) or call `start()`/`stop()`.
    """

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        http_port: int | None = None,
        dicom_port: int | None = None,
        modalities: Mapping[str, RemoteModality] | None = None,
        dicomweb: bool = True,
        binary: str | None = None,
        start_timeout: float = 30.0,
        work_dir: Path | None = None,
    ) -> None:
        self.aet = aet
        self.http_port = http_port or free_port()
        self.dicom_port = dicom_port or free_port()
        self.modalities = dict(modalities or {})
        self.dicomweb = dicomweb
        self.binary = binary or (
            ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else shutil.which("Orthanc") or ""
        )
        self.start_timeout = start_timeout
        self._given_work_dir = work_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.work_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def log_path(self) -> Path:
        if self.work_dir is None:
            raise OrthancError("Orthanc has not been started")
        return self.work_dir / "orthanc.log"

    def config(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with (documented in the Orthanc Book)."""
        if self.work_dir is None:
            raise OrthancError("Orthanc has not been started")
        cfg: dict[str, Any] = {
            "Name": f"drimbox-sim-{self.aet}",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            # Loopback only, so no authentication is needed.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DefaultEncoding": "Utf8",
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomModalities": {
                name: [m.aet, m.host, m.port] for name, m in self.modalities.items()
            },
            "StableAge": 1,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "ConcurrentJobs": 2,
            "HttpTimeout": 60,
            "DicomScpTimeout": 30,
            "Plugins": [],
        }
        if self.dicomweb:
            plugin = find_dicomweb_plugin()
            if plugin is None:
                raise OrthancError(
                    "the DICOMweb plugin is missing: install the Debian package orthanc-dicomweb"
                )
            cfg["Plugins"] = [plugin]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        return cfg

    @property
    def pid(self) -> int | None:
        """The Orthanc process's id while it runs (benchmarks read its CPU time)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> Self:
        if self._process is not None:
            return self
        if not self.binary or not Path(self.binary).exists():
            raise OrthancError(
                f"Orthanc binary not found ({ORTHANC_BINARY}): install the Debian package orthanc"
            )
        if self._given_work_dir is not None:
            self.work_dir = self._given_work_dir
            self.work_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="drimbox-orthanc-")
            self.work_dir = Path(self._tmp.name)
        try:
            config_path = self.work_dir / "orthanc.json"
            config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
            # DCMTK inside Orthanc stalls ~70 ms per PDU on loopback without this
            # (ARCHITECTURE §2.6).
            env = {**os.environ, "TCP_NODELAY": "1"}
            self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
            self._process = subprocess.Popen(
                [self.binary, str(config_path)],
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        client = self.client
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with code {self._process.returncode} during start-up; "
                    f"last log lines:\n{self.log_tail()}"
                )
            try:
                if client.get("/system").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise OrthancError(
                    f"Orthanc did not answer on {self.url}/system within {self.start_timeout:.0f}"
                    f" s; last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, OrthancError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=60.0)
        return self._client

    def stop(self) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL after 10 s) and remove its storage."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def store_files(self, paths: Iterable[Path]) -> list[str]:
        """Upload Part-10 files via REST `POST /instances`; return Orthanc's instance ids."""
        ids: list[str] = []
        for path in paths:
            response = self.client.post(
                "/instances",
                content=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            if response.status_code != 200:
                raise OrthancError(
                    f"Orthanc refused {path}: HTTP {response.status_code} {response.text[:300]}"
                )
            ids.append(str(response.json()["ID"]))
        return ids

    def statistics(self) -> dict[str, Any]:
        response = self.client.get("/statistics")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def delete_all(self) -> None:
        """Empty the PACS (between tests sharing one Orthanc)."""
        response = self.client.get("/patients")
        response.raise_for_status()
        for patient in response.json():
            self.client.delete(f"/patients/{patient}").raise_for_status()
