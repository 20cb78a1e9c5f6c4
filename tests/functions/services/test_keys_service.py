from __future__ import annotations

import pytest

from tuneplane.services.keys import KeyVerifier, ensure_key, hash_secret, issue_key
from tuneplane.settings import Settings
from tuneplane.wiring import build_adapters


@pytest.fixture
def keys(tmp_path):
    adapters = build_adapters(Settings(home=tmp_path))
    yield adapters.keys
    adapters.close()


def test_issued_keys_verify_and_only_the_hash_is_stored(keys):
    record, secret = issue_key(keys, "team-a", name="ci")
    assert record.key_hash == hash_secret(secret) and secret not in record.model_dump_json()
    assert record.prefix == secret[:7]
    assert KeyVerifier(keys, cache_seconds=0).project_for(secret) == "team-a"
    assert KeyVerifier(keys, cache_seconds=0).project_for(secret + "x") is None


def test_revocation_takes_effect_after_the_cache_window(keys):
    record, secret = issue_key(keys, "p")
    uncached, cached = KeyVerifier(keys, cache_seconds=0), KeyVerifier(keys, cache_seconds=60)
    assert cached.project_for(secret) == "p"
    keys.revoke_key(record.id)
    assert uncached.project_for(secret) is None
    assert cached.project_for(secret) == "p"  # trusted until the window ends, by design


def test_ensure_key_is_idempotent(keys):
    first = ensure_key(keys, "default", "tp-fixed", name="env")
    assert ensure_key(keys, "default", "tp-fixed", name="env") == first
    assert len(keys.list_keys("default")) == 1


@pytest.mark.parametrize("project", ["", "a b", "-x", "x" * 65, "ü"])
def test_bad_project_names_are_refused(keys, project):
    with pytest.raises(ValueError):
        issue_key(keys, project)
