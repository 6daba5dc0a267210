"""Each run's record in its folder of the service's workdir, ``<workdir>/<run id>/run.json``: the
run's row and its stages' rows as JSON, rewritten (atomically) after every commit that changed
them. The database can be rebuilt from these files.

At start-up ``RunRecords.sync`` makes the database and the records agree: runs that have a record
but no row (a deleted, lost or replaced database) are inserted from their records; runs that have
a row but no record (made before records existed) get one. A database left without runs while
the workdir holds run folders that have no record is refused (``DatabaseStartError``), never
served empty. Cost: one small file write per changed run per commit, one file read per run at
start-up; nothing per image.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session

from services.db import Database, DatabaseStartError, Run, Stage, WriteState

log = logging.getLogger(__name__)

RECORD_NAME = "run.json"
RECORD_FORMAT = 1
# A run's id as the orchestrator makes it (uuid4 hex, 12 characters): the name of its folder.
RUN_ID = re.compile(r"[0-9a-f]{12}")
# Columns a record leaves out: the stage's own key (the database numbers stages when rebuilt).
STAGE_KEYS = ("id", "run_id")


def open_database(url: str, workdir: Path) -> Database:
    """The service's database at ``url``, migrated, agreeing with the run records in ``workdir``,
    and writing them from now on.

    Raises:
        DatabaseStartError: It cannot be opened or migrated, a record it needs cannot be read, or
            it would start empty beside runs it cannot rebuild.
    """
    database = Database(url)
    records = RunRecords(workdir)
    records.attach(database)
    records.sync(database)
    return database


def record_of(run: Run) -> dict[str, Any]:
    """A run's record: its columns and its stages' columns, as JSON values."""
    return {
        "format": RECORD_FORMAT,
        "run": _columns(run),
        "stages": [
            {k: v for k, v in _columns(s).items() if k not in STAGE_KEYS} for s in run.stages
        ],
    }


def run_from_record(record: dict[str, Any], path: Path) -> Run:
    """The run (with its stages) a record describes.

    Raises:
        DatabaseStartError: The record is not one this version writes (named by ``path``).
    """
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DatabaseStartError(f"{path}: not a run record of format {RECORD_FORMAT}")
    try:
        run = Run(**record["run"])
        run.stages = [Stage(**stage) for stage in record["stages"]]
    except (KeyError, TypeError) as exc:
        raise DatabaseStartError(f"{path}: a damaged run record ({exc})") from exc
    return run


class RunRecords:
    """The run records under ``root`` (the service's workdir).

    Args:
        root: Holds one folder per run, named by its id.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.state = WriteState("run records")

    def path(self, run_id: str) -> Path:
        return self.root / run_id / RECORD_NAME

    def write(self, record: dict[str, Any]) -> None:
        """Replace the run's record with ``record`` (a crash leaves the old or the new one)."""
        path = self.path(record["run"]["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, separators=(",", ":")).encode()
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".run-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def read(self, path: Path) -> Run:
        """The run recorded in ``path``.

        Raises:
            DatabaseStartError: It cannot be read or is not a run record.
        """
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise DatabaseStartError(f"{path}: unreadable run record ({exc})") from exc
        return run_from_record(record, path)

    def attach(self, database: Database) -> None:
        """Write the records of the runs each commit of ``database`` changed, after it commits;
        the database's health includes theirs."""
        sessions = database.sessions
        database.watched.append(self.state)
        database.recovery = f"restart the service to rebuild it from the run records in {self.root}"
        event.listen(sessions, "after_flush", _note_changed_runs)
        event.listen(sessions, "after_flush_postexec", _take_records)
        event.listen(sessions, "after_commit", lambda session: self._write_taken(session))
        event.listen(sessions, "after_soft_rollback", _drop_taken)

    def _write_taken(self, session: Session) -> None:
        records = session.info.pop("records", {})
        for record in records.values():
            try:
                self.write(record)
            except OSError as exc:  # the database has the run; the record waits for the next change
                self.state.failed(f"cannot write {self.path(record['run']['id'])}: {exc}")
                return
        if records:
            self.state.ok()

    def sync(self, database: Database) -> None:
        """Make the database and the records agree at start-up (see the module's docstring).

        Raises:
            DatabaseStartError: A record cannot be read, or the database has no runs while run
                folders without records exist.
        """
        with database.session() as session:
            known = set(session.scalars(select(Run.id)))
        folders = self._run_folders()
        recorded = {name for name, folder in folders.items() if (folder / RECORD_NAME).is_file()}
        missing = sorted(recorded - known)
        for run_id in missing:
            run = self.read(self.path(run_id))
            with database.session() as session:
                session.add(run)
        if missing:
            log.warning(
                "database %s lacked %d run(s) recorded in %s: rebuilt them from their records",
                database.safe_url,
                len(missing),
                self.root,
            )
        self._backfill(database, known - recorded)
        unrecorded = sorted(set(folders) - recorded - known)
        if unrecorded and not known and not missing:
            raise DatabaseStartError(_refusal(database.safe_url, self.root, unrecorded))

    def _run_folders(self) -> dict[str, Path]:
        if not self.root.is_dir():
            return {}
        return {
            entry.name: Path(entry.path)
            for entry in os.scandir(self.root)
            if RUN_ID.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)
        }

    def _backfill(self, database: Database, run_ids: set[str]) -> None:
        for run_id in sorted(run_ids):
            with database.session() as session:
                run = session.get(Run, run_id)
                record = record_of(run) if run is not None else None
            if record is not None:
                self.write(record)


def _refusal(url: str, root: Path, unrecorded: list[str]) -> str:
    shown = ", ".join(unrecorded[:5]) + (" ..." if len(unrecorded) > 5 else "")
    return (
        f"the database {url} has no runs, but {root} holds {len(unrecorded)} run folder(s) "
        f"without a run record ({shown}): refusing to start with an empty run list. Point "
        f"SELFTRAIN_DATABASE_URL at the database those runs are in, or move those folders out "
        f"of {root} to start without them"
    )


def _columns(row: Run | Stage) -> dict[str, Any]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(row).mapper.column_attrs}


def _note_changed_runs(session: Session, _context) -> None:
    changed: set[str] = session.info.setdefault("changed_runs", set())
    for row in (*session.new, *session.dirty):
        if not session.is_modified(row, include_collections=True):
            continue
        if isinstance(row, Run):
            changed.add(row.id)
        elif isinstance(row, Stage):
            changed.add(row.run_id if row.run_id is not None else row.run.id)


def _take_records(session: Session, _context) -> None:
    # After the flush: defaults are filled in and every row is as the commit will store it.
    records: dict[str, dict[str, Any]] = session.info.setdefault("records", {})
    for run_id in session.info.pop("changed_runs", set()):
        run = session.get(Run, run_id)
        if run is not None:
            records[run_id] = record_of(run)


def _drop_taken(session: Session, _transaction) -> None:
    session.info.pop("records", None)
    session.info.pop("changed_runs", None)
