"""The webhook store's behaviour on both backends: SQLite (``tuneplane.webhooks.WebhookStore``) and
Table Storage on Azurite (``tuneplane.stores.azure_webhooks.AzureWebhookStore``). The dispatcher
tests of tests/functions/test_webhooks.py run here again against the Azure store."""

from __future__ import annotations

import json
import time

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.functions import test_webhooks as behaviour
from tests.functions.test_webhooks import receiver  # noqa: F401  (fixture)
from tuneplane.stores.sqlite import SqliteDatabase, SqliteJobStore
from tuneplane.webhooks import WebhookDispatcher, WebhookJobStore, WebhookStore

PROJECT = behaviour.PROJECT
EVENTS = ["fine_tuning.job.succeeded", "fine_tuning.job.failed"]


@pytest.fixture(params=["sqlite", "azure"])
def opener(request, tmp_path):
    """A function that opens the store (again: the second call is the same data after a restart)."""
    opened = []
    if request.param == "sqlite":
        def open_store():
            opened.append(WebhookStore(tmp_path / "webhooks.db"))
            return opened[-1]
    else:
        from tuneplane.stores.azure_account import StorageAccount
        from tuneplane.stores.azure_webhooks import AzureWebhookStore

        server = request.getfixturevalue("azurite")
        prefix = server.unique_name("w")

        def open_store():
            opened.append(AzureWebhookStore(StorageAccount(connection_string=server.connection_string), prefix))
            return opened[-1]
    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def jobs(tmp_path):
    db = SqliteDatabase(tmp_path / "jobs.db")
    yield SqliteJobStore(db)
    db.close()


def test_endpoints_are_created_listed_newest_first_updated_and_deleted(opener):
    store = opener()
    made = [store.create_endpoint(PROJECT, name=f"e{i}", url=f"http://127.0.0.1:9/{i}", event_types=EVENTS)
            for i in range(3)]
    assert made[0]["secret"].startswith("whsec_") and made[0]["event_types"] == EVENTS
    assert store.get_endpoint(PROJECT, made[1]["id"]) == made[1]
    assert store.get_endpoint("other", made[1]["id"]) is None  # project-scoped
    newest_first = sorted((m["id"] for m in made), reverse=True)
    assert [e["id"] for e in store.list_endpoints(PROJECT)] == newest_first
    assert [e["id"] for e in store.list_endpoints(PROJECT, limit=1, after=newest_first[0])] == newest_first[1:2]
    assert store.list_endpoints("other") == []

    updated = store.update_endpoint(PROJECT, made[0]["id"], url="http://127.0.0.1:9/new", name=None)
    assert updated["url"] == "http://127.0.0.1:9/new" and updated["name"] == "e0"
    assert store.get_endpoint(PROJECT, made[0]["id"])["url"] == "http://127.0.0.1:9/new"
    assert store.update_endpoint("other", made[0]["id"], url="http://x") is None

    assert store.delete_endpoint(PROJECT, made[0]["id"]) is True
    assert store.delete_endpoint(PROJECT, made[0]["id"]) is False
    assert store.get_endpoint(PROJECT, made[0]["id"]) is None


def test_events_are_recorded_once_per_subscribed_endpoint_and_survive_a_restart(opener, jobs):
    store = opener()
    a = store.create_endpoint(PROJECT, name="a", url="http://127.0.0.1:9/a", event_types=["fine_tuning.job.succeeded"])
    store.create_endpoint(PROJECT, name="b", url="http://127.0.0.1:9/b", event_types=["fine_tuning.job.failed"])
    store.create_endpoint("other", name="c", url="http://127.0.0.1:9/c", event_types=EVENTS)
    job = behaviour.running_job(jobs).model_copy(update={"status": "succeeded", "finished_at": 1_700_000_000})
    assert store.record_event(job) == 1
    assert store.record_event(job) == 0  # idempotent
    store.close()

    store = opener()  # the process restarted: the outbox is still there
    [row] = store.deliveries(PROJECT)
    assert (row["endpoint_id"], row["status"], row["attempts"], row["job_id"]) == (a["id"], "pending", 0, job.id)
    assert json.loads(row["payload"]) == {"id": row["event_id"], "object": "event", "created_at": 1_700_000_000,
                                          "type": "fine_tuning.job.succeeded", "data": {"id": job.id}}
    assert store.deliveries("other") == []
    [due] = store.due(time.time() + 1)
    assert (due["url"], due["secret"]) == (a["url"], a["secret"])
    assert store.next_due_at() == pytest.approx(row["next_attempt_at"])

    store.settle(due, status="pending", attempts=1, last_status_code=500, last_error="HTTP 500",
                 next_attempt_at=due["next_attempt_at"] + 60)
    assert store.due(due["next_attempt_at"] + 1) == []  # backed off
    store.settle(due, status="delivered", attempts=2, last_status_code=200, last_error=None, delivered_at=123)
    [row] = store.deliveries(PROJECT, a["id"])
    assert (row["status"], row["attempts"], row["last_error"], row["delivered_at"]) == ("delivered", 2, None, 123)
    assert store.next_due_at() is None and store.due(time.time() + 3600) == []


def test_deleting_an_endpoint_drops_its_pending_deliveries(opener, jobs):
    store = opener()
    endpoint = store.create_endpoint(PROJECT, name="a", url="http://127.0.0.1:9/a", event_types=EVENTS)
    store.record_event(behaviour.running_job(jobs).model_copy(update={"status": "failed"}))
    assert len(store.due(time.time() + 1)) == 1
    store.delete_endpoint(PROJECT, endpoint["id"])
    assert store.due(time.time() + 1) == [] and store.deliveries(PROJECT) == []


# -- the dispatcher's behaviour tests, against the Azure store ---------------------------------


@pytest.fixture
def world(azurite, tmp_path):  # noqa: F811  (replaces test_webhooks' SQLite world)
    from tuneplane.stores.azure_account import StorageAccount
    from tuneplane.stores.azure_webhooks import AzureWebhookStore

    db = SqliteDatabase(tmp_path / "tuneplane.db")
    store = AzureWebhookStore(StorageAccount(connection_string=azurite.connection_string), azurite.unique_name("w"))
    yield SqliteJobStore(db), store, tmp_path
    store.close()
    db.close()


test_delivery_is_signed_so_that_the_official_client_unwraps_it = (
    behaviour.test_delivery_is_signed_so_that_the_official_client_unwraps_it)
test_failed_attempts_are_retried_with_exponential_backoff_and_the_same_id = (
    behaviour.test_failed_attempts_are_retried_with_exponential_backoff_and_the_same_id)
test_backoff_doubles_until_the_attempts_are_spent = behaviour.test_backoff_doubles_until_the_attempts_are_spent
test_an_event_whose_write_lost_waits_for_the_job_and_is_dropped_if_it_finished_otherwise = (
    behaviour.test_an_event_whose_write_lost_waits_for_the_job_and_is_dropped_if_it_finished_otherwise)


def test_the_azure_outbox_is_delivered_once_after_a_restart(world, receiver, azurite):  # noqa: F811
    jobs, store, _ = world
    hook = receiver()
    store.create_endpoint(PROJECT, name="ci", url=hook.url, event_types=["fine_tuning.job.succeeded"])
    hooked = WebhookJobStore(jobs, store)
    job = behaviour.finish(hooked, behaviour.running_job(jobs), "succeeded")
    hooked.update_job(job.model_copy(update={"deployment": {"status": "succeeded"}}))  # no second event
    assert len(store.deliveries(PROJECT)) == 1
    from tuneplane.stores.azure_account import StorageAccount
    from tuneplane.stores.azure_webhooks import AzureWebhookStore

    store.close()  # the server dies before delivering; a new one opens the same table
    prefix = store._table.table_name.removesuffix("webhooks")
    reopened = AzureWebhookStore(StorageAccount(connection_string=azurite.connection_string), prefix)
    assert WebhookDispatcher(reopened, jobs).run_pass() == 1
    assert WebhookDispatcher(reopened, jobs).run_pass() == 0
    assert reopened.deliveries(PROJECT)[0]["status"] == "delivered" and len(hook.received) == 1
