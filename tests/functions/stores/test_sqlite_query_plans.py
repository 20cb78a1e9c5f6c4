"""Each SQLite page is an indexed range query (cost O(page), not O(total)): checked on the real
query plans, which do not depend on machine speed the way a timing would."""

from __future__ import annotations

import pytest

from tuneplane.settings import Settings
from tuneplane.wiring import build_adapters


@pytest.mark.parametrize(
    ("call", "index"),
    [
        (lambda a: a.jobs.list_jobs("p", limit=20, after="ftjob-5"), "jobs_by_project"),
        (lambda a: a.jobs.list_jobs("p", limit=20), "jobs_by_project"),
        (lambda a: a.files.list_files("p", limit=20, after="file-5"), "files_by_project"),
        (lambda a: a.files.list_files("p", purpose="fine-tune", limit=20, order="asc", after="file-5"), "files_by_purpose"),
        (lambda a: a.jobs.list_events("p", "ftjob-1", limit=20, after="ftevent-5"), "PRIMARY KEY"),
        (lambda a: a.jobs.list_checkpoints("p", "ftjob-1", limit=20), "PRIMARY KEY"),
        (lambda a: a.jobs.list_unfinished_jobs(), "jobs_unfinished"),
    ],
)
def test_pages_search_an_index_and_never_sort(tmp_path, call, index):
    adapters = build_adapters(Settings(home=tmp_path))
    seen: list[tuple[str, tuple]] = []
    conn = adapters.jobs.db.connection()
    conn.set_trace_callback(lambda sql: seen.append(sql))
    call(adapters)
    conn.set_trace_callback(None)
    select = next(sql for sql in seen if sql.lstrip().upper().startswith("SELECT"))
    detail = " | ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + select).fetchall())
    adapters.close()
    assert "SEARCH" in detail and index in detail, detail
    assert "TEMP B-TREE" not in detail, detail  # no sort of the whole result: the index gives the order
