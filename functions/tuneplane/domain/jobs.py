"""Fine-tuning jobs: the create request, "auto" hyperparameter resolution and the state machine.

Pure Python, no I/O. Checks that need stored state (does the file exist, is the model ours) live in
tuneplane.services.jobs; everything that can be decided from the request alone is decided here, so a
bad request is rejected by pydantic with the exact field path as ``param``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from tuneplane.domain.records import TERMINAL_STATUSES, JobRecord

SEED_MAX = 2**31 - 1
_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,31}$")


def _auto_or_number(name: str, kind: type, lo: float, hi: float, lo_open: bool = False):
    """A validator for OpenAI's ``"auto" | number`` hyperparameters, with one clear message."""
    bound = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
    message = f"{name} must be \"auto\" or a{'n integer' if kind is int else ' number'} {bound} and at most {hi:g}"

    def check(value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        # JSON true/false are ints to Python; OpenAI rejects them, and so do we.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(message)
        if kind is int and (isinstance(value, float) and not value.is_integer()):
            raise ValueError(message)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(message)
        if (value <= lo if lo_open else value < lo) or value > hi:
            raise ValueError(message)
        return kind(value)

    return BeforeValidator(check)


NEpochs = Annotated[Any, _auto_or_number("n_epochs", int, 1, 50)]
BatchSize = Annotated[Any, _auto_or_number("batch_size", int, 1, 256)]
LearningRateMultiplier = Annotated[Any, _auto_or_number("learning_rate_multiplier", float, 0, 100, lo_open=True)]
Beta = Annotated[Any, _auto_or_number("beta", float, 0, 2, lo_open=True)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SupervisedHyperparameters(_Strict):
    n_epochs: NEpochs = "auto"
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Beta = "auto"


class SupervisedMethod(_Strict):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(_Strict):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    # Accepted in shape only so that we can answer with a clear "not supported" instead of a schema error.
    reinforcement: dict[str, Any] | None = None


class PeftConfig(_Strict):
    """Extension: how the weights are adapted. Defaults suit small models on one GPU or CPU."""

    type: Literal["lora", "qlora", "dora", "full"] = "lora"
    r: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | Literal["all-linear"] = "all-linear"


class CreateJobRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=128)
    validation_file: str | None = Field(None, min_length=1, max_length=128)
    # Deprecated top-level form of method.supervised.hyperparameters; OpenAI still accepts it.
    hyperparameters: SupervisedHyperparameters | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, strict=True)
    method: Method | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    integrations: list[dict[str, Any]] | None = Field(None, max_length=0)
    # Extensions (the openai client's extra_body).
    peft: PeftConfig | None = None
    compute: str = Field("local", min_length=1, max_length=32)
    deploy: bool = True
    # Validate and estimate (the ``estimate`` extension) without creating anything.
    dry_run: bool = False

    @field_validator("compute")
    @classmethod
    def _compute_name(cls, value: str) -> str:
        if value in ("local", "serverless") or _COMPUTE_NAME.match(value):
            return value
        raise ValueError("compute must be 'local', 'serverless' or a compute cluster name (letters, digits, '-')")

    @field_validator("suffix")
    @classmethod
    def _empty_suffix(cls, value: str | None) -> str | None:
        return value or None

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def requested_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters for the chosen method, with "auto" where nothing was given."""
        if self.method and self.method.type == "dpo":
            return (self.method.dpo or DpoMethod()).hyperparameters.model_dump()
        if self.method and self.method.supervised:
            return self.method.supervised.hyperparameters.model_dump()
        return (self.hyperparameters or SupervisedHyperparameters()).model_dump()


def resolve_hyperparameters(requested: dict[str, Any], example_count: int) -> dict[str, Any]:
    """Replace each "auto" by a concrete value, following OpenAI's published heuristics.

    Epochs aim for between 100 and 25,000 examples seen in total (3 when that already holds);
    the batch is about 0.2% of the data; the multiplier scales the trainer's base learning rate.
    """
    n = max(1, example_count)
    resolved = dict(requested)
    if resolved.get("n_epochs") == "auto":
        epochs = 3
        if n * epochs < 100:
            epochs = min(25, math.ceil(100 / n))
        elif n * epochs > 25_000:
            epochs = max(1, 25_000 // n)
        resolved["n_epochs"] = epochs
    if resolved.get("batch_size") == "auto":
        resolved["batch_size"] = max(1, min(256, round(n * 0.002)))
    if resolved.get("learning_rate_multiplier") == "auto":
        resolved["learning_rate_multiplier"] = 1.0
    if resolved.get("beta") == "auto":
        resolved["beta"] = 0.1
    return resolved


def render_method(method_type: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": method_type, method_type: {"hyperparameters": hyperparameters}}


# ---------------------------------------------------------------------------------------------
# State machine. ``desired_status`` is what the user asked for; ``status`` is what was observed.
# The reconciler moves status towards desired_status; the API only makes moves that need no backend.

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "paused"}),
    "paused": frozenset({"queued", "running", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


class InvalidTransition(ValueError):
    def __init__(self, job: JobRecord, action: str):
        super().__init__(f"Cannot {action} job {job.id} with status '{job.status}'.")
        self.job = job
        self.action = action


def can_transition(current: str, new: str) -> bool:
    return new in ALLOWED_TRANSITIONS.get(current, frozenset())


def is_terminal(status: str) -> bool:
    return status in TERMINAL_STATUSES
