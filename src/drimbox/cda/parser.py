"""Parse a CDA R2 imaging report (IMG-CR-IMG) into an `ImagingReport`.

Owns the hardened XML reading of the report the RIS sends, the validation of the facts the Source
cannot work without (document id, version, patient INS and name, StudyInstanceUID) and the
tolerant reading of everything else (missing optional parts give `None`, doubly UTF-8-encoded
text is repaired).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta, timezone

from lxml import etree

from drimbox.cda.model import (
    INS_OIDS,
    RPPS_OID,
    Code,
    HealthProfessional,
    Identifier,
    ImagingReport,
    Organization,
    Patient,
    PersonName,
)

__all__ = ["CdaError", "is_valid_dicom_uid", "is_valid_ins", "parse_hl7_ts", "parse_report"]

HL7_NS = "urn:hl7-org:v3"
PS320_NS = "urn:dicom-org:ps3-20"
_NS = {"h": HL7_NS, "ps3-20": PS320_NS}

DCM_OID = "1.2.840.10008.2.16.4"
SNOMED_OID = "2.16.840.1.113883.6.96"
CONFIDENTIALITY_OID = "2.16.840.1.113883.5.25"
REGION_QUALIFIER_CODE = "39111-0"  # LOINC "localisation anatomique"
VIEWER_TEMPLATE_ID = "1.2.250.1.213.1.1.3.157"  # FR-DICOM-SOP-instance-observation
_VIEWER_MARKER = "IHEInvokeImageDisplay"


class CdaError(ValueError):
    """The CDA cannot be used: not well-formed, or a mandatory element is missing or invalid.

    `element` names the offending element (XPath-ish, relative to ClinicalDocument) when known,
    so that callers (the HL7 intake) can tell which rule failed without parsing the message.
    """

    def __init__(self, message: str, element: str | None = None) -> None:
        super().__init__(message)
        self.element = element


# --------------------------------------------------------------------------------------------
# Hardened parser: no network, no entities, no DTD. huge_tree stays off: libxml2's default
# 10 MB text-node limit is well above the ~240 kB base64 PDF the official samples embed.
# --------------------------------------------------------------------------------------------


def _make_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>")


def _load(xml: bytes | str) -> etree._Element:
    # lxml refuses str input that carries an encoding declaration; drop it and feed UTF-8.
    data = _XML_DECL.sub("", xml, count=1).encode("utf-8") if isinstance(xml, str) else bytes(xml)
    if not data.strip():
        raise CdaError("CDA is not well-formed XML: line 1: document is empty")
    try:
        root = etree.fromstring(data, _make_parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno is not None else "?"
        msg = exc.msg or str(exc)
        raise CdaError(f"CDA is not well-formed XML: line {line}: {msg}") from exc
    except (ValueError, TypeError) as exc:  # e.g. unknown encoding declaration
        raise CdaError(f"CDA is not well-formed XML: line 1: {exc}") from exc
    if root is None:
        raise CdaError("CDA is not well-formed XML: line 1: no root element")
    doctype = str(getattr(root.getroottree().docinfo, "doctype", "") or "")  # not in lxml-stubs
    if doctype:
        # A CDA never has a DOCTYPE; refusing it closes the door on entity tricks altogether.
        raise CdaError("CDA must not contain a DOCTYPE declaration")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise CdaError(
            f"CDA: the root element is {root.tag!r}, expected ClinicalDocument "
            f"in namespace {HL7_NS}",
            element="ClinicalDocument",
        )
    return root


# --------------------------------------------------------------------------------------------
# Mojibake repair: some RIS send the CDA UTF-8 encoded twice ("mÃ©dicale" for "médicale").
# --------------------------------------------------------------------------------------------

# cp1252 characters for bytes 0x80-0x9F (five bytes are undefined in cp1252 and skipped).
_CP1252_REVERSE: dict[str, int] = {
    bytes([b]).decode("cp1252", errors="ignore"): b for b in range(0x80, 0xA0)
}
_CP1252_REVERSE.pop("", None)
# A UTF-8 multi-byte sequence whose bytes were each read as one Latin-1/cp1252 character.
_CONT = "[\u0080-\u00bf" + "".join(_CP1252_REVERSE) + "]"
_MOJIBAKE_RE = re.compile(
    f"[\u00c2-\u00df]{_CONT}|[\u00e0-\u00ef]{_CONT}{{2}}|[\u00f0-\u00f4]{_CONT}{{3}}"
)


def _undo_one(match: re.Match[str]) -> str:
    seq = match.group(0)
    raw = bytes(_CP1252_REVERSE.get(ch, ord(ch)) for ch in seq)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return seq


def fix_mojibake(text: str) -> str:
    """Undo UTF-8-read-as-Latin-1/cp1252 ("mÃ©dicale" → "médicale"), sequence by sequence.

    Only byte sequences that decode as valid UTF-8 are touched, so correct text stays as is.
    Two rounds cover a document encoded three times.
    """
    for _ in range(2):
        repaired = _MOJIBAKE_RE.sub(_undo_one, text)
        if repaired == text:
            break
        text = repaired
    return text


# --------------------------------------------------------------------------------------------
# Small XML helpers
# --------------------------------------------------------------------------------------------


def _xp(node: etree._Element, path: str) -> list[etree._Element]:
    result = node.xpath(path, namespaces=_NS)
    assert isinstance(result, list)
    return [r for r in result if isinstance(r, etree._Element)]


def _first(node: etree._Element | None, path: str) -> etree._Element | None:
    if node is None:
        return None
    found = _xp(node, path)
    return found[0] if found else None


def _attr(node: etree._Element | None, name: str) -> str:
    if node is None:
        return ""
    value = node.get(name)
    return fix_mojibake(value.strip()) if value else ""


def _text(node: etree._Element | None) -> str:
    if node is None:
        return ""
    parts = (t for t in node.itertext() if isinstance(t, str))
    # Repair before collapsing whitespace: a doubled "à" ends in a no-break space (C3 A0).
    return " ".join(fix_mojibake("".join(parts)).split())


def _identifier(node: etree._Element | None) -> Identifier | None:
    """An II, or None when absent, nullFlavored or without root."""
    if node is None or node.get("nullFlavor"):
        return None
    root = _attr(node, "root")
    if not root:
        return None
    return Identifier(root=root, extension=_attr(node, "extension"))


def _code(node: etree._Element | None) -> Code | None:
    if node is None or not node.get("code"):
        return None
    return Code(
        code=_attr(node, "code"),
        code_system=_attr(node, "codeSystem"),
        display_name=_attr(node, "displayName"),
    )


def _dedup(codes: Iterable[Code]) -> tuple[Code, ...]:
    seen: set[tuple[str, str]] = set()
    out: list[Code] = []
    for c in codes:
        key = (c.code, c.code_system)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Value validation
# --------------------------------------------------------------------------------------------

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_dicom_uid(uid: str) -> bool:
    """DICOM PS3.5 §9.1: ≤ 64 chars, digits and dots, no empty or zero-padded component."""
    return 0 < len(uid) <= 64 and _UID_RE.match(uid) is not None


_INS_RE = re.compile(r"^[0-9]{5}(?:[0-9]{2}|2A|2B)[0-9]{8}$")


def is_valid_ins(ins: str) -> bool:
    """INS matricule (NIR or NIA): 13 characters + 2-digit key = 97 - (number mod 97).

    Corsican departments 2A/2B count as 19/18 for the key, as for the NIR.
    """
    if not _INS_RE.match(ins):
        return False
    body = ins[:13]
    department = ins[5:7]
    if department in ("2A", "2B"):
        body = ins[:5] + ("19" if department == "2A" else "18") + ins[7:13]
    return 97 - int(body) % 97 == int(ins[13:])


_TS_RE = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,6}))?(?P<tz>[+-]\d{4})?$"
)


def parse_hl7_ts(value: str) -> datetime | None:
    """HL7 TS (`YYYYMMDD[HH[MM[SS[.S]]]][±ZZZZ]`) → datetime; aware when a zone is given.

    Returns None for an empty value and for year/month-only precision (too vague to use);
    raises ValueError on anything that is not a TS.
    """
    value = value.strip()
    if not value:
        return None
    m = _TS_RE.match(value)
    if m is None:
        raise ValueError(f"not an HL7 TS: {value!r}")
    if m["d"] is None:
        return None
    tzinfo = None
    if m["tz"]:
        sign = 1 if m["tz"][0] == "+" else -1
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][3:5])
        if hours > 23 or minutes > 59:
            raise ValueError(f"bad time zone in HL7 TS: {value!r}")
        tzinfo = timezone(sign * timedelta(hours=hours, minutes=minutes))
    micro = int((m["frac"] or "0").ljust(6, "0"))
    return datetime(
        int(m["y"]),
        int(m["mo"]),
        int(m["d"]),
        int(m["h"] or 0),
        int(m["mi"] or 0),
        int(m["s"] or 0),
        micro,
        tzinfo=tzinfo,
    )


def _ts(node: etree._Element | None, where: str) -> datetime | None:
    if node is None or node.get("nullFlavor"):
        return None
    try:
        return parse_hl7_ts(node.get("value") or "")
    except ValueError as exc:
        raise CdaError(f"CDA: {where}/@value is not a valid HL7 time stamp: {exc}", where) from exc


# --------------------------------------------------------------------------------------------
# Sections of the report
# --------------------------------------------------------------------------------------------


def _missing(path: str, what: str) -> CdaError:
    return CdaError(f"CDA: missing {path} ({what})", element=path)


def _person_name(name_nodes: list[etree._Element]) -> PersonName | None:
    """Birth name (qualifier BR) first, then unqualified parts, then whatever is there."""
    families: list[tuple[str, str]] = []
    givens: list[tuple[str, str]] = []
    prefix = suffix = ""
    for name in name_nodes:
        if len(name) == 0 and _text(name):  # unstructured <name>Family Given</name>
            families.append(("", _text(name)))
        for part in name:
            if not isinstance(part.tag, str):
                continue
            local = etree.QName(part).localname
            value = _text(part)
            if not value:
                continue
            qualifier = _attr(part, "qualifier").upper()
            if local == "family":
                families.append((qualifier, value))
            elif local == "given":
                givens.append((qualifier, value))
            elif local == "prefix" and not prefix:
                prefix = value
            elif local == "suffix" and not suffix:
                suffix = value

    def pick(parts: list[tuple[str, str]]) -> list[str]:
        for wanted in ("BR", ""):
            chosen = [v for q, v in parts if q == wanted]
            if chosen:
                return chosen
        return [v for _, v in parts]

    family = pick(families)
    if not family:
        return None
    return PersonName(family=family[0], given=tuple(pick(givens)), prefix=prefix, suffix=suffix)


def _patient(doc: etree._Element) -> tuple[Patient, dict[str, str]]:
    role = _first(doc, "h:recordTarget/h:patientRole")
    if role is None:
        raise _missing("recordTarget/patientRole", "patient")
    ins: Identifier | None = None
    ipp: Identifier | None = None
    for id_node in _xp(role, "h:id"):
        ident = _identifier(id_node)
        if ident is None or not ident.extension:
            continue
        if ident.root in INS_OIDS:
            if ins is None:
                ins = ident
        elif ipp is None:
            ipp = ident
    if ins is None:
        raise _missing(
            "recordTarget/patientRole/id[@root = an INS OID]/@extension",
            "patient INS",
        )
    if not is_valid_ins(ins.extension):
        raise CdaError(
            f"CDA: recordTarget/patientRole/id/@extension {ins.extension!r} is not a valid INS "
            "(13 digits + 2-digit key)",
            element="recordTarget/patientRole/id/@extension",
        )
    person = _first(role, "h:patient")
    name = _person_name(_xp(person, "h:name")) if person is not None else None
    if name is None:
        raise _missing("recordTarget/patientRole/patient/name/family", "patient name")
    birth_node = _first(person, "h:birthTime")
    birth_dt = _ts(birth_node, "recordTarget/patientRole/patient/birthTime")
    birth: date | None = birth_dt.date() if birth_dt is not None else None
    sex = _attr(_first(person, "h:administrativeGenderCode"), "code").upper()
    extra: dict[str, str] = {}
    all_given = (
        [_text(g) for g in _xp(person, "h:name/h:given[not(@qualifier)]")]
        if person is not None
        else []
    )
    if all_given:
        extra["patient_birth_given_names"] = " ".join(g for g in all_given if g)
    patient = Patient(
        ins=ins.extension,
        ins_oid=ins.root,
        ipp=ipp,
        name=name,
        birth_date=birth,
        sex=sex if sex in ("M", "F", "U") else "U",
    )
    return patient, extra


def _organization(node: etree._Element | None) -> Organization | None:
    if node is None:
        return None
    ident = _identifier(_first(node, "h:id"))
    if ident is None:
        return None
    return Organization(id=ident, name=_text(_first(node, "h:name")))


def _professional(
    entity: etree._Element | None, time_node: etree._Element | None, where: str
) -> HealthProfessional | None:
    if entity is None:
        return None
    ids = [i for i in (_identifier(n) for n in _xp(entity, "h:id")) if i is not None]
    if not ids:
        return None
    ident = next((i for i in ids if i.root == RPPS_OID), ids[0])
    person = _first(entity, "h:assignedPerson")
    return HealthProfessional(
        id=ident,
        name=_person_name(_xp(person, "h:name")) if person is not None else None,
        code=_code(_first(entity, "h:code")),
        organization=_organization(_first(entity, "h:representedOrganization")),
        time=_ts(time_node, f"{where}/time"),
    )


def _iter_strings(node: etree._Element) -> Iterator[str]:
    for el in node.iter():
        if not isinstance(el.tag, str):
            continue
        yield from (v for v in el.attrib.values() if isinstance(v, str))
        if el.text:
            yield el.text
        if el.tail:
            yield el.tail


_URL_RE = re.compile(r"https?://[^\s\"'<>]+")


def _viewer_url(doc: etree._Element) -> str | None:
    for entry in _xp(doc, f"//*[h:templateId/@root = '{VIEWER_TEMPLATE_ID}']"):
        for value in _iter_strings(entry):
            found = _URL_RE.search(value)
            if found:
                return str(found.group(0))
    for value in _iter_strings(doc):
        if _VIEWER_MARKER in value:
            for url in _URL_RE.findall(value):
                if _VIEWER_MARKER in url:
                    return str(url)
    return None


def _service_codes(
    event: etree._Element | None,
) -> tuple[Code | None, tuple[Code, ...], tuple[Code, ...], tuple[Code, ...]]:
    code_node = _first(event, "h:code")
    act = _code(code_node)
    translations: list[Code] = []
    modalities: list[Code] = []
    regions: list[Code] = []
    for tr in _xp(code_node, ".//h:translation") if code_node is not None else []:
        c = _code(tr)
        if c is None:
            continue
        translations.append(c)
        qualifier_codes = {_attr(q, "code") for q in _xp(tr, "h:qualifier/h:name")}
        if REGION_QUALIFIER_CODE in qualifier_codes or c.code_system == SNOMED_OID:
            regions.append(c)
        elif c.code_system == DCM_OID:
            modalities.append(c)
    return act, _dedup(translations), _dedup(modalities), _dedup(regions)


def parse_report(xml: bytes | str, study_uid: str | None = None) -> ImagingReport:
    """Read an IMG-CR-IMG CDA. Raises `CdaError` when it is unusable (see module docstring).

    A report may cover several studies (one `documentationOf/serviceEvent` each): the facts of
    the exam (study UID, act codes, times) are those of `study_uid`'s event, else of the first.
    """
    doc = _load(xml)

    document_id = _identifier(_first(doc, "h:id"))
    if document_id is None:
        raise _missing("ClinicalDocument/id/@root", "document id")
    set_id = _identifier(_first(doc, "h:setId"))
    if set_id is None:
        raise _missing("ClinicalDocument/setId/@root", "document set id")
    version_raw = _attr(_first(doc, "h:versionNumber"), "value")
    if not version_raw:
        raise _missing("ClinicalDocument/versionNumber/@value", "document version")
    try:
        version = int(version_raw)
    except ValueError:
        version = -1
    if version < 1:
        raise CdaError(
            f"CDA: ClinicalDocument/versionNumber/@value {version_raw!r} is not a positive integer",
            element="ClinicalDocument/versionNumber/@value",
        )

    patient, extra = _patient(doc)

    events = _xp(doc, "h:documentationOf/h:serviceEvent[h:id/@root]")
    studies = tuple(dict.fromkeys(_attr(_first(e, "h:id"), "root") for e in events))
    event = events[0] if events else None
    if study_uid is not None:
        if study_uid not in studies:
            raise CdaError(
                f"CDA: no documentationOf/serviceEvent for study {study_uid!r}",
                element="documentationOf/serviceEvent/id/@root",
            )
        event = next(e for e in events if _attr(_first(e, "h:id"), "root") == study_uid)
    study_uid = _attr(_first(event, "h:id"), "root")
    if not study_uid:
        raise _missing("documentationOf/serviceEvent/id/@root", "StudyInstanceUID")
    for other in studies:
        if not is_valid_dicom_uid(other):
            raise CdaError(
                f"CDA: documentationOf/serviceEvent/id/@root {other!r} is not a valid DICOM UID "
                "(StudyInstanceUID)",
                element="documentationOf/serviceEvent/id/@root",
            )
    act_code, translations, modalities, regions = _service_codes(event)
    eff = _first(event, "h:effectiveTime")
    where = "documentationOf/serviceEvent/effectiveTime"
    service_start = _ts(_first(eff, "h:low"), f"{where}/low")
    service_stop = _ts(_first(eff, "h:high"), f"{where}/high")
    if service_start is None and eff is not None and eff.get("value"):
        service_start = _ts(eff, where)

    order = _first(doc, "h:inFulfillmentOf/h:order")
    accession = _identifier(_first(order, "ps3-20:accessionNumber"))
    placer = _identifier(_first(order, "h:id"))

    authors = tuple(
        p
        for p in (
            _professional(_first(a, "h:assignedAuthor"), _first(a, "h:time"), "author")
            for a in _xp(doc, "h:author")
        )
        if p is not None
    )
    legal = _first(doc, "h:legalAuthenticator")
    legal_authenticator = _professional(
        _first(legal, "h:assignedEntity"), _first(legal, "h:time"), "legalAuthenticator"
    )
    custodian = _organization(
        _first(doc, "h:custodian/h:assignedCustodian/h:representedCustodianOrganization")
    )
    facility = _code(
        _first(doc, "h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code")
    )
    practice = _code(
        _first(
            doc,
            "h:author/h:assignedAuthor/h:representedOrganization/h:standardIndustryClassCode",
        )
    )
    replaced = _identifier(
        _first(doc, "h:relatedDocument[@typeCode = 'RPLC']/h:parentDocument/h:id")
    )
    # confidentialityCode is mandatory in CDA; HL7's default "N" stands in when a RIS omits it
    # (the OBX flags, not this code, carry the DMP masking choices).
    confidentiality = _code(_first(doc, "h:confidentialityCode")) or Code(
        "N", CONFIDENTIALITY_OID, "Normal"
    )

    return ImagingReport(
        document_id=document_id,
        set_id=set_id,
        version_number=version,
        title=_text(_first(doc, "h:title")),
        effective_time=_ts(_first(doc, "h:effectiveTime"), "ClinicalDocument/effectiveTime"),
        confidentiality=confidentiality,
        patient=patient,
        study_instance_uid=study_uid,
        study_instance_uids=studies,
        accession_number=accession,
        placer_order=placer,
        act_code=act_code,
        act_translations=translations,
        modalities=modalities,
        regions=regions,
        service_start=service_start,
        service_stop=service_stop,
        authors=authors,
        legal_authenticator=legal_authenticator,
        custodian=custodian,
        healthcare_facility_type=facility,
        practice_setting=practice,
        replaced_document_id=replaced,
        viewer_url=_viewer_url(doc),
        document_code=_code(_first(doc, "h:code")),
        encounter_code=_code(_first(doc, "h:componentOf/h:encompassingEncounter/h:code")),
        extra=extra,
    )
