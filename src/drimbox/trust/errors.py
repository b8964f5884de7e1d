"""Why a whitelist is refused: one reason code, a French sentence for site staff, an English detail.

Owns `Reason` and `WhitelistError`. Every refusal in the trust package goes through them so that
the status page, the admin console and `drimbox whitelist verify` say the same thing.
"""

from __future__ import annotations

from enum import Enum

from drimbox.errors import InternalError


class Reason(Enum):
    """Refusal reasons; the value is the French message shown to the site's IT staff."""

    TOO_LARGE = "Le fichier de liste blanche est trop volumineux."
    MALFORMED = (
        "Le fichier reçu n'est pas une liste blanche DRIM-M lisible (XML mal formé, interdit ou "
        "d'un autre type)."
    )
    UNSIGNED = "La liste blanche n'est pas signée : elle est refusée."
    SIGNATURE_STRUCTURE = (
        "La signature de la liste blanche n'a pas la forme attendue (XAdES-B enveloppée)."
    )
    WEAK_ALGORITHM = (
        "La liste blanche est signée avec un algorithme refusé (RSA SHA-256 au minimum)."
    )
    ALTERED_CONTENT = "Le contenu de la liste blanche a été modifié après sa signature."
    BAD_SIGNATURE_VALUE = "La valeur de la signature de la liste blanche est invalide (altérée)."
    SIGNER_MISMATCH = (
        "Le certificat joint ne correspond pas au certificat de signature déclaré (XAdES)."
    )
    UNTRUSTED_SIGNER = (
        "Le signataire de la liste blanche n'est pas reconnu par les autorités de confiance "
        "configurées."
    )
    SIGNER_EXPIRED = (
        "Le certificat du signataire de la liste blanche (ou de sa chaîne) est expiré ou pas "
        "encore valide."
    )
    SIGNER_REVOKED = (
        "Le certificat du signataire de la liste blanche est révoqué (liste de révocation "
        "IGC-Santé) : la liste est refusée, la dernière liste valide reste en vigueur."
    )
    UNEXPECTED_SIGNER = "Le signataire de la liste blanche n'est pas celui attendu (ANS)."
    INVALID_CONTENT = "La liste blanche signée ne respecte pas le format DRIM-M."
    OLDER_THAN_CURRENT = (
        "La liste blanche reçue est plus ancienne que celle en vigueur (rejeu ?) : elle est "
        "refusée."
    )
    UNREACHABLE = "La liste blanche n'a pas pu être récupérée à sa source."

    @property
    def message(self) -> str:
        return self.value


class WhitelistError(Exception):
    """The list is refused. `reason.message` is for site staff; `detail` is for developers."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.message} ({detail})")

    @property
    def message(self) -> str:
        return self.reason.message


class WhitelistInternalError(WhitelistError, InternalError):
    """The list is refused because the verifier failed on it: a bug of the box, logged."""
