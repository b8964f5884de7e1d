"""IHE Invoke Image Display (IID) for the Source viewer: the link written in the report,
`/IHEInvokeImageDisplay?requestType=STUDY&studyUID=…&accessionNumber=…&idCDA=…`.

Owns the check that the study was published with that report (study UID, CDA document id, and
the accession when the link gives one) and the hand-over to OHIF. Parameter names are matched
regardless of case: the CI-SIS template writes `Accessionnumber`, and a link whose accession went
unread would open the study without that check. Then the study is granted to the user's
session, and the browser sent to `/viewer?StudyInstanceUIDs=…`. French pages for the refusals.
It must not authenticate anyone: a request without a session goes to the login page first.

The link's access rule (`iid_refusal`, docs/conformance.md "The report's viewer link"): the user
acts in one situation d'exercice (chosen first when they have several), of a profession the site
allows (`[viewer] iid_professions`: médecins by default, as the DMP's access matrix opens imaging
reports to them), practised in a structure; a report masked to professionals (MASQUE_PS) opens
only for its authors and the professionals of their structure. Every opening and every refusal
is in the audit trail with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from drimbox.auth.users import PROFESSION_LABELS, PscUser, UserInfoError
from drimbox.source.grants import Grants, IidReport
from drimbox.trust import audit
from drimbox.web.auth_routes import SITUATION_PATH
from drimbox.web.pages import message
from drimbox.web.viewer import ViewerAuth, ViewerSession

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


MASKED_TO_PROFESSIONALS = "MASQUE_PS"
# Flags that concern the patient and their legal representatives, never a professional: the
# viewer link serves professionals only, so they change nothing here.
PATIENT_SIDE_FLAGS = frozenset({"INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX"})


@dataclass(frozen=True)
class IidRefusal:
    """Why a signed-in user may not open a report's images: `reason` for the audit trail (a
    stable code), `text` for the user (French)."""

    reason: str
    text: str


# The user has several situations d'exercice and has not said which one they act in.
CHOOSE_SITUATION = IidRefusal("situation_a_choisir", "")


def iid_refusal(
    session: ViewerSession, report: IidReport, professions: Collection[str]
) -> IidRefusal | None:
    """The access rule of the report's viewer link for this user, None when they may open it."""
    try:
        user = PscUser.from_claims(session.userinfo)
    except UserInfoError:
        return IidRefusal(
            "identite_incomplete",
            "Pro Santé Connect n'a pas transmis votre profession ni vos situations d'exercice : "
            "l'accès aux images n'est pas possible.",
        )
    situations = user.situations()
    if not situations:
        return IidRefusal(
            "sans_situation",
            "Votre compte Pro Santé Connect ne déclare aucune situation d'exercice : l'accès "
            "aux images n'est pas possible.",
        )
    if session.situation_key is None and len(situations) > 1:
        return CHOOSE_SITUATION
    try:
        situation = user.situation(session.situation_key)
    except UserInfoError:
        return CHOOSE_SITUATION
    profession = situation.exercice.profession_code
    if profession not in professions:
        label = PROFESSION_LABELS.get(profession, f"profession {profession or 'inconnue'}")
        return IidRefusal(
            f"profession_non_autorisee:{profession or '-'}",
            f"Votre profession ({label}) n'est pas de celles qui peuvent consulter les "
            "comptes rendus d'imagerie et leurs images, selon la matrice d'habilitation du "
            "DMP appliquée par ce site.",
        )
    if situation.activity is None:
        return IidRefusal(
            "sans_structure",
            "Votre situation d'exercice ne mentionne aucune structure (lieu d'exercice) dans "
            "l'Annuaire Santé : l'accès aux images n'est pas possible. Faites mettre à jour "
            "votre inscription, puis reconnectez-vous.",
        )
    if MASKED_TO_PROFESSIONALS in report.confidentiality:
        structure_ids = {situation.activity.national_structure_id, situation.activity.structure_id}
        if (
            user.subject_name_id not in report.authors
            and not (structure_ids - {""}) & report.structures
        ):
            return IidRefusal(
                "masque_aux_professionnels",
                "Ce compte rendu est masqué aux professionnels de santé (MASQUE_PS) : seuls "
                "ses auteurs et leur structure peuvent en ouvrir les images.",
            )
    return None


def install_iid_route(
    app: FastAPI, *, auth: ViewerAuth, grants: Grants, professions: Collection[str] = ("10",)
) -> None:
    allowed = frozenset(professions)

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
        report = await asyncio.to_thread(grants.iid_report, study_uid, accession, document_id)
        remote = request.client.host if request.client else ""
        if report is None:
            await asyncio.to_thread(
                audit.record, grants.db, actor=session.subject, role="user", action="iid_open",
                result="refused", study_uid=study_uid[:64], remote=remote,
                reason="aucun compte rendu publié ne correspond au lien",
            )  # fmt: skip
            return message(
                request,
                "Examen introuvable",
                "Aucun examen publié ne correspond à ce lien (étude, numéro d'examen et compte "
                "rendu). Il a peut-être été retiré ou remplacé.",
                status=404,
                alert=True,
            )
        refusal = iid_refusal(session, report, allowed)
        if refusal is CHOOSE_SITUATION:
            target = request.url.path + f"?{request.url.query}"
            return RedirectResponse(
                f"{SITUATION_PATH}?{urlencode({'next': target})}", status_code=303
            )
        await asyncio.to_thread(
            audit.record, grants.db, actor=session.subject, role="user", action="iid_open",
            result="ok" if refusal is None else "refused", patient_ins=report.patient_ins,
            study_uid=study_uid, remote=remote, report_id=report.report_id,
            reason=refusal.reason if refusal else "lien du compte rendu",
        )  # fmt: skip
        if refusal is not None:
            return message(
                request, "Accès aux images refusé", refusal.text, status=403, alert=True,
                user=session.display_name,
            )  # fmt: skip
        auth.sessions.grant(session.id, study_uid)
        return RedirectResponse(f"/viewer?StudyInstanceUIDs={quote(study_uid)}", status_code=303)
