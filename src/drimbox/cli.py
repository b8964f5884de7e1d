"""The `drimbox` command: run a node, check its configuration, inspect reports, run simulators.

Messages are in French: the site's IT staff read them. Every failure ends with a one-line reason
and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from drimbox.config import Config, ConfigError, load_config
from drimbox.db import Database, Report
from drimbox.db.engine import SchemaTooNew
from drimbox.french import PARIS, french_datetime, french_number, french_size

SCHEMA_TOO_NEW_EXIT = 3  # kept in scripts/drimbox.service (RestartPreventExitStatus)

app = typer.Typer(help="DRIMbox : passerelle d'imagerie du réseau DRIM-M.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration du nœud.", no_args_is_help=True)
reports_app = typer.Typer(help="Comptes rendus reçus et KOS construits.", no_args_is_help=True)
db_app = typer.Typer(help="Base de données.", no_args_is_help=True)
sim_app = typer.Typer(
    help="Simulateurs (RIS, services nationaux) pour tests et démo.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(reports_app, name="reports")
app.add_typer(db_app, name="db")
pacs_app = typer.Typer(help="PACS du site.", no_args_is_help=True)
cache_app = typer.Typer(help="Cache d'images.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
whitelist_app = typer.Typer(
    help="Liste blanche DRIM-M (espace de confiance).", no_args_is_help=True
)
app.add_typer(whitelist_app, name="whitelist")
xdm_app = typer.Typer(help="Archives XDM (IHE ITI-32).", no_args_is_help=True)
app.add_typer(xdm_app, name="xdm")
audit_app = typer.Typer(help="Traces d'accès aux données de santé.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
retention_app = typer.Typer(
    help="Rétention des données : purge de ce qui a fait son temps.", no_args_is_help=True
)
app.add_typer(retention_app, name="retention")
stats_app = typer.Typer(
    help="Statistiques d'usage (indicateurs ANS / Ségur).", no_args_is_help=True
)
app.add_typer(stats_app, name="stats")
app.add_typer(sim_app, name="sim")
app.add_typer(pacs_app, name="pacs")
peer_app = typer.Typer(help="Autres DRIMbox de la liste blanche.", no_args_is_help=True)
app.add_typer(peer_app, name="peer")

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="DRIMBOX_CONFIG",
        help="Fichier de configuration TOML (sinon $DRIMBOX_CONFIG, sinon les défauts).",
    ),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]Erreur :[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _load(path: Path | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[bold red]Configuration invalide[/] ({exc.source}) :", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {escape(problem)}", highlight=False)
        raise typer.Exit(2) from None


def _database(config: Config) -> Database:
    db = Database(config.store.database_url, config.node.name)
    try:
        db.upgrade()
    except SchemaTooNew as exc:
        fail(str(exc), code=SCHEMA_TOO_NEW_EXIT)
    except Exception as exc:  # noqa: BLE001 - shown to the operator, not a traceback
        fail(f"base de données inaccessible ({config.store.database_url}) : {exc}")
    return db


@config_app.command("check")
def config_check(file: Path) -> None:
    """Valide un fichier de configuration et dit ce qui ne va pas, clé par clé."""
    config = _load(file)
    console.print(f"[green]Configuration valide[/] : {file}")
    roles = [name for name, on in config.roles.model_dump().items() if on]
    console.print(f"  rôles : {', '.join(roles) or 'aucun'}")
    console.print(f"  base : {config.store.database_url}")
    console.print(f"  MLLP : {config.hl7.host}:{config.hl7.port}")
    console.print(f"  HTTP : {config.http.host}:{config.http.port}")
    console.print(
        f"  PACS : {config.pacs.called_aet}@{config.pacs.host}:{config.pacs.port} "
        f"(récupération {config.pacs.retrieve})"
    )
    _check_structures(config)
    _check_psc_certificate(config)
    _check_keys(config)
    from drimbox.web.assembly import transport_problems

    _refuse_if_any("Transport non chiffré", transport_problems(config))


def _refuse_if_any(title: str, problems: list[str]) -> None:
    """`drimbox config check` fails (exit 2) listing `problems`, if there are any."""
    if problems:
        err.print(f"[bold red]{title}[/] :", highlight=False)
        for problem in problems:
            err.print(f"  - {escape(problem)}", highlight=False)
        raise typer.Exit(2)


def _check_keys(config: Config) -> None:
    """Every configured key is readable by the service only, decrypts, matches its
    certificate."""
    from drimbox.trust.keys import key_problems

    _refuse_if_any("Clés privées inutilisables", key_problems(config))


def _check_psc_certificate(config: Config) -> None:
    """The PSC client certificate names the client (CN = client_id) and matches its key."""
    from drimbox.auth.psc import certificate_problems

    if not config.psc.tls_cert:
        return
    _refuse_if_any("Certificat Pro Santé Connect incorrect", certificate_problems(config.psc))
    console.print(
        f"  Pro Santé Connect : certificat du client « {config.psc.client_id} » conforme "
        "(TLS mutuel)",
        highlight=False,
    )


def _check_structures(config: Config) -> None:
    """Each structure's ORG certificates name it (subject OU) and match their keys."""
    from drimbox.dmp.structures import certificate_problems, site_structures

    if not config.roles.source or not config.dmp.base_url:
        return  # no publication: the DMP certificates are not used
    problems: list[str] = []
    for structure in site_structures(config):
        found = certificate_problems(structure)
        problems += found
        if not found:
            console.print(
                f"  structure {structure.id} ({structure.name}) : certificats ORG AUTH et "
                "ORG SIGN conformes",
                highlight=False,
            )
    _refuse_if_any("Certificats des structures incorrects", problems)


@config_app.command("reference")
def config_reference() -> None:
    """Affiche la référence de configuration (Markdown), générée depuis le modèle."""
    from drimbox.config import reference_markdown

    sys.stdout.write(reference_markdown() + "\n")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Met le schéma de la base à jour (fait aussi au démarrage de `serve`)."""
    cfg = _load(config)
    _database(cfg).dispose()
    console.print(f"[green]Schéma à jour[/] : {cfg.store.database_url}")


@db_app.command("grant-node")
def db_grant_node(
    role: Annotated[str, typer.Argument(help="Rôle PostgreSQL sous lequel tourne le nœud.")],
    config: ConfigOption = None,
) -> None:
    """Donne au rôle du nœud ses droits sur les données, sans pouvoir réécrire la piste d'audit
    (PostgreSQL ; à lancer avec le rôle propriétaire du schéma, après `db upgrade`)."""
    from drimbox.db.roles import RoleError, grant_node_role

    cfg = _load(config)
    db = Database(cfg.store.database_url)
    try:
        grant_node_role(db, role)
    except RoleError as exc:
        fail(str(exc))
    finally:
        db.dispose()
    console.print(f"[green]Droits accordés[/] au rôle {role}", highlight=False)


@db_app.command("backup")
def db_backup(
    output: Annotated[Path, typer.Option("--output", "-o", help="Fichier de sauvegarde.")],
    config: ConfigOption = None,
) -> None:
    """Sauvegarde la base pendant que le nœud tourne (SQLite : copie cohérente ; PostgreSQL :
    pg_dump au format custom)."""
    from drimbox.db.backup import BackupError, backup

    cfg = _load(config)
    try:
        backup(cfg.store.database_url, output)
    except BackupError as exc:
        fail(f"sauvegarde impossible : {exc}")
    size = french_size(output.stat().st_size)
    console.print(f"[green]Sauvegarde écrite[/] : {output} ({size})", highlight=False)


@db_app.command("restore")
def db_restore(
    backup_file: Annotated[Path, typer.Argument(help="Fichier écrit par `drimbox db backup`.")],
    config: ConfigOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Sans demander de confirmation.")] = False,
) -> None:
    """Remplace toute la base par une sauvegarde (nœud arrêté), puis met son schéma à jour."""
    from drimbox.db.backup import BackupError, restore

    cfg = _load(config)
    url = cfg.store.database_url
    if not yes and not typer.confirm(
        f"Remplacer toute la base {url} par {backup_file} ? Arrêtez d'abord le service."
    ):
        fail("restauration annulée")
    try:
        restore(url, backup_file)
    except BackupError as exc:
        fail(f"restauration impossible : {exc}")
    _database(cfg).dispose()
    console.print(f"[green]Base restaurée[/] depuis {backup_file} : {url}", highlight=False)


@cache_app.command("purge")
def cache_purge(
    config: ConfigOption = None,
    expired: Annotated[bool, typer.Option(help="Seulement les séries expirées (TTL).")] = False,
) -> None:
    """Vide le cache d'images (ou seulement les séries expirées)."""
    from drimbox.dicom.cache import purge_cache
    from drimbox.web.admin_routes import purge_message

    cfg = _load(config)
    result = purge_cache(
        Path(cfg.store.cache_dir), expired_only=expired, ttl_h=cfg.store.cache_ttl_h
    )
    console.print(purge_message(result.series, result.bytes), highlight=False)


@pacs_app.command("echo")
def pacs_echo(config: ConfigOption = None) -> None:
    """Vérifie la connexion DICOM au PACS (C-ECHO) avec les réglages de la configuration."""
    from drimbox.dicom.pacs import PacsClient, PacsError
    from drimbox.source.pipeline import pacs_settings

    cfg = _load(config)
    client = PacsClient(pacs_settings(cfg))
    try:
        client.echo()
    except PacsError as exc:
        fail(str(exc))
    console.print(f"[green]PACS joignable[/] : {client.settings.label}", highlight=False)


def _record_speed(cfg: Config, result: Any) -> None:
    """Keep a speed test for the console's status page (best effort: the measure is shown)."""
    from drimbox.ops.speedtest import record

    try:
        db = Database(cfg.store.database_url)
        try:
            db.upgrade()
            record(db, result, slow_ratio=cfg.checks.slow_ratio)
        finally:
            db.dispose()
    except Exception as exc:  # noqa: BLE001 - shown to the operator, not a traceback
        err.print(f"[yellow]Résultat non enregistré[/] (base de données : {escape(str(exc))})")


def _speed_report(cfg: Config, result: Any, as_json: bool) -> None:
    """Record a speed test and print it; exit 1 when it failed."""
    _record_speed(cfg, result)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False, indent=2) + "\n")
    else:
        title = "Test de débit" + (" — ÉCHEC" if not result.ok else "")
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("", style="bold")
        table.add_column("", overflow="fold")
        for label, value in result.summary():
            table.add_row(label, escape(value))
        if result.error:
            table.add_row("Erreur", escape(result.error))
        console.print(table)
        if result.flag:
            err.print(f"[bold yellow]Attention :[/] {escape(result.flag)}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def _speed_failure(cfg: Config, result: Any) -> None:
    """A test that could not run: recorded as such, refused in French."""
    _record_speed(cfg, result)
    fail(result.error)


@pacs_app.command("speedtest")
def pacs_speedtest_command(
    config: ConfigOption = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study Instance UID de l'examen à récupérer.")
    ] = None,
    latest: Annotated[
        bool, typer.Option("--latest", help="L'examen le plus récent du PACS (défaut).")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(help="c-get, c-move, c-move-dcmtk ou wado-rs (défaut : [pacs] retrieve)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Sortie JSON (supervision).")] = False,
) -> None:
    """Récupère un vrai examen du PACS comme le fait la DRIMbox, sans le garder, et mesure
    première image, images, volume, débit et syntaxe de transfert reçue."""
    from drimbox.dicom.retrieve import pacs_settings
    from drimbox.ops.speedtest import SpeedTestError, failed, pacs_speedtest

    cfg = _load(config)
    if study and latest:
        fail("--study et --latest s'excluent : choisissez l'un des deux")
    chosen = mode or cfg.pacs.retrieve
    if not as_json:
        err.print(f"Récupération depuis le PACS en {chosen}…", highlight=False)
    try:
        result = pacs_speedtest(cfg, study_uid=study, mode=chosen)
    except SpeedTestError as exc:
        _speed_failure(cfg, failed("pacs", pacs_settings(cfg).label, chosen, study or "", exc))
        return
    _speed_report(cfg, result, as_json)


@peer_app.command("speedtest")
def peer_speedtest_command(
    host: Annotated[str, typer.Argument(help="Nom db… de la DRIMbox (liste blanche).")],
    config: ConfigOption = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study Instance UID d'un examen qu'elle publie.")
    ] = None,
    kos: Annotated[
        str | None, typer.Option("--kos", help="SOP Instance UID du KOS publié de cet examen.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Jeton d'accès PSC de l'opérateur (sinon [checks] peer_token).",
            envvar="DRIMBOX_SPEEDTEST_TOKEN",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Sortie JSON (supervision).")] = False,
) -> None:
    """Mesure une autre DRIMbox en WADO-RS sur TLS mutuel (latence de la requête, première
    image, débit), avec le certificat de cette DRIMbox ; sans --study : sonde de latence."""
    from drimbox.ops.speedtest import SpeedTestError, failed, peer_speedtest, peer_target

    cfg = _load(config)
    try:
        result = peer_speedtest(
            cfg, host, study_uid=study, kos_uid=kos, token=token or cfg.checks.peer_token
        )
    except SpeedTestError as exc:
        _speed_failure(cfg, failed("peer", peer_target(host), "wado-rs", study or "", exc))
        return
    _speed_report(cfg, result, as_json)


@app.command()
def serve(config: ConfigOption = None, verbose: bool = False) -> None:
    """Démarre le nœud (rôles selon la configuration) jusqu'à Ctrl-C."""
    from drimbox.logs import configure_logging
    from drimbox.node import Node

    cfg = _load(config)
    configure_logging(cfg.log, cfg.node.name, verbose=verbose)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        node = Node(cfg)
        await node.start()
        ports = f"MLLP {cfg.hl7.host}:{node.mllp.port}" if node.mllp else "MLLP désactivé"
        console.print(f"[green]DRIMbox prête[/] — {ports}", highlight=False)
        try:
            await stop.wait()
        finally:
            await node.stop()
            console.print("DRIMbox arrêtée.")

    try:
        asyncio.run(main())
    except SchemaTooNew as exc:
        # Its own exit code: the systemd unit does not restart on it (RestartPreventExitStatus).
        fail(f"démarrage refusé : {exc}", code=SCHEMA_TOO_NEW_EXIT)
    except (OSError, ValueError) as exc:  # ports, files, settings only checkable at start
        fail(f"impossible de démarrer : {exc}")


def _iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 with its zone: SQLite hands stored UTC back without one."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _report_row(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "received_at": _iso_utc(report.received_at),
        "kind": report.kind,
        "patient_ins": report.patient_ins,
        "study_uid": report.study_uid,
        "accession": report.accession,
        "document_id": report.document_id,
        "version": report.version_number,
        "state": report.state,
        "reason": report.reason,
        "kos_sop_instance_uid": report.kos_sop_uid,
        "kos_instances": report.kos_instance_count,
        "dmp_entry_uuid": report.dmp_entry_uuid,
        "published_at": _iso_utc(report.published_at),
    }


KIND_LABELS = {
    "publish": "CR",
    "update": "mise à jour",
    "withdraw": "dépublication",
    "withdraw_exam": "suppression examen",
    "exam_update": "examen modifié",
    "iocm": "rejet PACS",
    "recheck": "images tardives",
    "confidentiality": "confidentialité",
}
STATE_LABELS = {
    "received": "reçu",
    "waiting_images": "attente images",
    "kos_built": "KOS construit",
    "refused": "refusé",
    "withdrawal_received": "dépublication reçue",
    "publishing": "publication en cours",
    "published": "publié au DMP",
    "parked": "bloqué (DMP)",
    "replaced": "remplacé",
    "withdrawn": "dépublié",
    "applied": "dépublication faite",
    "not_for_dmp": "non destiné au DMP",
    "superseded": "version dépassée",
}


# `reports show` for site staff: French names; the JSON of `reports list --json` keeps the keys.
SHOW_LABELS = {
    "id": "N°",
    "received_at": "Reçu le",
    "kind": "Type",
    "patient_ins": "INS",
    "study_uid": "UID d'étude",
    "accession": "N° d'accès",
    "document_id": "Identifiant du document",
    "version": "Version",
    "state": "État",
    "reason": "Motif",
    "kos_sop_instance_uid": "UID du KOS",
    "kos_instances": "Images référencées par le KOS",
    "dmp_entry_uuid": "Identifiant au DMP",
    "published_at": "Publié le",
}


def _shown(key: str, value: Any) -> str:
    """A `_report_row` value as site staff read it: Paris time with its offset, labels."""
    if value is None:
        return ""
    if key.endswith("_at"):
        return french_datetime(value, offset=True)
    if key == "kind":
        return KIND_LABELS.get(value, str(value))
    if key == "state":
        return STATE_LABELS.get(value, str(value))
    if key == "kos_instances":
        return french_number(value)
    return str(value)


@reports_app.command("list")
def reports_list(
    config: ConfigOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Sortie JSON : {total, offset, limit, truncated, next_offset, reports}.",
        ),
    ] = False,
    state: Annotated[str | None, typer.Option(help="Filtrer sur un état.")] = None,
    limit: Annotated[int, typer.Option(min=0, help="Nombre maximal de lignes (0 : toutes).")] = 100,
    offset: Annotated[
        int, typer.Option(min=0, help="Lignes à sauter (page suivante : next_offset).")
    ] = 0,
) -> None:
    """Liste les comptes rendus reçus, du plus récent au plus ancien, par pages de --limit."""
    db = _database(_load(config))
    with db.session() as session:
        query = select(Report).order_by(Report.id.desc()).offset(offset)
        counted = select(func.count()).select_from(Report)
        if state:
            query = query.where(Report.state == state)
            counted = counted.where(Report.state == state)
        if limit:
            query = query.limit(limit)
        rows = [_report_row(r) for r in session.scalars(query)]
        total = session.scalar(counted) or 0
    shown_to = offset + len(rows)
    truncated = shown_to < total
    if as_json:
        page = {
            "total": total,
            "offset": offset,
            "limit": limit or None,
            "truncated": truncated,
            "next_offset": shown_to if truncated else None,
            "reports": rows,
        }
        sys.stdout.write(json.dumps(page, ensure_ascii=False, indent=2) + "\n")
        return
    title = f"Comptes rendus ({len(rows)} sur {total})"
    if truncated:
        title += f" — suite : --offset {shown_to}, ou --limit 0 pour tout voir"
    table = Table(title=title, title_justify="left")
    for column in ("N°", "Reçu le (heure de Paris)", "Type", "INS", "N° d'accès", "État",
                   "Détail"):  # fmt: skip
        table.add_column(column, overflow="fold", no_wrap=column in ("N°", "INS"))
    for row in rows:
        detail = row["reason"] or (
            f"{french_number(row['kos_instances'])} images"
            if row["kos_instances"] is not None
            else ""
        )
        if row["state"] == "published" and row["dmp_entry_uuid"]:
            detail = f"{detail}, DMP {row['dmp_entry_uuid'].removeprefix('urn:uuid:')[:8]}…"
        table.add_row(
            str(row["id"]),
            french_datetime(row["received_at"], offset=True),
            KIND_LABELS.get(row["kind"], row["kind"]),
            row["patient_ins"],
            row["accession"],
            STATE_LABELS.get(row["state"], row["state"]),
            escape(detail),
        )
    console.print(table)


@reports_app.command("show")
def reports_show(
    report_id: int,
    config: ConfigOption = None,
    kos_out: Annotated[
        Path | None, typer.Option(help="Écrit le KOS (fichier DICOM Part 10).")
    ] = None,
    iti41_out: Annotated[
        Path | None,
        typer.Option(
            help="Écrit l'enveloppe SOAP ITI-41 exacte envoyée (ou qui serait envoyée) au DMP "
            "pour cette version, pour les validateurs de l'ANS ; les documents (références XOP) "
            "sont écrits à côté."
        ),
    ] = None,
    iti57_out: Annotated[
        Path | None,
        typer.Option(help="Écrit l'enveloppe SOAP ITI-57 de suppression de ce KOS au DMP."),
    ] = None,
) -> None:
    """Détail d'un compte rendu et de son KOS."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from drimbox.dicom.kos import describe_manifest

    loaded = _load(config)
    db = _database(loaded)
    if iti41_out or iti57_out:
        _write_envelopes(loaded, db, report_id, iti41_out, iti57_out)
    with db.session() as session:
        report = session.get(Report, report_id)
        if report is None:
            fail(f"aucun compte rendu n°{report_id}")
            return
        row = _report_row(report)
        kos, flags = report.kos, dict(report.flags)
    for key, value in row.items():
        console.print(f"[bold]{SHOW_LABELS[key]}[/] : {_shown(key, value)}", highlight=False)
    flag_text = ", ".join(f"{name}={'O' if on else 'N'}" for name, on in flags.items())
    console.print(f"[bold]Indicateurs[/] : {flag_text}", highlight=False)
    if kos is None:
        console.print("Pas de KOS construit.")
        if kos_out:
            fail("pas de KOS à écrire pour ce compte rendu")
        return
    console.print("")
    console.print(describe_manifest(dcmread(DicomBytesIO(kos))), highlight=False, soft_wrap=True)
    if kos_out:
        kos_out.write_bytes(kos)
        console.print(f"KOS écrit dans {kos_out}")


def _write_envelopes(
    config: Config, db: Database, report_id: int, iti41: Path | None, iti57: Path | None
) -> None:
    from drimbox.source.envelopes import EnvelopeError, report_envelopes

    try:
        envelopes = report_envelopes(config, db, report_id)
    except EnvelopeError as exc:
        fail(f"requêtes au DMP impossibles à écrire : {exc}")
        return
    if iti41:
        iti41.write_bytes(envelopes.iti41)
        console.print(f"Enveloppe ITI-41 écrite dans {iti41}", highlight=False)
        for part in envelopes.parts:
            # Named after its Content-ID, as the envelope's xop:Include/@href says.
            path = iti41.with_name(part.content_id.replace("@", "_").replace("/", "_"))
            path.write_bytes(part.data)
            console.print(f"  document {part.href} ({part.content_type}) : {path}", highlight=False)
    if iti57:
        iti57.write_bytes(envelopes.iti57)
        console.print(f"Enveloppe ITI-57 écrite dans {iti57}", highlight=False)


@reports_app.command("retry")
def reports_retry(report_id: int, config: ConfigOption = None) -> None:
    """Relance un compte rendu refusé ou bloqué (après correction dans le PACS ou au DMP)."""
    from drimbox.source.retry import RetryError, retry_report

    db = _database(_load(config))
    try:
        message = retry_report(db, report_id)
    except RetryError as exc:
        fail(str(exc))
        return
    console.print(f"[green]Relancé[/] : compte rendu n°{report_id} — {message}", highlight=False)


@audit_app.command("export")
def audit_export(
    config: ConfigOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Depuis cette date (AAAA-MM-JJ ou ISO 8601 ; heure de Paris sans fuseau)."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Fichier de sortie.")
    ] = None,
) -> None:
    """Exporte la trace d'audit en JSON lines (une ligne par événement)."""
    from drimbox.trust.audit import export_json_lines

    start = _since(since)
    db = _database(_load(config))
    lines = export_json_lines(db, since=start)
    if output is None:
        for line in lines:
            sys.stdout.write(line + "\n")
        return
    count = 0
    with output.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
            count += 1
    console.print(f"{count} événements écrits dans {output}")


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Compte ce qui serait purgé, sans rien effacer.")
]


@audit_app.command("purge")
def audit_purge_command(
    config: ConfigOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Base à purger avec le compte propriétaire du schéma (celui de « drimbox db "
            "upgrade ») ; sinon [store] database_url."
        ),
    ] = None,
    operator: Annotated[
        str, typer.Option(help="Qui purge (inscrit dans la piste d'audit).")
    ] = "administrateur",
    dry_run: DryRunOption = False,
) -> None:
    """Supprime de la piste d'audit les événements plus anciens que [retention] audit_days."""
    from datetime import timedelta

    from drimbox.db.audit_purge import AuditPurgeError, older_than, purge_audit

    cfg = _load(config)
    if database_url:
        cfg.store.database_url = database_url
    db = _database(cfg)
    days = cfg.retention.audit_days
    before = datetime.now(UTC) - timedelta(days=days)
    cut = french_datetime(before)
    if dry_run:
        count = older_than(db, before)
        console.print(f"Simulation : {count} événement(s) d'audit antérieurs au {cut} "
                      f"(conservation {french_number(days)} jours) seraient supprimés.",
                      highlight=False)  # fmt: skip
        return
    try:
        deleted = purge_audit(db, before, operator=operator)
    except AuditPurgeError as exc:
        fail(str(exc))
    console.print(f"[green]Piste d'audit purgée[/] : {deleted} événement(s) antérieurs au "
                  f"{cut} supprimés (la purge y est inscrite).", highlight=False)  # fmt: skip


@retention_app.command("purge")
def retention_purge(config: ConfigOption = None, dry_run: DryRunOption = False) -> None:
    """Applique la rétention ([retention]) : messages HL7, versions de CR remplacées, copies
    Conso des documents du DMP, sessions, cache d'images ; compte la piste d'audit échue."""
    from datetime import timedelta

    from drimbox.db.audit_purge import older_than
    from drimbox.dicom.cache import purge_cache
    from drimbox.ops.retention import RetentionPurge, purge_message

    cfg = _load(config)
    db = _database(cfg)

    def progress(kind: str, done: int) -> None:
        err.print(f"  … {kind} : {done} ligne(s)", highlight=False)

    counts = RetentionPurge(db, cfg.retention, progress).run(dry_run=dry_run)
    cache = purge_cache(Path(cfg.store.cache_dir), expired_only=True,
                        ttl_h=cfg.store.cache_ttl_h, dry_run=dry_run)  # fmt: skip
    counts.cache_series, counts.cache_bytes = cache.series, cache.bytes
    title = "Simulation de la purge de rétention" if dry_run else "Purge de rétention terminée"
    console.print(f"[green]{title}[/] :", highlight=False)
    for line in purge_message(counts, dry_run=dry_run):
        console.print(f"  {line}", highlight=False)
    audit_before = datetime.now(UTC) - timedelta(days=cfg.retention.audit_days)
    console.print(
        f"  piste d'audit : {older_than(db, audit_before)} événement(s) au-delà de "
        f"{french_number(cfg.retention.audit_days)} jours, purgés seulement par « drimbox audit "
        "purge » (compte propriétaire du schéma)",
        highlight=False,
    )


@app.command()
def aptitude(
    config: Annotated[Path, typer.Option("--config", "-c", help="Configuration du nœud (TOML).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Rapport HTML imprimable (procès-verbal à signer)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Résultats en JSON.")] = False,
) -> None:
    """Vérification d'aptitude du site : configuration, base, certificats, liste blanche, PACS,
    DMP, Pro Santé Connect, autres DRIMbox, cache, horloge ; code 1 si une vérification échoue."""
    from drimbox.ops.aptitude import invalid_configuration, run_aptitude
    from drimbox.ops.report import render_html

    try:
        report = run_aptitude(load_config(config))
    except ConfigError as exc:
        report = invalid_configuration(exc.source, exc.problems)
    if output is not None:
        try:
            output.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            fail(f"rapport non écrit ({output}) : {exc}")
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
    else:
        colours = {"ok": "green", "warning": "yellow", "failure": "bold red"}
        table = Table(title="Vérification d'aptitude DRIMbox", title_justify="left")
        for column in ("Rubrique", "Vérification", "Résultat", "Constat et action"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            detail = check.message + (f"\n→ {check.action}" if check.action else "")
            table.add_row(check.group, check.title,
                          f"[{colours[check.status]}]{check.label}[/]", escape(detail))  # fmt: skip
        console.print(table)
        verdict = {"ok": "apte", "warning": "apte avec réserves", "failure": "NON APTE"}
        console.print(f"Installation {verdict[report.status]}.", highlight=False)
        if output is not None:
            console.print(f"Rapport à imprimer et signer : {output}", highlight=False)
    if report.status == "failure":
        raise typer.Exit(1)


def _day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"date invalide pour {option} : « {value} » (attendu AAAA-MM-JJ)")


@stats_app.command("export")
def stats_export(
    first: Annotated[
        str, typer.Option("--from", help="Premier jour inclus (AAAA-MM-JJ, heure de Paris).")
    ],
    last: Annotated[
        str, typer.Option("--to", help="Dernier jour inclus (AAAA-MM-JJ, heure de Paris).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Fichier CSV à écrire.")],
    config: ConfigOption = None,
    monthly_only: Annotated[
        bool,
        typer.Option(
            "--mensuel",
            help="Synthèse par mois (lancements, KOS publiés et retirés, récupérations "
            "d'images servies et effectuées, exports) au lieu d'une ligne par lancement.",
        ),
    ] = False,
) -> None:
    """Exporte les statistiques ANS en CSV (séparateur « ; », UTF-8) : une ligne ModelStat par
    lancement contextuel (Nombre_Appel = 1, Statut_Appel = succes ou erreur), ou la synthèse
    mensuelle avec --mensuel."""
    from drimbox.ops.stats import (
        MODELSTAT_COLUMNS,
        MONTH_COLUMNS,
        day_range,
        launch_rows,
        monthly,
        write_csv,
    )

    start_day, end_day = _day(first, "--from"), _day(last, "--to")
    if end_day < start_day:
        fail(f"période vide : --to ({last}) précède --from ({first})")
    start, end = day_range(start_day, end_day)
    db = _database(_load(config))
    try:
        with output.open("w", encoding="utf-8-sig", newline="") as handle:
            if monthly_only:
                rows = [m.values() for m in monthly(db, start, end)]
                count = write_csv(handle, MONTH_COLUMNS, rows)
                what = "mois"
            else:
                count = write_csv(handle, MODELSTAT_COLUMNS, launch_rows(db, start, end))
                what = "lancements"
    except OSError as exc:
        fail(f"impossible d'écrire {output} : {exc.strerror or exc}")
    console.print(f"{count} {what} du {start_day:%d/%m/%Y} au {end_day:%d/%m/%Y} écrits dans "
                  f"{output}")  # fmt: skip


@app.command()
def selftest(
    samples: Annotated[
        Path | None, typer.Option(help="Dossier d'échantillons ANS (défaut : ceux fournis).")
    ] = None,
) -> None:
    """Vérifie les analyseurs et constructeurs de la DRIMbox sur les jeux de test officiels ANS."""
    from drimbox.selftest import run_selftest

    results = run_selftest(samples) if samples else run_selftest()
    table = Table(title="Autotest DRIMbox (jeux de données ANS)", title_justify="left")
    for column in ("Contrôle", "Fichier", "Résultat", "Détail"):
        table.add_column(column, overflow="fold")
    for result in results:
        verdict = "[green]réussi[/]" if result.ok else "[bold red]ÉCHEC[/]"
        table.add_row(result.name, result.file, verdict, escape(result.detail))
    console.print(table)
    failed = [r for r in results if not r.ok]
    if failed:
        err.print(f"{len(failed)} contrôle(s) en échec : " + ", ".join(r.file for r in failed))
        raise typer.Exit(1)
    console.print(f"{len(results)} contrôles réussis.")


def _since(value: str | None) -> datetime | None:
    """--since: ISO 8601; without a zone, Paris time (the zone of every date the box shows)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        fail(f"date invalide pour --since : « {value} » (attendu AAAA-MM-JJ ou AAAA-MM-JJTHH:MM)")
        raise
    return moment if moment.tzinfo else moment.replace(tzinfo=PARIS)


@xdm_app.command("export")
def xdm_export(
    config: ConfigOption = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Archive XDM (zip) à écrire.")
    ] = Path("drimbox-xdm.zip"),
    since: Annotated[
        str | None, typer.Option(help="Seulement les KOS publiés depuis cette date (AAAA-MM-JJ).")
    ] = None,
) -> None:
    """Exporte les KOS publiés par la Source (KOS, signature, comptes rendus) en archive XDM."""
    from drimbox.conso.xdm import XdmError
    from drimbox.source.xdm import export_published

    loaded = _load(config)
    db = _database(loaded)
    start = _since(since)
    partial = output.with_name(output.name + ".partiel")
    try:
        result = export_published(loaded, db, partial, since=start)
    except XdmError as exc:
        partial.unlink(missing_ok=True)
        fail(exc.message)
        return
    partial.replace(output)  # a crash never leaves a truncated archive under the final name
    console.print(
        f"[green]Archive écrite[/] : {output} — {result.kos} KOS, {result.signatures} "
        f"signature(s), {result.reports} compte(s) rendu(s)",
        highlight=False,
    )


@xdm_app.command("import")
def xdm_import(
    archive: Path,
    out: Annotated[
        Path | None, typer.Option(help="Dossier où écrire les images et documents validés.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Intègre les KOS de l'archive à ce nœud : dans sa Source (comme publiés : mise "
            "à jour, dépublication et images ensuite possibles) ou, sur un nœud Conso, dans "
            "l'historique de leurs patients (pré-intégration, sans consulter le DMP).",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--vers",
            help="« source » ou « conso » : où intégrer l'archive. Par défaut selon les rôles "
            "du nœud ; un nœud qui a les deux rôles restaure dans sa Source.",
        ),
    ] = None,
) -> None:
    """Vérifie une archive XDM (IHE ITI-32 : empreintes, tailles, KOS) et en extrait le contenu ;
    avec --config, l'intègre au nœud (Source ou Conso, selon ses rôles)."""
    from drimbox.conso.common import FolderStore
    from drimbox.conso.xdm import XdmError, read_xdm

    if not archive.is_file():
        fail(f"archive introuvable : {archive}")
    if target not in (None, "source", "conso"):
        fail(f"--vers : « {target} » inconnu (attendu « source » ou « conso »)")
    if config is not None:
        loaded = _load(config)
        roles = loaded.roles
        if target is None:
            target = "conso" if roles.conso and not roles.source else "source"
        if not getattr(roles, target):
            fail(f"ce nœud n'a pas le rôle {target} ([roles] {target} = false)")
        db = _database(loaded)
        try:
            if target == "conso":
                _xdm_import_conso(db, archive)
            else:
                _xdm_import_source(db, archive)
        except XdmError as exc:
            fail(f"{exc.message}{f' ({exc.detail})' if exc.detail else ''}")
        return
    try:
        imported = read_xdm(archive, store=FolderStore(out / "images") if out else None)
    except XdmError as exc:
        fail(f"archive refusée : {exc}")
        return
    manifest = imported.manifest
    if out is not None:
        (out / "kos.dcm").write_bytes(imported.kos)
        for n, report in enumerate(imported.reports, start=1):
            (out / f"compte-rendu-{n}.xml").write_bytes(report)
    console.print(f"[green]Archive valide[/] : {archive}", highlight=False)
    console.print(f"  patient : {imported.patient_id}", highlight=False)
    console.print(f"  examen : {manifest.study_uid}", highlight=False)
    console.print(
        f"  {len(imported.reports)} compte(s) rendu(s), {french_number(imported.images)} "
        f"image(s) ({french_size(imported.image_bytes)})",
        highlight=False,
    )
    if out is not None:
        console.print(f"  contenu écrit dans {out}", highlight=False)


def _xdm_import_source(db: Database, archive: Path) -> None:
    from drimbox.source.xdm import import_published

    restored = import_published(db, archive, actor="drimbox xdm import")
    console.print(
        f"[green]Archive restaurée[/] : {len(restored.imported)} KOS publié(s) importé(s) "
        f"({restored.reports} compte(s) rendu(s)), {len(restored.already)} déjà présent(s).",
        highlight=False,
    )


def _xdm_import_conso(db: Database, archive: Path) -> None:
    from drimbox.conso.imported import import_into_conso

    result = import_into_conso(db, archive, origin=archive.name, actor="drimbox xdm import")
    console.print(
        f"[green]Archive pré-intégrée à la Conso[/] : {len(result.imported)} examen(s) ajouté(s) "
        f"à l'historique de leur patient, {len(result.already)} déjà présent(s).",
        highlight=False,
    )


@whitelist_app.command("verify")
def whitelist_verify(
    file: Path,
    anchor: Annotated[
        list[Path] | None,
        typer.Option(help="Certificat d'autorité (PEM) de confiance (répétable)."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="Vérifie à cette date (UTC, ex. 2026-11-26T12:00:00Z) au lieu de maintenant : "
            "une liste archivée, ou avec un signataire expiré depuis."
        ),
    ] = None,
) -> None:
    """Vérifie la signature d'une liste blanche et en affiche le résumé (code 0 si valide)."""
    from drimbox.trust.whitelist import verify_command

    moment = None
    if at is not None:
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            fail(f"date invalide pour --at : {at!r} (attendu : 2026-11-26T12:00:00Z)")
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    code, text = verify_command(file, list(anchor or []), now=moment)
    (console if code == 0 else err).print(text, highlight=False)
    raise typer.Exit(code)


@sim_app.command("dmp")
def sim_dmp(
    trust: Annotated[
        list[Path], typer.Option(help="Certificat (PEM) de confiance pour les VIHF (répétable).")
    ],
    host: str = "127.0.0.1",
    port: int = 8090,
    db: Annotated[Path, typer.Option(help="Registre SQLite du simulateur.")] = Path("dmp-sim.db"),
    tls_cert: Annotated[Path | None, typer.Option(help="Certificat serveur TLS (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Clé du certificat serveur.")] = None,
    client_ca: Annotated[
        Path | None, typer.Option(help="AC des certificats clients (TLS mutuel exigé).")
    ] = None,
) -> None:
    """Simulateur du DMP (tests et démonstration ; jamais en production)."""
    from drimbox.sim.dmp.server import run_dmp_simulator

    for path in [*trust, tls_cert, tls_key, client_ca]:
        if path is not None and not path.is_file():
            fail(f"fichier introuvable : {path}")
    console.print(f"Simulateur DMP sur {'https' if tls_cert else 'http'}://{host}:{port}")
    run_dmp_simulator(host, port, db, trust, tls_cert, tls_key, client_ca)


@sim_app.command("psc")
def sim_psc(
    host: str = "127.0.0.1",
    port: int = 8091,
    public_url: Annotated[
        str | None, typer.Option(help="URL publique (derrière un proxy).")
    ] = None,
    client_id: str = "drimbox-sim",
    client_secret: str = "drimbox-sim-secret",
    client_subject: Annotated[
        str,
        typer.Option(
            help="Sujet du certificat du client (RFC 4514) : le client s'authentifie alors par "
            "TLS mutuel (tls_client_auth)."
        ),
    ] = "",
    redirect_uri: Annotated[
        list[str] | None,
        typer.Option(help="URL de retour admise (répétable ; * final = joker)."),
    ] = None,
    users: Annotated[Path | None, typer.Option(help="Utilisateurs de test (TOML).")] = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    client_ca: Annotated[
        Path | None,
        typer.Option(
            help="Autorité des certificats clients : ouvre le port TLS mutuel (--mtls-port)."
        ),
    ] = None,
    mtls_port: int = 8092,
) -> None:
    """Simulateur de Pro Santé Connect (tests et démonstration ; jamais en production)."""
    from drimbox.sim.psc.server import run_psc_simulator

    for path in (users, tls_cert, tls_key, client_ca):
        if path is not None and not path.is_file():
            fail(f"fichier introuvable : {path}")
    if client_ca is not None and tls_cert is None:
        fail("--client-ca exige --tls-cert et --tls-key")
    console.print(f"Simulateur PSC sur {'https' if tls_cert else 'http'}://{host}:{port}")
    if client_ca is not None:
        console.print(f"  TLS mutuel (jetons, introspection) sur https://{host}:{mtls_port}")
    extra = {"redirect_uris": tuple(redirect_uri)} if redirect_uri else {}
    run_psc_simulator(
        host,
        port,
        public_url=public_url,
        client_id=client_id,
        client_secret=client_secret,
        users_file=users,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_subject=client_subject,
        client_ca=client_ca,
        mtls_port=mtls_port if client_ca is not None else None,
        **extra,  # type: ignore[arg-type]
    )


@sim_app.command("ris")
def sim_ris(
    files: list[Path],
    host: str = "127.0.0.1",
    port: int = 2575,
    raw: Annotated[bool, typer.Option(help="Envoyer sans remplir les {{…}}.")] = False,
) -> None:
    """Envoie des messages HL7 (fichiers) à une DRIMbox en MLLP et affiche les ACK."""
    from drimbox.sim.ris import RisClient

    failures = 0
    with RisClient(host, port) as ris:
        for file in files:
            try:
                text = file.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                fail(f"{file} illisible : {exc}")
            result = ris.send(text, fill=not raw)
            ok = result.code == "AA"
            failures += not ok
            colour = "green" if ok else "red"
            console.print(
                f"[{colour}]{result.code or 'sans ACK'}[/] {file.name} "
                f"({result.seconds * 1000:.0f} ms) {result.text}",
                highlight=False,
            )
    if failures:
        raise typer.Exit(1)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(help="Dossier de la démo (réutilisé).")] = Path(
        "drimbox-demo"
    ),
    fresh: Annotated[bool, typer.Option(help="Repartir d'un dossier vide.")] = False,
    exit_after: Annotated[
        bool, typer.Option(help="S'arrêter une fois les KOS construits (tests, CI).")
    ] = False,
) -> None:
    """Démarre un réseau DRIM-M local de démonstration (PACS, RIS simulé, DRIMbox Source)."""
    from drimbox.demo import run_demo
    from drimbox.sim.orthanc import OrthancError

    try:
        # Piped or logged, one line per item: a link or a command cut in two is no use.
        out = console if console.is_terminal else Console(soft_wrap=True)
        code = run_demo(folder.resolve(), fresh=fresh, exit_after=exit_after, console=out)
    except OrthancError as exc:
        fail(f"PACS de démonstration : {exc}")
        return
    raise typer.Exit(code)


def main() -> None:
    app()
