"""JobService control actions: moves that need no backend happen at once; with a run in flight only
``desired_status`` changes, for the reconciler to carry out."""

from __future__ import annotations

import pytest

from tuneplane.api.errors import ApiError
from tuneplane.domain.catalog import Catalog
from tuneplane.domain.ids import new_id
from tuneplane.domain.records import JobRecord
from tuneplane.services.jobs import JobService
from tuneplane.settings import Settings
from tuneplane.wiring import build_adapters


@pytest.fixture
def service(tmp_path):
    adapters = build_adapters(Settings(home=tmp_path))
    yield JobService(adapters.jobs, adapters.files, Catalog(["tiny-random-llama"]))
    adapters.close()


def stored_job(service, **extra) -> JobRecord:
    fields = dict(
        id=new_id("ftjob"), project="p", created_at=1, status="queued", model="tiny-random-llama", training_file="file-x",
        seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    job = JobRecord(**(fields | extra))
    service.jobs.create_job(job)
    return job


def test_queued_job_pause_resume_cancel(service):
    job = stored_job(service)
    paused = service.pause("p", job.id)
    assert (paused.status, paused.desired_status) == ("paused", "pause")
    assert service.pause("p", job.id).version == paused.version  # a second pause changes nothing
    resumed = service.resume("p", job.id)
    assert (resumed.status, resumed.desired_status) == ("queued", "run")
    cancelled = service.cancel("p", job.id)
    assert (cancelled.status, cancelled.desired_status) == ("cancelled", "cancel") and cancelled.finished_at
    for action in (service.cancel, service.pause, service.resume):
        with pytest.raises(ApiError) as err:
            action("p", job.id)
        assert err.value.code == "invalid_job_state"
    messages = [e.message for e in service.jobs.list_events("p", job.id)]
    assert len(messages) == 3 and "cancelled" in messages[0]


def test_running_job_only_changes_desired_status(service):
    job = stored_job(service, status="running", backend_ref="run-1")
    paused = service.pause("p", job.id)
    assert (paused.status, paused.desired_status) == ("running", "pause")
    resumed = service.resume("p", job.id)
    assert (resumed.status, resumed.desired_status) == ("running", "run")
    cancelling = service.cancel("p", job.id)
    assert (cancelling.status, cancelling.desired_status) == ("running", "cancel") and cancelling.finished_at is None
    with pytest.raises(ApiError):
        service.resume("p", job.id)  # a cancel request is final


def test_control_retries_when_the_reconciler_updates_first(service, monkeypatch):
    job = stored_job(service)
    real_update = service.jobs.update_job
    raced = []

    def update_after_a_race(record):
        if not raced:  # someone else (the reconciler) writes between our read and our write
            raced.append(True)
            current = service.jobs.get_job("p", job.id)
            real_update(current.model_copy(update={"estimated_finish": 99}))
        return real_update(record)

    monkeypatch.setattr(service.jobs, "update_job", update_after_a_race)
    cancelled = service.cancel("p", job.id)
    assert cancelled.status == "cancelled" and cancelled.estimated_finish == 99


def test_other_projects_jobs_are_not_found(service):
    job = stored_job(service)
    with pytest.raises(ApiError) as err:
        service.cancel("q", job.id)
    assert err.value.status == 404
