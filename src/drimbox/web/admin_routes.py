"""The administration console (French), on the user origin, for the box's administrators only
(`[admin] users`: PSC SubjectNameIDs): reports and their publication with a retry button, the
whitelist in force, the audit trail with filters, the status of each dependency, the image cache
with a purge button.

Owns these pages and their access rule; the data comes from the domain modules (reports, outbox,
trust store, audit, status checks) — nothing here changes them except through their own
functions (`retry_report`, the cache's purge).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select

from drimbox.config import Config
from drimbox.db import Database, DmpJob, Report, SpeedTest
from drimbox.dicom.cache import SeriesCache
from drimbox.ops.speedtest import latest_results
from drimbox.source.retry import RetryError, retry_report
from drimbox.trust import audit
from drimbox.trust.store import WhitelistStore
from drimbox.web.pages import esc as e
from drimbox.web.pages import french_datetime, layout, table
from drimbox.web.sessions import DbSessionStore, SessionView
from drimbox.web.status import CHECKS, StatusSources
from drimbox.web.viewer import LOGIN_PATH, SESSION_COOKIE

NAV = (
    ("/admin", "État"),
    ("/admin/comptes-rendus", "Comptes rendus"),
    ("/admin/liste-blanche", "Liste blanche"),
    ("/admin/audit", "Traces"),
    ("/admin/cache", "Cache"),
)
STATE_LABELS = {
    "received": "reçu",
    "waiting_images": "attente des images",
    "publishing": "publication en cours",
    "published": "publié au DMP",
    "refused": "refusé",
    "parked": "bloqué par le DMP",
    "replaced": "remplacé",
    "withdrawn": "dépublié",
    "withdrawal_received": "dépublication reçue",
    "applied": "dépublication faite",
    "not_for_dmp": "non destiné au DMP",
    "superseded": "version dépassée",
}
RETRYABLE = {"refused", "parked"}


def speed_table(results: list[SpeedTest]) -> str:
    """The last result of each speed test (`drimbox pacs|peer speedtest`), with its date; a
    failed one, or one far below the previous, stands out."""
    rows = []
    for r in results:
        rate = r.bytes / r.seconds if r.seconds > 0 and r.bytes else 0.0
        figures = []
        if r.latency_s is not None:
            figures.append(f"latence {r.latency_s * 1000:.0f} ms")
        if r.first_image_s is not None:
            figures.append(f"1re image {r.first_image_s * 1000:.0f} ms")
        if r.images:
            figures.append(f"{r.images} images, {r.bytes / 1e6:.1f} Mo, {rate / 1e6:.1f} Mo/s")
        if not r.ok:
            verdict = f'<span class="ko">ÉCHEC</span> {e(r.error)}'
        elif r.flag:
            verdict = f'<span class="ko">EN BAISSE</span> {e(r.flag)}'
        else:
            verdict = '<span class="ok">OK</span>'
        rows.append([
            e(french_datetime(r.at)), e("PACS" if r.kind == "pacs" else "DRIMbox"),
            e(r.target), e(r.mode), e(", ".join(figures)), verdict,
        ])  # fmt: skip
    return table(
        ["Le", "Vers", "Cible", "Méthode", "Mesure", "Résultat"],
        rows,
        empty="Aucun test de débit : drimbox pacs speedtest, drimbox peer speedtest.",
    )


class _Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def admin_router(
    config: Config,
    db: Database,
    sessions: DbSessionStore,
    *,
    status: StatusSources,
    whitelist: WhitelistStore | None,
    cache: SeriesCache | None,
) -> APIRouter:
    router = APIRouter()
    admins = set(config.admin.users)

    def admin(request: Request) -> SessionView:
        view = sessions.view(request.cookies.get(SESSION_COOKIE, ""))
        if view is None:
            target = request.url.path
            raise _Denied(
                RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': target})}", status_code=303)
            )
        if view.subject_name_id not in admins:
            raise _Denied(
                layout(
                    "Accès refusé",
                    "<p>La console d'administration est réservée aux administrateurs de cette "
                    "DRIMbox (<code>[admin] users</code>).</p>",
                    status=403,
                    user=view.display_name,
                )
            )
        return view

    def same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != str(request.base_url).rstrip("/"):
            raise _Denied(layout("Requête refusée", "<p>Origine inattendue.</p>", status=403))

    def page(view: SessionView, title: str, body: str, status_code: int = 200) -> Response:
        return layout(title, body, status=status_code, nav=NAV, user=view.display_name)

    @router.get("/admin")
    async def dashboard(request: Request) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        names = list(CHECKS)
        results = await asyncio.gather(*(asyncio.to_thread(CHECKS[name], status) for name in names))
        labels = {"pacs": "PACS", "dmp": "DMP", "whitelist": "Liste blanche",
                  "outbox": "File d'envoi au DMP", "cache": "Cache d'images"}  # fmt: skip
        rows = []
        for name, result in zip(names, results, strict=True):
            ok = result.get("ok")
            verdict = (
                '<span class="ok">OK</span>' if ok else
                '<span class="ko">PROBLÈME</span>' if ok is False else
                '<span class="muted">non utilisé</span>'
            )  # fmt: skip
            rows.append([e(labels[name]), verdict, e(result.get("message", ""))])
        body = table(["Service", "État", "Détail"], rows, empty="")
        body += "<h2>Derniers tests de débit</h2>" + speed_table(
            await asyncio.to_thread(latest_results, db)
        )
        return page(view, "État de la DRIMbox", body)

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
            action = ""
            if report.state in RETRYABLE:
                action = (
                    f'<form class="inline" method="post" '
                    f'action="/admin/comptes-rendus/{report.id}/relancer">'
                    f'<button type="submit">Relancer</button></form>'
                )
            rows.append([
                e(report.id), e(french_datetime(report.received_at)), e(report.kind),
                e(report.patient_ins), e(report.accession),
                e(STATE_LABELS.get(report.state, report.state)),
                e(detail) + (f"<br><span class='muted'>DMP {e(report.dmp_entry_uuid)}</span>"
                             if report.dmp_entry_uuid else ""),
                action,
            ])  # fmt: skip
        options = "".join(
            f'<option value="{e(k)}"{" selected" if k == etat else ""}>{e(v)}</option>'
            for k, v in STATE_LABELS.items()
        )
        notice = f'<p class="note">{e(message)}</p>' if message else ""
        body = (
            notice + '<form method="get"><label for="etat">État</label>'
            f'<select id="etat" name="etat"><option value="">tous</option>{options}</select> '
            '<button type="submit">Filtrer</button></form><br>'
            + table(["N°", "Reçu le", "Type", "INS", "N° d'accès", "État", "Détail", ""], rows,
                    empty="Aucun compte rendu.")
        )  # fmt: skip
        return page(view, "Comptes rendus et publication", body)

    @router.post("/admin/comptes-rendus/{report_id}/relancer")
    def retry(request: Request, report_id: int) -> Response:
        try:
            view = admin(request)
            same_origin(request)
        except _Denied as denied:
            return denied.response
        try:
            message = f"Compte rendu n°{report_id} : {retry_report(db, report_id)}"
        except RetryError as exc:
            message = f"Compte rendu n°{report_id} : {exc}"
        audit.record(db, actor=view.subject_name_id, role="operator", action="report_retry",
                     result="ok", report_id=report_id)  # fmt: skip
        target = f"/admin/comptes-rendus?{urlencode({'message': message})}"
        return RedirectResponse(target, status_code=303)

    @router.get("/admin/liste-blanche")
    def whitelist_page(request: Request) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        if whitelist is None:
            return page(view, "Liste blanche", "<p>Aucune liste blanche configurée.</p>")
        current = whitelist.current()
        refusals = [
            [e(french_datetime(r.at)), e(r.message)] for r in reversed(list(whitelist.refusals))
        ]
        parts = []
        if current is None:
            parts.append('<p class="ko">Aucune liste valide : aucun pair n\'est admis.</p>')
        else:
            signer = current.signer
            parts.append(
                '<div class="card">'
                f"<p>Générée le {e(french_datetime(current.generated_at))} — "
                f"{len(current.domains)} DRIMbox — dernière mise à jour "
                f"{e(french_datetime(whitelist.last_refresh))}</p>"
                f"<p>Signataire : {e(signer.subject)}<br>"
                f"Valide du {e(french_datetime(signer.not_before))} "
                f"au {e(french_datetime(signer.not_after))}</p></div>"
            )
            parts.append(table(
                ["Id", "Nom db", "Nom vi", "Dénomination", "DN du certificat", "Mise à jour"],
                ([e(d.identifier), e(d.db), e(d.vi), e(d.name), e(d.operator_dn),
                  e(french_datetime(d.updated_at))] for d in current.domains),
                empty="",
            ))  # fmt: skip
        parts.append("<h2>Listes refusées</h2>")
        parts.append(table(["Le", "Motif"], refusals, empty="Aucune liste refusée."))
        return page(view, "Liste blanche DRIM-M", "".join(parts))

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
        since = None
        if depuis:
            try:
                since = datetime.fromisoformat(depuis).astimezone()
            except ValueError:
                since = None
        events: list[dict[str, Any]] = audit.events(
            db, since=since, patient_ins=patient or None, actor=utilisateur or None
        )[-500:]
        rows = [
            [e(french_datetime(ev["at"])), e(ev["actor"]), e(ev["role"]), e(ev["action"]),
             e(ev["result"]), e(ev["patient_ins"]), e(ev["study_uid"]),
             e(ev["bytes"] if ev["bytes"] is not None else "")]
            for ev in reversed(events)
        ]  # fmt: skip
        form = (
            '<form method="get"><label for="patient">INS patient</label>'
            f'<input id="patient" name="patient" value="{e(patient)}"> '
            '<label for="utilisateur">Utilisateur</label>'
            f'<input id="utilisateur" name="utilisateur" value="{e(utilisateur)}"> '
            '<label for="depuis">Depuis</label>'
            f'<input id="depuis" name="depuis" type="date" value="{e(depuis)}"> '
            '<button type="submit">Filtrer</button></form><br>'
        )
        headers = ["Le", "Qui", "Rôle", "Action", "Résultat", "INS", "Examen", "Octets"]
        return page(view, "Traces d'accès", form + table(headers, rows, empty="Aucune trace."))

    @router.get("/admin/cache")
    def cache_page(request: Request, message: str | None = None) -> Response:
        try:
            view = admin(request)
        except _Denied as denied:
            return denied.response
        if cache is None:
            return page(view, "Cache d'images", "<p>Pas de cache sur ce nœud.</p>")
        usage = cache.usage()
        notice = f'<p class="note">{e(message)}</p>' if message else ""
        body = (
            f'{notice}<div class="card"><p>{usage.bytes / 1e6:.1f} Mo utilisés sur '
            f"{usage.max_bytes / 1e6:.0f} Mo — {usage.series} séries, {usage.instances} images "
            f"— {usage.hits} accès servis depuis le cache, {usage.misses} récupérations</p></div>"
            '<form method="post" action="/admin/cache/purger">'
            '<button type="submit">Vider le cache</button></form>'
        )
        return page(view, "Cache d'images", body)

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
                     result="ok")  # fmt: skip
        message = f"Cache vidé : {result}"
        return RedirectResponse(f"/admin/cache?{urlencode({'message': message})}", status_code=303)

    return router
