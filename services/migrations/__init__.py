"""The service database's schema, as Alembic revisions (``versions/``), applied at start-up.

``upgrade(engine)`` brings any database to the newest revision: an empty one gets every table; one
that a service made before there were migrations (its tables came from ``create_all``, which is
revision 0001's schema exactly) is stamped 0001 first and then upgraded; one that carries an
``alembic_version`` is upgraded from where it is. On PostgreSQL an advisory lock keeps two
services that start at once from migrating together.

A schema change is a new file in ``versions/``: change the models in services/db.py, then
``SELFTRAIN_DATABASE_URL=sqlite:///scratch.db alembic -c services/migrations/alembic.ini revision
--autogenerate -m "what and why"`` on a database at the current head, read the file it writes, and
keep ``tests/test_service_db.py`` passing (it fails when the models and the revisions differ).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

FOLDER = Path(__file__).resolve().parent
# The revision whose schema ``create_all`` made before migrations existed.
BASELINE = "0001"
# Any fixed number: the key of the advisory lock held while migrating on PostgreSQL.
MIGRATION_LOCK = 727_001


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the revisions in this folder (on ``connection``)."""
    alembic_config = Config(str(FOLDER / "alembic.ini"))
    alembic_config.set_main_option("script_location", str(FOLDER))
    if connection is not None:
        alembic_config.attributes["connection"] = connection
    return alembic_config


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest revision (see the module's docstring)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        tables = set(inspect(connection).get_table_names())
        alembic_config = config(connection)
        if "runs" in tables and "alembic_version" not in tables:
            command.stamp(alembic_config, BASELINE)
        command.upgrade(alembic_config, "head")


def current(engine: Engine) -> str | None:
    """The database's revision (None: none recorded)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head() -> str:
    """The newest revision in ``versions/``."""
    from alembic.script import ScriptDirectory

    revision = ScriptDirectory.from_config(config()).get_current_head()
    assert revision is not None
    return revision
