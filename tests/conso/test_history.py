"""The exam history against the DMP simulator over mutual TLS.

The DMP is filled as the network would fill it: the Source's `DmpClient.publish_kos` publishes
each KOS; the RIS's publication of the CDA is simulated with a hand-built ITI-41 (the box's
client only publishes KOS): the KOS submission builder's request with its document entry turned
into an imaging report (text/xml, LOINC 18748-4, the CDA's id as uniqueId) and a signature
document over the CDA, sent through the client's transport.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from conso.helpers import UID_ROOT, Study, make_study
from drimbox.cda.model import Code, ImagingReport
from drimbox.cda.parser import parse_report
from drimbox.conso.common import ConsoError
from drimbox.conso.history import HistoryQuery, load_history
from drimbox.dmp import codes
from drimbox.dmp.client import DmpClient, DmpSettings
from drimbox.dmp.vihf import AUTH_REINFORCED_INDIRECT, VihfSubject
from drimbox.samples import ANS_DIR
from drimbox.sim.dmp import DEFAULT_PATIENTS, KnownPatient
from drimbox.sim.ris import publish_report_to_dmp
from support.dmp import STRUCTURE, DmpEnvironment, local_dmp
from support.factories import CR_C_INS, CR_C_INS_OID

CONSULTANT = VihfSubject(
    name_id="899700218896",
    display_name="Jeanne MEDECIN",
    profession=Code("10", codes.PROFESSION_SYSTEM, "Médecin"),
    authentication_mode=AUTH_REINFORCED_INDIRECT,
)


def settings_of(env: DmpEnvironment) -> DmpSettings:
    c = env.certs
    return DmpSettings(
        base_url=env.dmp.url,
        structure_id=STRUCTURE,
        structure_name="Centre de radiologie Ambroise",
        uid_root=UID_ROOT,
        timeout_s=5.0,
        tls_cert=str(c.auth.cert_path),
        tls_key=str(c.auth.key_path),
        tls_ca=str(c.ca.cert_path),
        signing_cert=str(c.signing.cert_path),
        signing_key=str(c.signing.key_path),
        lps_id="DRIMBOX-TEST",
        lps_homologation_id="HOMOLOG-TEST",
    )


def publish_cda(client: DmpClient, report: ImagingReport, cda: bytes) -> None:
    """ITI-41 of a CDA report as the RIS would send it."""
    publish_report_to_dmp(client, report, cda)


def ins_with_key(body: str) -> str:
    return body + f"{97 - int(body) % 97:02d}"


NO_DMP_INS = ins_with_key("1780262042011")


@pytest.fixture
def dmp(tmp_path: Path) -> Iterator[DmpEnvironment]:
    patients = (*DEFAULT_PATIENTS, KnownPatient(NO_DMP_INS, has_dmp=False))
    with local_dmp(tmp_path / "dmp", patients=patients) as environment:
        yield environment


@pytest.fixture
def published(dmp: DmpEnvironment, tmp_path: Path) -> tuple[Study, Study]:
    """Exam 1: the official CDA of exam C and its KOS; exam 2: a KOS only (report pending)."""
    cda = (ANS_DIR / "cda" / "CR_C.xml").read_bytes()
    first = make_study(tmp_path / "s1", report=parse_report(cda))
    second = make_study(tmp_path / "s2", study_uid="1.2.826.0.1.3680043.8.498.77.9.2",
                        accession="ACN902")  # fmt: skip
    with DmpClient(settings_of(dmp)) as client:
        client.publish_kos(first.report, first.kos, {})
        publish_cda(client, first.report, cda)
        client.publish_kos(second.report, second.kos, {})
    return first, second


def test_history_lists_and_pairs_the_exams(
    dmp: DmpEnvironment, published: tuple[Study, Study]
) -> None:
    first, second = published
    audited: list[dict[str, object]] = []
    with DmpClient(settings_of(dmp)) as client:
        history = load_history(
            client,
            CONSULTANT,
            HistoryQuery(CR_C_INS, CR_C_INS_OID),
            with_reports=True,
            audit=lambda **event: audited.append(event),
        )
    assert history.authorisation_added  # TD0.2 said NON_AUTORISE, TD0.3 AJOUT was done
    by_study = {e.study_uid: e for e in history.exams}
    assert set(by_study) == {first.report.study_instance_uid, second.report.study_instance_uid}
    paired = by_study[first.report.study_instance_uid]
    assert paired.kos_entry is not None and paired.report_entry is not None
    assert paired.report_entry.mime_type == "text/xml"
    assert paired.report is not None and paired.report_bytes is not None
    assert paired.report.document_id == first.report.document_id
    assert paired.accession == first.report.accession_number.extension  # type: ignore[union-attr]
    assert paired.manifest is not None and paired.manifest.data == first.kos
    assert paired.source_base_urls == ("https://db1.test.mesimagesmedicales.fr",)
    assert paired.modalities == ("CT",) and paired.date is not None
    assert paired.site and paired.description
    alone = by_study[second.report.study_instance_uid]
    assert alone.report_entry is None and alone.manifest is not None
    assert len(alone.manifest.series) == 2 and alone.manifest.instance_count == 5
    assert audited[-1]["action"] == "dmp_history" and audited[-1]["result"] == "ok"

    # Second consultation: already authorised, no TD0.3.
    with DmpClient(settings_of(dmp)) as client:
        again = load_history(client, CONSULTANT, HistoryQuery(CR_C_INS, CR_C_INS_OID))
    assert not again.authorisation_added and len(again.exams) == 2


def test_filters_study_accession_modality_and_dates(
    dmp: DmpEnvironment, published: tuple[Study, Study]
) -> None:
    first, second = published
    with DmpClient(settings_of(dmp)) as client:

        def exams(**filters: object) -> set[str]:
            query = HistoryQuery(CR_C_INS, CR_C_INS_OID, **filters)  # type: ignore[arg-type]
            return {e.study_uid for e in load_history(client, CONSULTANT, query).exams}

        one, two = first.report.study_instance_uid, second.report.study_instance_uid
        assert exams(study_uid=one) == {one}
        assert exams(accession="ACN902") == {two}
        accession = first.report.accession_number
        assert accession is not None
        assert exams(accession=accession.extension, accession_issuer=accession.root) == {one}
        assert exams(modality="CT") == {one, two}
        assert exams(modality="MR") == set()
        assert exams(date_from=date(2000, 1, 1), date_to=date(2000, 12, 31)) == set()


def test_no_dmp(dmp: DmpEnvironment) -> None:
    with DmpClient(settings_of(dmp)) as client, pytest.raises(ConsoError) as caught:
        load_history(client, CONSULTANT, HistoryQuery(NO_DMP_INS, CR_C_INS_OID))
    assert caught.value.code == "PAS_DE_DMP" and "pas de DMP" in caught.value.message


def test_access_refused_when_the_patient_blocked_the_professional(tmp_path: Path) -> None:
    blocked = KnownPatient(CR_C_INS, blocked=frozenset({CONSULTANT.name_id}))
    with (
        local_dmp(tmp_path / "dmp", patients=(blocked,)) as env,
        DmpClient(settings_of(env)) as client,
        pytest.raises(ConsoError) as caught,
    ):
        load_history(client, CONSULTANT, HistoryQuery(CR_C_INS, CR_C_INS_OID))
    assert caught.value.code == "ACCES_REFUSE" and "interdit" in caught.value.message


def test_opposition_stops_before_the_dmp(dmp: DmpEnvironment) -> None:
    before = dmp.stats()
    with DmpClient(settings_of(dmp)) as client, pytest.raises(ConsoError) as caught:
        load_history(client, CONSULTANT, HistoryQuery(CR_C_INS, CR_C_INS_OID, consent=False))
    assert caught.value.code == "OPPOSITION"
    assert dmp.stats() == before


def test_dmp_down(dmp: DmpEnvironment) -> None:
    settings = settings_of(dmp)
    dmp.dmp.stop()
    with DmpClient(settings) as client, pytest.raises(ConsoError) as caught:
        load_history(client, CONSULTANT, HistoryQuery(CR_C_INS, CR_C_INS_OID))
    assert caught.value.code == "DMP_INJOIGNABLE" and caught.value.retryable
    assert "DMP injoignable" in caught.value.message


@pytest.mark.parametrize("authority", ["", "9.8.7.6", codes.STUDY_UID_AUTHORITY])
def test_a_study_is_found_whatever_authority_its_publisher_gave_its_uid(
    dmp: DmpEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, authority: str
) -> None:
    # Other vendors' boxes publish the study UID without CX.4 or with their own authority.
    study = make_study(tmp_path / "s", study_uid="1.2.826.0.1.3680043.8.498.77.9.7")
    monkeypatch.setattr(codes, "STUDY_UID_AUTHORITY", authority)
    with DmpClient(settings_of(dmp)) as client:
        client.publish_kos(study.report, study.kos, {})
        monkeypatch.undo()
        [stored] = [d for d in dmp.documents() if d["mime_type"] == "application/dicom"]
        form = f"^^^&{authority}&ISO^" if authority else "^^^^"
        assert f"{study.report.study_instance_uid}{form}" in " ".join(stored["reference_ids"])
        found = client.find_by_reference_id(
            CR_C_INS,
            CR_C_INS_OID,
            study_instance_uid=study.report.study_instance_uid,
            subject=VihfSubject.from_report(study.report),
        )
    assert [e.unique_id for e in found if e.is_kos] == [stored["unique_id"]]
