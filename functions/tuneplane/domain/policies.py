"""Retraining policies: what a new blob of training data should start, and when to promote the result.

Pure records and validation; no I/O. A policy watches a blob prefix (container + folder). Each blob
that lands under it is imported as a File and starts one fine-tuning job; the job's model is then
deployed only if it beats the policy's current model on validation loss by ``promotion.margin``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneplane.domain.jobs import PeftConfig

LINEAGE_PREFIX = "lineage:"
POLICY_NAME = r"^[A-Za-z0-9_-]{1,64}$"
# Azure's container naming rule; the local inbox uses the same names as its first folder level.
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
MAX_INTERVAL_SECONDS = 30 * 24 * 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BlobPrefix(_Strict):
    container: str = Field(min_length=3, max_length=63)
    path: str = Field("", max_length=512)

    @field_validator("container")
    @classmethod
    def _container_name(cls, value: str) -> str:
        if not _CONTAINER.match(value):
            raise ValueError("must be a blob container name: 3-63 lowercase letters, digits and single hyphens")
        return value

    @field_validator("path")
    @classmethod
    def _folder(cls, value: str) -> str:
        """A folder, stored with one trailing '/', so that 'a' never matches 'ab/x.jsonl'."""
        value = value.strip("/")
        parts = value.split("/") if value else []
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            raise ValueError("must be a folder path without empty, '.', '..' or hidden segments")
        if any(ord(c) < 0x20 or c == "\\" for c in value):
            raise ValueError("must not contain control characters or '\\'")
        return value + "/" if value else ""

    def covers(self, container: str, path: str) -> bool:
        return container == self.container and path.startswith(self.path)

    def overlaps(self, other: "BlobPrefix") -> bool:
        return self.container == other.container and (
            self.path.startswith(other.path) or other.path.startswith(self.path)
        )

    def __str__(self) -> str:
        return f"{self.container}/{self.path}"


class PromotionRule(_Strict):
    metric: Literal["valid_loss"] = "valid_loss"
    # The new model must be better than the current one by at least this much (absolute loss).
    margin: float = Field(0.0, ge=0, le=100)


class CreatePolicyRequest(_Strict):
    name: str = Field(pattern=POLICY_NAME)
    blob_prefix: BlobPrefix
    # A catalog model, an ft: model of this project, or lineage:<policy name>.
    model: str = Field(min_length=1, max_length=256)
    method: Literal["supervised", "dpo"] = "supervised"
    hyperparameters: dict[str, Any] | None = None
    peft: PeftConfig | None = None
    compute: str = Field("local", min_length=1, max_length=32)
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_-]*$")
    # The held-out set every retraining is scored on, so validation losses compare like with like.
    validation_file: str | None = Field(None, min_length=1, max_length=128)
    # None: always deploy the new model.
    promotion: PromotionRule | None = Field(default_factory=PromotionRule)
    min_interval_seconds: int = Field(0, ge=0, le=MAX_INTERVAL_SECONDS)

    def lineage(self) -> str | None:
        return self.model[len(LINEAGE_PREFIX):] if self.model.startswith(LINEAGE_PREFIX) else None

    def job_method(self) -> dict[str, Any]:
        """The OpenAI ``method`` object of the jobs this policy creates."""
        return {"type": self.method, self.method: {"hyperparameters": dict(self.hyperparameters or {})}}


class PolicyRecord(CreatePolicyRequest):
    id: str  # rtpol-…
    project: str
    created_at: int
    # State the handler and the promotion gate move forward (compare-and-swap on ``version``).
    last_triggered_at: int | None = None
    last_trigger: str | None = None  # the trigger key that claimed last_triggered_at
    promoted_model: str | None = None
    promoted_job: str | None = None
    promoted_valid_loss: float | None = None
    version: int = 0


TriggerOutcome = Literal["importing", "job_created", "invalid", "debounced", "skipped"]


class TriggerRecord(_Strict):
    """One (policy, blob, etag): the unit of exactly-once. Event Grid may deliver it many times."""

    key: str
    project: str
    policy_id: str
    blob: str  # container/path
    etag: str
    outcome: TriggerOutcome
    created_at: int
    event_ids: list[str] = Field(default_factory=list)
    file_id: str | None = None
    job_id: str | None = None
    detail: str | None = None


class PolicyEventRecord(_Strict):
    id: str  # rtevent-…, time-sortable
    policy_id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    data: dict[str, Any] | None = None


def render_policy(record: PolicyRecord) -> dict[str, Any]:
    out = record.model_dump(mode="json", exclude={"project", "version", "last_trigger"})
    return {"id": out.pop("id"), "object": "retraining_policy", **out}


def render_policy_event(record: PolicyEventRecord) -> dict[str, Any]:
    return {"object": "retraining_policy.event", **record.model_dump(mode="json")}
