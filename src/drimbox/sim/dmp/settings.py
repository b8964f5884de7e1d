"""Settings of the DMP simulator: database, trust, TLS, the patients it knows and who may see them.

Part of the test/demo simulator of the national DMP; never deploy it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# INS OIDs: NIR, NIA, test NIR, test NIA (ARCHITECTURE §2.1).
INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)
TEST_NIR_OID = "1.2.250.1.213.1.4.10"


@dataclass(frozen=True)
class KnownPatient:
    """A patient the simulated DMP knows (an INS with its OID) and the state of their DMP."""

    ins: str
    oid: str = TEST_NIR_OID
    has_dmp: bool = True
    family_name: str = ""
    given_name: str = ""
    # Professionals (VIHF NameID: RPPS or PSC SubjectNameID) the patient has blocked: TD0.2
    # answers INTERDIT for them and TD0.3 refuses them.
    blocked: frozenset[str] = frozenset()

    @property
    def patient_id(self) -> str:
        """The XDS form `<INS>^^^&<OID>&ISO^NH`."""
        return f"{self.ins}^^^&{self.oid}&ISO^NH"


# The INS of the official samples: exam C's CDA (279035121518989) and the accepted XDS.xml
# request (162018885045327), both test NIR.
DEFAULT_PATIENTS: tuple[KnownPatient, ...] = (
    KnownPatient("279035121518989", family_name="PAT-TROIS", given_name="DOMINIQUE"),
    KnownPatient("162018885045327", family_name="PAT-SIX", given_name="Alain"),
)


@dataclass
class DmpSimSettings:
    """How one simulated DMP behaves.

    `trusted_vihf_certs`: PEM certificates; a VIHF is accepted when the certificate in its
    KeyInfo is one of them or is directly issued by one of them (a CA).
    `authorisations`: (INS, professional id) pairs authorised from the start; TD0.3 adds more.
    """

    database_path: Path
    trusted_vihf_certs: Sequence[bytes] = ()
    patients: Sequence[KnownPatient] = DEFAULT_PATIENTS
    authorisations: Sequence[tuple[str, str]] = ()
    repository_unique_id: str = "1.2.250.1.213.4.1.1.1"
    home_community_id: str = "urn:oid:1.2.250.1.213.4.1.1.1"
    # Consultation (any Authentification_Mode but INDIRECTE) needs an authorisation on the
    # patient, as on the DMP; publication by the author's structure (INDIRECTE) does not.
    require_authorisation: bool = True
    # The submission set must carry a signature document (IHE DSG) whose digests match.
    require_signature_document: bool = True
    verify_signature_document: bool = True
    # VIHF_Version values accepted (XDS.xml, the DMP-accepted request, carries 3.0).
    vihf_versions: Sequence[str] = ("3.0",)
    # A VIHF older than this (IssueInstant) is refused when it has no Conditions of its own.
    vihf_max_age_seconds: int = 3600
    clock_skew_seconds: int = 300
    # TLS (mutual when `client_ca` is set: CERT_REQUIRED). Without a client certificate (no
    # `client_ca`) every SOAP request is refused, as the DMP serves mutual TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    extra_patients: Sequence[KnownPatient] = field(default_factory=tuple)

    def patient(self, ins: str) -> KnownPatient | None:
        for patient in (*self.patients, *self.extra_patients):
            if patient.ins == ins:
                return patient
        return None

    @staticmethod
    def load_certs(paths: Sequence[Path]) -> list[bytes]:
        return [Path(p).read_bytes() for p in paths]
