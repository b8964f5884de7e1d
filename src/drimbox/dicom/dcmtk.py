"""C-MOVE retrieval through dcmtk's own tools (`[pacs] retrieve = "c-move-dcmtk"`).

pynetdicom spends ~3 ms of Python per instance (PDU and command decoding, C-STORE-RSP encoding,
file meta), which caps a series at a fraction of dcmtk's pace (issue 17, bench/RESULTS.md). Here
dcmtk does the DIMSE work in C: a supervised `storescp` (`StoreScpProcess`, its own AE title and
port, declared in the PACS as a second C-MOVE destination) writes each received instance into a
spool folder, and `movescu` asks the PACS for the series. A watcher (inotify, IN_CLOSE_WRITE:
storescp closes a file before it answers its C-STORE) hands each file's bytes to the sink of the
retrieval that expects its series, then deletes it; a file nobody expects is logged and deleted.

storescp cannot restrict who calls it (the pynetdicom SCP keeps IOCM and its AE-title check):
only instances of a series being retrieved at that moment are taken, the rest is discarded.
It must not know about the cache or the readers (`drimbox.dicom.retrieve` wires the sinks).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from inotify_simple import INotify, flags
from pydicom.filereader import read_partial

from drimbox.dicom.elements import LONG_VRS, UNDEFINED, Element, TruncatedData, walk
from drimbox.dicom.pacs import InstanceSink, PacsError, PacsSettings
from drimbox.dicom.scp import ScpError

log = logging.getLogger(__name__)

# dcmtk leaves Nagle's algorithm on unless told: one small PDU per round trip otherwise.
_DCMTK_ENV = {"TCP_NODELAY": "1"}
_STORESCP_MAX_PDU = 131072  # storescp's largest (4096..131072)
_STUDY_UID, _SERIES_UID = 0x0020000D, 0x0020000E
_KEY_TAGS = frozenset({_STUDY_UID, _SERIES_UID})
_IMPLICIT_LE = "1.2.840.10008.1.2"
# The syntaxes whose dataset is not explicit VR little endian (every compressed one is).
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


# -- which series a received file belongs to -----------------------------------------------------


class IncompleteInstance(ValueError):
    """A received file that ends before its last element does (storescp could not write it all:
    disk full, association aborted): it must never reach the cache. `key`: the study and series
    UIDs read before the cut (empty when they were cut too)."""

    def __init__(self, message: str, key: tuple[str, str] = ("", "")) -> None:
        super().__init__(message)
        self.key = key


def series_key(data: bytes) -> tuple[str, str]:
    """(Study Instance UID, Series Instance UID) of Part-10 bytes, and a check that the file is
    whole. Walks the elements straight from the bytes for the little-endian syntaxes (~30×
    cheaper than pydicom, which is what the watcher spends per instance); pydicom reads the
    others (big endian, deflated) and what the walk cannot follow. Raises `IncompleteInstance`
    for a file cut short."""
    layout = _layout(data)
    if layout is not None:
        start, explicit = layout
        found: dict[int, Element] = {}
        try:
            end = walk(data, start, len(data), explicit, found, _KEY_TAGS)
        except (struct.error, TruncatedData) as exc:
            raise IncompleteInstance(f"fichier tronqué ({exc})", _key(data, found)) from exc
        except ValueError:
            end = None  # not understood here (e.g. an implicit sequence inside UN): pydicom's
        if end is not None:
            if end != len(data):
                raise IncompleteInstance(
                    f"fichier tronqué ({len(data)} octets, {end} attendus)", _key(data, found)
                )
            return _key(data, found)
    ds = read_partial(BytesIO(data), stop_when=lambda tag, vr, length: tag > _SERIES_UID)
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))


def _key(data: bytes, found: dict[int, Element]) -> tuple[str, str]:
    def uid(tag: int) -> str:
        if tag not in found:
            return ""
        _vr, at, length = found[tag]
        if length == UNDEFINED:
            return ""
        return data[at : at + length].decode("ascii").strip("\0 ")

    return uid(_STUDY_UID), uid(_SERIES_UID)


def _layout(data: bytes) -> tuple[int, bool] | None:
    """Where the dataset starts and whether its VRs are explicit, for a little-endian file."""
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    # File meta: explicit VR little endian, its length in (0002,0000).
    group, element = struct.unpack_from("<HH", data, 132)
    if (group, element) != (2, 0) or data[136:138] != b"UL":
        return None
    (meta_length,) = struct.unpack_from("<I", data, 140)
    start = 144 + meta_length
    syntax = _meta_syntax(data[144:start])
    if not syntax or syntax in _NOT_EXPLICIT_LE:
        return None  # big endian, deflated: pydicom knows
    return start, syntax != _IMPLICIT_LE


def _meta_syntax(meta: bytes) -> str:
    pos = 0
    while pos + 8 <= len(meta):
        group, element = struct.unpack_from("<HH", meta, pos)
        vr = meta[pos + 4 : pos + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            value_at = pos + 8
        if (group, element) == (2, 0x10):
            return meta[value_at : value_at + length].decode("ascii").strip("\0 ")
        pos = value_at + length
    return ""


# -- the storescp process and its spool ----------------------------------------------------------


@dataclass
class Expected:
    """A retrieval waiting for the instances of one series."""

    sink: InstanceSink
    received: int = 0
    errors: list[BaseException] = field(default_factory=list)


def _die_with_parent() -> None:
    """storescp must not outlive a node killed without its stop (it would keep the port)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StoreScpProcess:
    """dcmtk `storescp` on `port` with AE title `aet`, writing into `spool` (emptied at start),
    restarted when it dies, stopped with `stop()`. Retrievals declare what they wait for with
    `expect()`; the instances of any other series are discarded (`discarded` counts them).

    `--fork`: each association in a process of its own, so two cold series moved at once do not
    queue behind each other."""

    def __init__(
        self,
        aet: str,
        port: int,
        spool: Path,
        *,
        storescp: str = "/usr/bin/storescp",
        restart_delay_s: float = 0.5,
        options: Sequence[str] = (),
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.aet = aet
        self.port = port
        self.spool = Path(spool)
        self.storescp = storescp
        self.restart_delay_s = restart_delay_s
        self.options = tuple(options)  # more storescp options (tests slow it down)
        self.on_event = on_event  # "restarted" / "discarded", for the node's metrics
        self.restarts = 0
        self.discarded = 0
        self._expected: dict[tuple[str, str], Expected] = {}
        self._lock = threading.Lock()  # the routes
        self._handling = threading.Lock()  # reading inotify events and handing their files
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inotify: INotify | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def start(self, timeout_s: float = 10.0) -> None:
        if self._threads:
            return
        if not Path(self.storescp).is_file():
            raise ScpError(
                f"storescp de dcmtk introuvable ({self.storescp}) : installez le paquet dcmtk"
            )
        _check_port_free(self.port)
        self.spool.mkdir(parents=True, exist_ok=True)
        left = list(self.spool.iterdir())
        for path in left:
            _remove(path)
        if left:
            log.warning("storescp spool %s: %d leftover file(s) removed", self.spool, len(left))
        self._inotify = INotify()
        self._inotify.add_watch(str(self.spool), flags.CLOSE_WRITE | flags.MOVED_TO)
        self._stopping.clear()
        self._threads = [
            threading.Thread(target=self._supervise, name="drimbox-storescp", daemon=True),
            threading.Thread(target=self._watch, name="drimbox-storescp-spool", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        if not (self._spawned.wait(timeout_s) and _wait_listening(self.port, timeout_s)):
            self.stop()
            raise ScpError(f"storescp n'écoute pas sur le port {self.port} après {timeout_s:.0f} s")
        log.info("storescp %s listening on port %d (spool %s)", self.aet, self.port, self.spool)

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        self._spawned.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    @contextlib.contextmanager
    def expect(self, study_uid: str, series_uid: str, sink: InstanceSink) -> Iterator[Expected]:
        """Route the instances of this series to `sink` while the block runs; on exit, every
        file storescp closed before it is handed (a C-MOVE's files all are, once it answered)."""
        key = (study_uid, series_uid)
        expected = Expected(sink)
        with self._lock:
            if key in self._expected:
                raise PacsError(f"série {series_uid} déjà en cours de récupération")
            self._expected[key] = expected
        try:
            yield expected
            self.drain()
        finally:
            with self._lock:
                self._expected.pop(key, None)

    def drain(self) -> None:
        """Hand every file whose closing inotify has already reported."""
        with self._handling:
            self._handle_events()

    # -- threads ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        return [
            self.storescp, "--fork", "-aet", self.aet, "+xa", "-pdu", str(_STORESCP_MAX_PDU),
            "-dhl", *self.options, "-od", str(self.spool), str(self.port),
        ]  # fmt: skip

    def _supervise(self) -> None:
        delay = self.restart_delay_s
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=os.environ | _DCMTK_ENV,
                    preexec_fn=_die_with_parent,  # only a prctl: safe with threads
                )
            except OSError as exc:
                log.error("storescp could not be started: %s", exc)
                self._stopping.wait(self.restart_delay_s * 10)
                continue
            self._process = process
            if self._stopping.is_set():
                process.terminate()  # stop() came between the check above and the spawn
            self._spawned.set()
            assert process.stdout is not None
            for raw in process.stdout:  # its warnings and errors, until it (and its forks) exit
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    log.warning("storescp: %s", line)
            code = process.wait()
            if self._stopping.is_set():
                break
            self.restarts += 1
            self._event("restarted")
            # One that dies at once (port taken, bad option) is retried less and less often.
            quick = time.monotonic() - started < 5.0
            delay = min(delay * 2, 30.0) if quick else self.restart_delay_s
            log.error("storescp stopped (exit code %s): restarted in %.1f s", code, delay)
            self._stopping.wait(delay)

    def _watch(self) -> None:
        inotify = self._inotify
        assert inotify is not None
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([inotify.fileno()], [], [], 0.5)
            except (OSError, ValueError):
                return  # closed by stop()
            if ready:
                with self._handling:
                    self._handle_events()

    def _handle_events(self) -> None:
        inotify = self._inotify
        if inotify is None:
            return
        for event in inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                log.warning("storescp spool: inotify queue overflow, spool swept")
                self._sweep()
            elif event.name:
                self._handle(self.spool / event.name)

    def _sweep(self) -> None:
        """After lost events: the files nobody writes any more (older than a second)."""
        now = time.time()
        for path in self.spool.iterdir():
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > 1.0:
                    self._handle(path)

    def _handle(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return
        finally:
            _remove(path)
        try:
            key = series_key(data)
        except Exception as exc:  # noqa: BLE001 (a file we cannot read is discarded, logged)
            log.warning("storescp spool: unreadable file %s discarded: %s", path.name, exc)
            self.discarded += 1
            self._event("discarded")
            if isinstance(exc, IncompleteInstance):
                self._incomplete(path.name, exc)
            return
        with self._lock:
            expected = self._expected.get(key)
        if expected is None:
            self.discarded += 1
            self._event("discarded")
            log.warning(
                "storescp: instance %s of series %s received while no retrieval expects it: "
                "discarded",
                path.name,
                key[1],
            )
            return
        try:
            expected.sink(data)
        except Exception as exc:  # noqa: BLE001 (raised to the retrieval after the move)
            expected.errors.append(exc)
            return
        expected.received += 1

    def _event(self, event: str) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _incomplete(self, name: str, exc: IncompleteInstance) -> None:
        """The retrieval of a cut file's series fails (its readers get an error and ask again)
        rather than the series being cached without it; every retrieval under way when the
        cut hid the series."""
        with self._lock:
            match = self._expected.get(exc.key)
            waiting = [match] if match is not None else list(self._expected.values())
        if match is None and exc.key != ("", ""):
            return  # another series' file, nobody waits for it
        for expected in waiting:
            expected.errors.append(PacsError(f"instance {name} reçue incomplète : {exc}"))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise ScpError(f"le port {port} de storescp est déjà pris ({exc})") from exc


def _wait_listening(port: int, timeout_s: float) -> bool:
    """Whether something listens on `port`, read from /proc (a probe connection would make
    storescp log a failed association)."""
    deadline = time.monotonic() + timeout_s
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
                for row in rows:
                    fields = row.split()
                    if len(fields) > 3 and fields[3] == "0A" and (fields[1] + " ").endswith(needle):
                        return True
        time.sleep(0.02)
    return False


# -- the C-MOVE request --------------------------------------------------------------------------


class DcmtkMoveRetriever:
    """C-MOVE of a series by dcmtk `movescu` to `receiver` (storescp); each instance reaches
    the sink as soon as storescp has written it."""

    method = "c-move-dcmtk"

    def __init__(
        self,
        settings: PacsSettings,
        receiver: StoreScpProcess,
        *,
        movescu: str = "/usr/bin/movescu",
    ) -> None:
        self.settings = settings
        self.receiver = receiver
        self.movescu = movescu

    def retrieve_series(
        self, study_uid: str, series_uid: str, sink: InstanceSink, sop_classes: Sequence[str]
    ) -> int:
        with self.receiver.expect(study_uid, series_uid, sink) as expected:
            self._move(study_uid, series_uid)
        if expected.errors:
            raise expected.errors[0]
        return expected.received

    def _move(self, study_uid: str, series_uid: str) -> None:
        s = self.settings
        command = [
            self.movescu, "-S", "-aet", s.calling_aet, "-aec", s.called_aet,
            "-aem", self.receiver.aet,
            "-to", str(round(s.connection_timeout)), "-ta", str(round(s.acse_timeout)),
            "-td", str(round(s.dimse_timeout)),
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid}",
            "-k", f"SeriesInstanceUID={series_uid}", s.host, str(s.port),
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                env=os.environ | _DCMTK_ENV,
                timeout=s.connection_timeout + s.acse_timeout + s.dimse_timeout * 10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PacsError(f"PACS {s.label} : movescu (dcmtk) n'a pas abouti ({exc})") from exc
        lines = (done.stdout + done.stderr).splitlines()
        errors = [line[3:] for line in lines if line.startswith(("E: ", "F: "))]
        # movescu exits 0 after some failures (an aborted association): its log tells.
        if done.returncode != 0 or errors:
            said = errors or [line[3:] for line in lines if line.startswith("W: ")]
            raise PacsError(
                f"PACS {s.label} : C-MOVE (dcmtk) de la série {series_uid} en échec "
                f"(code {done.returncode}) : {' ; '.join(said[-3:]) or 'sans message'} ; "
                f"le PACS connaît-il la DRIMbox ({s.calling_aet}) et la destination "
                f"{self.receiver.aet!r} ?"
            )
