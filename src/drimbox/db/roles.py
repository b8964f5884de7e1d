"""The PostgreSQL role a node runs as: every right it needs, none over the audit trail's rules.

The schema's owner (who runs `drimbox db upgrade`) can drop a trigger; a role that does not own
the tables cannot (PostgreSQL lets only the owner drop or disable a trigger). So the node runs
as a role granted data rights only, and on the audit trail only SELECT and INSERT: whatever the
node's code does (or an attacker with its credentials), it cannot rewrite history.
"""

from __future__ import annotations

import re

from sqlalchemy import text

from drimbox.db.engine import Database

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RoleError(ValueError):
    """A refusal shown to the operator (French)."""


def node_role_grants(role: str) -> list[str]:
    """The statements that give `role` a node's rights, for the tables that exist and those
    future upgrades create (default privileges of the role running them)."""
    if not _ROLE.fullmatch(role):
        raise RoleError(
            f"nom de rôle PostgreSQL invalide : {role!r} (lettres minuscules, chiffres, _)"
        )
    return [
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {role}",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {role}",
    ]


def grant_node_role(db: Database, role: str) -> None:
    """Run `node_role_grants` as the schema's owner (PostgreSQL only)."""
    if db.is_sqlite:
        raise RoleError(
            "SQLite n'a pas de rôles : la piste d'audit y est protégée par ses déclencheurs, "
            "pas contre qui peut écrire le fichier (utilisez PostgreSQL, docs/deploy.md)"
        )
    statements = node_role_grants(role)
    with db.engine.begin() as connection:
        owner = connection.execute(
            text("SELECT tableowner FROM pg_tables WHERE tablename = 'audit_events'")
        ).scalar()
        if owner is None:
            raise RoleError("schéma absent : lancez d'abord « drimbox db upgrade »")
        if owner == role:
            raise RoleError(
                f"le rôle {role} possède les tables : il pourrait supprimer les déclencheurs "
                "de la piste d'audit ; le nœud doit utiliser un autre rôle"
            )
        for statement in statements:
            connection.execute(text(statement))
