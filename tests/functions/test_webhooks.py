"""Webhooks: Standard Webhooks signatures that openai's ``client.webhooks.unwrap()`` accepts, retries
with exponential backoff against a real local HTTP receiver, the persisted outbox, and the
/webhook_endpoints API through the official client against a real uvicorn server."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import uvicorn
from openai import InvalidWebhookSignatureError, OpenAI

from tuneplane.domain.records import JobRecord
from tuneplane.ports import Conflict
from tuneplane.stores.sqlite import SqliteDatabase, SqliteJobStore
from tuneplane.webhooks import WebhookDispatcher, WebhookJobStore, WebhookStore

PROJECT = "acme"


class Receiver:
    """A real HTTP endpoint that answers with the next status of ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append({"at": time.monotonic(), "body": body, "headers": dict(self.headers.items())})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receivers = []

    def make(statuses=None) -> Receiver:
        receivers.append(Receiver(statuses))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


@pytest.fixture
def world(tmp_path):
    db = SqliteDatabase(tmp_path / "tuneplane.db")
    jobs = SqliteJobStore(db)
    store = WebhookStore(tmp_path / "webhooks.db")
    yield jobs, store, tmp_path
    store.close()
    db.close()


def running_job(jobs, job_id="ftjob-000000000000001234567890") -> JobRecord:
    record = JobRecord(id=job_id, project=PROJECT, created_at=int(time.time()), status="running",
                       model="tiny-random-llama", training_file="file-x", seed=1,
                       method={"type": "supervised", "supervised": {"hyperparameters": {}}})
    created, _ = jobs.create_job(record)
    return created


def finish(store_with_hooks: WebhookJobStore, job: JobRecord, status: str) -> JobRecord:
    return store_with_hooks.update_job(job.model_copy(update={"status": status, "finished_at": int(time.time())}))


def test_delivery_is_signed_so_that_the_official_client_unwraps_it(world, receiver):
    jobs, store, _ = world
    hook = receiver()
    endpoint = store.create_endpoint(PROJECT, name="ci", url=hook.url, event_types=["fine_tuning.job.succeeded"])
    dispatcher = WebhookDispatcher(store, jobs)
    finish(WebhookJobStore(jobs, store), running_job(jobs), "succeeded")

    assert dispatcher.run_pass() == 1
    [delivery] = hook.received
    client = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    event = client.webhooks.unwrap(delivery["body"], delivery["headers"], secret=endpoint["secret"])
    assert event.type == "fine_tuning.job.succeeded"
    assert event.data.id == "ftjob-000000000000001234567890"
    assert event.object == "event" and event.id == delivery["headers"]["webhook-id"]
    assert delivery["headers"]["webhook-signature"].startswith("v1,")

    with pytest.raises(InvalidWebhookSignatureError):  # a changed body fails the check
        client.webhooks.unwrap(delivery["body"].replace(b"succeeded", b"cancelled"), delivery["headers"],
                               secret=endpoint["secret"])
    other = store.create_endpoint(PROJECT, name="other", url=hook.url, event_types=["fine_tuning.job.failed"])
    with pytest.raises(InvalidWebhookSignatureError):  # so does another endpoint's secret
        client.webhooks.unwrap(delivery["body"], delivery["headers"], secret=other["secret"])


def test_failed_attempts_are_retried_with_exponential_backoff_and_the_same_id(world, receiver):
    jobs, store, _ = world
    hook = receiver([500, 503])
    store.create_endpoint(PROJECT, name="flaky", url=hook.url, event_types=["fine_tuning.job.failed"])
    dispatcher = WebhookDispatcher(store, jobs, retry_base_seconds=0.3)
    dispatcher.start()
    try:
        finish(WebhookJobStore(jobs, store, on_event=dispatcher.nudge), running_job(jobs), "failed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not store.deliveries(PROJECT)[0]["delivered_at"]:
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    [row] = store.deliveries(PROJECT)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 3, 200)
    assert len(hook.received) == 3
    assert len({r["headers"]["webhook-id"] for r in hook.received}) == 1
    first, second, third = (r["at"] for r in hook.received)
    # Lower bounds only: a loaded machine may be late, never early.
    assert second - first >= 0.3 * 0.9
    assert third - second >= 0.6 * 0.9
    assert json.loads(hook.received[-1]["body"])["type"] == "fine_tuning.job.failed"


def test_backoff_doubles_until_the_attempts_are_spent(world, receiver):
    jobs, store, _ = world
    hook = receiver([500] * 10)
    store.create_endpoint(PROJECT, name="down", url=hook.url, event_types=["fine_tuning.job.cancelled"])
    now = [1_000_000.0]
    dispatcher = WebhookDispatcher(store, jobs, retry_base_seconds=5, max_attempts=4, clock=lambda: now[0])
    finish(WebhookJobStore(jobs, store), running_job(jobs), "cancelled")
    store.settle(store.deliveries(PROJECT)[0], next_attempt_at=now[0])
    waits = []
    for _ in range(4):
        assert dispatcher.run_pass() == 0
        row = store.deliveries(PROJECT)[0]
        waits.append(row["next_attempt_at"] - now[0])
        assert dispatcher.run_pass() == 0  # nothing is due before the backoff has passed
        now[0] = row["next_attempt_at"]
    assert waits[:3] == [5, 10, 20]
    row = store.deliveries(PROJECT)[0]
    assert (row["status"], row["attempts"], row["last_error"]) == ("failed", 4, "HTTP 500")
    assert len(hook.received) == 4


def test_the_outbox_survives_a_restart_and_events_are_recorded_once(world, receiver):
    jobs, store, tmp_path = world
    hook = receiver()
    store.create_endpoint(PROJECT, name="ci", url=hook.url, event_types=["fine_tuning.job.succeeded"])
    hooked = WebhookJobStore(jobs, store)
    job = finish(hooked, running_job(jobs), "succeeded")
    hooked.update_job(job.model_copy(update={"deployment": {"status": "succeeded"}}))  # a later write: no new event
    assert len(store.deliveries(PROJECT)) == 1
    store.close()  # the server dies before delivering

    reopened = WebhookStore(tmp_path / "webhooks.db")
    try:
        assert WebhookDispatcher(reopened, jobs).run_pass() == 1
        assert WebhookDispatcher(reopened, jobs).run_pass() == 0  # delivered exactly once
        assert reopened.deliveries(PROJECT)[0]["status"] == "delivered"
    finally:
        reopened.close()
    assert len(hook.received) == 1


def test_an_event_whose_write_lost_waits_for_the_job_and_is_dropped_if_it_finished_otherwise(world, receiver):
    jobs, store, _ = world
    hook = receiver()
    store.create_endpoint(PROJECT, name="ci", url=hook.url, event_types=list(
        ["fine_tuning.job.succeeded", "fine_tuning.job.cancelled"]))
    hooked = WebhookJobStore(jobs, store)
    job = running_job(jobs)
    jobs.update_job(job)  # somebody else moved first: the version in hand is stale
    with pytest.raises(Conflict):
        finish(hooked, job, "succeeded")
    dispatcher = WebhookDispatcher(store, jobs)
    assert dispatcher.run_pass() == 0 and hook.received == []  # the job is still running: wait
    current = jobs.get_job(PROJECT, job.id)
    finish(hooked, current, "cancelled")
    store.settle(store.deliveries(PROJECT)[0], next_attempt_at=0)
    assert dispatcher.run_pass() == 1
    assert [json.loads(r["body"])["type"] for r in hook.received] == ["fine_tuning.job.cancelled"]
    statuses = {row["event_type"]: row["status"] for row in store.deliveries(PROJECT)}
    assert statuses == {"fine_tuning.job.succeeded": "dropped", "fine_tuning.job.cancelled": "delivered"}


# -- the API, through the official client against a real server --------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    from tuneplane.app import create_app
    from tuneplane.settings import Settings

    port = _free_port()
    settings = Settings(home=tmp_path_factory.mktemp("home"), port=port, api_key="tp-webhooks-key", key_cache_seconds=0)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=30)


def test_endpoints_are_managed_with_the_official_client(api_server, receiver):
    base_url, app = api_server
    hook = receiver()
    client = OpenAI(api_key="tp-webhooks-key", base_url=base_url + "/v1", max_retries=0)
    created = client.webhooks.create(name="ci", url=hook.url, event_types=["fine_tuning.job.succeeded"])
    assert created.signing_secret.startswith("whsec_")
    assert created.signing_secret_hint.endswith(created.signing_secret[-4:])
    fetched = client.webhooks.retrieve(created.id)
    assert fetched.url == hook.url and "signing_secret" not in fetched.model_dump()
    assert [e.id for e in client.webhooks.list()] == [created.id]
    updated = client.webhooks.update(created.id, event_types=["fine_tuning.job.failed", "fine_tuning.job.cancelled"])
    assert updated.event_types == ["fine_tuning.job.failed", "fine_tuning.job.cancelled"]

    result = client.webhooks.test(created.id, event_type="fine_tuning.job.failed")
    assert result.status_code == 200
    event = client.webhooks.unwrap(hook.received[-1]["body"], hook.received[-1]["headers"], secret=created.signing_secret)
    assert event.type == "fine_tuning.job.failed"

    rotated = client.webhooks.rotate_secret(created.id)
    assert rotated.signing_secret != created.signing_secret
    assert client.webhooks.delete(created.id).deleted is True
    assert client.webhooks.list().data == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x", "url": "ftp://example.com/h", "event_types": ["fine_tuning.job.failed"]}, "url"),
        ({"name": "x", "url": "not a url", "event_types": ["fine_tuning.job.failed"]}, "url"),
        ({"name": "x", "url": "http://example.com/h", "event_types": ["batch.completed"]}, "event_types[0]"),
        ({"name": "x", "url": "http://example.com/h", "event_types": []}, "event_types"),
        ({"url": "http://example.com/h", "event_types": ["fine_tuning.job.failed"]}, "name"),
        ({"name": "x", "url": "http://example.com/h", "event_types": ["fine_tuning.job.failed"], "secret": "s"}, "secret"),
    ],
)
def test_bad_endpoints_are_refused_naming_the_field(api_server, body, param):
    base_url, app = api_server
    before = app.state.serving.webhooks.list_endpoints("default")
    response = httpx.post(base_url + "/v1/webhook_endpoints", json=body, headers={"api-key": "tp-webhooks-key"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert app.state.serving.webhooks.list_endpoints("default") == before


def test_another_projects_endpoint_is_not_found(api_server, receiver):
    base_url, app = api_server
    from tuneplane.services.keys import issue_key

    _, other_key = issue_key(app.state.adapters.keys, "other", name="test")
    mine = OpenAI(api_key="tp-webhooks-key", base_url=base_url + "/v1", max_retries=0)
    theirs = OpenAI(api_key=other_key, base_url=base_url + "/v1", max_retries=0)
    created = mine.webhooks.create(name="ci", url=receiver().url, event_types=["fine_tuning.job.succeeded"])
    for call in (lambda: theirs.webhooks.retrieve(created.id), lambda: theirs.webhooks.delete(created.id)):
        with pytest.raises(Exception) as caught:
            call()
        assert getattr(caught.value, "status_code", None) == 404
    assert theirs.webhooks.list().data == []
    assert mine.webhooks.retrieve(created.id).id == created.id
