"""Settings: every knob is a ``TUNEPLANE_*`` environment variable (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CATALOG = "SmolLM2-135M-Instruct,tiny-random-llama"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLANE_", extra="ignore")

    home: Path = Field(Path(".tuneplane"), description="Data directory (SQLite database, file contents).")
    host: str = Field("127.0.0.1", description="Address `tuneplane serve` binds to.")
    port: int = Field(7071, ge=1, le=65535, description="Port `tuneplane serve` listens on.")
    api_key: str | None = Field(
        None, description="If set, this key is accepted for the project `default` (stored only as a hash)."
    )
    backend: Literal["local", "azure"] = Field(
        "local", description="Storage adapters: `local` (SQLite + directory) or `azure` (Table + Blob)."
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest accepted file upload.")
    min_training_examples: int = Field(10, ge=1, description="Fewest examples a training file may hold.")
    catalog: str = Field(
        DEFAULT_CATALOG, description="Comma-separated base models that jobs may fine-tune."
    )
    key_cache_seconds: float = Field(
        5.0, ge=0, description="How long a verified API key is trusted before it is looked up again."
    )
    base_url: str = Field(
        "http://127.0.0.1:7071/v1", description="Where the CLI's client commands send requests."
    )
    # Local deployments and webhooks (tuneplane.backends.local_deployer, tuneplane.webhooks).
    serving_device: str | None = Field(
        None, description="Device of the local inference processes: cpu, cuda, cuda:1 … (default: cuda if available)."
    )
    serving_startup_timeout: float = Field(
        600.0, gt=0, description="Seconds an inference process may take to load its base model."
    )
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="Delay before the first webhook retry; each further retry waits twice as long."
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Webhook delivery attempts before giving up.")
    # Event-driven retraining (tuneplane.retraining, tuneplane.inbox).
    inbox_scan_seconds: float = Field(
        2.0, ge=0, description="How often the inbox folder (or, on Azurite, the policies' containers) is scanned; 0 turns it off."
    )
    inbox_quiet_seconds: float = Field(
        1.0, ge=0, description="How long an inbox file must be unchanged (and seen twice) before it is picked up."
    )

    # Local execution (tuneplane.reconciler, tuneplane.reconcile_loop, tuneplane.backends.local_runner).
    reconciler: bool = Field(
        True, description="Run the reconciler in the server; false leaves jobs as the API wrote them (API-only tests)."
    )
    reconcile_interval: float = Field(
        2.0, gt=0, description="Seconds between reconciler passes; creating, cancelling, pausing or resuming a job starts one at once."
    )
    max_concurrent_jobs: int = Field(1, ge=1, description="Local training runs at once; further jobs wait in a FIFO queue.")
    trainer_grace_seconds: float = Field(
        30.0, gt=0, description="How long a stopping trainer may take to save its checkpoint before it is killed."
    )
    checkpoint_every_n_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N optimizer steps (a checkpoint is always saved at each epoch's end)."
    )

    @property
    def database_path(self) -> Path:
        return self.home / "tuneplane.db"

    @property
    def contents_dir(self) -> Path:
        return self.home / "files"

    @property
    def catalog_names(self) -> list[str]:
        return [name.strip() for name in self.catalog.split(",") if name.strip()]
