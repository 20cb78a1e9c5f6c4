"""API keys: issue, verify, revoke. Only the sha256 of a secret is stored.

Verification hashes the presented secret and looks the hash up; the final comparison is
``hmac.compare_digest`` so that it takes the same time however many characters match. A verified
key is trusted for ``cache_seconds`` (a revoked key stops working at most that long after revocation),
which keeps the store off the hot path of every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time

from tuneplane.domain.ids import new_id
from tuneplane.domain.records import ApiKeyRecord
from tuneplane.ports import KeyStore

PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SECRET_PREFIX = "tp-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_project_name(project: str) -> str:
    if not PROJECT_PATTERN.match(project):
        raise ValueError("project must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit")
    return project


def issue_key(keys: KeyStore, project: str, *, name: str | None = None, secret: str | None = None) -> tuple[ApiKeyRecord, str]:
    """Create a key for ``project``; returns the record and the secret (shown once, never stored)."""
    check_project_name(project)
    secret = secret or SECRET_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        id=new_id("key"),
        project=project,
        name=name,
        key_hash=hash_secret(secret),
        prefix=secret[:7],
        created_at=int(time.time()),
    )
    keys.create_key(record)
    return record, secret


def ensure_key(keys: KeyStore, project: str, secret: str, *, name: str) -> ApiKeyRecord:
    """Make ``secret`` a valid key of ``project`` (used for TUNEPLANE_API_KEY); idempotent."""
    existing = keys.find_key(hash_secret(secret))
    if existing is not None:
        return existing
    record, _ = issue_key(keys, project, name=name, secret=secret)
    return record


class KeyVerifier:
    def __init__(self, keys: KeyStore, *, cache_seconds: float = 5.0):
        self.keys = keys
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[str, float]] = {}  # hash -> (project, trusted until)
        self._lock = threading.Lock()

    def project_for(self, secret: str) -> str | None:
        """The project the secret belongs to, or None if it is not an active key."""
        digest = hash_secret(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        record = self.keys.find_key(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return None
        if self.cache_seconds > 0:
            with self._lock:
                if len(self._cache) > 10_000:  # bound memory against many distinct keys
                    self._cache.clear()
                self._cache[digest] = (record.project, now + self.cache_seconds)
        return record.project
