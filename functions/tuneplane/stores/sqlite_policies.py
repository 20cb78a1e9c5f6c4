"""The PolicyStore (tuneplane.retraining) on SQLite: retraining policies, their triggers and events.

Lives in the same database file as the other stores (``SqliteDatabase``), in its own tables.
"""

from __future__ import annotations

import sqlite3

from tuneplane.domain.policies import PolicyEventRecord, PolicyRecord, TriggerRecord
from tuneplane.ports import AlreadyExists, Conflict, NotFound
from tuneplane.stores.sqlite import SqliteDatabase

_SCHEMA = """
CREATE TABLE IF NOT EXISTS retraining_policies (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    data TEXT NOT NULL, UNIQUE (project, name)
);
CREATE INDEX IF NOT EXISTS retraining_policies_by_project ON retraining_policies (project, id);
CREATE TABLE IF NOT EXISTS retraining_triggers (
    key TEXT PRIMARY KEY, project TEXT NOT NULL, data TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retraining_events (
    policy_id TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (policy_id, id)
) WITHOUT ROWID;
"""


class SqlitePolicyStore:
    def __init__(self, db: SqliteDatabase):
        self.db = db
        db.connection().executescript(_SCHEMA)

    # -- policies -------------------------------------------------------------------------------

    def create_policy(self, record: PolicyRecord) -> None:
        try:
            with self.db.write() as conn:
                conn.execute(
                    "INSERT INTO retraining_policies (id, project, name, version, data) VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.project, record.name, record.version, record.model_dump_json()),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(record.name) from exc

    def get_policy(self, project: str, policy_id: str) -> PolicyRecord | None:
        row = self.db.connection().execute(
            "SELECT data FROM retraining_policies WHERE id = ? AND project = ?", (policy_id, project)
        ).fetchone()
        return PolicyRecord.model_validate_json(row[0]) if row else None

    def find_policy(self, project: str, name: str) -> PolicyRecord | None:
        row = self.db.connection().execute(
            "SELECT data FROM retraining_policies WHERE name = ? AND project = ?", (name, project)
        ).fetchone()
        return PolicyRecord.model_validate_json(row[0]) if row else None

    def list_policies(self, project: str, *, limit: int = 20, after: str | None = None) -> list[PolicyRecord]:
        query, args = "SELECT data FROM retraining_policies WHERE project = ?", [project]
        if after is not None:
            query += " AND id < ?"
            args.append(after)
        rows = self.db.connection().execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [PolicyRecord.model_validate_json(r[0]) for r in rows]

    def all_policies(self) -> list[PolicyRecord]:
        rows = self.db.connection().execute("SELECT data FROM retraining_policies ORDER BY id").fetchall()
        return [PolicyRecord.model_validate_json(r[0]) for r in rows]

    def update_policy(self, record: PolicyRecord) -> PolicyRecord:
        stored = record.model_copy(update={"version": record.version + 1})
        with self.db.write() as conn:
            cursor = conn.execute(
                "UPDATE retraining_policies SET version = ?, data = ? WHERE id = ? AND project = ? AND version = ?",
                (stored.version, stored.model_dump_json(), record.id, record.project, record.version),
            )
            if cursor.rowcount == 0:
                exists = conn.execute(
                    "SELECT 1 FROM retraining_policies WHERE id = ? AND project = ?", (record.id, record.project)
                ).fetchone()
                raise Conflict(record.id) if exists else NotFound(record.id)
        return stored

    def delete_policy(self, project: str, policy_id: str) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute("DELETE FROM retraining_policies WHERE id = ? AND project = ?", (policy_id, project))
            if cursor.rowcount:
                conn.execute("DELETE FROM retraining_events WHERE policy_id = ? AND project = ?", (policy_id, project))
        return cursor.rowcount > 0

    # -- triggers (the exactly-once ledger) -------------------------------------------------------

    def get_trigger(self, key: str) -> TriggerRecord | None:
        row = self.db.connection().execute("SELECT data FROM retraining_triggers WHERE key = ?", (key,)).fetchone()
        return TriggerRecord.model_validate_json(row[0]) if row else None

    def claim_trigger(self, record: TriggerRecord) -> TriggerRecord:
        """Insert if absent; returns whichever record holds the key afterwards (the first claim wins)."""
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO retraining_triggers (key, project, data) VALUES (?, ?, ?)",
                (record.key, record.project, record.model_dump_json()),
            )
            row = conn.execute("SELECT data FROM retraining_triggers WHERE key = ?", (record.key,)).fetchone()
        return TriggerRecord.model_validate_json(row[0])

    def put_trigger(self, record: TriggerRecord) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO retraining_triggers (key, project, data) VALUES (?, ?, ?)",
                (record.key, record.project, record.model_dump_json()),
            )

    # -- events ---------------------------------------------------------------------------------

    def append_policy_event(self, project: str, event: PolicyEventRecord) -> bool:
        with self.db.write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO retraining_events (policy_id, id, project, data) VALUES (?, ?, ?, ?)",
                (event.policy_id, event.id, project, event.model_dump_json()),
            )
        return cursor.rowcount > 0

    def list_policy_events(
        self, project: str, policy_id: str, *, limit: int = 20, after: str | None = None
    ) -> list[PolicyEventRecord]:
        query, args = "SELECT data FROM retraining_events WHERE policy_id = ? AND project = ?", [policy_id, project]
        if after is not None:
            query += " AND id < ?"
            args.append(after)
        rows = self.db.connection().execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [PolicyEventRecord.model_validate_json(r[0]) for r in rows]
