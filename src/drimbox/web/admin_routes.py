"""The administration console (French), on the user origin, for the box's administrators only
(`[admin] users`: PSC SubjectNameIDs): reports and their publication with a retry button, the
whitelist in force, the audit trail with filters, the monthly usage statistics (ANS indicators),
the status of each dependency, the image cache with a purge button.

Owns these pages and their access rule; the data comes from the domain modules (reports, outbox,
trust store, audit, status checks) — nothing here changes them except through their own
functions (`retry_report`, the cache's purge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from drimbox.config import Config
from drimbox.db import Database, DmpJob, Report, SpeedTest, row_id
from drimbox.dicom.cache import SeriesCache
from drimbox.french import PARIS, french_month
from drimbox.ops.speedtest import (
    SpeedResult,
    SpeedTestError,
    failed,
    latest_results,
    peer_speedtest,
    peer_target,
    record,
)
from drimbox.ops.stats import day_range, monthly, months_back
from drimbox.source.retry import ReportNotFound, RetryError, retry_report
from drimbox.trust import audit
from drimbox.trust.store import WhitelistStore
from drimbox.trust.tally import AccessTally
from drimbox.web.labels import (
    AUDIT_RESULTS,
    AUDIT_ROLES,
    REPORT_KINDS,
    REPORT_STATES,
    action_label,
    label,
)
from drimbox.web.pages import french_datetime, french_number, french_size, message, render
from drimbox.web.sessions import DbSessionStore, SessionView
from drimbox.web.status import CHECKS, StatusSources
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE

SOURCE_NAV: Final = ("/admin/comptes-rendus", "Comptes rendus")
RETRYABLE = {"refused", "parked"}
CHECK_LABELS: Final = {"pacs": "PACS", "dmp": "DMP", "whitelist": "Liste blanche",
                       "revocation": "Révocation (CRL)",
                       "certificates": "Certificats", "outbox": "File d'envoi au DMP",
                       "work": "Travail en cours", "cache": "Cache d'images"}  # fmt: skip
SOURCE_CHECKS: Final = frozenset({"outbox", "work"})


def admin_nav(config: Config) -> list[tuple[str, str]]:
    """The console's sections: the Source's only on a node with the Source role."""
    nav = [("/admin", "État")]
    if config.roles.source:
        nav.append(SOURCE_NAV)
    nav += [("/admin/liste-blanche", "Liste blanche"), ("/admin/audit", "Traces"),
            ("/admin/statistiques", "Statistiques"), ("/admin/cache", "Cache")]  # fmt: skip
    return nav


# A report number as the databases store it (PostgreSQL integer): anything else is a 400, not a
# database error.


def purge_message(series: int, nbytes: int) -> str:
    if not series:
        return "Cache vidé : il ne contenait aucune série."
    return (
        f"Cache vidé : {french_number(series)} série{'s' if series > 1 else ''} "
        f"supprimée{'s' if series > 1 else ''}, {french_size(nbytes)} libérés."
    )


def speed_rows(results: list[SpeedTest]) -> list[dict[str, Any]]:
    """The last result of each speed test (`drimbox pacs|peer speedtest`), with its date; a
    failed one, or one far below the previous, stands out."""
    rows = []
    for r in results:
        rate = r.bytes / r.seconds if r.seconds > 0 and r.bytes else 0.0
        figures = []
        if r.latency_s is not None:
            figures.append(f"latence {french_number(r.latency_s * 1000)} ms")
        if r.first_image_s is not None:
            figures.append(f"1re image {french_number(r.first_image_s * 1000)} ms")
        if r.images:
            figures.append(f"{french_number(r.images)} images, {french_size(r.bytes)}, "
                           f"{french_size(rate)}/s")  # fmt: skip
        rows.append({
            "at": french_datetime(r.at), "to": "PACS" if r.kind == "pacs" else "DRIMbox",
            "target": r.target, "mode": r.mode, "figures": ", ".join(figures),
            "verdict": "failed" if not r.ok else "dropping" if r.flag else "ok",
            "why": r.error if not r.ok else r.flag or "",
        })  # fmt: skip
    return rows


def run_peer_speedtest(
    config: Config,
    host: str,
    study: str,
    kos: str,
    token: str,
    whitelist: WhitelistStore | None,
) -> SpeedResult:
    """The test, or the record of why it could not run."""
    try:
        return peer_speedtest(config, host, study_uid=study or None, kos_uid=kos or None,
                              token=token, store=whitelist)  # fmt: skip
    except SpeedTestError as exc:
        return failed("peer", peer_target(host), "wado-rs", study, exc)


class _Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _reason(detail: Any) -> str:
    """The French reason an event carries (`reason`: a sentence or a list of them), or ""."""
    reason = detail.get("reason", "") if isinstance(detail, dict) else ""
    return " ; ".join(map(str, reason)) if isinstance(reason, list) else str(reason)


def _volume(event: dict[str, Any]) -> str:
    """Bytes served, and the requests an aggregated image access event sums."""
    size = french_size(event["bytes"]) if event["bytes"] is not None else ""
    requests = event["detail"].get("requests") if isinstance(event["detail"], dict) else None
    if not requests:
        return size
    return f"{size} ({french_number(requests)} requête{'s' if requests > 1 else ''})"


def admin_router(
    config: Config,
    db: Database,
    sessions: DbSessionStore,
    *,
    status: StatusSources,
    whitelist: WhitelistStore | None,
    cache: SeriesCache | None,
    access_token: Callable[[str], str | None] | None = None,
    tally: AccessTally | None = None,
) -> APIRouter:
    """`access_token`: the signed-in operator's PSC access token (kept fresh) from the session
    cookie, for the peer speed test run from the status page. `tally`: the node's count of
    image accesses, written before the audit page is shown (it is up to date)."""
    router = APIRouter()
    admins = set(config.admin.users)
    nav = admin_nav(config)

    def admin(request: Request) -> SessionView:
        view = sessions.view(request.cookies.get(SESSION_COOKIE, ""))
        if view is None:
            target = request.url.path
            raise _Denied(
                RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': target})}", status_code=303)
            )
        if view.subject_name_id not in admins:
            raise _Denied(
                message(
                    request,
                    "Accès refusé",
                    "La console d'administration est réservée aux administrateurs de cette "
                    "DRIMbox ([admin] users).",
                    status=403,
                    user=view.display_name,
                )
            )
        return view

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
            raise _Denied(message(request, "Requête refusée", "Origine inattendue.", status=403))

    def page(request: Request, view: SessionView, template: str, title: str,
             **context: Any) -> Response:  # fmt: skip
        return render(request, template, title=title, nav=nav, user=view.display_name, **context)

    @router.get("/admin")
    async def dashboard(request: Request) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        names = [n for n in CHECKS if config.roles.source or n not in SOURCE_CHECKS]
        results = await asyncio.gather(*(asyncio.to_thread(CHECKS[name], status) for name in names))
        checks = [
            {"label": CHECK_LABELS[name], "ok": result.get("ok"),
             "warning": result.get("warning", False), "message": result.get("message", "")}
            for name, result in zip(names, results, strict=True)
        ]  # fmt: skip
        speeds = speed_rows(await asyncio.to_thread(latest_results, db))
        return page(request, view, "admin/dashboard.html", "État de la DRIMbox", checks=checks,
                    speeds=speeds, notice=request.query_params.get("message"),
                    peers=whitelist_peers())  # fmt: skip

    def whitelist_peers() -> list[str]:
        current = whitelist.current() if whitelist is not None else None
        own = urlsplit(config.site.public_base_url).hostname or ""
        return [d.db for d in current.domains if d.db != own] if current is not None else []

    @router.post("/admin/debit")
    async def peer_speed(request: Request) -> Response:
        """A peer speed test with the operator's own PSC token (`drimbox peer speedtest`)."""
        try:
            view = admin(request)
            same_origin(request)
        except _Denied as denied:
            return denied.response
        form = await request.form()
        host, study, kos = (str(form.get(name, "") or "").strip()
                            for name in ("hote", "examen", "kos"))  # fmt: skip
        cookie = request.cookies.get(SESSION_COOKIE, "")
        token = await asyncio.to_thread(access_token, cookie) if access_token else None
        if not host:
            text = "Indiquez le nom db… de la DRIMbox à mesurer."
        elif not token:
            text = "Votre connexion Pro Santé Connect a expiré : reconnectez-vous puis relancez."
        else:
            result = await asyncio.to_thread(
                run_peer_speedtest, config, host, study, kos, token, whitelist
            )

            def keep() -> None:
                record(db, result, slow_ratio=config.checks.slow_ratio)
                audit.record(db, actor=view.subject_name_id, role="operator",
                             action="peer_speedtest", result="ok" if result.ok else "error",
                             remote=result.target)  # fmt: skip

            await asyncio.to_thread(keep)
            text = (f"Test de débit vers {result.target} : "
                    + (result.error or result.flag or "réussi"))  # fmt: skip
        return RedirectResponse(f"/admin?{urlencode({'message': text})}", status_code=303)

    @router.get("/admin/comptes-rendus")
    def reports(request: Request, etat: str | None = None, message: str | None = None) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        with db.session() as session:
            query = select(Report).order_by(Report.id.desc()).limit(200)
            if etat:
                query = query.where(Report.state == etat)
            rows_db = list(session.scalars(query))
            jobs = {
                job.report_id: job
                for job in session.scalars(
                    select(DmpJob).where(DmpJob.report_id.in_([r.id for r in rows_db]))
                )
            }
        rows = []
        for report in rows_db:
            job = jobs.get(report.id)
            detail = report.reason or ""
            if job is not None and job.last_error and job.state != "done":
                detail = f"{detail} — dernier essai : {job.last_error}".strip(" —")
            rows.append({
                "id": report.id, "received": french_datetime(report.received_at),
                "kind": label(REPORT_KINDS, report.kind), "ins": report.patient_ins,
                "accession": report.accession, "state": label(REPORT_STATES, report.state),
                "detail": detail, "dmp_entry": report.dmp_entry_uuid,
                "retry_url": f"/admin/comptes-rendus/{report.id}/relancer"
                if report.state in RETRYABLE else "",
            })  # fmt: skip
        # The page lists patients' INS: who looked at which list is in the trail.
        audit.record(db, actor=view.subject_name_id, role="operator", action="admin_reports_view",
                     result="ok", remote=request.client.host if request.client else "",
                     rows=len(rows), state=etat or "")  # fmt: skip
        return page(request, view, "admin/reports.html", "Comptes rendus et publication",
                    reports=rows, states=list(REPORT_STATES.items()), selected=etat,
                    notice=message)  # fmt: skip

    @router.post("/admin/comptes-rendus/{report_id}/relancer")
    def retry(request: Request, report_id: str) -> Response:
        try:
            view = admin(request)
            same_origin(request)
        except _Denied as denied:
            return denied.response
        number = row_id(report_id)
        if number is None:
            return message(request, "Compte rendu introuvable",
                           f"Aucun compte rendu n°{report_id[:24]}.", status=404,
                           user=view.display_name)  # fmt: skip
        result: audit.Result = "ok"
        try:
            text = f"Compte rendu n°{number} : {retry_report(db, number)}"
        except ReportNotFound as exc:
            audit.record(db, actor=view.subject_name_id, role="operator", action="report_retry",
                         result="error", report_id=number, reason=str(exc))  # fmt: skip
            return message(request, "Compte rendu introuvable", f"Aucun compte rendu n°{number}.",
                           status=404, user=view.display_name)  # fmt: skip
        except RetryError as exc:
            text = f"Compte rendu n°{number} : {exc}"
            result = "refused"
        audit.record(db, actor=view.subject_name_id, role="operator", action="report_retry",
                     result=result, report_id=number, reason=text)  # fmt: skip
        target = f"/admin/comptes-rendus?{urlencode({'message': text})}"
        return RedirectResponse(target, status_code=303)

    @router.get("/admin/liste-blanche")
    def whitelist_page(request: Request) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        title = "Liste blanche DRIM-M"
        if whitelist is None:
            return page(request, view, "admin/whitelist.html", title, configured=False)
        current = whitelist.current()
        refusals = [[french_datetime(r.at), r.message] for r in reversed(list(whitelist.refusals))]
        shown = None
        if current is not None:
            signer = current.signer
            shown = {
                "generated": french_datetime(current.generated_at),
                "count": len(current.domains),
                "refreshed": french_datetime(whitelist.last_refresh),
                "signer": signer.subject,
                "not_before": french_datetime(signer.not_before),
                "not_after": french_datetime(signer.not_after),
                "domains": [[d.identifier, d.db, d.vi, d.name, d.operator_dn,
                             french_datetime(d.updated_at)] for d in current.domains],
            }  # fmt: skip
        return page(request, view, "admin/whitelist.html", title, configured=True,
                    current=shown, refusals=refusals)  # fmt: skip

    @router.get("/admin/audit")
    def audit_page(
        request: Request,
        patient: str | None = None,
        utilisateur: str | None = None,
        depuis: str | None = None,
    ) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        if tally is not None:
            tally.flush(everything=True)
        since = None
        if depuis:
            try:
                since = datetime.fromisoformat(depuis).replace(tzinfo=PARIS)
            except ValueError:
                since = None
        events: list[dict[str, Any]] = audit.events(
            db, since=since, patient_ins=patient or None, actor=utilisateur or None
        )[-500:]
        rows = [
            [french_datetime(ev["at"]), ev["actor"], label(AUDIT_ROLES, ev["role"]),
             action_label(ev["action"]), label(AUDIT_RESULTS, ev["result"]), ev["patient_ins"],
             ev["study_uid"], _volume(ev),
             _reason(ev["detail"]), ev["node"]]
            for ev in reversed(events)
        ]  # fmt: skip
        audit.record(db, actor=view.subject_name_id, role="operator", action="admin_audit_view",
                     result="ok", patient_ins=patient or "",
                     remote=request.client.host if request.client else "",
                     rows=len(rows), user_filter=utilisateur or "",
                     since=depuis or "")  # fmt: skip
        return page(request, view, "admin/audit.html", "Traces d'accès", events=rows,
                    patient=patient, actor=utilisateur, since=depuis)  # fmt: skip

    @router.get("/admin/statistiques")
    def stats_page(request: Request) -> Response:
        """The last twelve months' usage figures (`drimbox stats export --mensuel`)."""
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        today = datetime.now(PARIS).date()
        start, end = day_range(months_back(today, 12), today)
        rows = [[french_month(m.month), *map(french_number, m.counts())]
                for m in reversed(monthly(db, start, end))]  # fmt: skip
        return page(request, view, "admin/stats.html", "Statistiques d'usage", months=rows)

    @router.get("/admin/cache")
    def cache_page(request: Request, message: str | None = None) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        usage = cache.usage() if cache is not None else None
        return page(request, view, "admin/cache.html", "Cache d'images", usage=usage,
                    notice=message)  # fmt: skip

    @router.post("/admin/cache/purger")
    def purge(request: Request) -> Response:
        try:
            view = admin(request)
            same_origin(request)
        except _Denied as denied:
            return denied.response
        if cache is None:
            return RedirectResponse("/admin/cache", status_code=303)
        result = cache.purge()
        audit.record(db, actor=view.subject_name_id, role="operator", action="cache_purge",
                     result="ok", series=result.series, nbytes=result.bytes)  # fmt: skip
        text = purge_message(result.series, result.bytes)
        return RedirectResponse(f"/admin/cache?{urlencode({'message': text})}", status_code=303)

    return router
