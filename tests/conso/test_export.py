"""Export to a real Orthanc (C-STORE through the PACS adapter, and STOW-RS): the instances are
stored under the local IPP, the INS kept in OtherPatientIDsSequence with its issuer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from conso.helpers import Study, make_study
from drimbox.conso.common import ConsoError, FileInstance
from drimbox.conso.export import (
    CStoreTarget,
    LocalIdentity,
    StowRsTarget,
    export_exam,
)
from drimbox.dicom.pacs import PacsClient, PacsSettings
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.ports import free_port
from support.factories import CR_C_INS, CR_C_INS_OID

IDENTITY = LocalIdentity(
    patient_id="IPP-LOCAL-42", issuer="1.2.250.1.999.12.1", ins=CR_C_INS, ins_oid=CR_C_INS_OID
)


def instances_of(study: Study) -> list[FileInstance]:
    return [FileInstance.of(p) for p in study.files]


def stored_tags(pacs: LocalOrthanc, patient_id: str) -> list[dict[str, Any]]:
    found = pacs.client.post(
        "/tools/find", json={"Level": "Instance", "Query": {"PatientID": patient_id}}
    )
    found.raise_for_status()
    tags = []
    for instance in found.json():
        response = pacs.client.get(f"/instances/{instance}/tags", params={"simplify": ""})
        response.raise_for_status()
        tags.append(response.json())
    return tags


def check_identity(tags: dict[str, Any]) -> None:
    assert tags["PatientID"] == "IPP-LOCAL-42"
    assert tags["IssuerOfPatientID"] == "1.2.250.1.999.12.1"
    [qualifier] = tags["IssuerOfPatientIDQualifiersSequence"]
    assert qualifier["UniversalEntityID"] == "1.2.250.1.999.12.1"
    [ins] = tags["OtherPatientIDsSequence"]
    assert ins["PatientID"] == CR_C_INS and ins["IssuerOfPatientID"] == "ASIP-SANTE-INS-NIR"
    assert ins["IssuerOfPatientIDQualifiersSequence"][0]["UniversalEntityID"] == CR_C_INS_OID
    assert ins["IssuerOfPatientIDQualifiersSequence"][0]["UniversalEntityIDType"] == "ISO"


def test_c_store_under_the_local_ipp(pacs: LocalOrthanc, study: Study, tmp_path: Path) -> None:
    other = make_study(tmp_path / "other", study_uid="1.2.826.0.1.3680043.8.498.77.9.5")
    instances = [*instances_of(study), instances_of(other)[0]]
    progress: list[tuple[int, int]] = []
    audited: list[dict[str, Any]] = []
    client = PacsClient(PacsSettings(host="127.0.0.1", port=pacs.dicom_port, called_aet=pacs.aet))
    report = export_exam(
        instances,
        IDENTITY,
        CStoreTarget(client),
        study_uid=study.report.study_instance_uid,
        progress=lambda done, total: progress.append((done, total)),
        audit=lambda **event: audited.append(event),
    )
    assert sorted(report.stored) == sorted(study.by_sop)
    [(refused, reason)] = report.failed.items()
    assert refused == instances[-1].sop_instance_uid and "autre étude" in reason
    assert progress[-1] == (6, 6)
    assert audited[0]["action"] == "export_pacs" and audited[0]["stored"] == 5
    tags = stored_tags(pacs, "IPP-LOCAL-42")
    assert len(tags) == 5
    for item in tags:
        check_identity(item)
        assert item["StudyInstanceUID"] == study.report.study_instance_uid
    assert stored_tags(pacs, CR_C_INS) == []  # nothing under the INS as PatientID


def test_pixel_data_is_untouched(pacs: LocalOrthanc, study: Study) -> None:
    client = PacsClient(PacsSettings(host="127.0.0.1", port=pacs.dicom_port, called_aet=pacs.aet))
    export_exam(instances_of(study), IDENTITY, CStoreTarget(client),
                study_uid=study.report.study_instance_uid)  # fmt: skip
    from io import BytesIO

    from pydicom import dcmread

    found = pacs.client.post(
        "/tools/find", json={"Level": "Instance", "Query": {"PatientID": "IPP-LOCAL-42"}}
    ).json()
    for instance in found:
        stored = dcmread(BytesIO(pacs.client.get(f"/instances/{instance}/file").content))
        original = dcmread(study.by_sop[str(stored.SOPInstanceUID)])
        assert stored.PixelData == original.PixelData


def test_stow_rs(pacs: LocalOrthanc, study: Study) -> None:
    with httpx.Client(timeout=30) as http:
        report = export_exam(
            instances_of(study),
            IDENTITY,
            StowRsTarget(pacs.dicomweb_url, http=http),
            study_uid=study.report.study_instance_uid,
        )
    assert report.complete and len(report.stored) == 5
    tags = stored_tags(pacs, "IPP-LOCAL-42")
    assert len(tags) == 5
    check_identity(tags[0])


def test_unreachable_pacs_and_missing_ipp(study: Study) -> None:
    client = PacsClient(
        PacsSettings(host="127.0.0.1", port=free_port(), called_aet="NOPE", connection_timeout=2)
    )
    with pytest.raises(ConsoError) as caught:
        export_exam(instances_of(study), IDENTITY, CStoreTarget(client),
                    study_uid=study.report.study_instance_uid)  # fmt: skip
    assert caught.value.code == "PACS_INJOIGNABLE" and "injoignable" in caught.value.message
    no_ipp = LocalIdentity("", "x", CR_C_INS, CR_C_INS_OID)
    with pytest.raises(ConsoError) as missing:
        export_exam(instances_of(study), no_ipp, CStoreTarget(client),
                    study_uid=study.report.study_instance_uid)  # fmt: skip
    assert missing.value.code == "IPP_ABSENT"


def test_the_export_target_follows_the_configuration(tmp_path: Path) -> None:
    from drimbox.config import ConfigError, load_config
    from drimbox.web.conso_routes import export_target

    assert isinstance(export_target(load_config(environ={})), CStoreTarget)
    stow = load_config(environ={"DRIMBOX_CONSO__EXPORT": "stow-rs",
                                "DRIMBOX_PACS__DICOMWEB_URL": "http://pacs/dicom-web"})  # fmt: skip
    assert isinstance(export_target(stow), StowRsTarget)
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"DRIMBOX_CONSO__EXPORT": "stow-rs"})
    assert any("dicomweb_url" in problem for problem in caught.value.problems)
