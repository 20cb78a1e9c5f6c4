from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneplane.domain.jobs import (
    ALLOWED_TRANSITIONS,
    CreateJobRequest,
    can_transition,
    is_terminal,
    render_method,
    resolve_hyperparameters,
)


def test_terminal_states_have_no_way_out_and_every_target_is_a_state():
    for state in ("succeeded", "failed", "cancelled"):
        assert is_terminal(state) and ALLOWED_TRANSITIONS[state] == frozenset()
    for targets in ALLOWED_TRANSITIONS.values():
        assert targets <= ALLOWED_TRANSITIONS.keys()
    assert can_transition("queued", "running") and can_transition("paused", "queued")
    assert not can_transition("succeeded", "running") and not can_transition("queued", "succeeded")


@pytest.mark.parametrize(
    ("examples", "epochs", "batch"),
    [(10, 10, 1), (12, 9, 1), (40, 3, 1), (1000, 3, 2), (20_000, 1, 40), (1_000_000, 1, 256)],
)
def test_auto_hyperparameters_follow_the_data_size(examples, epochs, batch):
    resolved = resolve_hyperparameters({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}, examples)
    assert resolved == {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": 1.0}


def test_explicit_values_are_kept_and_dpo_beta_resolves():
    assert resolve_hyperparameters({"n_epochs": 4, "beta": "auto"}, 10) == {"n_epochs": 4, "beta": 0.1}
    assert render_method("dpo", {"beta": 0.1}) == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}


def test_request_defaults_and_hyperparameter_sources():
    req = CreateJobRequest(model="m", training_file="file-1")
    assert req.method_type() == "supervised" and req.compute == "local" and req.deploy is True
    assert req.requested_hyperparameters() == {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    legacy = CreateJobRequest(model="m", training_file="f", hyperparameters={"n_epochs": 2})
    assert legacy.requested_hyperparameters()["n_epochs"] == 2
    dpo = CreateJobRequest(model="m", training_file="f", method={"type": "dpo"})
    assert dpo.requested_hyperparameters()["beta"] == "auto"
    assert CreateJobRequest(model="m", training_file="f", suffix="").suffix is None
    assert CreateJobRequest(model="m", training_file="f", compute="gpu-cluster-1").compute == "gpu-cluster-1"


@pytest.mark.parametrize(
    "fields",
    [
        {"hyperparameters": {"n_epochs": 0}},
        {"hyperparameters": {"n_epochs": "3"}},
        {"hyperparameters": {"n_epochs": float("nan")}},
        {"hyperparameters": {"batch_size": 256.5}},
        {"hyperparameters": {"learning_rate_multiplier": -1}},
        {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.0001}}}},
        {"seed": True},
        {"peft": {"dropout": 1.0}},
        {"compute": "-bad"},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
    ],
)
def test_out_of_range_requests_are_rejected(fields):
    with pytest.raises(ValidationError):
        CreateJobRequest(model="m", training_file="f", **fields)


def test_boundaries_are_accepted():
    req = CreateJobRequest(
        model="m", training_file="f", seed=2**31 - 1, suffix="a" * 64,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 2, "n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 0.001}}},
        metadata={"k" * 64: "v" * 512},
    )
    assert req.requested_hyperparameters() == {"n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 0.001, "beta": 2.0}
