"""Speed tests a site runs against its own PACS and its peers (`drimbox pacs speedtest`,
`drimbox peer speedtest`, and the acceptance check): the figures the DRIM-M homologation asks
for, and what the site's IT needs to find a slow link.

Owns the measure (time to first image, images, bytes, throughput, transfer syntaxes received;
for a peer the latency of the WADO-RS request), its record in the database and the comparison
with the previous result of the same test (a result far below it is flagged). Retrieval itself
is the box's: the PACS through `drimbox.dicom.retrieve`'s retrievers (C-GET, C-MOVE to the box's
own SCP, WADO-RS), a peer through the Conso's `SourceRetriever` (whitelist, mutual TLS, DRIM-M
headers). Nothing retrieved is kept: each instance is counted and dropped.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydicom.uid import UID
from sqlalchemy import select

from drimbox.config import Config
from drimbox.db import Database, SpeedTest
from drimbox.dicom.cache import describe_instance
from drimbox.dicom.dcmtk import StoreScpProcess
from drimbox.dicom.model import StudySnapshot
from drimbox.dicom.pacs import PacsClient, PacsError
from drimbox.dicom.retrieve import build_retriever, pacs_settings, storescp_process
from drimbox.dicom.scp import ScpError, StoreScp
from drimbox.french import french_datetime, french_number, french_size
from drimbox.trust.store import WhitelistStore, whitelist_store

Kind = Literal["pacs", "peer"]
PACS_MODES: Final = ("c-get", "c-move", "c-move-dcmtk", "wado-rs")
# A probe without a study asks for this one: no box holds it, every box answers 4xx.
PROBE_STUDY_UID: Final = "1.2.250.1.999.0.1"
# Windows searched, most recent first, for `--latest` (days); then the whole PACS.
LATEST_WINDOWS_DAYS: Final = (1, 7, 31, 366)


class SpeedTestError(Exception):
    """The test could not run (message in French, for the site's IT)."""


@dataclass
class SpeedResult:
    """One speed test. Times are seconds from the first request; `seconds` until the last byte."""

    kind: Kind
    target: str
    mode: str
    study_uid: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    images: int = 0
    bytes: int = 0
    seconds: float = 0.0
    first_image_s: float | None = None
    latency_s: float | None = None  # peer: until the Source's response headers
    expected_images: int | None = None  # what the PACS index says (pacs)
    transfer_syntaxes: dict[str, int] = field(default_factory=dict)
    ok: bool = True
    error: str = ""
    flag: str = ""  # far below the previous result of the same test
    note: str = ""  # what was measured when it was not a whole study

    @property
    def throughput_bps(self) -> float:
        """Bytes per second over the whole transfer."""
        return self.bytes / self.seconds if self.seconds > 0 and self.bytes else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["throughput_mb_s"] = round(self.throughput_bps / 1e6, 3)
        data["throughput_mbit_s"] = round(self.throughput_bps * 8 / 1e6, 2)
        data["transfer_syntax_names"] = {uid: syntax_name(uid) for uid in self.transfer_syntaxes}
        return data

    def summary(self) -> list[tuple[str, str]]:
        """The figures as French (label, value) lines."""
        lines = [("Cible", self.target), ("Méthode", self.mode)]
        if self.study_uid:
            lines.append(("Examen", self.study_uid))
        if self.latency_s is not None:
            lines.append(
                ("Latence de la requête WADO-RS", f"{french_number(self.latency_s * 1000)} ms")
            )
        if self.first_image_s is not None:
            lines.append(("Première image", f"{french_number(self.first_image_s * 1000)} ms"))
        if self.images or self.expected_images:
            expected = (
                f" sur {self.expected_images} attendues"
                if self.expected_images is not None and self.expected_images != self.images
                else ""
            )
            lines.append(("Images", f"{self.images}{expected}"))
            lines.append(
                ("Volume", f"{french_size(self.bytes)} ({french_number(self.bytes)} octets)")
            )
            lines.append(("Durée", f"{french_number(self.seconds, 2)} s"))
            lines.append(
                (
                    "Débit",
                    f"{french_size(self.throughput_bps)}/s "
                    f"({french_number(self.throughput_bps * 8 / 1e6)} Mbit/s)",
                )
            )
        if self.transfer_syntaxes:
            lines.append(
                (
                    "Syntaxe de transfert reçue",
                    ", ".join(
                        f"{syntax_name(uid)} ({count})"
                        for uid, count in sorted(self.transfer_syntaxes.items())
                    ),
                )
            )
        if self.note:
            lines.append(("Remarque", self.note))
        if self.flag:
            lines.append(("Alerte", self.flag))
        return lines


def syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


class _Meter:
    """The sink of a measured retrieval: counts, times and drops each instance."""

    def __init__(self, result: SpeedResult) -> None:
        self.result = result
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def take(self, data: bytes | memoryview) -> None:
        result = self.result
        if result.first_image_s is None:
            result.first_image_s = self.elapsed()
        result.images += 1
        result.bytes += len(data)
        try:
            syntax = describe_instance(data)[2]
        except ValueError:
            syntax = "?"
        result.transfer_syntaxes[syntax] = result.transfer_syntaxes.get(syntax, 0) + 1

    def headers(self) -> None:
        self.result.latency_s = self.elapsed()

    def stop(self) -> None:
        self.result.seconds = self.elapsed()


# -- the PACS ------------------------------------------------------------------------------------


def latest_study(client: PacsClient, now: datetime | None = None) -> str:
    """The most recent study of the PACS with images (C-FIND by growing date windows)."""
    today = (now or datetime.now(UTC)).date()
    for days in (*LATEST_WINDOWS_DAYS, None):
        keys = {} if days is None else {"StudyDate": f"{today - timedelta(days=days):%Y%m%d}-"}
        answers = client.find_studies(**keys)
        dated = [
            (str(a.get("StudyDate", "") or ""), str(a.get("StudyTime", "") or ""), uid)
            for a in answers
            if (uid := str(a.get("StudyInstanceUID", "") or ""))
            and str(a.get("NumberOfStudyRelatedInstances", "") or "1") not in ("0", "")
        ]
        if dated:
            return max(dated)[2]
    raise SpeedTestError(
        f"le PACS {client.settings.label} ne renvoie aucun examen : indiquez --study UID"
    )


def pacs_speedtest(
    config: Config,
    *,
    study_uid: str | None = None,
    mode: str | None = None,
    client: PacsClient | None = None,
) -> SpeedResult:
    """Retrieve a whole study from the PACS as the box does (`mode`, default `[pacs]
    retrieve`), dropping every instance. `study_uid` None: the most recent study."""
    mode = mode or config.pacs.retrieve
    if mode not in PACS_MODES:
        raise SpeedTestError(
            f"méthode « {mode} » inconnue : c-get, c-move, c-move-dcmtk ou wado-rs"
        )
    if mode == "wado-rs" and not config.pacs.dicomweb_url:
        raise SpeedTestError(
            "la méthode wado-rs demande la racine DICOMweb du PACS ([pacs] dicomweb_url)"
        )
    client = client or PacsClient(pacs_settings(config))
    try:
        uid = study_uid or latest_study(client)
        snapshot = client.snapshot(uid)
    except PacsError as exc:
        raise SpeedTestError(str(exc)) from exc
    if snapshot is None:
        raise SpeedTestError(f"examen {uid} inconnu du PACS {client.settings.label}")
    if snapshot.instance_count == 0:
        raise SpeedTestError(f"l'examen {uid} n'a aucune image dans le PACS")
    result = SpeedResult(
        "pacs", client.settings.label, mode, uid, expected_images=snapshot.instance_count
    )
    scp = _scp(config) if mode == "c-move" else None
    with tempfile.TemporaryDirectory(prefix="drimbox-speedtest-") as spool:
        storescp = _storescp(config, Path(spool)) if mode == "c-move-dcmtk" else None
        try:
            _retrieve(config, mode, client, scp, storescp, snapshot, result)
        finally:
            if scp is not None:
                scp.stop()
            if storescp is not None:
                storescp.stop()
    if result.images < snapshot.instance_count:
        result.ok = False
        result.error = (
            f"{snapshot.instance_count - result.images} image(s) de l'examen non reçue(s) "
            f"({result.images} sur {snapshot.instance_count})"
        )
    return result


def _scp(config: Config) -> StoreScp:
    p = config.pacs
    scp = StoreScp(p.calling_aet, p.scp_host, p.scp_port, senders=p.scp_calling_aets())
    try:
        scp.start()
    except (ScpError, OSError) as exc:
        raise SpeedTestError(
            f"le SCP DICOM de la DRIMbox ne peut pas écouter sur {p.scp_host}:{p.scp_port} "
            f"({exc}) : la DRIMbox tourne-t-elle sur cette machine ? Arrêtez-la le temps du "
            "test, ou mesurez en c-get / wado-rs"
        ) from exc
    return scp


def _storescp(config: Config, spool: Path) -> StoreScpProcess:
    storescp = storescp_process(config, spool)
    try:
        storescp.start()
    except (ScpError, OSError) as exc:
        raise SpeedTestError(
            f"le storescp de dcmtk ne peut pas démarrer ({exc}) : la DRIMbox tourne-t-elle "
            "sur cette machine ? Arrêtez-la le temps du test, ou mesurez en c-get / wado-rs"
        ) from exc
    return storescp


def _retrieve(
    config: Config,
    mode: str,
    client: PacsClient,
    scp: StoreScp | None,
    storescp: StoreScpProcess | None,
    snapshot: StudySnapshot,
    result: SpeedResult,
) -> None:
    try:
        retriever = build_retriever(config, mode, client, scp, storescp)
    except ValueError as exc:
        raise SpeedTestError(str(exc)) from exc
    meter = _Meter(result)
    try:
        for series in snapshot.series:
            classes = list(dict.fromkeys(i.sop_class_uid for i in series.instances))
            retriever.retrieve_series(
                snapshot.study_instance_uid, series.series_instance_uid, meter.take, classes
            )
    except PacsError as exc:
        raise SpeedTestError(str(exc)) from exc
    finally:
        meter.stop()


# -- a peer --------------------------------------------------------------------------------------


def peer_base_url(host: str) -> str:
    """`db1.exemple.fr`, `db1.exemple.fr:8443` or `https://db1.exemple.fr[:port]` → the
    peer's WADO-RS root."""
    value = host.strip().rstrip("/")
    if not value:
        raise SpeedTestError("indiquez le nom db… de la DRIMbox à mesurer")
    if "://" not in value:
        value = f"https://{value}"
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise SpeedTestError(f"adresse « {host} » invalide : nom db… ou https://nom[:port]")
    return f"https://{parts.netloc}/dicom-web-rs"


def peer_target(host: str) -> str:
    """How a peer's results are filed: its `host[:port]` (the input itself when invalid)."""
    try:
        return urlsplit(peer_base_url(host)).netloc
    except SpeedTestError:
        return host


def peer_speedtest(
    config: Config,
    host: str,
    *,
    study_uid: str | None = None,
    kos_uid: str | None = None,
    token: str = "",
    resolve: dict[str, str] | None = None,
    whitelist_refresh: bool = True,
    store: WhitelistStore | None = None,
) -> SpeedResult:
    """One WADO-RS study request to a whitelisted Source, over mutual TLS with the box's
    certificate: latency, first part, throughput. Without a study, a probe (latency only): the
    Source answers an unknown study with 401/404, which proves TLS and WADO-RS work."""
    from drimbox.conso.retrieval import RetrievalError, SourceRetriever
    from drimbox.trust.tls import PeerCheck, client_ssl_context

    if bool(study_uid) != bool(kos_uid):
        raise SpeedTestError("--study et --kos vont ensemble (l'examen et son KOS publié)")
    trust = config.trust
    if not trust.tls_cert or not trust.tls_key:
        raise SpeedTestError(
            "la DRIMbox n'a pas de certificat pour le TLS mutuel ([trust] tls_cert, tls_key)"
        )
    if store is None:
        # A command of its own: the list as the node would have it now.
        store = whitelist_store(config)
        if store is None:
            raise SpeedTestError("aucune liste blanche configurée ([trust] whitelist_source)")
        if whitelist_refresh:
            if store.revocation is not None:
                store.revocation.refresh()
            store.refresh()
    if store.current() is None:
        raise SpeedTestError(
            "aucune liste blanche valide : les échanges entre DRIMbox sont suspendus"
        )
    try:
        context = client_ssl_context(
            trust.tls_cert, trust.tls_key, trust.tls_ca or trust.anchors, trust.key_passphrase_env
        )
    except (OSError, ValueError) as exc:
        raise SpeedTestError(f"certificat de la DRIMbox illisible ({exc})") from exc
    base = peer_base_url(host)
    study = study_uid or PROBE_STUDY_UID
    url = f"{base}/studies/{study}"
    result = SpeedResult("peer", peer_target(host), "wado-rs", study_uid or "")
    retriever = SourceRetriever(
        PeerCheck(store.current, store.revocation),
        context,
        resolve=resolve,
        timeout_s=config.pacs.timeout_s * 4,
    )
    meter = _Meter(result)
    try:
        retriever.measure(url, token, kos_uid or study, meter.take, meter.headers)
    except RetrievalError as exc:
        meter.stop()
        if study_uid is None and exc.status in (400, 401, 404):
            result.note = (
                f"sonde sans examen : HTTP {exc.status}, TLS mutuel et WADO-RS fonctionnent ; "
                "--study et --kos pour mesurer le débit"
            )
            return result
        raise SpeedTestError(_peer_message(exc, bool(token))) from exc
    meter.stop()
    if study_uid is None:
        result.note = "sonde sans examen : la DRIMbox a répondu"
    elif result.images == 0:
        raise SpeedTestError("la DRIMbox source n'a renvoyé aucune image pour cet examen")
    return result


def _peer_message(exc: Any, had_token: bool) -> str:
    message = f"{exc.message}" + (f" [{exc.detail}]" if exc.detail else "")
    if exc.status == 401 and not had_token:
        message += " — indiquez un jeton (--token ou [checks] peer_token)"
    return message


# -- records -------------------------------------------------------------------------------------


_COLUMNS: Final = ("at", "kind", "target", "mode", "study_uid", "ok", "images", "bytes", "seconds",
                   "first_image_s", "latency_s", "error", "flag")  # fmt: skip


def record(db: Database, result: SpeedResult, *, slow_ratio: float = 0.5) -> SpeedResult:
    """Store `result`; flag it when its throughput (or time to first image) is far worse than
    the previous successful run of the same test (same kind, target, method)."""
    with db.session() as session:
        previous = session.scalars(
            select(SpeedTest)
            .where(
                SpeedTest.kind == result.kind,
                SpeedTest.target == result.target,
                SpeedTest.mode == result.mode,
                SpeedTest.ok.is_(True),
                SpeedTest.bytes > 0,
            )
            .order_by(SpeedTest.at.desc(), SpeedTest.id.desc())
            .limit(1)
        ).first()
        if previous is not None and result.ok and result.bytes:
            result.flag = _compare(result, previous, slow_ratio)
        row = {column: getattr(result, column) for column in _COLUMNS}
        session.add(SpeedTest(**row, transfer_syntaxes=dict(result.transfer_syntaxes)))
    return result


def _compare(result: SpeedResult, previous: SpeedTest, slow_ratio: float) -> str:
    before = previous.bytes / previous.seconds if previous.seconds > 0 else 0.0
    since = f"le {french_datetime(previous.at)}"
    if before > 0 and result.throughput_bps < before * slow_ratio:
        return (
            f"débit nettement inférieur au précédent : {french_size(result.throughput_bps)}/s "
            f"contre {french_size(before)}/s {since}"
        )
    first, prior = result.first_image_s, previous.first_image_s
    if first is not None and prior is not None and prior > 0 and first * slow_ratio > prior + 0.2:
        return (
            "première image nettement plus lente que la précédente : "
            f"{french_number(first * 1000)} ms contre {french_number(prior * 1000)} ms {since}"
        )
    return ""


def failed(
    kind: Kind, target: str, mode: str, study_uid: str, error: str | Exception
) -> SpeedResult:
    """A test that could not run, for the record (the status page shows it as such)."""
    return SpeedResult(kind, target, mode, study_uid, ok=False, error=str(error))


def latest_results(db: Database, limit: int = 20) -> list[SpeedTest]:
    """The most recent result of each test (kind, target, method), newest first."""
    with db.session() as session:
        rows = list(
            session.scalars(
                select(SpeedTest).order_by(SpeedTest.at.desc(), SpeedTest.id.desc()).limit(500)
            )
        )
    seen: set[tuple[str, str, str]] = set()
    latest: list[SpeedTest] = []
    for row in rows:
        key = (row.kind, row.target, row.mode)
        if key not in seen:
            seen.add(key)
            latest.append(row)
    return latest[:limit]
