"""The official ANS samples bundled with the project, and variants of them built for tests."""

from __future__ import annotations

import base64
import re

from drimbox.samples import ANS_DIR
from drimbox.sim.ris import with_cda as with_cda
from drimbox.sim.ris import with_obx5_data as with_obx5_data

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
