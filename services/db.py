"""Runs and stages in a SQL database: SQLite by default (one machine), PostgreSQL on a cluster.

The database is the service's state: the orchestrator reads the runs in flight from it on every
poll, so a restarted service carries on where the last one stopped. It fails closed:

- its schema is brought to the newest revision at start-up (services/migrations, Alembic);
- each run's record is also written to the run's folder (services/records.py) after every commit
  that changed it, and a database that lacks runs whose records exist gets them back at start-up;
- a database that cannot be read or written raises ``DatabaseUnavailableError`` (the API answers
  503 with its one line) and ``health()`` says why until a write succeeds again; each change of
  that state is logged once;
- a SQLite file deleted or replaced while the service runs is noticed at the next session:
  writes are refused from then on (they would go to a file nobody will open again) until a
  restart rebuilds the database from the run records.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    insert,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from services import migrations

log = logging.getLogger(__name__)

# Ray's job statuses, used for runs and stages alike.
PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = (
    "PENDING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "STOPPED",
)
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)
IN_FLIGHT = (PENDING, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, STOPPED)
# A write the health check makes while writes fail, to see whether they work again: as large as
# a page, so that a full disk or a database at its size limit refuses it as it refuses a new run.
PROBE_BYTES = 4096


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """A self-training run. ``version`` grows with every change of the run or its stages (the event
    stream compares it to tell what changed)."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    output: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    ended_at: Mapped[float | None] = mapped_column(Float, default=None)
    version: Mapped[int] = mapped_column(Integer, default=0)
    stages: Mapped[list[Stage]] = relationship(
        back_populates="run", order_by="Stage.index", cascade="all, delete-orphan"
    )

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)


class Stage(Base):
    """One stage of a run: a Ray job (``script``) or a given artifact (``given``)."""

    __tablename__ = "stages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    spec_field: Mapped[str] = mapped_column(String(64))
    given: Mapped[bool] = mapped_column(Boolean, default=False)
    script: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    submission_id: Mapped[str | None] = mapped_column(String(128), default=None)
    entrypoint: Mapped[str | None] = mapped_column(Text, default=None)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    logs: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[list[Any]] = mapped_column(JSON, default=list)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    submitted_at: Mapped[float | None] = mapped_column(Float, default=None)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    ended_at: Mapped[float | None] = mapped_column(Float, default=None)
    run: Mapped[Run] = relationship(back_populates="stages")


class ServiceMeta(Base):
    """The service's own facts about its database (one row per key); also where the health check
    makes its probe write."""

    __tablename__ = "service_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be read or written now; the message is one line saying why."""


class DatabaseStartError(RuntimeError):
    """The service must not start on this database; the message says why and how to recover."""


class WriteState:
    """ok, or why something cannot be used; logged once when it begins to fail and once when it
    works again (not on every poll, nor when only the wording of the reason changes).

    Args:
        what: What is reported on, e.g. "database" or "run records".
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.reason: str | None = None
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            began = self.reason is None
            self.reason = reason
        if began:
            log.error("%s: %s", self.what, reason)

    def ok(self) -> None:
        with self._lock:
            ended = self.reason is not None
            self.reason = None
        if ended:
            log.warning("%s: works again", self.what)


class Database:
    """An engine and a session factory; ``session()`` commits on success, rolls back on error.

    Args:
        url: A SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://user@host/db``).

    Raises:
        DatabaseStartError: The database cannot be opened or migrated.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self.sqlite_path = _sqlite_file(url)
        self.state = WriteState("database")
        # What health() reports on: the database, and what else attaches to it (run records).
        self.watched = [self.state]
        # How to recover from a deleted database file (run records add where they are).
        self.recovery = "restart the service"
        try:
            migrations.upgrade(self.engine)
        except DBAPIError as exc:
            raise DatabaseStartError(f"database {self.safe_url}: {one_line(exc)}") from exc
        self._file_id = _file_id(self.sqlite_path)
        self._lost: str | None = None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "before_flush", _refuse_when_lost)
        event.listen(self.sessions, "after_flush", _note_flush)

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction; commits when the block ends without an exception.

        Raises:
            DatabaseUnavailableError: The database could not be read or written (the transaction
                is rolled back), or its file was deleted and the block wrote.
        """
        self._notice_lost_file()
        try:
            with self.sessions() as session, session.begin():
                session.info["lost"] = self._lost
                yield session
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError):
                raise  # a bug or a race in the caller, not a sick database
            reason = one_line(exc)
            self.state.failed(reason)
            raise DatabaseUnavailableError(f"database unavailable: {reason}") from exc
        if session.info.get("flushed"):
            self.state.ok()

    def health(self) -> str:
        """ "ok", or why the database cannot be used (a deleted file, the last failed write, or
        a failed read now). While writes fail, a probe write tells whether they work again."""
        self._notice_lost_file()
        if self._lost is not None:
            return self._lost
        try:
            with self.session() as session:
                session.execute(text("SELECT 1"))
                if self.state.reason is not None:
                    _probe_write(session)
        except DatabaseUnavailableError:
            pass  # session() recorded the reason in self.state
        else:
            self.state.ok()
        return "; ".join(s.reason for s in self.watched if s.reason) or "ok"

    def dispose(self) -> None:
        self.engine.dispose()

    def _notice_lost_file(self) -> None:
        """Refuse writes from now on when the SQLite file was deleted or replaced."""
        if self._lost is not None or self.sqlite_path is None:
            return
        if _file_id(self.sqlite_path) == self._file_id:
            return
        self._lost = (
            f"the database file {self.sqlite_path} was deleted or replaced while the service ran; "
            f"writes are refused: {self.recovery}"
        )
        self.state.failed(self._lost)


def _engine(url: str) -> Engine:
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        _make_sqlite_folder(url)
        # Sessions are used from the orchestrator's thread and the request thread pool.
        connect_args = {"check_same_thread": False, "timeout": 30}
    # pool_pre_ping: a PostgreSQL server restarted under the service costs no failed request (a
    # dead pooled connection is replaced, not handed out).
    pre_ping = not url.startswith("sqlite")
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=pre_ping)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _refuse_when_lost(session: Session, _context, _instances) -> None:
    lost = session.info.get("lost")
    if lost is not None:
        raise DatabaseUnavailableError(f"database unavailable: {lost}")


def _note_flush(session: Session, _context) -> None:
    session.info["flushed"] = True


def _probe_write(session: Session) -> None:
    session.execute(insert(ServiceMeta).values(key="write-probe", value="x" * PROBE_BYTES))
    session.execute(delete(ServiceMeta).where(ServiceMeta.key == "write-probe"))
    session.info["flushed"] = True


def one_line(exc: BaseException) -> str:
    """The first line of a database error's own message, without SQLAlchemy's SQL and links."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return f"{type(orig).__name__}: {first}"[:500]


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    name = parsed.database or ""
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name).resolve()


def _file_id(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _make_sqlite_folder(url: str) -> None:
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(connection, _record) -> None:
    # WAL lets the event streams read while the orchestrator writes (one machine only: WAL needs
    # shared memory, which a network file system does not give; a cluster uses PostgreSQL).
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
