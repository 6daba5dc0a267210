"""Alembic's environment: the connection the service hands over (``config.attributes``), or
for maintainers' ``alembic`` commands an engine on ``SELFTRAIN_DATABASE_URL``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from services.db import Base


def _migrate(connection) -> None:
    # Batch mode: SQLite alters a table by copying it, which Alembic does only when asked.
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = os.environ.get("SELFTRAIN_DATABASE_URL")
    if not url:
        raise SystemExit("alembic: set SELFTRAIN_DATABASE_URL to the database to migrate")
    with create_engine(url).begin() as own:
        _migrate(own)


run()
