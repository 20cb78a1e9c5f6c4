from __future__ import annotations

import threading

from tuneplane.domain.ids import fine_tuned_model_name, is_id, new_id, parse_fine_tuned_model


def test_ids_are_unique_and_increase_even_across_threads():
    ids: list[str] = []
    lock = threading.Lock()

    def make():
        local = [new_id("ftjob") for _ in range(2000)]
        assert local == sorted(local)
        with lock:
            ids.extend(local)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 8000
    assert all(is_id(i, "ftjob") for i in ids)
    assert not is_id(ids[0], "file") and not is_id("ftjob-../../x", "ftjob")


def test_fine_tuned_names_round_trip():
    name = fine_tuned_model_name("SmolLM2-135M-Instruct", "team-a", "bot", "ftjob-0123")
    assert name == "ft:SmolLM2-135M-Instruct:team-a:bot:ftjob-0123"
    assert parse_fine_tuned_model(name) == {
        "base": "SmolLM2-135M-Instruct", "project": "team-a", "suffix": "bot", "job_id": "ftjob-0123"
    }
    assert fine_tuned_model_name("m", "p", None, "ftjob-1") == "ft:m:p::ftjob-1"
    assert parse_fine_tuned_model("ft:m:p::ftjob-1")["suffix"] == ""
    for bad in ("gpt-4o", "ft:m:p:s", "ft::p:s:id", "xx:m:p:s:id", "ft:m:p:s:"):
        assert parse_fine_tuned_model(bad) is None
