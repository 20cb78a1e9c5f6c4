"""Webhooks: per-project endpoints that hear when a fine-tuning job finishes.

Events are ``fine_tuning.job.succeeded|failed|cancelled`` in OpenAI's webhook event shape
(``{"id", "object": "event", "created_at", "type", "data": {"id": job_id}}``), signed per Standard
Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed with the base64 part of the endpoint's ``whsec_`` secret, which is
what ``openai``'s ``client.webhooks.unwrap()`` verifies.

Delivery goes through an outbox in SQLite, so nothing is lost on a restart:

* ``WebhookJobStore`` wraps the JobStore. When a job is about to be written with a terminal status
  it records the event for every subscribed endpoint *before* the write (idempotent: an event's id
  is derived from the job and the status). Recording first means a crash between the two writes
  cannot lose the event; the cost is that a write which then fails (``Conflict``) leaves an event
  for a transition that has not happened yet.
* ``WebhookDispatcher`` therefore confirms each delivery against the stored job before sending it:
  it waits while the job is not finished yet, and drops the event if the job finished differently.
  A failed attempt (network error or non-2xx answer) is retried with exponential backoff, with the
  same ``webhook-id`` so receivers can deduplicate, up to ``max_attempts``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tuneplane.domain.ids import new_id
from tuneplane.domain.records import TERMINAL_STATUSES, JobRecord
from tuneplane.ports import JobStore

log = logging.getLogger("tuneplane.webhooks")

EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
USER_AGENT = "tuneplane-webhooks/1"
# How long a delivery whose job has not finished yet waits before it is checked again.
UNCONFIRMED_RECHECK_SECONDS = 2.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL, url TEXT NOT NULL,
    event_types TEXT NOT NULL, secret TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_project ON webhook_endpoints (project, id);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id TEXT NOT NULL, event_id TEXT NOT NULL, project TEXT NOT NULL, job_id TEXT NOT NULL,
    event_type TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL, last_status_code INTEGER, last_error TEXT, created_at INTEGER NOT NULL,
    delivered_at INTEGER, PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
"""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value (Standard Webhooks, scheme v1)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_type_for(status: str) -> str:
    return f"fine_tuning.job.{status}"


def event_id_for(project: str, job_id: str, event_type: str) -> str:
    return "evt_" + hashlib.sha256(f"{project}\n{job_id}\n{event_type}".encode()).hexdigest()[:32]


def terminal_event(job: JobRecord) -> tuple[str, str, str]:
    """``(event_type, event_id, payload)`` of a finished job's webhook event, the same in every outbox."""
    event_type = event_type_for(job.status)
    event_id = event_id_for(job.project, job.id, event_type)
    payload = json.dumps({"id": event_id, "object": "event", "created_at": int(job.finished_at or time.time()),
                          "type": event_type, "data": {"id": job.id}}, separators=(",", ":"))
    return event_type, event_id, payload


def secret_hint(secret: str) -> str:
    return f"whsec_****{secret[-4:]}"


class WebhookStore:
    """Endpoints and the delivery outbox, in their own SQLite file."""

    def __init__(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- endpoints -----------------------------------------------------------------------------

    def create_endpoint(self, project: str, *, name: str, url: str, event_types: list[str]) -> dict[str, Any]:
        now = int(time.time())
        row = {"id": new_id("whep"), "project": project, "name": name, "url": url,
               "event_types": json.dumps(event_types), "secret": new_secret(), "created_at": now, "updated_at": now}
        with self._lock:
            self._db.execute(
                "INSERT INTO webhook_endpoints VALUES (:id, :project, :name, :url, :event_types, :secret, :created_at, :updated_at)",
                row,
            )
        return _endpoint(row)

    def get_endpoint(self, project: str, endpoint_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM webhook_endpoints WHERE id = ? AND project = ?",
                                   (endpoint_id, project)).fetchone()
        return _endpoint(row) if row else None

    def list_endpoints(self, project: str, *, limit: int = 20, after: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM webhook_endpoints WHERE project = ?"
        args: list[Any] = [project]
        if after:
            query += " AND id < ?"
            args.append(after)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [_endpoint(row) for row in rows]

    def update_endpoint(self, project: str, endpoint_id: str, **changes: Any) -> dict[str, Any] | None:
        current = self.get_endpoint(project, endpoint_id)
        if current is None:
            return None
        changes = {k: v for k, v in changes.items() if v is not None and current.get(k) != v}
        if not changes:
            return current
        values = {**current, **changes, "updated_at": int(time.time())}
        with self._lock:
            self._db.execute(
                "UPDATE webhook_endpoints SET name = ?, url = ?, event_types = ?, secret = ?, updated_at = ? WHERE id = ? AND project = ?",
                (values["name"], values["url"], json.dumps(values["event_types"]), values["secret"], values["updated_at"],
                 endpoint_id, project),
            )
        return values

    def delete_endpoint(self, project: str, endpoint_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM webhook_endpoints WHERE id = ? AND project = ?", (endpoint_id, project))
            if cursor.rowcount:
                self._db.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND status = 'pending'", (endpoint_id,))
        return cursor.rowcount > 0

    # -- outbox --------------------------------------------------------------------------------

    def record_event(self, job: JobRecord) -> int:
        """Queue the job's terminal event for every subscribed endpoint; idempotent. Returns how many
        deliveries are new."""
        event_type, event_id, payload = terminal_event(job)
        now = time.time()
        added = 0
        with self._lock:
            endpoints = self._db.execute("SELECT id, event_types FROM webhook_endpoints WHERE project = ?",
                                         (job.project,)).fetchall()
            for endpoint in endpoints:
                if event_type not in json.loads(endpoint["event_types"]):
                    continue
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries (endpoint_id, event_id, project, job_id, event_type, payload,"
                    " status, attempts, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (endpoint["id"], event_id, job.project, job.id, event_type, payload, now, int(now)),
                )
                added += cursor.rowcount
        return added

    def due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT d.*, e.url, e.secret FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [dict(row) for row in rows]

    def next_due_at(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE status = 'pending'").fetchone()
        return row[0]

    def deliveries(self, project: str, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM webhook_deliveries WHERE project = ?", [project]
        if endpoint_id:
            query += " AND endpoint_id = ?"
            args.append(endpoint_id)
        with self._lock:
            return [dict(row) for row in self._db.execute(query + " ORDER BY created_at, event_id", args).fetchall()]

    def settle(self, delivery: dict[str, Any], **changes: Any) -> None:
        sets = ", ".join(f"{column} = ?" for column in changes)
        with self._lock:
            self._db.execute(f"UPDATE webhook_deliveries SET {sets} WHERE endpoint_id = ? AND event_id = ?",
                             (*changes.values(), delivery["endpoint_id"], delivery["event_id"]))


def _endpoint(row: Any) -> dict[str, Any]:
    data = dict(row)
    if isinstance(data["event_types"], str):
        data["event_types"] = json.loads(data["event_types"])
    return data


class WebhookJobStore:
    """A JobStore that records the webhook event of a terminal transition before writing it."""

    def __init__(self, inner: JobStore, webhooks: WebhookStore, on_event: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.webhooks = webhooks
        self.on_event = on_event

    def update_job(self, record: JobRecord) -> JobRecord:
        recorded = record.status in TERMINAL_STATUSES and self.webhooks.record_event(record) > 0
        stored = self.inner.update_job(record)
        if recorded and self.on_event is not None:
            self.on_event()
        return stored

    def __getattr__(self, name: str) -> Any:  # every other JobStore method, unchanged
        return getattr(self.inner, name)


class WebhookDispatcher:
    """Sends due deliveries; ``run_pass`` is one pass, ``start`` runs passes on a thread."""

    def __init__(
        self,
        store: WebhookStore,
        jobs: JobStore,
        *,
        retry_base_seconds: float = 5.0,
        max_delay_seconds: float = 3600.0,
        max_attempts: int = 8,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.retry_base_seconds = retry_base_seconds
        self.max_delay_seconds = max_delay_seconds
        self.max_attempts = max_attempts
        self.clock = clock
        self._http = httpx.Client(timeout=timeout, headers={"user-agent": USER_AGENT})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones: base, 2·base, 4·base, …"""
        return min(self.retry_base_seconds * 2 ** (attempts - 1), self.max_delay_seconds)

    def run_pass(self) -> int:
        """Attempt every due delivery once; returns how many were delivered."""
        delivered = 0
        for delivery in self.store.due(self.clock()):
            if self._stop.is_set():
                break
            job = self.jobs.get_job(delivery["project"], delivery["job_id"])
            if job is None or (job.status in TERMINAL_STATUSES and event_type_for(job.status) != delivery["event_type"]):
                self.store.settle(delivery, status="dropped", last_error="the job did not finish this way")
                continue
            if job.status not in TERMINAL_STATUSES:  # its terminal write has not landed (yet)
                self.store.settle(delivery, next_attempt_at=self.clock() + UNCONFIRMED_RECHECK_SECONDS)
                continue
            delivered += self._attempt(delivery)
        return delivered

    def send(self, url: str, secret: str, message_id: str, payload: str) -> httpx.Response:
        timestamp = int(self.clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, payload),
        }
        return self._http.post(url, content=payload.encode(), headers=headers)

    def _attempt(self, delivery: dict[str, Any]) -> int:
        attempts = delivery["attempts"] + 1
        status_code, error = None, None
        try:
            response = self.send(delivery["url"], delivery["secret"], delivery["event_id"], delivery["payload"])
            status_code = response.status_code
            if 200 <= status_code < 300:
                self.store.settle(delivery, status="delivered", attempts=attempts, last_status_code=status_code,
                                  last_error=None, delivered_at=int(self.clock()))
                return 1
            error = f"HTTP {status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        final = attempts >= self.max_attempts
        log.info("webhook %s to %s failed (attempt %d): %s", delivery["event_id"], delivery["url"], attempts, error)
        self.store.settle(delivery, status="failed" if final else "pending", attempts=attempts,
                          last_status_code=status_code, last_error=error,
                          next_attempt_at=self.clock() + (0 if final else self.backoff(attempts)))
        return 0

    # -- background thread ---------------------------------------------------------------------

    def nudge(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuneplane-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._http.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
                next_due = self.store.next_due_at()
            except Exception:  # keep delivering: a bad row or a locked database is retried
                log.exception("webhook delivery pass failed")
                next_due = None
            wait = 5.0 if next_due is None else min(5.0, max(0.05, next_due - self.clock()))
            self._wake.wait(wait)
            self._wake.clear()
