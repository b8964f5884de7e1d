"""IHE Invoke Image Display (IID) for the Source viewer: the link written in the report,
`/IHEInvokeImageDisplay?requestType=STUDY&studyUID=…&accessionNumber=…&idCDA=…`.

Owns the check that the study was published with that report (study UID, CDA document id, and
the accession when the link gives one) and the hand-over to OHIF. Parameter names are matched
regardless of case: the CI-SIS template writes `Accessionnumber`, and a link whose accession went
unread would open the study without that check. Then the study is granted to the user's
session, and the browser sent to `/viewer?StudyInstanceUIDs=…`. French pages for the refusals.
It must not authenticate anyone: a request without a session goes to the login page first.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from drimbox.source.grants import Grants
from drimbox.web.pages import message
from drimbox.web.viewer import ViewerAuth

IID_PATH = "/IHEInvokeImageDisplay"
PARAMETERS = ("requestType", "studyUID", "accessionNumber", "idCDA")


def link_parameters(request: Request) -> dict[str, str] | None:
    """The link's known parameters by their canonical names, whatever their case; None when one
    is given twice with different values (which one would the check use?)."""
    canonical = {name.lower(): name for name in PARAMETERS}
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        key = canonical.get(name.lower())
        if key is None:
            continue
        if found.get(key, value) != value:
            return None
        found[key] = value
    return found


def install_iid_route(app: FastAPI, *, auth: ViewerAuth, grants: Grants) -> None:
    @app.get(IID_PATH)
    async def iid(request: Request) -> Response:
        session = auth.session(request)
        if session is None:
            return auth.login_redirect(request)
        params = link_parameters(request)
        if params is None:
            return message(
                request,
                "Lien invalide",
                "Un paramètre du lien est répété avec des valeurs différentes.",
                status=400,
                alert=True,
            )
        request_type = params.get("requestType", "")
        study_uid = params.get("studyUID", "")
        accession = params.get("accessionNumber", "").strip()
        document_id = params.get("idCDA", "")
        if request_type.upper() != "STUDY" or not study_uid or not document_id:
            return message(
                request,
                "Lien invalide",
                "Le lien doit préciser requestType=STUDY, studyUID et idCDA.",
                status=400,
                alert=True,
            )
        published = await asyncio.to_thread(
            grants.iid_report_published, study_uid, accession, document_id
        )
        if not published:
            return message(
                request,
                "Examen introuvable",
                "Aucun examen publié ne correspond à ce lien (étude, numéro d'examen et compte "
                "rendu). Il a peut-être été retiré ou remplacé.",
                status=404,
                alert=True,
            )
        auth.sessions.grant(session.id, study_uid)
        return RedirectResponse(f"/viewer?StudyInstanceUIDs={quote(study_uid)}", status_code=303)
