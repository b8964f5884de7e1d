"""The box's health: `/health` for load balancers (the process answers) and `/status` (the
"météo": version, roles, node name, and a real check of each dependency — PACS C-ECHO, DMP
reachability over its TLS, whitelist validity and age, the CRLs (a stale one is a warning), the
expiry of the box's certificates (a warning `[trust] expiry_warning_days` ahead), outbox depth,
the work waiting or leased and the age of the oldest, cache use).

Owns what is reported and the French wording of problems, and who may read it. Neither route
holds patient data (`PUBLIC_PATHS`: no PSC token), but `/status` names the site's dependencies,
addresses and errors: it answers only local monitoring (`[http] status_allow`, loopback by
default) and the DRIMboxes of the whitelist (their TLS certificate, checked as for WADO-RS);
anyone else gets 403. `/health` says "ok" and nothing else, for load balancers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from drimbox import __version__
from drimbox.config import Config
from drimbox.db import Database, DmpJob, JobState, Report, ReportState, aware, utcnow
from drimbox.dicom.cache import SeriesCache
from drimbox.dicom.pacs import PacsClient, PacsError
from drimbox.french import french_size
from drimbox.http.tlspolicy import client_context
from drimbox.source.outbox import DUE as JOB_DUE
from drimbox.source.pipeline import DUE_STATES as REPORT_DUE
from drimbox.trust.keys import configured_certificates
from drimbox.trust.store import WhitelistStore
from drimbox.trust.tls import PeerCheck, PeerRefused, peer_certificate_from_scope

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/status"})
CHECK_TIMEOUT_S = 5.0
MIN_FREE_BYTES = 512 * 1024**2


def allowed(
    client: str | None, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """The client address is in one of `networks` (an IPv4-mapped IPv6 address as IPv4)."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass
class StatusSources:
    config: Config
    db: Database
    pacs: PacsClient | None = None
    whitelist: WhitelistStore | None = None
    cache: SeriesCache | None = None
    dmp_http: httpx.Client | None = None  # with the site's TLS material


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = check()
    result["ms"] = round((time.perf_counter() - started) * 1000)
    return result


def check_pacs(sources: StatusSources) -> dict[str, Any]:
    if sources.pacs is None:
        return {"ok": None, "message": "PACS non utilisé par ce nœud"}
    try:
        sources.pacs.echo()
    except PacsError as exc:
        return {"ok": False, "message": str(exc)}
    return {"ok": True, "message": f"C-ECHO réussi ({sources.pacs.settings.label})"}


def check_dmp(sources: StatusSources) -> dict[str, Any]:
    base = sources.config.dmp.base_url
    if not base:
        return {"ok": None, "message": "DMP non configuré ([dmp] base_url)"}
    client = sources.dmp_http or httpx.Client(timeout=CHECK_TIMEOUT_S, verify=client_context())
    try:
        # Any HTTP answer proves the DMP is reachable through our TLS; a SOAP service answers a
        # GET with an error page, which is fine here.
        response = client.get(f"{base}/registry", timeout=CHECK_TIMEOUT_S)
        return {
            "ok": True,
            "message": "DMP joignable : le service répond",
            "http_status": response.status_code,
        }
    except httpx.TimeoutException:
        return {"ok": False, "message": "DMP injoignable : pas de réponse dans le délai"}
    except httpx.ConnectError as exc:
        return {"ok": False, "message": "DMP injoignable : connexion impossible "
                f"(adresse, pare-feu ou certificat) — {exc}"}  # fmt: skip
    except httpx.HTTPError as exc:
        return {"ok": False, "message": f"DMP injoignable : {exc}"}
    finally:
        if sources.dmp_http is None:
            client.close()


def check_whitelist(sources: StatusSources) -> dict[str, Any]:
    store = sources.whitelist
    if store is None:
        return {"ok": None, "message": "aucune liste blanche configurée ([trust])"}
    current = store.current()
    refusals = [{"at": r.at.isoformat(), "message": r.message} for r in list(store.refusals)[-5:]]
    if current is None:
        return {"ok": False, "message": "aucune liste blanche valide", "refusals": refusals}
    age = store.age()
    return {
        "ok": True,
        "message": f"{len(current.domains)} DRIMbox dans la liste",
        "generated_at": current.generated_at.isoformat(),
        "age_h": round(age.total_seconds() / 3600, 1) if age else None,
        "last_refresh": store.last_refresh.isoformat() if store.last_refresh else None,
        "refusals": refusals,
    }


def check_revocation(sources: StatusSources) -> dict[str, Any]:
    """The CRLs followed: a stale or unreachable one is a warning (peers are still checked
    against the last CRL held), not a failure."""
    store = sources.whitelist.revocation if sources.whitelist is not None else None
    if store is None:
        return {"ok": None, "message": "aucune liste blanche configurée ([trust])"}
    held = store.sources
    if not held:
        return {"ok": True, "warning": True,
                "message": "révocation non vérifiée : aucune liste de révocation (CRL) configurée "
                "([trust] crl_urls) ni indiquée par les certificats"}  # fmt: skip
    problems = store.problems()
    rows = [
        {
            "source": source.location,
            "next_update": (
                source.crl.next_update_utc.isoformat()
                if source.crl is not None and source.crl.next_update_utc
                else None
            ),
            "revoked": len(source.crl) if source.crl is not None else None,
            "fetched_at": source.fetched_at.isoformat() if source.fetched_at else None,
            "error": source.error or None,
        }
        for source in held
    ]
    current = len(held) - len(problems)
    message = f"{current} liste(s) de révocation à jour sur {len(held)}"
    if problems:
        message += " — " + " ; ".join(problems)
    refreshed = store.last_refresh.isoformat() if store.last_refresh else None
    return {"ok": True, "warning": bool(problems), "message": message, "crls": rows,
            "last_refresh": refreshed}  # fmt: skip


def check_certificates(sources: StatusSources) -> dict[str, Any]:
    """The box's own certificates: an expired or unreadable one is a failure, one expiring
    within `[trust] expiry_warning_days` a warning."""
    now = datetime.now(UTC)
    ahead = sources.config.trust.expiry_warning_days
    found = configured_certificates(sources.config)
    if not found:
        return {"ok": None, "message": "aucun certificat configuré"}
    rows: list[dict[str, Any]] = []
    expired: list[str] = []
    soon: list[str] = []
    for label, certificate in found:
        if isinstance(certificate, str):
            expired.append(f"{label} : {certificate}")
            rows.append({"certificate": label, "error": certificate})
            continue
        days = (certificate.not_valid_after_utc - now).total_seconds() / 86400
        until = f"{certificate.not_valid_after_utc:%d/%m/%Y}"
        if days < 0:
            expired.append(f"{label} expiré depuis le {until}")
        elif days < ahead:
            soon.append(f"{label} expire le {until} (dans {int(days)} jour(s))")
        rows.append({"certificate": label, "subject": certificate.subject.rfc4514_string(),
                     "not_after": certificate.not_valid_after_utc.isoformat(),
                     "days_left": round(days, 1)})  # fmt: skip
    if expired or soon:
        message = " ; ".join([*expired, *soon]) + " — à renouveler"
    else:
        message = f"{len(rows)} certificat(s) valide(s) plus de {ahead} jours"
    return {"ok": not expired, "warning": bool(soon), "message": message, "certificates": rows}


def check_outbox(sources: StatusSources) -> dict[str, Any]:
    with sources.db.session() as session:
        rows = session.execute(select(DmpJob.state, func.count()).group_by(DmpJob.state)).all()
    counts = {state: count for state, count in rows}
    waiting = counts.get(JobState.QUEUED.value, 0) + counts.get(JobState.RETRYING.value, 0)
    parked = counts.get(JobState.PARKED.value, 0)
    message = f"{waiting} envoi(s) en attente, {parked} bloqué(s)"
    return {"ok": parked == 0, "message": message, "waiting": waiting, "parked": parked}


@dataclass
class WorkQueue:
    """Due rows of one table: waiting for a node, leased (by node), leases lapsed, the oldest."""

    waiting: int = 0
    leased: int = 0
    lapsed: int = 0  # held by a node that stopped renewing: taken over at the next poll
    oldest_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "leased": self.leased, "lapsed_leases": self.lapsed,
                "oldest_s": self.oldest_s}  # fmt: skip


def work_queues(db: Database) -> tuple[WorkQueue, WorkQueue, int, dict[str, int]]:
    """The reports and DMP jobs waiting or leased, the reports waiting for their images (not
    stuck: they wait for the PACS), and the leases held per node."""
    now = utcnow()
    queues: list[WorkQueue] = []
    by_node: dict[str, int] = {}
    waiting_images = 0
    with db.session() as session:
        for model, states, since in (
            (Report, REPORT_DUE, Report.received_at),
            (DmpJob, JOB_DUE, DmpJob.created_at),
        ):
            held = model.next_attempt_at > now
            rows = session.execute(
                select(model.state, model.leased_by, held, func.count(), func.min(since))
                .where(model.state.in_(states))
                .group_by(model.state, model.leased_by, held)
            ).all()
            queue = WorkQueue()
            for state, leased_by, is_held, count, oldest in rows:
                if state == ReportState.WAITING_IMAGES.value:
                    waiting_images += count
                    continue
                if leased_by and is_held:
                    queue.leased += count
                    by_node[leased_by] = by_node.get(leased_by, 0) + count
                else:
                    queue.waiting += count
                    queue.lapsed += count if leased_by else 0
                age = round((now - aware(oldest)).total_seconds(), 1)
                queue.oldest_s = max(queue.oldest_s or 0.0, age)
            queues.append(queue)
    return queues[0], queues[1], waiting_images, by_node


def check_work(sources: StatusSources) -> dict[str, Any]:
    reports, jobs, waiting_images, by_node = work_queues(sources.db)
    limit = sources.config.source.stale_work_s
    oldest = max(reports.oldest_s or 0.0, jobs.oldest_s or 0.0)
    stale = oldest > limit
    message = (
        f"{reports.waiting + reports.leased} CR et {jobs.waiting + jobs.leased} envoi(s) au DMP "
        f"en cours, {waiting_images} CR en attente d'images"
    )
    if stale:
        message = f"travail en attente depuis {oldest:.0f} s (seuil {limit:g} s) — " + message
    return {
        "ok": not stale,
        "message": message,
        "reports": reports.as_dict(),
        "jobs": jobs.as_dict(),
        "waiting_images": waiting_images,
        "leased_by": by_node,
        "stale_after_s": limit,
    }


def check_cache(sources: StatusSources) -> dict[str, Any]:
    if sources.cache is None:
        return {"ok": None, "message": "pas de cache d'images sur ce nœud"}
    usage = sources.cache.usage()
    disk = shutil.disk_usage(sources.cache.directory)
    # The disk, not only our own limit: other files may fill the volume the cache lives on.
    disk_full = disk.free < MIN_FREE_BYTES or disk.free < disk.total // 50
    message = f"{french_size(usage.bytes)} sur {french_size(usage.max_bytes)}"
    if disk_full:
        message = f"disque du cache presque plein ({french_size(disk.free)} libres) — " + message
    return {
        "ok": not disk_full,
        "message": message,
        "disk_free_bytes": disk.free,
        "bytes": usage.bytes,
        "max_bytes": usage.max_bytes,
        "series": usage.series,
    }


CHECKS = {
    "pacs": check_pacs,
    "dmp": check_dmp,
    "whitelist": check_whitelist,
    "revocation": check_revocation,
    "certificates": check_certificates,
    "outbox": check_outbox,
    "work": check_work,
    "cache": check_cache,
}


def _status_reader(sources: StatusSources, request: Request) -> str | None:
    """Why this client may not read /status (French), or None when it may."""
    client = request.client.host if request.client else None
    networks = [ipaddress.ip_network(n, strict=False) for n in sources.config.http.status_allow]
    if allowed(client, networks):
        return None
    store = sources.whitelist
    certificate = peer_certificate_from_scope(request.scope)
    if store is not None and certificate is not None:
        try:
            PeerCheck(store.current, store.revocation).check_incoming(certificate)
        except PeerRefused as refused:
            return refused.message
        return None
    return (
        f"accès refusé : {client} n'est ni une DRIMbox de la liste blanche ni dans "
        "[http] status_allow"
    )


def status_router(sources: StatusSources) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/status")
    async def status(request: Request) -> JSONResponse:
        refused = _status_reader(sources, request)
        if refused is not None:
            log.warning("/status refused to %s: %s", request.client, refused)
            return JSONResponse({"status": 403, "erreur": refused}, status_code=403)
        names = list(CHECKS)
        results = await asyncio.gather(
            *(asyncio.to_thread(_timed, lambda c=CHECKS[n]: c(sources)) for n in names)
        )
        checks = dict(zip(names, results, strict=True))
        failing = [name for name, result in checks.items() if result.get("ok") is False]
        warnings = [name for name, result in checks.items() if result.get("warning")]
        roles = [name for name, on in sources.config.roles.model_dump().items() if on]
        body = {
            "version": __version__,
            "roles": roles,
            "site": sources.config.site.name,
            "node": sources.config.node.name,
            "time": datetime.now(UTC).isoformat(),
            "status": "dégradé" if failing else "ok",
            "failing": failing,
            "warnings": warnings,
            "checks": checks,
        }
        return JSONResponse(body, status_code=200)

    return router
