"""HL7 v2 report messages: parse ORU^R01 / MDM / OMI^O23 into a `ReportMessage`, build ACKs.

Owns the reading of what the RIS sends (ARCHITECTURE §2.1): message type and version checks,
the patient identifiers of PID-3, the base64 CDA of OBX-5 (parsed and checked with
`drimbox.cda.parse_report`), the Y/N flag rows, the TXA/ORC/OBX status fields that decide
whether the message publishes, updates or withdraws a report, and the ACK (MSA + ERR) answering
it. Every refusal is an `HL7Error` carrying the ACK code, the HL7 table 0357 error code, the
location, an English diagnostic and a French text for the site staff.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import hl7
from drimbox.cda import CdaError, parse_report
from drimbox.cda.model import INS_OIDS, Identifier, ImagingReport
from drimbox.cda.parser import is_valid_dicom_uid, is_valid_ins
from drimbox.errors import InternalError

__all__ = [
    "HL7_ERROR_CODES",
    "SUPPORTED_VERSIONS",
    "AckCode",
    "HL7Error",
    "ReportKind",
    "ReportMessage",
    "build_ack",
    "escape_text",
    "parse_report_message",
]

log = logging.getLogger(__name__)

AckCode = Literal["AA", "AE", "AR"]
ReportKind = Literal["publish", "update", "withdraw", "withdraw_exam", "exam_update"]

# OMI^O23 ORC-1 order controls that say the exam changed (HL7 table 0119: XO change order,
# SC status changed): the box re-reads the PACS and replaces the exam's KOS.
EXAM_UPDATE_CONTROLS = frozenset({"XO", "SC"})

# PID-32 identity reliability (HL7 table 0445 as extended by IHE PAM France — codes listed in the
# FR Core code system `fr-core-cs-v2-0445` — and the RNIV statuses/attributes): an INS may be
# shared only for a trustworthy identity, so these codes stop the report at the door (AE).
UNRELIABLE_IDENTITY: dict[str, str] = {
    "VIDE": "identité non encore qualifiée",
    "PROV": "identité provisoire",
    "RECUP": "identité récupérée non validée",
    "DOUTE": "identité douteuse",
    "FICTI": "identité fictive",
    "DESA": "identité désactivée",
    "DOUB": "doublon",
    "DPOT": "doublon potentiel",
    "DOUA": "doublon avéré",
    "COLP": "collision potentielle",
    "COLV": "collision avérée",
    "ANOM": "identité anonyme",
}

# HL7 table 0357 (message error condition codes) used in ERR-3.
HL7_ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}
_FRENCH_0357: dict[str, str] = {
    "100": "segments absents ou dans le mauvais ordre",
    "101": "champ obligatoire absent",
    "102": "valeur invalide",
    "103": "valeur hors table",
    "200": "type de message non pris en charge",
    "201": "événement non pris en charge",
    "202": "identifiant de traitement non pris en charge",
    "203": "version HL7 non prise en charge",
    "207": "erreur de traitement de l'application",
}

# CISIS_CDA_HL7_V2 uses 2.5 (ORU) and 2.6 (MDM); OMI^O23 comes as 2.5.1. Neighbouring versions
# carry the same segments for what we read.
SUPPORTED_VERSIONS = frozenset(
    {"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9"}
)

# field, component, repetition, escape, subcomponent
_Delims = tuple[str, str, str, str, str]
_STD_DELIMS: _Delims = ("|", "^", "~", "\\", "&")
_INS_TYPES = {"INS", "NH", "INS-NIR", "INS-NIA"}


class HL7Error(Exception):
    """A message the box refuses: becomes an ACK with MSA-1 `code` and an ERR segment.

    `message` is the English diagnostic (ERR-7, logs); `user_message` the French text for the
    site staff (ERR-8); `segment`/`sequence`/`field` locate the error (ERR-2);
    `hl7_error_code` is from HL7 table 0357 (ERR-3).
    """

    def __init__(
        self,
        code: Literal["AE", "AR"],
        message: str,
        segment: str | None = None,
        field: int | None = None,
        hl7_error_code: str = "207",
        *,
        user_message: str | None = None,
        sequence: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code: Literal["AE", "AR"] = code
        self.message = message
        self.segment = segment
        self.field = field
        self.hl7_error_code = hl7_error_code
        self.sequence = sequence
        self.user_message = user_message or (
            f"Message refusé : {_FRENCH_0357.get(hl7_error_code, 'erreur')}"
            + (f" ({segment}-{field})" if segment and field else "")
        )


class HL7InternalError(HL7Error, InternalError):
    """The message was refused because the parser failed: a bug of the box, not of the RIS."""

    def __repr__(self) -> str:
        where = f"{self.segment}-{self.field}" if self.segment else "-"
        return f"HL7Error({self.code}, {self.hl7_error_code}, {where}: {self.message})"


@dataclass(frozen=True)
class ReportMessage:
    """What the Source needs of one inbound report message.

    MSH values are as received (HL7-encoded text). Patient identifiers come from PID-3 and fall
    back to the CDA when PID-3 lacks them (they are checked to agree when both are present).
    """

    message_type: str  # "ORU^R01"
    trigger: str  # "R01"
    control_id: str  # MSH-10, may be a template placeholder such as "{{idMessage}}"
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    version: str  # MSH-12
    kind: ReportKind
    patient_ins: str
    patient_ins_oid: str
    patient_ipp: str | None
    patient_ipp_issuer: str | None  # OID of the assigning authority, else its namespace id
    order_control: str  # ORC-1
    result_status: str  # OBX-11 of the CDA row
    cda_xml: bytes | None
    document_id: str | None  # TXA-12, else the CDA id ("root" or "root^extension")
    replaced_document_id: str | None  # TXA-13, else the CDA relatedDocument RPLC
    flags: dict[str, bool] = field(default_factory=dict)
    accession_number: str | None = None  # IPC-1 for OMI, else the CDA accession number
    study_instance_uid: str | None = None  # IPC-3 for OMI, else the CDA StudyInstanceUID
    report: ImagingReport | None = None
    processing_id: str = "P"  # MSH-11
    raw_msh: str = ""  # the MSH segment as received, for the ACK


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _normalise(raw: str | bytes) -> str:
    if not isinstance(raw, str):
        data = bytes(raw)
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raw = data.decode("cp1252", errors="replace")
    text = raw.lstrip("\ufeff").strip("\x0b\x1c\r\n\t ")
    field_sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    starts_segment = re.compile(r"[A-Z][A-Z0-9]{2}" + re.escape(field_sep))
    segments: list[str] = []
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        if segments and not starts_segment.match(line):
            # A line break inside a field (e.g. base64 wrapped at 76 columns): keep it as content.
            segments[-1] += "\n" + line
        else:
            segments.append(line)
    return "\r".join(segments)


def _check_header(text: str) -> None:
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7Error(
            "AR",
            "not an HL7 v2 message: the first segment is not MSH",
            "MSH",
            None,
            "100",
            user_message="Message refusé : ce n'est pas un message HL7 v2 (segment MSH absent)",
        )
    field_sep = text[3]
    end = text.find(field_sep, 4)
    encoding = text[4:end] if end > 0 else ""
    chars = field_sep + encoding
    if (
        not 2 <= len(encoding) <= 5
        or len(set(chars)) != len(chars)
        or any(c.isalnum() or c.isspace() for c in chars)
    ):
        raise HL7Error(
            "AR",
            f"MSH-1/MSH-2: invalid delimiters {chars!r}",
            "MSH",
            2,
            "102",
            user_message="Message refusé : séparateurs HL7 invalides dans MSH-1/MSH-2",
        )


def _get(seg: Any, f: int, r: int = 1, c: int = 1, s: int = 1) -> str:
    """One leaf value (unescaped), or "" when the path is absent.

    Walks python-hl7's tree itself rather than calling `extract_field`, whose unescaping logs
    through the deprecated `Logger.warn` on malformed escapes (a DeprecationWarning per value).
    """
    try:
        if f >= len(seg):
            return ""
        node: Any = seg[f]
        for index in (r, c, s):
            if isinstance(node, str):
                if index != 1:
                    return ""
                continue
            if index > len(node):
                return ""
            node = node[index - 1]
        while not isinstance(node, str):  # deeper than asked: follow the first child
            node = node[0] if len(node) else ""
        seps, esc = str(seg.separators), str(seg.esc)
        delims: _Delims = (seps[1], seps[3], seps[2], esc, seps[4])
    except (IndexError, TypeError, AttributeError):
        return ""
    return _unescape(node, delims).strip()


def _raw(seg: Any, f: int) -> str:
    """A whole field as received (still HL7-encoded)."""
    try:
        return str(seg[f]) if f < len(seg) else ""
    except (IndexError, TypeError):
        return ""


def _repetitions(seg: Any, f: int) -> int:
    try:
        return len(seg[f]) if f < len(seg) else 0
    except (IndexError, TypeError):
        return 0


def _segments(msg: Any, name: str) -> list[Any]:
    return [seg for seg in msg if len(seg) and str(seg[0]) == name]


def _id_str(ident: Identifier | None) -> str | None:
    if ident is None:
        return None
    return f"{ident.root}^{ident.extension}" if ident.extension else ident.root


def _same_document(hl7_value: str, ident: Identifier) -> bool:
    return hl7_value in {ident.root if not ident.extension else "", ident.extension, _id_str(ident)}


@dataclass
class _Pid:
    ins: str | None = None
    ins_oid: str | None = None
    ipp: str | None = None
    ipp_issuer: str | None = None
    ipp_oid: str | None = None


def _read_pid(pid: Any) -> _Pid:
    out = _Pid()
    for r in range(1, _repetitions(pid, 3) + 1):
        value = _get(pid, 3, r, 1)
        namespace, oid = _get(pid, 3, r, 4, 1), _get(pid, 3, r, 4, 2)
        id_type = _get(pid, 3, r, 5).upper()
        if not value:
            continue
        if oid in INS_OIDS:
            if out.ins is None:
                if not is_valid_ins(value):
                    raise HL7Error(
                        "AE",
                        f"PID-3: INS {value!r} is not 13 digits + a valid 2-digit key",
                        "PID",
                        3,
                        "102",
                        user_message=f"Message refusé : INS invalide en PID-3 ({value})",
                    )
                out.ins, out.ins_oid = value, oid
        elif id_type in _INS_TYPES:
            raise HL7Error(
                "AE",
                f"PID-3: identifier {value!r} typed {id_type} has an assigning authority OID "
                f"{oid!r} that is not an INS OID ({', '.join(INS_OIDS)})",
                "PID",
                3,
                "102",
                user_message="Message refusé : INS en PID-3 avec un OID d'autorité inconnu",
            )
        elif id_type == "PI" and out.ipp is None:
            out.ipp, out.ipp_issuer, out.ipp_oid = value, oid or namespace or None, oid or None
    return out


def _is_cda_row(obx: Any) -> bool:
    """The ED row holding the CDA (`^TEXT^XML^Base64^…`); an ED of another subtype is not it."""
    subtype = _get(obx, 5, 1, 3).upper()
    if _get(obx, 2).upper() == "ED":
        return subtype in ("XML", "")
    return subtype == "XML" and _get(obx, 5, 1, 4).upper() == "BASE64"


def _decode_cda(obx: Any, sequence: int) -> bytes | None:
    encoding = _get(obx, 5, 1, 4)
    data = _get(obx, 5, 1, 5)
    if not data:
        return None
    if encoding.upper() != "BASE64":
        raise HL7Error(
            "AE",
            f"OBX-5.4: CDA encoding {encoding!r} is not supported (expected Base64)",
            "OBX",
            5,
            "102",
            sequence=sequence,
            user_message="Message refusé : le CDA en OBX-5 doit être encodé en Base64",
        )
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HL7Error(
            "AE",
            f"OBX-5.5 is not valid base64: {exc}",
            "OBX",
            5,
            "102",
            sequence=sequence,
            user_message="Message refusé : OBX-5 n'est pas du base64 valide",
        ) from exc


_INS_ELEMENT_PREFIX = "recordTarget/patientRole/id"


def _cda_error(exc: CdaError, sequence: int, pid: _Pid) -> HL7Error:
    text = str(exc)
    if exc.element and exc.element.startswith(_INS_ELEMENT_PREFIX) and "missing" in text:
        if pid.ins is None:
            return HL7Error(
                "AE",
                "no INS in PID-3 nor in the CDA (recordTarget/patientRole/id)",
                "PID",
                3,
                "101",
                user_message="Message refusé : INS du patient absent (ni en PID-3 ni dans le CDA)",
            )
        return HL7Error(
            "AE",
            f"OBX-5: {text}",
            "OBX",
            5,
            "101",
            sequence=sequence,
            user_message="Message refusé : le CDA ne porte pas l'INS du patient",
        )
    if text.startswith("CDA is not well-formed"):
        return HL7Error(
            "AE",
            f"OBX-5: {text}",
            "OBX",
            5,
            "102",
            sequence=sequence,
            user_message="Message refusé : le CDA en OBX-5 n'est pas un XML bien formé",
        )
    code = "101" if "missing" in text else "102"
    detail = exc.element or "CDA"
    french = "élément obligatoire absent du CDA" if code == "101" else "valeur invalide dans le CDA"
    return HL7Error(
        "AE",
        f"OBX-5: {text}",
        "OBX",
        5,
        code,
        sequence=sequence,
        user_message=f"Message refusé : {french} : {detail}",
    )


def _kind(mtype: str, trigger: str, order_control: str, status: str, replaced: str) -> ReportKind:
    if mtype == "OMI":
        if order_control in EXAM_UPDATE_CONTROLS:
            return "exam_update"
        if order_control != "CA":
            raise HL7Error(
                "AR",
                f"OMI^{trigger} with ORC-1 {order_control!r}: only exam cancellation (CA) "
                f"and exam updates ({', '.join(sorted(EXAM_UPDATE_CONTROLS))}) are handled",
                "ORC",
                1,
                "201",
                user_message="Message refusé : pour OMI, seules l'annulation (ORC-1 CA) et la "
                "modification d'examen (ORC-1 XO ou SC) sont prises en charge",
            )
        return "withdraw_exam"
    if order_control == "CA" or status == "D" or (mtype == "MDM" and trigger == "T04"):
        return "withdraw"
    if (mtype == "MDM" and trigger == "T10") or order_control == "RO" or status == "C":
        return "update"
    if replaced:
        return "update"
    return "publish"


def _identity_mismatch(what: str, pid_value: str, cda_value: str) -> HL7Error:
    return HL7Error(
        "AE",
        f"{what} differs between PID-3 ({pid_value}) and the CDA ({cda_value})",
        "PID",
        3,
        "207",
        user_message=f"Message refusé : {what} différent entre PID-3 ({pid_value}) "
        f"et le CDA ({cda_value})",
    )


def _parse(raw: str | bytes) -> ReportMessage:
    text = _normalise(raw)
    _check_header(text)
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on garbage
        raise HL7Error(
            "AR",
            f"not a parsable HL7 v2 message: {exc}",
            "MSH",
            None,
            "100",
            user_message="Message refusé : message HL7 v2 illisible",
        ) from exc
    msh = msg[0]
    raw_msh = text.split("\r", 1)[0]

    mtype, trigger = _get(msh, 9, 1, 1).upper(), _get(msh, 9, 1, 2).upper()
    if not mtype:
        raise HL7Error("AR", "MSH-9 (message type) is empty", "MSH", 9, "101")
    version = _get(msh, 12, 1, 1)
    if not version:
        raise HL7Error("AR", "MSH-12 (version id) is empty", "MSH", 12, "101")
    if version not in SUPPORTED_VERSIONS:
        raise HL7Error(
            "AR",
            f"MSH-12: HL7 version {version!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_VERSIONS))})",
            "MSH",
            12,
            "203",
            user_message=f"Message refusé : version HL7 {version} non prise en charge",
        )
    if mtype not in ("ORU", "MDM", "OMI"):
        raise HL7Error(
            "AR",
            f"MSH-9: message type {mtype}^{trigger} is not supported "
            "(ORU^R01, MDM^T02/T04/T10, OMI^O23)",
            "MSH",
            9,
            "200",
            user_message=f"Message refusé : type de message {mtype}^{trigger} non pris en charge",
        )
    if (mtype == "ORU" and trigger != "R01") or (mtype == "OMI" and trigger != "O23"):
        raise HL7Error(
            "AR",
            f"MSH-9: event {mtype}^{trigger} is not supported (ORU^R01, OMI^O23)",
            "MSH",
            9,
            "201",
            user_message=f"Message refusé : événement {mtype}^{trigger} non pris en charge",
        )

    pids = _segments(msg, "PID")
    if not pids:
        raise HL7Error(
            "AE",
            "PID segment missing",
            "PID",
            None,
            "100",
            user_message="Message refusé : segment PID absent",
        )
    pid = _read_pid(pids[0])
    _check_reliability(pids[0])

    orcs = _segments(msg, "ORC")
    order_control = _get(orcs[0], 1).upper() if orcs else ""

    cda_xml: bytes | None = None
    cda_sequence = 0
    result_status = ""
    flags: dict[str, bool] = {}
    for sequence, obx in enumerate(_segments(msg, "OBX"), start=1):
        if cda_sequence == 0 and _is_cda_row(obx):
            cda_sequence = sequence
            result_status = _get(obx, 11).upper()
            cda_xml = _decode_cda(obx, sequence)
            continue
        flag_value = _get(obx, 5, 1, 1).upper()
        code = _get(obx, 3, 1, 1)
        if code and flag_value in ("Y", "N"):
            flags[code] = flag_value == "Y"
        if not result_status and (_get(obx, 1) == "1" or sequence == 1):
            result_status = _get(obx, 11).upper()

    txas = _segments(msg, "TXA")
    txa12 = (_get(txas[0], 12, 1, 1) or _get(txas[0], 12, 1, 3)) if txas else ""
    txa13 = (_get(txas[0], 13, 1, 1) or _get(txas[0], 13, 1, 3)) if txas else ""

    kind = _kind(mtype, trigger, order_control, result_status, txa13)

    common: dict[str, Any] = {
        "message_type": f"{mtype}^{trigger}",
        "trigger": trigger,
        "control_id": _get(msh, 10),
        "sending_application": _raw(msh, 3),
        "sending_facility": _raw(msh, 4),
        "receiving_application": _raw(msh, 5),
        "receiving_facility": _raw(msh, 6),
        "version": version,
        "kind": kind,
        "order_control": order_control,
        "result_status": result_status,
        "flags": flags,
        "processing_id": _get(msh, 11) or "P",
        "raw_msh": raw_msh,
    }

    if kind in ("withdraw_exam", "exam_update"):
        return _exam_message(msg, pid, common)

    report: ImagingReport | None = None
    if cda_xml is not None:
        try:
            report = parse_report(cda_xml)
        except CdaError as exc:
            raise _cda_error(exc, cda_sequence, pid) from exc
    elif kind != "withdraw" or not txa12:
        # A withdrawal can name the document by TXA-12 alone; everything else needs the CDA.
        raise HL7Error(
            "AE",
            f"{mtype}^{trigger} ({kind}): no CDA in OBX-5 (expected ^TEXT^XML^Base64^<data>)",
            "OBX",
            5,
            "101",
            sequence=cda_sequence or None,
            user_message="Message refusé : CDA absent (OBX-5 de type ED, TEXT^XML^Base64)",
        )

    if report is not None:
        _check_consistency(report, pid, txa12, txa13)
        ins, ins_oid = report.patient.ins, report.patient.ins_oid
        cda_ipp = report.patient.ipp
        ipp = pid.ipp or (cda_ipp.extension if cda_ipp else None)
        ipp_issuer = pid.ipp_issuer or (cda_ipp.root if cda_ipp else None)
    else:
        if pid.ins is None or pid.ins_oid is None:
            raise HL7Error(
                "AE",
                "no INS in PID-3 and no CDA to take it from",
                "PID",
                3,
                "101",
                user_message="Message refusé : INS du patient absent en PID-3",
            )
        ins, ins_oid, ipp, ipp_issuer = pid.ins, pid.ins_oid, pid.ipp, pid.ipp_issuer

    return ReportMessage(
        **common,
        patient_ins=ins,
        patient_ins_oid=ins_oid,
        patient_ipp=ipp,
        patient_ipp_issuer=ipp_issuer,
        cda_xml=cda_xml,
        document_id=txa12 or (_id_str(report.document_id) if report else None),
        replaced_document_id=txa13 or (_id_str(report.replaced_document_id) if report else None),
        accession_number=(
            report.accession_number.extension if report and report.accession_number else None
        ),
        study_instance_uid=report.study_instance_uid if report else None,
        report=report,
    )


def _check_consistency(report: ImagingReport, pid: _Pid, txa12: str, txa13: str) -> None:
    """Identity safety: what the HL7 envelope says must match the CDA it carries."""
    cda = report.patient
    if pid.ins is not None and (pid.ins, pid.ins_oid) != (cda.ins, cda.ins_oid):
        raise _identity_mismatch("INS", f"{pid.ins} ({pid.ins_oid})", f"{cda.ins} ({cda.ins_oid})")
    if (
        pid.ipp is not None
        and cda.ipp is not None
        and pid.ipp_oid == cda.ipp.root
        and pid.ipp != cda.ipp.extension
    ):
        raise _identity_mismatch("IPP", pid.ipp, cda.ipp.extension)
    if txa12 and not _same_document(txa12, report.document_id):
        raise HL7Error(
            "AE",
            f"TXA-12 {txa12!r} is not the CDA id {_id_str(report.document_id)!r}",
            "TXA",
            12,
            "207",
            user_message="Message refusé : TXA-12 ne correspond pas à l'identifiant du CDA",
        )
    replaced = report.replaced_document_id
    if txa13 and replaced is not None and not _same_document(txa13, replaced):
        raise HL7Error(
            "AE",
            f"TXA-13 {txa13!r} is not the CDA relatedDocument/parentDocument id "
            f"{_id_str(replaced)!r}",
            "TXA",
            13,
            "207",
            user_message="Message refusé : TXA-13 ne correspond pas au document remplacé "
            "indiqué dans le CDA",
        )


def _check_reliability(pid: Any) -> None:
    """PID-32 (repeatable: a status and attributes): refuse an identity the INS rules do not
    allow to share. An absent PID-32 is accepted — CISIS_CDA_HL7_V2 does not require it and the
    CDA carries the INS."""
    for r in range(1, _repetitions(pid, 32) + 1):
        code = _get(pid, 32, r, 1).upper()
        if code in UNRELIABLE_IDENTITY:
            raise HL7Error(
                "AE",
                f"PID-32: identity reliability {code!r} does not allow sharing the INS",
                "PID",
                32,
                "207",
                user_message=f"Message refusé : {UNRELIABLE_IDENTITY[code]} (PID-32 {code}) : "
                "l'INS ne peut être utilisé, rien n'est publié au DMP",
            )


def _exam_message(msg: Any, pid: _Pid, common: dict[str, Any]) -> ReportMessage:
    ipcs = _segments(msg, "IPC")
    if not ipcs:
        raise HL7Error(
            "AE",
            "OMI^O23 without IPC segment (accession number, StudyInstanceUID)",
            "IPC",
            None,
            "100",
            user_message="Message refusé : segment IPC absent",
        )
    accession = _get(ipcs[0], 1, 1, 1)
    study_uid = _get(ipcs[0], 3, 1, 1)
    if not accession and not study_uid:
        raise HL7Error(
            "AE",
            "IPC-1 (accession number) and IPC-3 (StudyInstanceUID) are both empty",
            "IPC",
            3,
            "101",
            user_message="Message refusé : ni numéro d'accès (IPC-1) ni StudyInstanceUID (IPC-3)",
        )
    if study_uid and not is_valid_dicom_uid(study_uid):
        raise HL7Error(
            "AE",
            f"IPC-3 {study_uid!r} is not a valid DICOM UID",
            "IPC",
            3,
            "102",
            user_message=f"Message refusé : StudyInstanceUID invalide en IPC-3 ({study_uid})",
        )
    if pid.ins is None or pid.ins_oid is None:
        raise HL7Error(
            "AE",
            "no INS in PID-3",
            "PID",
            3,
            "101",
            user_message="Message refusé : INS du patient absent en PID-3",
        )
    return ReportMessage(
        **common,
        patient_ins=pid.ins,
        patient_ins_oid=pid.ins_oid,
        patient_ipp=pid.ipp,
        patient_ipp_issuer=pid.ipp_issuer,
        cda_xml=None,
        document_id=None,
        replaced_document_id=None,
        accession_number=accession or None,
        study_instance_uid=study_uid or None,
        report=None,
    )


def parse_report_message(raw: str) -> ReportMessage:
    """Parse and check one inbound report message; raises only `HL7Error`.

    Segment separators may be CR, LF or CRLF; stray MLLP bytes around the message are ignored.
    """
    try:
        return _parse(raw)
    except HL7Error:
        raise
    except Exception as exc:
        # The MLLP server must always be able to answer: a bug here becomes an AR, logged.
        log.exception("unexpected error while parsing an HL7 message")
        raise HL7InternalError(
            "AR",
            f"internal error while parsing the message: {exc!r}",
            None,
            None,
            "207",
            user_message="Message refusé : erreur interne de la DRIMbox à la lecture du message",
        ) from exc


# --------------------------------------------------------------------------------------------
# ACK
# --------------------------------------------------------------------------------------------


def escape_text(text: str) -> str:
    """Escape free text for an HL7 field with the standard delimiters; line breaks → spaces."""
    out = (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )
    return "".join(" " if ord(ch) < 0x20 or ch == "\x7f" else ch for ch in out)


def _unescape(value: str, delims: _Delims) -> str:
    """Undo HL7 escapes: delimiters (\\F\\ \\S\\ \\R\\ \\E\\ \\T\\), hex bytes (\\Xhh…\\, UTF-8),
    line breaks (\\.br\\); other formatting escapes are dropped, malformed ones kept as text."""
    field_sep, comp, rep, esc, sub = delims
    if not esc or esc not in value:
        return value
    table = {"F": field_sep, "S": comp, "R": rep, "E": esc, "T": sub}

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in table:
            return table[code]
        if code[:1] == "X" and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("utf-8", errors="replace")
            except ValueError:
                return match.group(0)
        if code == ".br":
            return "\n"
        if code in ("H", "N") or code.startswith((".", "C", "M", "Z")):
            return ""
        return match.group(0)

    pattern = re.escape(esc) + r"([^" + re.escape(esc) + r"]{1,64}?)" + re.escape(esc)
    return re.sub(pattern, one, value)


def _reencode(raw_field: str, delims: _Delims) -> str:
    """Re-express a field received with `delims` in the standard delimiters."""
    if delims == _STD_DELIMS:
        return "".join(" " if ord(ch) < 0x20 else ch for ch in raw_field)
    _, comp, rep, _, sub = delims
    return "~".join(
        "^".join(
            "&".join(escape_text(_unescape(leaf, delims)) for leaf in c.split(sub))
            for c in r.split(comp)
        )
        for r in raw_field.split(rep)
    )


def _msh_fields(source: str | bytes | ReportMessage | None) -> tuple[list[str], _Delims]:
    """Best-effort MSH reading that never fails: (fields indexed like MSH-n, delimiters)."""
    if isinstance(source, ReportMessage):
        text = source.raw_msh
    elif isinstance(source, bytes | bytearray):
        text = bytes(source).decode("utf-8", errors="replace")
    else:
        text = source or ""
    text = text.lstrip("\ufeff\x0b\r\n\t ")
    segment = ""
    for line in re.split(r"\r\n|\r|\n", text):
        idx = line.find("MSH")
        if idx != -1 and len(line) > idx + 3:
            segment = line[idx:]
            break
    if not segment:
        return [], _STD_DELIMS
    field_sep = segment[3]
    if field_sep.isalnum() or field_sep.isspace():
        return [], _STD_DELIMS
    parts = segment.split(field_sep)
    enc = parts[1] if len(parts) > 1 else ""
    std = _STD_DELIMS
    delims: _Delims = (
        field_sep,
        enc[0] if len(enc) > 0 else std[1],
        enc[1] if len(enc) > 1 else std[2],
        enc[2] if len(enc) > 2 else std[3],
        enc[3] if len(enc) > 3 else std[4],
    )
    if len(set(delims)) != 5:
        delims = std
    # parts[0] = "MSH", parts[1] = MSH-2; MSH-1 is the separator itself.
    fields = ["MSH", field_sep, *parts[1:]]
    return fields, delims


def build_ack(
    raw_or_parsed_msh: str | bytes | ReportMessage | None,
    code: AckCode,
    text: str = "",
    error: HL7Error | None = None,
) -> str:
    """ACK^<trigger>^ACK for an inbound message (raw text, its MSH, or the parsed message).

    Sender and receiver are swapped, the control id is new, the version is the inbound one.
    Any code but AA carries an ERR segment (a generic 207 one when `error` is None). Works on
    garbled input too: missing values stay empty, the version defaults to 2.5.
    """
    fields, delims = _msh_fields(raw_or_parsed_msh)

    def msh(n: int) -> str:
        return _reencode(fields[n], delims) if n < len(fields) else ""

    trigger = ""
    if len(fields) > 9:
        parts = fields[9].split(delims[1])
        trigger = escape_text(_unescape(parts[1], delims).strip()) if len(parts) > 1 else ""
    version = msh(12) or "2.5"
    processing = msh(11) or "P"
    now = datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z")
    control_id = uuid.uuid4().hex[:20].upper()
    message_type = f"ACK^{trigger}^ACK" if trigger else "ACK"

    if code != "AA" and error is None:
        error = HL7Error(
            code, text or "message rejected", None, None, "207", user_message=text or None
        )
    msa_text = text or (error.user_message if error is not None and code != "AA" else "")

    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                msh(5),
                msh(6),
                msh(3),
                msh(4),
                now,
                "",
                message_type,
                control_id,
                processing,
                version,
                "",
                "",
                "",
                "",
                msh(17),
                "UNICODE UTF-8",
            ]
        ),
        f"MSA|{code}|{msh(10)}|{escape_text(msa_text)}".rstrip("|"),
    ]
    if code != "AA" and error is not None:
        location = ""
        if error.segment:
            location = "^".join(
                [
                    error.segment,
                    str(error.sequence or 1),
                    str(error.field) if error.field is not None else "",
                ]
            ).rstrip("^")
        label = HL7_ERROR_CODES.get(error.hl7_error_code, "")
        hl7_code = f"{error.hl7_error_code}^{escape_text(label)}^HL70357"
        segments.append(
            f"ERR||{location}|{hl7_code}|E|||{escape_text(error.message)}|"
            f"{escape_text(error.user_message)}"
        )
    return "\r".join(segments) + "\r"
