"""Export destinations over real sockets: the Conso offers its PACS (the default), a workstation
(a second Orthanc, C-STORE) and a STOW-RS endpoint (that Orthanc's DICOMweb); the user picks one
in the history page's « Exporter » list; an unknown name is refused in French; the audit trail
names the destination."""

from __future__ import annotations

import time
from collections.abc import Iterator
from html import unescape
from typing import Any

import httpx
import pytest

from drimbox.config import ExportDestinationConfig
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.trust import audit
from support.history import HistoryNetwork, launch, long_history, signed_in_user, wait_prefetch

IPP = "IPP-B-4242"  # the launch form's local patient id: exports are stored under it
INSTANCES = 3  # per exam: the history's default series (2 + 1 images)
WORKSTATION = "Poste de lecture salle 2"
DICOMWEB = "Serveur DICOMweb"


@pytest.fixture(scope="module")
def orthancs() -> Iterator[tuple[LocalOrthanc, LocalOrthanc]]:
    """The Conso site's PACS and a workstation, each a real Orthanc of its own."""
    with LocalOrthanc(aet="PACSB") as pacs, LocalOrthanc(aet="POSTE2") as workstation:
        yield pacs, workstation


@pytest.fixture(scope="module")
def network(
    orthanc: LocalOrthanc,
    orthancs: tuple[LocalOrthanc, LocalOrthanc],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HistoryNetwork]:
    pacs, workstation = orthancs
    destinations = [
        ExportDestinationConfig(name=WORKSTATION, kind="c-store", host="127.0.0.1",
                                port=workstation.dicom_port, called_aet=workstation.aet),
        ExportDestinationConfig(name=DICOMWEB, kind="stow-rs", url=workstation.dicomweb_url),
    ]  # fmt: skip
    with long_history(
        orthanc,
        tmp_path_factory.mktemp("destinations"),
        count=1,
        conso_environ={
            "DRIMBOX_PACS__HOST": "127.0.0.1",
            "DRIMBOX_PACS__PORT": str(pacs.dicom_port),
            "DRIMBOX_PACS__CALLED_AET": pacs.aet,
        },
        export_destinations=destinations,
    ) as built:
        yield built


def stored(pacs: LocalOrthanc) -> int:
    """How many instances `pacs` holds under the launch's IPP."""
    found = pacs.client.post("/tools/find", json={"Level": "Instance", "Query": {"PatientID": IPP}})
    found.raise_for_status()
    return len(found.json())


def export(browser: httpx.Client, launch_url: str, study_uid: str, **form: str) -> dict[str, Any]:
    """POST the row's « Exporter » as the page does; the finished export job."""
    answer = browser.post(f"{launch_url}/export/{study_uid}", data=form)
    assert answer.status_code == 200, answer.text[:2000]
    deadline = time.monotonic() + 120
    while True:
        jobs = browser.get(f"{launch_url}/etat").json()["exports"]
        if jobs and all(j["etat"] != "en_cours" for j in jobs.values()):
            (job,) = jobs.values()
            return dict(job)
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)


def export_events(network: HistoryNetwork) -> list[dict[str, Any]]:
    return [e for e in audit.events(network.conso.node.db) if e["action"] == "export_pacs"]


def test_each_destination_receives_the_exam_the_pacs_by_default(
    network: HistoryNetwork, orthancs: tuple[LocalOrthanc, LocalOrthanc]
) -> None:
    pacs, workstation = orthancs
    pacs.delete_all()
    workstation.delete_all()
    (exam,) = network.exams
    uid = exam.study_uid
    with signed_in_user(network) as browser:
        launch_url, page = launch(browser)
        text = unescape(page.text)
        field = f'name="destination_{uid}"'
        assert field in text, "the history row offers the destinations"
        for name in ("PACS", WORKSTATION, DICOMWEB):
            assert f'<option value="{name}"' in text
        assert '<option value="PACS" selected>' in text
        wait_prefetch(browser, launch_url)

        # No choice sent: the PACS.
        job = export(browser, launch_url, uid)
        assert job["etat"] == "termine", job
        assert f"{INSTANCES} image(s) enregistrée(s) vers PACS (PACSB@" in job["message"]
        assert (stored(pacs), stored(workstation)) == (INSTANCES, 0)

        # The workstation by C-STORE, chosen in the row's list.
        job = export(browser, launch_url, uid, **{f"destination_{uid}": WORKSTATION})
        assert job["etat"] == "termine", job
        assert f"vers {WORKSTATION} (POSTE2@" in job["message"]
        assert stored(workstation) == INSTANCES

        # STOW-RS to the workstation's DICOMweb (emptied first: the same instances).
        workstation.delete_all()
        pacs.delete_all()
        job = export(browser, launch_url, uid, destination=DICOMWEB)
        assert job["etat"] == "termine", job
        assert f"vers {DICOMWEB} (STOW-RS {workstation.dicomweb_url})" in job["message"]
        assert (stored(pacs), stored(workstation)) == (0, INSTANCES)

        # An unknown name: refused in French, nothing sent, nothing audited.
        before = len(export_events(network))
        workstation.delete_all()
        refused = browser.post(f"{launch_url}/export/{uid}", data={"destination": "Ailleurs"})
        assert refused.status_code == 400
        assert "Destination d'export inconnue : « Ailleurs »" in unescape(refused.text)
        assert "« PACS », « Poste de lecture salle 2 », « Serveur DICOMweb »" in unescape(
            refused.text
        )
        assert stored(workstation) == 0 and len(export_events(network)) == before

    destinations = [e["detail"]["destination"] for e in export_events(network)]
    assert [d.split(" (")[0] for d in destinations] == ["PACS", WORKSTATION, DICOMWEB]
    assert all(e["result"] == "ok" and e["detail"]["stored"] == INSTANCES
               for e in export_events(network))  # fmt: skip
