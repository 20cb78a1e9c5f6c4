"""SQLite adapters for FileStore, JobStore and KeyStore (the local, embedded default).

One database file in WAL mode: readers never wait for the writer, and writes take the write lock
up front (``BEGIN IMMEDIATE``) so two requests never deadlock upgrading a read lock. Each thread gets
its own connection, because a sqlite3 connection must not be shared between threads mid-transaction.
Records are stored as their JSON, beside the few columns that queries filter and sort on.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from tuneplane.domain.records import (
    TERMINAL_STATUSES,
    ApiKeyRecord,
    CheckpointRecord,
    EventRecord,
    FileRecord,
    JobRecord,
)
from tuneplane.ports import AlreadyExists, Conflict, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, purpose TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_project ON files (project, id);
CREATE INDEX IF NOT EXISTS files_by_purpose ON files (project, purpose, id);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, finished INTEGER NOT NULL,
    version INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_project ON jobs (project, id);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (finished, id);
CREATE TABLE IF NOT EXISTS job_metadata (
    project TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, job_id TEXT NOT NULL,
    PRIMARY KEY (project, key, value, job_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    project TEXT NOT NULL, key TEXT NOT NULL, job_id TEXT NOT NULL, PRIMARY KEY (project, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    revoked_at INTEGER, data TEXT NOT NULL
);
"""


class SqliteDatabase:
    """Per-thread connections to one WAL-mode database file."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self.connection().executescript(_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False only so
            # that close() can close every thread's connection at shutdown.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _dump(record) -> str:
    return record.model_dump_json()


class SqliteFileStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    def create_file(self, record: FileRecord) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO files (id, project, purpose, data) VALUES (?, ?, ?, ?)",
                    (record.id, record.project, record.purpose, _dump(record)),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(record.id) from exc

    def get_file(self, project: str, file_id: str) -> FileRecord | None:
        row = self.db.connection().execute(
            "SELECT data FROM files WHERE id = ? AND project = ?", (file_id, project)
        ).fetchone()
        return FileRecord.model_validate_json(row[0]) if row else None

    def list_files(
        self,
        project: str,
        *,
        purpose: str | None = None,
        limit: int = 20,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> list[FileRecord]:
        where, args = ["project = ?"], [project]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        if after is not None:
            where.append("id > ?" if order == "asc" else "id < ?")
            args.append(after)
        direction = "ASC" if order == "asc" else "DESC"
        rows = self.db.connection().execute(
            f"SELECT data FROM files WHERE {' AND '.join(where)} ORDER BY id {direction} LIMIT ?",
            (*args, limit),
        )
        return [FileRecord.model_validate_json(row[0]) for row in rows]

    def delete_file(self, project: str, file_id: str) -> bool:
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM files WHERE id = ? AND project = ?", (file_id, project))
        return cur.rowcount > 0


class SqliteJobStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    def create_job(self, record: JobRecord, *, idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        with self.db.write() as conn:
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT j.data FROM idempotency_keys k JOIN jobs j ON j.id = k.job_id "
                    "WHERE k.project = ? AND k.key = ?",
                    (record.project, idempotency_key),
                ).fetchone()
                if row:
                    return JobRecord.model_validate_json(row[0]), False
                conn.execute(
                    "INSERT INTO idempotency_keys (project, key, job_id) VALUES (?, ?, ?)",
                    (record.project, idempotency_key, record.id),
                )
            try:
                conn.execute(
                    "INSERT INTO jobs (id, project, finished, version, data) VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.project, int(record.status in TERMINAL_STATUSES), record.version, _dump(record)),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(record.id) from exc
            conn.executemany(
                "INSERT INTO job_metadata (project, key, value, job_id) VALUES (?, ?, ?, ?)",
                [(record.project, k, v, record.id) for k, v in (record.metadata or {}).items()],
            )
        return record, True

    def get_job(self, project: str, job_id: str) -> JobRecord | None:
        row = self.db.connection().execute(
            "SELECT data FROM jobs WHERE id = ? AND project = ?", (job_id, project)
        ).fetchone()
        return JobRecord.model_validate_json(row[0]) if row else None

    def list_jobs(
        self,
        project: str,
        *,
        limit: int = 20,
        after: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> list[JobRecord]:
        where, args = ["project = ?"], [project]
        if after is not None:
            where.append("id < ?")
            args.append(after)
        for key, value in (metadata or {}).items():
            where.append(
                "id IN (SELECT job_id FROM job_metadata WHERE project = ? AND key = ? AND value = ?)"
            )
            args += [project, key, value]
        rows = self.db.connection().execute(
            f"SELECT data FROM jobs INDEXED BY jobs_by_project WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    def update_job(self, record: JobRecord) -> JobRecord:
        updated = record.model_copy(update={"version": record.version + 1})
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET data = ?, version = ?, finished = ? WHERE id = ? AND project = ? AND version = ?",
                (
                    _dump(updated),
                    updated.version,
                    int(updated.status in TERMINAL_STATUSES),
                    record.id,
                    record.project,
                    record.version,
                ),
            )
            if cur.rowcount == 0:
                exists = conn.execute(
                    "SELECT 1 FROM jobs WHERE id = ? AND project = ?", (record.id, record.project)
                ).fetchone()
                raise Conflict(record.id) if exists else NotFound(record.id)
        return updated

    def list_unfinished_jobs(self) -> list[JobRecord]:
        rows = self.db.connection().execute("SELECT data FROM jobs WHERE finished = 0 ORDER BY id ASC")
        return [JobRecord.model_validate_json(row[0]) for row in rows]

    def append_event(self, project: str, event: EventRecord) -> bool:
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO events (job_id, id, project, data) VALUES (?, ?, ?, ?)",
                (event.job_id, event.id, project, _dump(event)),
            )
        return cur.rowcount > 0

    def list_events(
        self, project: str, job_id: str, *, limit: int = 20, after: str | None = None
    ) -> list[EventRecord]:
        return [EventRecord.model_validate_json(d) for d in self._page("events", project, job_id, limit, after)]

    def put_checkpoint(self, project: str, checkpoint: CheckpointRecord) -> bool:
        with self.db.write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO checkpoints (job_id, id, project, data) VALUES (?, ?, ?, ?)",
                (checkpoint.job_id, checkpoint.id, project, _dump(checkpoint)),
            )
        return cur.rowcount > 0

    def list_checkpoints(
        self, project: str, job_id: str, *, limit: int = 10, after: str | None = None
    ) -> list[CheckpointRecord]:
        return [
            CheckpointRecord.model_validate_json(d)
            for d in self._page("checkpoints", project, job_id, limit, after)
        ]

    def _page(self, table: str, project: str, job_id: str, limit: int, after: str | None) -> list[str]:
        sql = f"SELECT data FROM {table} WHERE job_id = ? AND project = ?"
        args: list = [job_id, project]
        if after is not None:
            sql += " AND id < ?"
            args.append(after)
        rows = self.db.connection().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [row[0] for row in rows]


class SqliteKeyStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db

    def create_key(self, record: ApiKeyRecord) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO api_keys (id, project, key_hash, revoked_at, data) VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.project, record.key_hash, record.revoked_at, _dump(record)),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(record.id) from exc

    def find_key(self, key_hash: str) -> ApiKeyRecord | None:
        row = self.db.connection().execute(
            "SELECT data FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
        ).fetchone()
        return ApiKeyRecord.model_validate_json(row[0]) if row else None

    def list_keys(self, project: str | None = None) -> list[ApiKeyRecord]:
        if project is None:
            rows = self.db.connection().execute("SELECT data FROM api_keys ORDER BY id")
        else:
            rows = self.db.connection().execute(
                "SELECT data FROM api_keys WHERE project = ? ORDER BY id", (project,)
            )
        return [ApiKeyRecord.model_validate_json(row[0]) for row in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self.db.write() as conn:
            row = conn.execute(
                "SELECT data FROM api_keys WHERE id = ? AND revoked_at IS NULL", (key_id,)
            ).fetchone()
            if not row:
                return False
            record = ApiKeyRecord.model_validate_json(row[0])
            record.revoked_at = int(time.time())
            conn.execute(
                "UPDATE api_keys SET revoked_at = ?, data = ? WHERE id = ?",
                (record.revoked_at, _dump(record), key_id),
            )
        return True
