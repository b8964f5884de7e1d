"""A stand-in for the national DMP (IHE XDS.b registry/repository + DMP patient services), for
the tests and the demo. NEVER deploy it: it is not the DMP and protects nothing.

It is an independent implementation of the service: it must never import `drimbox.dmp` (the
box's client), so that a client bug cannot be mirrored here. It checks what the real DMP checks
and answers with the DMP's kinds of errors.

Public API: `create_dmp_app(settings)`, `DmpSimSettings`, `KnownPatient`, `LocalDmp`,
`run_dmp_simulator(...)`.

Services (one base URL; SOAP 1.2, dispatch on `wsa:Action`; MTOM in → MTOM out, ITI-43 always
MTOM): `/registry` ITI-18 (FindDocuments, FindDocumentsByReferenceId, GetDocuments,
GetAssociations) and ITI-57 (UpdateAvailabilityStatus to Deleted/Deprecated/Approved);
`/repository` ITI-41 (MTOM or inline base64; RPLC deprecates the replaced entry) and ITI-43;
`/patients` TD0.2; `/habilitations` TD0.3. JSON view: `/sim/health`, `/sim/stats` (request
counters, and per operation the VIHF Authentification_Mode it came in: "ITI-18 mode
INDIRECTE_RENFORCEE"), `/sim/registry/documents?patient_id=<INS>`,
`/sim/registry/documents/{uid}/content`.

ERROR CODES
SOAP 1.2 Faults (HTTP 500 like the DMP's SOAP stack; `soap:Sender`, a standard subcode, and the
simulator's code in `Detail/sim:erreur/@code`, namespace `urn:drimbox:sim:dmp`):
- request: `DMPRequeteInvalide` (malformed XML/MIME, wrong body), `DMPVersionSoap`
  (soap:VersionMismatch, not SOAP 1.2);
- WS-Addressing: `DMPAdressageAbsent` (wsa:MessageAddressingHeaderRequired: MessageID, To or
  Action missing), `DMPAdressageInvalide` (wsa:InvalidAddressingHeader: Action without
  mustUnderstand="true", repeated header, To not ending with the service path),
  `DMPActionNonSupportee` (wsa:ActionNotSupported);
- VIHF: `DMPVihfAbsent`, `DMPVihfNonSigne` (wsse:InvalidSecurity); `DMPVihfInvalide`,
  `DMPVihfCertificatInvalide`, `DMPVihfEmetteurIncoherent` (Issuer ≠ certificate DN),
  `DMPVihfAttributManquant`, `DMPVihfAttributInvalide`, `DMPVihfPatientIncoherent`
  (wsse:InvalidSecurityToken); `DMPVihfAlgorithmeNonSupporte` (wsse:UnsupportedAlgorithm);
  `DMPVihfSignatureInvalide` (wsse:FailedCheck: tampered, wrong key, reference not the
  assertion); `DMPVihfCertificatNonReconnu`, `DMPVihfCertificatExpire`
  (wsse:FailedAuthentication); `DMPVihfExpire` (wsse:MessageExpired);
- Authentification_Mode against the request: an unknown mode, or INDIRECTE_RENFORCEE without
  the AuthnContextDecl `APP_BROWSER_AUTH`: `DMPVihfAttributInvalide`; DIRECTE over a TLS
  connection that is not the professional's card (a personal certificate whose CN is the
  NameID): `DMPModeAuthentificationInvalide` (wsse:FailedAuthentication);
RegistryResponse Failure (`rs:RegistryError` errorCode, codeContext in French, location = the
object's id as sent):
- `XDSRegistryMetadataError`: a mandatory slot / classification / external identifier / Name
  missing (the list is what XDS.xml carries, `checks.py`), malformed value (DTM, hash, size,
  OID uniqueId, patientId format), KOS not `application/dicom`, association shape, no
  signature document, RPLC target not Approved;
- `XDSRepositoryMetadataError`: hash or size ≠ the document, KOS bytes not DICOM Part 10,
  undecodable base64;
- `XDSMissingDocument` / `XDSMissingDocumentMetadata`: entry without Document / the reverse;
- `XDSUnknownPatientId`: OID not an INS authority, INS unknown, patient without DMP;
- `XDSPatientIdDoesNotMatch`: entry ≠ submission set, VIHF resource-id ≠ request patient,
  RPLC/update target of another patient;
- `XDSDuplicateUniqueIdInRegistry`: uniqueId already registered with the same content (an
  identical resubmission gets it too, so a client recognises its earlier success) or submission
  set uniqueId reused; `XDSNonIdenticalHash`: uniqueId registered with another content;
  `XDSRegistryDuplicateUniqueIdInMessage`;
- `UnresolvedReferenceException`: RPLC or ITI-57 target entryUUID unknown;
- `XDSMetadataUpdateError` (ITI-57): OriginalStatus ≠ current status, bad NewStatus, already
  Deleted;
- `DMPSignatureLotInvalide`: the signature document (IHE DSG/XAdES) does not verify, is not
  signed by a trusted certificate, or its manifest digests do not match the documents;
- `DMPAccesRefuse`: consultation without authorisation (TD0.3) or blocked by the patient;
- ITI-18: `XDSUnknownStoredQuery`, `XDSStoredQueryMissingParam`, `XDSStoredQueryParamNumber`;
  ITI-43: `XDSUnknownRepositoryId`, `XDSDocumentUniqueIdError` (unknown, Deleted, other patient).
"""

from drimbox.sim.dmp.app import create_dmp_app
from drimbox.sim.dmp.server import DmpSimulatorError, LocalDmp, run_dmp_simulator
from drimbox.sim.dmp.settings import DEFAULT_PATIENTS, DmpSimSettings, KnownPatient

__all__ = [
    "DEFAULT_PATIENTS",
    "DmpSimSettings",
    "DmpSimulatorError",
    "KnownPatient",
    "LocalDmp",
    "create_dmp_app",
    "run_dmp_simulator",
]
