"""The container feed (development with the Azure stores): blobs in an Azurite container reach the
same retraining handler, each blob version once, and an upload that has not committed is not seen."""

from __future__ import annotations

import base64
import time

import pytest

from tests.azurite import azurite  # noqa: F401  (session fixture)
from tests.conftest import chat_jsonl
from tuneplane.domain.catalog import Catalog
from tuneplane.domain.ids import new_id
from tuneplane.domain.policies import PolicyRecord
from tuneplane.inbox import ContainerFeed, ContainerSource
from tuneplane.retraining import RetrainingHandler
from tuneplane.services.files import FileService
from tuneplane.services.jobs import JobService
from tuneplane.settings import Settings
from tuneplane.wiring import build_adapters, build_policy_store

pytestmark = pytest.mark.azurite


@pytest.fixture
def world(tmp_path, azurite):  # noqa: F811
    from azure.storage.blob import BlobServiceClient

    settings = Settings(backend="local", home=tmp_path / "home")
    adapters = build_adapters(settings)
    policies = build_policy_store(settings, adapters)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = azurite.unique_name("data")
    service.create_container(container)
    jobs = JobService(adapters.jobs, adapters.files, Catalog(settings.catalog_names))
    handler = RetrainingHandler(policies, FileService(adapters.files, adapters.contents, max_bytes=1 << 20), jobs,
                                ContainerSource(service))
    policies.create_policy(PolicyRecord(id=new_id("rtpol"), project="default", created_at=int(time.time()), name="feed",
                                        blob_prefix={"container": container, "path": "incoming"},
                                        model="tiny-random-llama", promotion=None))
    feed = ContainerFeed(service, handler, lambda: {(p.blob_prefix.container, p.blob_prefix.path) for p in policies.all_policies()})
    yield service.get_container_client(container), feed, adapters
    adapters.close()


def test_committed_blobs_start_one_job_each_and_uncommitted_uploads_are_not_seen(world):
    container, feed, adapters = world
    container.upload_blob("incoming/one.jsonl", chat_jsonl(12))
    container.upload_blob("elsewhere/two.jsonl", chat_jsonl(12))  # no policy watches it: not even listed
    [blob] = feed.scan_once()
    assert blob.path == "incoming/one.jsonl" and blob.etag
    assert feed.scan_once() == []
    [job] = adapters.jobs.list_jobs("default", limit=10)
    assert job.metadata["trigger_blob"] == f"{container.container_name}/incoming/one.jsonl"
    assert adapters.files.get_file("default", job.training_file).example_count == 12

    # Staged blocks are invisible until the block list is committed: a half-done upload is not read.
    partial = container.get_blob_client("incoming/big.jsonl")
    data = chat_jsonl(20)
    block_ids = [base64.b64encode(f"b{i}".encode()).decode() for i in range(2)]
    partial.stage_block(block_ids[0], data[: len(data) // 2])
    assert feed.scan_once() == []
    partial.stage_block(block_ids[1], data[len(data) // 2:])
    partial.commit_block_list(block_ids)
    assert [b.path for b in feed.scan_once()] == ["incoming/big.jsonl"]
    assert len(adapters.jobs.list_jobs("default", limit=10)) == 2

    # A fresh feed (a restarted server) sees the same versions again; the ledger starts nothing twice.
    fresh = ContainerFeed(feed.service, feed.handler, feed.prefixes)
    assert len(fresh.scan_once()) == 2
    assert len(adapters.jobs.list_jobs("default", limit=10)) == 2
