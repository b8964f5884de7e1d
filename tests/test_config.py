"""Configuration: defaults, TOML, environment overrides and the operator's error messages."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import LIST_SECTIONS, Config, ConfigError, load_config
from drimbox.sim.pki import TestPki, structure_certificates

EXAMPLE = Path(__file__).parents[1] / "examples" / "drimbox.toml"


def test_defaults_need_no_file() -> None:
    config = load_config(environ={})
    assert config.hl7.port == 2575
    assert config.http.port == 8080
    assert config.pacs.scp_port == 11112
    assert config.store.database_url.startswith("sqlite:///")


def test_example_file_is_valid_and_documents_every_key() -> None:
    load_config(EXAMPLE, environ={})
    written = tomllib.loads(EXAMPLE.read_text())
    for section, model in Config.model_fields.items():
        assert section in written, f"[{section}] missing from the example"
        section_type = model.annotation
        tables = written[section]
        if section in LIST_SECTIONS:  # [[section]]: a list of tables, each key in one of them
            section_type = LIST_SECTIONS[section]
            assert isinstance(tables, list) and len(tables) >= 2
            tables = {key: True for table in tables for key in table}
        assert section_type is not None
        for key in section_type.model_fields:  # type: ignore[union-attr]
            assert key in tables, f"{section}.{key} missing from the example"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text('[pacs]\nport = 104\n[store]\ndatabase_url = "sqlite:///db/x.db"\n')
    config = load_config(file, environ={"DRIMBOX_PACS__PORT": "4242", "OTHER": "1"})
    assert config.pacs.port == 4242
    # relative paths are taken from the file's folder, not from the working directory
    assert config.store.database_url == f"sqlite:///{tmp_path / 'db' / 'x.db'}"


@pytest.mark.parametrize(
    ("toml", "environ", "expected"),
    [
        ("[pacs]\nport = 'abc'\n", {}, "pacs.port : doit être un nombre entier"),
        ("[pacs]\nportt = 1\n", {}, "pacs.portt : clé inconnue"),
        ("[pacs]\nretrieve = 'ftp'\n", {}, "pacs.retrieve : valeur « ftp » non admise"),
        ("[site]\nuid_root = '1.02.3'\n", {}, "site.uid_root : doit être un OID"),
        ("[store]\ndatabase_url = 'mysql://x'\n", {}, "store.database_url"),
        ("[hl7]\nport = 70000\n", {}, "hl7.port : valeur hors limites"),
        ("", {"DRIMBOX_PACS": "x"}, "DRIMBOX_PACS : attendu DRIMBOX_<SECTION>__<CLÉ>"),
        ("", {"DRIMBOX_NOPE__X": "1"}, "nope : clé inconnue"),
        ("[pacs\n", {}, "syntaxe TOML invalide"),
    ],
)
def test_each_wrong_key_is_named(
    tmp_path: Path, toml: str, environ: dict[str, str], expected: str
) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(file, environ=environ)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_config_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "Configuration valide" in ok.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[pacs]\nport = 'x'\nfoo = 1\n")
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert "pacs.port" in result.output and "pacs.foo : clé inconnue" in result.output
    missing = runner.invoke(app, ["config", "check", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2 and "fichier introuvable" in missing.output


def _structure_toml(structure_id: str, kind: str, auth: str, sign: str, keys: str) -> str:
    return (
        f'[[structures]]\nid = "{structure_id}"\nkind = "{kind}"\nname = "S {structure_id}"\n'
        f'tls_cert = "{auth}.crt"\ntls_key = "{auth}.key"\n'
        f'signing_cert = "{sign}.crt"\nsigning_key = "{keys}.key"\n'
    )


def test_config_check_verifies_each_structures_certificates(tmp_path: Path) -> None:
    pki = TestPki()
    good = structure_certificates(tmp_path, pki, "101235555", prefix="a")
    other = structure_certificates(tmp_path, pki, "3123456789012345", prefix="b")
    base = (
        "[roles]\nsource = true\n[http]\ninsecure_plain_http = true\n"
        '[dmp]\nbase_url = "https://dmp.test"\n'
        f'tls_ca = "{tmp_path / "ca.crt"}"\n'
    )

    def two_structures(name: str, b_auth: str, b_sign: str, b_key: str) -> Path:
        a = tmp_path / "a"
        file = tmp_path / f"{name}.toml"
        file.write_text(
            base
            + _structure_toml("101235555", "FINESS_EG", f"{a}-auth", f"{a}-sign", f"{a}-sign")
            + _structure_toml(
                "3123456789012345", "SIRET", *(str(tmp_path / p) for p in (b_auth, b_sign, b_key))
            )
        )
        return file

    ok_file = two_structures("ok", "b-auth", "b-sign", "b-sign")
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(ok_file)])
    assert ok.exit_code == 0, ok.output
    assert "structure 101235555" in ok.output and "structure 3123456789012345" in ok.output
    # Structure B signs with A's certificate and a key that is not its certificate's; its TLS
    # certificate is a signing one.
    bad_file = two_structures("bad", "b-sign", "a-sign", "b-sign")
    bad = runner.invoke(app, ["config", "check", str(bad_file)])
    assert bad.exit_code == 2, bad.output
    output = " ".join(bad.output.split())
    assert "structure 3123456789012345 : signing_cert" in output
    assert "« 101235555 », pas de 3123456789012345" in output
    assert f"la clé signing_key ({tmp_path / 'b-sign.key'}) ne correspond pas" in output
    assert "tls_cert" in output and "n'est pas un certificat d'authentification" in output
    assert "structure 101235555 :" not in output  # A is right
    assert good.structure_id != other.structure_id


def test_config_check_verifies_the_psc_client_certificate(tmp_path: Path) -> None:
    """PSC registers the box by its ORG AUTH CLI certificate: CN = client_id, key matching."""
    pki = TestPki()
    right = pki.issue("drimbox-site-a", usage="auth", organizational_unit="49970036790900")
    right = right.write(tmp_path, "psc")
    signing = pki.issue("drimbox-site-a", usage="sign").write(tmp_path, "sign")
    other_key = pki.issue("x", usage="auth").write(tmp_path, "other")

    def psc_file(name: str, client_id: str, cert: Path | None, key: Path | None) -> Path:
        file = tmp_path / f"{name}.toml"
        file.write_text(
            "[roles]\nsource = false\nconso = true\n[http]\ninsecure_plain_http = true\n"
            f'[psc]\nclient_id = "{client_id}"\n'
            f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        )
        return file

    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["config", "check", str(psc_file("ok", "drimbox-site-a", right.cert_path, right.key_path))],
    )
    assert ok.exit_code == 0, ok.output
    assert "certificat du client « drimbox-site-a » conforme" in ok.output
    cases = {
        "other client": (
            "drimbox-site-b",
            right.cert_path,
            right.key_path,
            "au nom de « drimbox-site-a », pas du client_id « drimbox-site-b »",
        ),
        "wrong key": (
            "drimbox-site-a",
            right.cert_path,
            other_key.key_path,
            "ne correspond pas au certificat tls_cert",
        ),
        "signing certificate": (
            "drimbox-site-a",
            signing.cert_path,
            signing.key_path,
            "n'est pas un certificat d'authentification",
        ),
        "missing file": ("drimbox-site-a", tmp_path / "absent.crt", right.key_path, "illisible"),
    }
    for name, (client_id, cert, key, expected) in cases.items():
        bad = runner.invoke(app, ["config", "check", str(psc_file("bad", client_id, cert, key))])
        assert bad.exit_code == 2, (name, bad.output)
        assert expected in " ".join(bad.output.split()), (name, bad.output)


def test_a_structure_id_used_twice_is_refused() -> None:
    structure = {
        "id": "101235555", "name": "A", "tls_cert": "a", "tls_key": "a", "signing_cert": "a",
        "signing_key": "a",
    }  # fmt: skip
    with pytest.raises(ValueError, match="déclarée deux fois"):
        Config.model_validate({"structures": [structure, structure]})


def test_configuration_reference_is_up_to_date() -> None:
    from drimbox.config import reference_markdown

    reference = Path(__file__).parents[1] / "docs" / "configuration.md"
    assert reference.read_text() == reference_markdown() + "\n", (
        "docs/configuration.md is stale: uv run drimbox config reference > docs/configuration.md"
    )


def test_export_destinations_are_checked() -> None:
    """Each destination is complete for its kind, named once, never « PACS » (the site's PACS,
    always offered first); a site with only [pacs] offers the PACS alone."""
    from drimbox.web.conso_routes import export_destinations, export_target

    assert export_destinations(load_config(environ={})) == ["PACS"]
    workstation = {"name": "Poste 2", "host": "poste", "called_aet": "POSTE2"}
    stow = {"name": "Recherche", "kind": "stow-rs", "url": "https://r/dicom-web"}
    config = Config.model_validate({"export_destinations": [workstation, stow]})
    assert export_destinations(config) == ["PACS", "Poste 2", "Recherche"]
    assert export_target(config, "Poste 2").label == "Poste 2 (POSTE2@poste:104)"
    assert export_target(config, "Recherche").label == "Recherche (STOW-RS https://r/dicom-web)"
    assert export_target(config).label.startswith("PACS (PACS@127.0.0.1:104)")
    with pytest.raises(ValueError, match="inconnue"):
        export_target(config, "Ailleurs")
    bad = [
        ([workstation, workstation], "« poste 2 » est déclarée deux fois"),
        ([{**workstation, "name": "pacs"}], "désigne déjà le PACS du site"),
        ([{"name": "Poste 3", "host": "poste"}], "demande host et called_aet"),
        ([{"name": "R", "kind": "stow-rs"}], "demande une url"),
    ]
    for destinations, problem in bad:
        with pytest.raises(ValidationError, match=problem):
            Config.model_validate({"export_destinations": destinations})
