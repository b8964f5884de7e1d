"""The official ANS samples bundled with the project, and variants of them built for tests."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from drimbox.cda.model import ImagingReport
from drimbox.hl7.message import parse_report_message
from drimbox.samples import ANS_DIR
from drimbox.sim.ris import with_cda as with_cda
from drimbox.sim.ris import with_obx5_data as with_obx5_data
from drimbox.sim.studies import SeriesSpec, generate_study_for_report

ANS = ANS_DIR
HL7 = ANS / "hl7"

CDA_ID_C = "1.2.250.1.213.4.5.4.403"


def hl7_text(name: str) -> str:
    # read_bytes: text mode would turn the CR segment separators into LF
    return (HL7 / name).read_bytes().decode("utf-8")


def segments(text: str) -> list[str]:
    return [s for s in re.split(r"\r\n|\n|\r", text) if s]


def cda_of(text: str) -> bytes:
    for segment in segments(text):
        fields = segment.split("|")
        if fields[0] == "OBX" and fields[2] == "ED":
            return base64.b64decode(fields[5].split("^")[4])
    raise ValueError("no CDA in message")


def report_variant(text: str, index: int) -> str:
    """A distinct report version (new CDA id) of a sample, for load tests."""
    cda = cda_of(text).replace(
        f'<id root="{CDA_ID_C}"/>'.encode(), f'<id root="{CDA_ID_C}.{index}"/>'.encode(), 1
    )
    return with_cda(text, cda)


def with_flags(text: str, **flags: bool) -> str:
    """The same message with the OBX Y/N flag rows `flags` set (e.g. DESTDMP=False)."""
    out = []
    for segment in segments(text):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[3].split("^")[0] in flags:
            fields[5] = "Y" if flags[fields[3].split("^")[0]] else "N"
            segment = "|".join(fields)
        out.append(segment)
    return "\r".join(out) + "\r"


def with_pid32(text: str, code: str) -> str:
    """The same message with PID-32 (identity reliability) set to `code`."""
    out = []
    for segment in segments(text):
        fields = segment.split("|")
        if fields[0] == "PID":
            fields += [""] * (33 - len(fields))
            fields[32] = code
            segment = "|".join(fields)
        out.append(segment)
    return "\r".join(out) + "\r"


def cda_version(
    text: str,
    suffix: str,
    version: int,
    *,
    set_id: str | None = None,
    effective: str | None = None,
    extra_study: str | None = None,
) -> str:
    """Another version of the sample's report: CDA id `<id>.<suffix>`, `versionNumber`, and
    optionally another setId, effectiveTime (HL7 TS) or a second documented study."""
    cda = cda_of(text).decode("utf-8")
    root = re.search(r'<ClinicalDocument[^>]*>.*?<id root="([^"]+)"', cda, re.S)
    assert root is not None
    cda = cda.replace(f'<id root="{root.group(1)}"/>', f'<id root="{root.group(1)}.{suffix}"/>', 1)
    cda = re.sub(r'<versionNumber value="\d+"/>', f'<versionNumber value="{version}"/>', cda)
    if set_id is not None:
        cda = re.sub(r'<setId root="[^"]+"/>', f'<setId root="{set_id}"/>', cda)
    if effective is not None:
        cda = re.sub(
            r'(</title>.*?<effectiveTime value=")[^"]+"',
            rf'\g<1>{effective}"',
            cda,
            count=1,
            flags=re.S,
        )
    if extra_study is not None:
        start = cda.index("<documentationOf>")
        end = cda.index("</documentationOf>") + len("</documentationOf>")
        block = cda[start:end]
        event_id = re.search(r'<serviceEvent[^>]*>.*?<id root="([^"]+)"/>', block, re.S)
        assert event_id is not None
        cda = cda[:end] + block.replace(event_id.group(1), extra_study) + cda[end:]
    return with_cda(text, cda.encode("utf-8"))


def exam_variant(text: str, index: int) -> str:
    """The sample report for another exam of the patient: new CDA id, study UID, accession."""
    cda = (
        cda_of(text)
        .replace(f'<id root="{CDA_ID_C}"/>'.encode(), f'<id root="{CDA_ID_C}.{index}"/>'.encode())
        .replace(b'<id root="1.2.250.1.213.4.5.2.1.103"/>',
                 f'<id root="1.2.250.1.213.4.5.2.1.103.{index}"/>'.encode())
        .replace(b'extension="ACN103"', f'extension="ACN103-{index}"'.encode())
    )  # fmt: skip
    return with_cda(text, cda)


def sample_exam(folder: Path) -> tuple[ImagingReport, list[Path]]:
    """The exam of the official report CR_C, as its PACS would hold it: two CT series of 3 and
    2 small images (32×32) carrying the report's patient, study and accession."""
    report = parse_report_message(hl7_text("CR_C-ORU.hl7")).report
    assert report is not None
    files = generate_study_for_report(
        folder, report, [SeriesSpec("CT", "a", 3), SeriesSpec("CT", "b", 2)], rows=32, columns=32
    )
    return report, files
