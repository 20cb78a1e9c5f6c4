"""50 parallel uploads and 50 parallel job creations: each stored exactly once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import chat_jsonl

N = 50


def test_parallel_uploads_and_creates_are_each_stored_once(server):
    def upload(i: int) -> str:
        with server.client("concurrency") as c:
            r = c.post("/files", files={"file": (f"c{i}.jsonl", chat_jsonl(10 + i))}, data={"purpose": "fine-tune"})
            assert r.status_code == 200, r.text
            return r.json()["id"]

    with ThreadPoolExecutor(max_workers=N) as pool:
        file_ids = list(pool.map(upload, range(N)))
    assert len(set(file_ids)) == N
    stored = server.adapters.files.list_files("concurrency", limit=1000)
    assert sorted(f.id for f in stored) == sorted(file_ids)
    assert sorted(f.example_count for f in stored) == list(range(10, 10 + N))

    def create(i: int) -> str:
        with server.client("concurrency") as c:
            body = {"model": "tiny-random-llama", "training_file": file_ids[i], "metadata": {"i": str(i)}}
            r = c.post("/fine_tuning/jobs", json=body)
            assert r.status_code == 200, r.text
            return r.json()["id"]

    with ThreadPoolExecutor(max_workers=N) as pool:
        job_ids = list(pool.map(create, range(N)))
    assert len(set(job_ids)) == N
    jobs = server.adapters.jobs.list_jobs("concurrency", limit=100)
    assert sorted(j.id for j in jobs) == sorted(job_ids)
    assert sorted(int(j.metadata["i"]) for j in jobs) == list(range(N))
    # Every job got its two creation events, no more, no fewer.
    assert all(len(server.adapters.jobs.list_events("concurrency", j)) == 2 for j in job_ids)


def test_parallel_retries_with_one_idempotency_key_create_one_job(server):
    with server.client("idem") as c:
        r = c.post("/files", files={"file": ("t.jsonl", chat_jsonl(10))}, data={"purpose": "fine-tune"})
        file_id = r.json()["id"]

    def create(_: int) -> str:
        with server.client("idem") as c:
            r = c.post(
                "/fine_tuning/jobs",
                json={"model": "tiny-random-llama", "training_file": file_id},
                headers={"Idempotency-Key": "one-and-only"},
            )
            assert r.status_code == 200, r.text
            return r.json()["id"]

    with ThreadPoolExecutor(max_workers=N) as pool:
        ids = set(pool.map(create, range(N)))
    assert len(ids) == 1
    assert [j.id for j in server.adapters.jobs.list_jobs("idem")] == list(ids)
