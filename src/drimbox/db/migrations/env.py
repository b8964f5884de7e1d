"""Alembic environment: the connection is handed over by `Database.upgrade`."""

from alembic import context

from drimbox.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached through `alembic` CLI misuse
    raise RuntimeError("run migrations through `drimbox db upgrade`")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
