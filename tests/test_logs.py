"""The node's log: one line per event with the report, study and peer, as JSON on request."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from drimbox.config import LogConfig
from drimbox.logs import JsonFormatter, TextFormatter
from drimbox.sim.ports import free_port
from drimbox.sim.ris import RisClient
from support.node import node_config
from support.process import NodeProcess, config_environ
from support.samples import hl7_text


def event(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "drimbox.test", logging.INFO, __file__, 1, "report %s: %s", (7, "x"), None
    )
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_the_event_fields() -> None:
    line = TextFormatter().format(event(report_id=7, study_uid="1.2.3", peer="127.0.0.1:4000"))
    assert line.endswith("report 7: x [report_id=7 study_uid=1.2.3 peer=127.0.0.1:4000]")
    assert "\n" not in line


def test_json_error_is_one_line_with_its_traceback() -> None:
    try:
        raise ValueError("panne")
    except ValueError:
        import sys

        record = event(report_id=7)
        record.exc_info = sys.exc_info()
    line = JsonFormatter("n1").format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["node"] == "n1" and entry["report_id"] == 7 and entry["level"] == "INFO"
    assert "ValueError: panne" in entry["exception"]
    assert LogConfig().format == "text"


def test_serve_logs_json_events_of_a_report(tmp_path: Path) -> None:
    config_file = tmp_path / "node.toml"
    config_file.write_text('[log]\nformat = "json"\n\n[node]\nname = "noeud-json"\n')
    # No PACS listens there: the report is stored, then waits for its images.
    config = node_config(tmp_path, None, {"DRIMBOX_PACS__PORT": str(free_port())})
    node = NodeProcess(config_file, env=config_environ(config)).start()
    try:
        with RisClient("127.0.0.1", node.hl7_port) as ris:
            assert ris.send(hl7_text("CR_C-ORU.hl7")).code == "AA"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and '"message": "report 1:' not in node.log():
            time.sleep(0.1)
    finally:
        node.stop()
    lines = [line for line in node.log().splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert all(e["node"] == "noeud-json" for e in entries)
    study = "1.2.250.1.213.4.5.2.1.103"
    [stored] = [e for e in entries if e["message"].startswith("HL7 ORU^R01 from")]
    assert stored["report_id"] == 1 and stored["study_uid"].startswith(study)
    assert stored["peer"].startswith("127.0.0.1")
    processed = [e for e in entries if e["message"].startswith("report 1:")]
    assert processed and all(e["report_id"] == 1 for e in processed)
    assert processed[0]["study_uid"] == stored["study_uid"]
