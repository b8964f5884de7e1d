"""French labels for the codes the database and the audit trail keep (report kinds and
states, audit roles, actions and results). The codes stay as they are in the JSON export
(`drimbox audit export`); people read the labels."""

from __future__ import annotations

from typing import Final

REPORT_KINDS: Final = {
    "publish": "publication",
    "update": "mise à jour",
    "withdraw": "dépublication",
    "withdraw_exam": "dépublication de l'examen",
    "iocm": "rejet d'images (IOCM)",
    "exam_update": "examen modifié (OMI)",
    "recheck": "images tardives",
    "confidentiality": "confidentialité modifiée",
}
REPORT_STATES: Final = {
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
    "kos_built": "KOS construit",
    "not_for_dmp": "non destiné au DMP",
    "superseded": "version dépassée",
}
AUDIT_ROLES: Final = {
    "user": "professionnel de santé",
    "peer": "DRIMbox partenaire",
    "system": "DRIMbox (automatique)",
    "operator": "administrateur",
}
AUDIT_RESULTS: Final = {"ok": "réussi", "refused": "refusé", "error": "erreur"}
AUDIT_ACTIONS: Final = {
    "login": "connexion",
    "launch": "lancement contextuel (RIS/DPI)",
    "launch_open": "ouverture d'un lancement contextuel",
    "report_view": "lecture d'un compte rendu",
    "report_retry": "relance d'un compte rendu",
    "cache_purge": "vidage du cache",
    "dmp_history": "consultation de l'historique DMP",
    "dmp_retrieve_kos": "lecture d'un manifeste d'images (KOS) au DMP",
    "dmp_retrieve_cda": "lecture d'un compte rendu au DMP",
    "dmp_publish": "publication au DMP",
    "dmp_delete": "suppression au DMP",
    "export_pacs": "export vers le PACS",
    "xdm_export": "archive XDM",
    "wado_rs_retrieve": "récupération d'images auprès d'une Source",
    "iocm_rejection": "rejet d'images (IOCM)",
    "history_view": "nouvel affichage de l'historique (sans appel au DMP)",
    "admin_reports_view": "liste des comptes rendus (console)",
    "admin_audit_view": "consultation des traces (console)",
}
RESOURCES: Final = {
    "study": "étude",
    "series": "série",
    "instance": "image",
    "metadata": "métadonnées",
    "frames": "trames",
    "rendered": "rendu",
    "thumbnail": "vignette",
    "studies": "études",
    "instances": "images",
}
_IMAGE_PREFIX: Final = "image_retrieve_"
_SEARCH_PREFIX: Final = "image_search_"


def label(table: dict[str, str], code: str) -> str:
    """The French label of `code`, the code itself when none is known yet (never blank)."""
    return table.get(code, code)


def action_label(code: str) -> str:
    if code.startswith(_IMAGE_PREFIX):
        resource = code.removeprefix(_IMAGE_PREFIX)
        return f"images servies ({label(RESOURCES, resource)})"
    if code.startswith(_SEARCH_PREFIX):
        resource = code.removeprefix(_SEARCH_PREFIX)
        return f"recherche d'images (QIDO-RS, {label(RESOURCES, resource)})"
    return label(AUDIT_ACTIONS, code)
