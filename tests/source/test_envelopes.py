"""`drimbox reports show --iti41-out/--iti57-out`: the requests the box sends (or would send) to
the DMP, written for the ANS validators. They are the real ones: the strict DMP simulator
accepts them as they are written — over mutual TLS, with their VIHF — and registers then deletes
the KOS they carry."""

from __future__ import annotations

from pathlib import Path

import httpx
from lxml import etree
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.db import Database, ReportState
from drimbox.dmp import codes, mtom, soap
from drimbox.sim.orthanc import LocalOrthanc
from drimbox.source.envelopes import report_envelopes
from support.dmp import DmpEnvironment
from support.process import config_environ
from support.publishing import cli, node_that_sent
from support.samples import hl7_text, with_flags

CR_C = hl7_text("CR_C-ORU.hl7")
XOP = "{http://www.w3.org/2004/08/xop/include}Include"


def _header(envelope: bytes, name: str) -> str:
    root = etree.fromstring(envelope)
    return root.findtext(f"{{{codes.SOAP_NS}}}Header/{{{codes.WSA_NS}}}{name}") or ""


def _success(response: httpx.Response) -> bool:
    parsed = mtom.parse(response.headers.get("content-type", ""), response.content)
    return soap.parse_registry_response(soap.body_of(parsed.root)).success


def test_the_requests_written_are_those_the_dmp_accepts(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    with node_that_sent(pacs, dmp, tmp_path, with_flags(CR_C, DESTDMP=False)) as (node, row):
        config, kept = node.config, row.id
    assert row.state == ReportState.NOT_FOR_DMP.value and not dmp.stats().get("ITI-41:Success")
    db = Database(config.store.database_url)
    try:
        written = report_envelopes(config, db, kept)
    finally:
        db.dispose()
    # What the box would have sent, sent by hand: the DMP registers it as it would the box's.
    packed = mtom.pack(written.iti41, written.parts, action=codes.ACTION_ITI41)
    sent = dmp.post(soap.ITI41.url(dmp.dmp.url), packed.body(), packed.content_type)
    assert sent.status_code == 200 and _success(sent), sent.text
    documents = {d["unique_id"]: d for d in dmp.documents()}
    assert documents[row.kos_sop_uid or ""]["status"] == "Approved"
    assert [d["mime_type"] for d in documents.values()].count("text/xml") == 1
    content_type = f'{mtom.SOAP_CONTENT_TYPE}; charset=UTF-8; action="{codes.ACTION_ITI57}"'
    deleted = dmp.post(soap.ITI57.url(dmp.dmp.url), written.iti57, content_type)
    assert deleted.status_code == 200 and _success(deleted), deleted.text
    assert {d["status"] for d in dmp.documents()} == {"Deleted"}  # the KOS and its signature


def test_cli_writes_the_envelopes_of_a_published_report(
    pacs: LocalOrthanc, dmp: DmpEnvironment, tmp_path: Path
) -> None:
    with node_that_sent(pacs, dmp, tmp_path, CR_C) as (node, published):
        config, first = node.config, published.id
    assert published.state == ReportState.PUBLISHED.value, published.reason
    out = tmp_path / "requetes"
    out.mkdir()
    env = config_environ(config)
    iti41_out, iti57_out = str(out / "iti41.xml"), str(out / "iti57.xml")
    shown = cli(env, "reports", "show", str(first), "--config", "-",
                "--iti41-out", iti41_out, "--iti57-out", iti57_out)  # fmt: skip
    assert "Enveloppe ITI-41 écrite" in shown and "Enveloppe ITI-57 écrite" in shown
    iti41 = (out / "iti41.xml").read_bytes()
    assert _header(iti41, "Action") == codes.ACTION_ITI41
    assert _header(iti41, "To") == soap.ITI41.url(dmp.dmp.url)
    root = etree.fromstring(iti41)
    assert root.find(f".//{{{codes.WSSE_NS}}}Security/{{{codes.SAML_NS}}}Assertion") is not None
    # Every document is an XOP reference to a part written next to the envelope.
    hrefs = [e.get("href", "") for e in root.iter(XOP)]
    parts = [(out / h.removeprefix("cid:").replace("@", "_")).read_bytes() for h in hrefs]
    assert published.kos in parts and len(parts) == 2  # the KOS as published, its signature
    assert b"SignatureValue" in parts[1 - parts.index(published.kos)]
    iti57 = (out / "iti57.xml").read_bytes()
    assert _header(iti57, "Action") == codes.ACTION_ITI57
    # The deletion names the entry the DMP registered, and the signature document with it.
    assert (published.dmp_entry_uuid or "").encode() in iti57
    assert iti57.count(b"UpdateAvailabilityStatus") == 2

    # An unknown report: a French refusal, no file.
    config_env = env | dmp.node_environ()
    empty = tmp_path / "vide.toml"
    empty.write_text("")
    refused = CliRunner().invoke(
        app,
        ["reports", "show", "999", "--config", str(empty), "--iti41-out", str(out / "x.xml")],
        env=config_env,
    )
    assert refused.exit_code == 1 and "aucun compte rendu n°999" in refused.output
    assert not (out / "x.xml").exists()
