"""Key files: permissions checked at start, encrypted keys (PKCS#12, passphrase from the
environment) usable wherever the box loads a key, over a real TLS handshake."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drimbox.cli import app
from drimbox.config import load_config
from drimbox.dmp.client import DmpSettings, load_signer
from drimbox.node import Node
from drimbox.sim.pki import Issued, TestPki
from drimbox.trust.keys import (
    KeyFileError,
    key_problems,
    load_cert_chain,
    load_key_pair,
    permission_problem,
)
from drimbox.trust.tls import client_ssl_context, server_ssl_context
from drimbox.web.metrics_app import certificate_files, days_to_expiry
from drimbox.web.sessions import load_secret_key

PASS_VARIABLE = "DRIMBOX_DMP_KEY_PASS"


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki("AC IGC-SANTE TEST CLES")


@pytest.fixture()
def server(pki: TestPki, tmp_path: Path) -> Issued:
    return pki.issue("db1.test", usage="server", dns_names=("localhost",)).write(tmp_path, "srv")


def test_generated_keys_are_0600_whatever_the_umask(pki: TestPki, tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        issued = pki.issue("x", usage="auth").write(tmp_path, "x")
        p12 = issued.write_pkcs12(tmp_path, "x", b"phrase")
    finally:
        os.umask(previous)
    assert issued.key_path is not None
    for path in (issued.key_path, p12):
        assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o602])
def test_a_key_readable_by_others_is_refused_naming_the_fix(server: Issued, mode: int) -> None:
    assert server.key_path is not None and server.cert_path is not None
    server.key_path.chmod(mode)
    problem = permission_problem(server.key_path)
    assert problem is not None
    assert str(server.key_path) in problem and f"{mode:04o}" in problem
    assert f"chmod 600 {server.key_path}" in problem and "root:drimbox" in problem
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(KeyFileError, match="accessible à d'autres comptes"):
        load_cert_chain(context, server.cert_path, server.key_path)
    with pytest.raises(KeyFileError, match="accessible à d'autres comptes"):
        load_key_pair(server.cert_path, server.key_path)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_owner_only_and_own_group_keys_are_accepted(server: Issued, mode: int) -> None:
    """0640 with the service's group is the `root:drimbox` layout of docs/deploy.md."""
    assert server.key_path is not None and server.cert_path is not None
    server.key_path.chmod(mode)
    assert os.stat(server.key_path).st_gid == os.getegid()
    assert permission_problem(server.key_path) is None
    assert load_key_pair(server.cert_path, server.key_path).matches()


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> str:
    """A real TLS handshake over a socket pair; the client certificate's subject as the server
    saw it."""
    left, right = socket.socketpair()
    seen: list[str] = []

    def serve() -> None:
        with server_context.wrap_socket(left, server_side=True) as tls:
            der = tls.getpeercert(True)
            seen.append(str(len(der or b"")))
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    with client_context.wrap_socket(right, server_hostname="localhost") as tls:
        assert tls.recv(2) == b"ok"
    thread.join()
    return seen[0]


def test_pkcs12_keys_with_a_passphrase_from_the_environment_serve_mutual_tls(
    pki: TestPki, server: Issued, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = pki.issue("db2.test", usage="auth")
    p12 = client.write_pkcs12(tmp_path, "client", b"s3cret phrase", chain=(pki.ca.certificate,))
    server_p12 = server.write_pkcs12(tmp_path, "server", b"autre phrase")
    ca = pki.ca.write(tmp_path, "ca").cert_path
    assert ca is not None
    monkeypatch.setenv(PASS_VARIABLE, "s3cret phrase")
    monkeypatch.setenv("SERVER_PASS", "autre phrase")
    before = set(Path(tempfile.gettempdir()).glob("drimbox-key-*"))
    server_context = server_ssl_context(server_p12, server_p12, ca, "SERVER_PASS")
    client_context = client_ssl_context(p12, p12, ca, PASS_VARIABLE)
    # The decrypted key was handed over through a file that is gone.
    assert set(Path(tempfile.gettempdir()).glob("drimbox-key-*")) == before
    assert int(_handshake(server_context, client_context)) > 0


def test_pkcs12_without_or_with_a_wrong_passphrase_is_a_clear_french_error(
    pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p12 = pki.issue("db2.test", usage="auth").write_pkcs12(tmp_path, "client", b"bonne")
    monkeypatch.delenv(PASS_VARIABLE, raising=False)
    with pytest.raises(KeyFileError, match=f"variable d'environnement {PASS_VARIABLE}"):
        load_key_pair(p12, p12, PASS_VARIABLE)
    with pytest.raises(KeyFileError, match="nommez la variable d'environnement"):
        load_key_pair(p12, p12)
    monkeypatch.setenv(PASS_VARIABLE, "mauvaise")
    with pytest.raises(KeyFileError, match="phrase secrète incorrecte"):
        load_key_pair(p12, p12, PASS_VARIABLE)


def _dmp_config(tmp_path: Path, cert: str, key: str, extra: str = "") -> Path:
    file = tmp_path / "drimbox.toml"
    file.write_text(
        f'[dmp]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'signing_cert = "{cert}"\nsigning_key = "{key}"\n{extra}'
    )
    return file


def test_the_dmp_signing_key_may_be_a_pkcs12_file(
    pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signing = pki.issue("ORG SIGN", usage="sign")
    p12 = signing.write_pkcs12(tmp_path, "sign", b"phrase")
    # The example's name starts with DRIMBOX_: it is a passphrase, not a configuration override.
    monkeypatch.setenv(PASS_VARIABLE, "phrase")
    file = tmp_path / "drimbox.toml"
    file.write_text(f'[dmp]\nsigning_key = "{p12}"\nkey_passphrase_env = "{PASS_VARIABLE}"\n')
    config = load_config(file)
    assert config.dmp.signing_cert == str(p12)  # one PKCS#12 file stands for both
    signer = load_signer(DmpSettings.from_config(config))
    assert signer.certificate == signing.certificate
    assert b"PRIVATE KEY" in signer.key_pem
    assert key_problems(config) == []


def test_config_check_and_node_start_refuse_unusable_keys(
    server: Issued, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert server.key_path is not None and server.cert_path is not None
    file = _dmp_config(tmp_path, str(server.cert_path), str(server.key_path))
    runner = CliRunner()
    server.key_path.chmod(0o644)
    refused = runner.invoke(app, ["config", "check", str(file)])
    assert refused.exit_code == 2, refused.output
    output = " ".join(refused.output.split())
    assert "Clés privées inutilisables" in output and "[dmp] tls_key" in output
    assert f"chmod 600 {server.key_path}" in output
    node = Node(load_config(file))
    with pytest.raises(KeyFileError, match="accessible à d'autres comptes"):
        asyncio.run(node.start())  # before any listener or database work
    assert node.mllp is None and node.web is None
    server.key_path.chmod(0o600)
    monkeypatch.delenv("NO_SUCH_PASS", raising=False)
    passphrase = 'key_passphrase_env = "NO_SUCH_PASS"\n'
    encrypted = _dmp_config(tmp_path, str(server.cert_path), str(server.key_path), passphrase)
    missing = runner.invoke(app, ["config", "check", str(encrypted)])
    assert missing.exit_code == 2 and "NO_SUCH_PASS" in missing.output


def test_a_pkcs12_certificate_s_expiry_is_watched(
    pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drimbox_certificate_expiry_days` reads the certificate inside a PKCS#12 file too."""
    issued = pki.issue("ORG AUTH", usage="auth", days=40)
    p12 = issued.write_pkcs12(tmp_path, "auth", b"phrase")
    monkeypatch.setenv(PASS_VARIABLE, "phrase")
    file = tmp_path / "drimbox.toml"
    file.write_text(f'[dmp]\ntls_key = "{p12}"\nkey_passphrase_env = "{PASS_VARIABLE}"\n')
    files = certificate_files(load_config(file))
    assert files["dmp_tls"] == (str(p12), PASS_VARIABLE)
    days = days_to_expiry(str(p12), datetime.now(UTC), PASS_VARIABLE)
    assert days is not None and 39 < days <= 40
    assert days_to_expiry(str(p12), datetime.now(UTC)) is None  # no passphrase: unreadable


def test_the_session_secret_is_refused_when_others_may_read_it(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    assert len(load_secret_key(secret)) == 32  # created 0600 at first use
    assert secret.stat().st_mode & 0o777 == 0o600
    secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="accessible à d'autres comptes"):
        load_secret_key(secret)
    file = tmp_path / "drimbox.toml"
    file.write_text(f'[store]\nsecret_key_file = "{secret}"\n')
    problems = key_problems(load_config(file))
    assert len(problems) == 1 and problems[0].startswith("[store] secret_key_file")


def test_psc_key_paths_are_relative_to_the_configuration_file(tmp_path: Path) -> None:
    file = tmp_path / "drimbox.toml"
    file.write_text('[psc]\ntls_cert = "certs/psc.p12"\nca_file = "certs/ca.pem"\n')
    psc = load_config(file).psc
    assert psc.tls_cert == psc.tls_key == str(tmp_path / "certs" / "psc.p12")
    assert psc.ca_file == str(tmp_path / "certs" / "ca.pem")
