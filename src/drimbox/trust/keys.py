"""Private keys and their certificates: the one place the box reads a key file.

Every key the box uses (DMP mutual TLS and signing, peer mutual TLS, the PSC client certificate)
is loaded here, so that the same rules apply everywhere:

- **Permissions.** A key file readable or writable by other accounts is refused, with the fix in
  the message (`chmod 600`, or `chown root:drimbox` + `chmod 640`). Group read is accepted only
  when the file's group is the service's own group (the `0640 root:drimbox` layout of
  docs/deploy.md); group write, and any access for others, never.
- **Encrypted keys.** A PKCS#12 file (`.p12`/`.pfx`) holds the key and its certificate, encrypted
  with a passphrase read from the environment variable the configuration names
  (`key_passphrase_env`), never from the configuration file itself. An encrypted PEM key works
  the same way.

`ssl.SSLContext.load_cert_chain` only reads files. A PKCS#12 key is decrypted in memory, then
handed to `ssl` as a temporary PEM file (0600, deleted at once) whose key is re-encrypted under a
random one-time password that never leaves the process: the clear key never touches the disk,
and the file is useless to whoever reads it meanwhile. (A memfd would be Linux-only and still a
path readable by the same account; this works everywhere `ssl` does.)
"""

from __future__ import annotations

import os
import secrets
import ssl
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

if TYPE_CHECKING:
    from drimbox.config import Config

PKCS12_SUFFIXES = (".p12", ".pfx")


class KeyFileError(ValueError):
    """A key file that cannot be used; the message (French) names the file and the fix."""


def is_pkcs12(path: str | Path) -> bool:
    return str(path).lower().endswith(PKCS12_SUFFIXES)


def permission_problem(path: str | Path) -> str | None:
    """Why this key file's permissions are unsafe (French), or None."""
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    other_group = bool(mode & stat.S_IRGRP) and info.st_gid != os.getegid()
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP) or other_group:
        return (
            f"clé {path} accessible à d'autres comptes (droits {mode:04o}) : refusée. "
            f"Corrigez avec « chmod 600 {path} » (propriétaire : le compte du service), ou "
            f"« chown root:drimbox {path} && chmod 640 {path} » (docs/deploy.md)"
        )
    return None


def _passphrase(path: str | Path, env: str, environ: Mapping[str, str] | None) -> bytes | None:
    if not env:
        return None
    value = (os.environ if environ is None else environ).get(env)
    if value is None:
        raise KeyFileError(
            f"clé {path} : la variable d'environnement {env} (key_passphrase_env), qui doit "
            "contenir sa phrase secrète, n'est pas définie dans l'environnement du service"
        )
    return value.encode()


def _read_key_file(path: str | Path) -> bytes:
    try:
        problem = permission_problem(path)
        if problem is not None:
            raise KeyFileError(problem)
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"clé privée illisible ({path}) : {exc.strerror or exc}") from None


@dataclass(frozen=True)
class KeyPair:
    """A private key, its certificate and the further certificates of its chain."""

    certificate: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()

    def key_pem(self) -> bytes:
        """The key as clear PKCS#8 PEM, in memory (xmlsec's signing key)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def matches(self) -> bool:
        """Whether the key is the certificate's."""
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        return self.key.public_key().public_bytes(
            der, spki
        ) == self.certificate.public_key().public_bytes(der, spki)

    def pem_bundle(self, password: bytes) -> bytes:
        """Certificates then the key encrypted under `password` (for `load_cert_chain`)."""
        certificates = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
        return certificates + key


def _load_pkcs12(path: str | Path, env: str, environ: Mapping[str, str] | None) -> KeyPair:
    data = _read_key_file(path)
    password = _passphrase(path, env, environ)
    try:
        key, certificate, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError:
        hint = (
            "phrase secrète incorrecte (variable " + env + ")"
            if env
            else "fichier chiffré : nommez la variable d'environnement de sa phrase secrète "
            "dans key_passphrase_env"
        )
        raise KeyFileError(f"fichier PKCS#12 {path} illisible : {hint}") from None
    if key is None or certificate is None:
        raise KeyFileError(
            f"fichier PKCS#12 {path} incomplet : il doit contenir la clé privée et son certificat"
        )
    return KeyPair(certificate, key, tuple(extra))


def load_private_key(
    key_path: str | Path, passphrase_env: str = "", *, environ: Mapping[str, str] | None = None
) -> PrivateKeyTypes:
    """The private key of a PEM key file or a PKCS#12 file, permissions checked."""
    if is_pkcs12(key_path):
        return _load_pkcs12(key_path, passphrase_env, environ).key
    data = _read_key_file(key_path)
    password = _passphrase(key_path, passphrase_env, environ)
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        raise KeyFileError(
            f"clé {key_path} chiffrée : nommez la variable d'environnement de sa phrase "
            "secrète dans key_passphrase_env"
            if password is None
            else f"clé {key_path} non chiffrée : retirez key_passphrase_env"
        ) from None
    except ValueError:
        raise KeyFileError(
            f"clé {key_path} illisible : ni une clé PEM, ni la bonne phrase secrète"
        ) from None


def load_key_pair(
    cert_path: str | Path,
    key_path: str | Path,
    passphrase_env: str = "",
    *,
    environ: Mapping[str, str] | None = None,
) -> KeyPair:
    """The key and certificate: from one PKCS#12 file (either path), or a PEM certificate
    (chain allowed) and a PEM key."""
    for path in (key_path, cert_path):
        if path and is_pkcs12(path):
            return _load_pkcs12(path, passphrase_env, environ)
    try:
        certificates = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"certificat illisible ({cert_path}) : {exc}") from None
    key = load_private_key(key_path, passphrase_env, environ=environ)
    return KeyPair(certificates[0], key, tuple(certificates[1:]))


def load_certificate(
    path: str | Path, passphrase_env: str = "", *, environ: Mapping[str, str] | None = None
) -> x509.Certificate:
    """The (first) certificate of a PEM file, or the one of a PKCS#12 file (decrypted with the
    passphrase of `passphrase_env`)."""
    if is_pkcs12(path):
        return _load_pkcs12(path, passphrase_env, environ).certificate
    return x509.load_pem_x509_certificates(Path(path).read_bytes())[0]


def load_cert_chain(
    context: ssl.SSLContext,
    cert_path: str | Path,
    key_path: str | Path,
    passphrase_env: str = "",
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """`context.load_cert_chain` with the checks and formats of this module (see its doc)."""
    if not (is_pkcs12(key_path) or is_pkcs12(cert_path)):
        problem = permission_problem(key_path) if Path(key_path).exists() else None
        if problem is not None:
            raise KeyFileError(problem)
        password = _passphrase(key_path, passphrase_env, environ)
        context.load_cert_chain(str(cert_path), str(key_path), password)
        return
    pair = load_key_pair(cert_path, key_path, passphrase_env, environ=environ)
    once = secrets.token_bytes(32)
    with tempfile.NamedTemporaryFile(prefix="drimbox-key-", suffix=".pem") as handle:
        handle.write(pair.pem_bundle(once))
        handle.flush()
        context.load_cert_chain(handle.name, password=once)


def key_problem(
    label: str,
    cert_path: str,
    key_path: str,
    passphrase_env: str = "",
    *,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Why a configured key cannot be used — unsafe permissions, no or a wrong passphrase, not
    a key (French, prefixed by `label`) —, or None."""
    if not cert_path or not key_path:
        return None  # incomplete pairs are reported by the checks of their section
    try:
        load_key_pair(cert_path, key_path, passphrase_env, environ=environ)
    except KeyFileError as exc:
        return f"{label} : {exc}"
    return None  # whether it is the certificate's key: the checks of its section say it


def configured_keys(config: Config) -> list[tuple[str, str, str, str]]:
    """(label, certificate, key, passphrase variable) of every key the configuration names."""
    dmp, psc, trust = config.dmp, config.psc, config.trust
    found = [
        ("[dmp] tls_key", dmp.tls_cert, dmp.tls_key, dmp.key_passphrase_env),
        ("[dmp] signing_key", dmp.signing_cert, dmp.signing_key, dmp.key_passphrase_env),
        ("[psc] tls_key", psc.tls_cert, psc.tls_key, psc.key_passphrase_env),
        ("[trust] tls_key", trust.tls_cert, trust.tls_key, trust.key_passphrase_env),
        ("[viewer] tls_key", config.viewer.tls_cert, config.viewer.tls_key,
         config.viewer.key_passphrase_env),
        ("[hl7] tls_key", config.hl7.tls_cert, config.hl7.tls_key, config.hl7.key_passphrase_env),
        ("[pacs] tls_key", config.pacs.tls_cert, config.pacs.tls_key,
         config.pacs.key_passphrase_env),
    ]  # fmt: skip
    for structure in config.structures:
        label, env = f"[[structures]] {structure.id}", structure.key_passphrase_env
        found.append((f"{label} tls_key", structure.tls_cert, structure.tls_key, env))
        found.append((f"{label} signing_key", structure.signing_cert, structure.signing_key, env))
    return [entry for entry in found if entry[2]]


def configured_certificates(
    config: Config, *, environ: Mapping[str, str] | None = None
) -> list[tuple[str, x509.Certificate | str]]:
    """(label, certificate or why it cannot be read) of every certificate the configuration
    names with its key: DMP ORG AUTH and signing, PSC client, peer TLS, each structure's."""
    found: list[tuple[str, x509.Certificate | str]] = []
    for label, cert, key, env in configured_keys(config):
        label = label.replace("tls_key", "tls_cert").replace("signing_key", "signing_cert")
        try:
            found.append((label, load_certificate(cert or key, env, environ=environ)))
        except (OSError, ValueError, IndexError) as exc:
            found.append((label, f"certificat illisible ({cert or key}) : {exc}"))
    return found


def key_problems(config: Config, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Why configured keys cannot be used (French, one sentence each): checked at start and by
    `drimbox config check`. The same file configured twice is reported once; a file not
    installed yet is left to the start of the service that uses it (and `drimbox aptitude`),
    so that a configuration can be checked before the certificates arrive."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for label, cert_path, key_path, env in configured_keys(config):
        if (cert_path, key_path) in seen or not Path(key_path).exists():
            continue
        seen.add((cert_path, key_path))
        problem = key_problem(label, cert_path, key_path, env, environ=environ)
        if problem is not None:
            problems.append(problem)
    secret = config.store.secret_key_file  # the sessions' key: created 0600 at first start
    if Path(secret).exists() and (problem := permission_problem(secret)) is not None:
        problems.append(f"[store] secret_key_file : {problem}")
    return problems
