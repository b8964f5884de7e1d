"""The Conso's exam history shown again from what is stored (no DMP call) is audited as a look
at the patient's exams, as its first reading from the DMP is. Over real sockets: a Source node
with Orthanc, a Conso node, the DMP and PSC simulators (`support.history`)."""

from __future__ import annotations

from pathlib import Path

from drimbox.sim.orthanc import LocalOrthanc
from drimbox.sim.studies import SeriesSpec
from drimbox.trust import audit
from support.factories import CR_C_INS
from support.history import launch, long_history, signed_in_user

RADIOLOGIST = "899700100011"  # the PSC simulator's `radiologue`


def test_a_history_shown_again_is_audited(orthanc: LocalOrthanc, tmp_path: Path) -> None:
    with long_history(orthanc, tmp_path, count=1, series=(SeriesSpec("CT", "a", 1),),
                      size=8) as network:  # fmt: skip
        with signed_in_user(network) as browser:
            url, _ = launch(browser)  # read from the DMP
            again = browser.get(url)  # from the database, no DMP call
            assert again.status_code == 200 and "PAT-TROIS" in again.text
            refreshed = browser.get(url, params={"actualiser": "1"})  # from the DMP again
            assert refreshed.status_code == 200
        events = audit.events(network.conso.node.db, actor=RADIOLOGIST)
    looks = [e for e in events if e["action"] in ("dmp_history", "history_view")]
    assert [e["action"] for e in looks] == ["dmp_history", "history_view", "dmp_history"]
    (view,) = [e for e in looks if e["action"] == "history_view"]
    assert view["patient_ins"] == CR_C_INS and view["result"] == "ok"
    assert view["detail"]["exams"] == 1 and view["detail"]["launch"] not in url
