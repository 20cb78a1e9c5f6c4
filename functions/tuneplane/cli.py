"""The ``tuneplane`` command: run the server, manage API keys, and drive the API from a shell.

Client commands talk HTTP to ``TUNEPLANE_BASE_URL`` with ``TUNEPLANE_API_KEY``; ``keys`` and ``serve``
work on the data directory (``TUNEPLANE_HOME``) directly. Every command prints a table, or the raw
JSON with ``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tuneplane.settings import Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="tuneplane: OpenAI-compatible fine-tuning.")
keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (stored hashed in TUNEPLANE_HOME).")
files_app = typer.Typer(no_args_is_help=True, help="Upload and manage files.")
jobs_app = typer.Typer(no_args_is_help=True, help="Create and follow fine-tuning jobs.")
models_app = typer.Typer(no_args_is_help=True, help="Base and fine-tuned models.")
app.add_typer(keys_app, name="keys")
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")

out = Console(soft_wrap=True)
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]


def _emit(data: Any, as_json: bool, columns: list[str], rows: list[dict] | None = None, title: str | None = None) -> None:
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(title=title)
    for column in columns:
        # Ids must stay copy-pastable, so they never wrap; other columns give way.
        table.add_column(column, no_wrap=column in ("id", "status", "model", "secret") or column.endswith("_file"))
    for row in rows if rows is not None else [data]:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    out.print(table)


def _client() -> httpx.Client:
    settings = Settings()
    if not settings.api_key:
        err.print("[red]Set TUNEPLANE_API_KEY to an API key (see `tuneplane keys create`).[/red]")
        raise typer.Exit(2)
    return httpx.Client(base_url=settings.base_url, headers={"Authorization": f"Bearer {settings.api_key}"}, timeout=120)


def _call(method: str, path: str, **kwargs) -> Any:
    try:
        with _client() as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]Cannot reach {Settings().base_url}: {exc}[/red]")
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            where = f" (param: {error['param']})" if error.get("param") else ""
            err.print(f"[red]Error {response.status_code} {error.get('code') or ''}: {error['message']}{where}[/red]")
        except (ValueError, KeyError, TypeError):
            err.print(f"[red]Error {response.status_code}: {response.text}[/red]")
        raise typer.Exit(1)
    return response.json()


def _open_key_store(settings: Settings):
    from tuneplane.wiring import build_adapters

    return build_adapters(settings)


# -- serve --------------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default TUNEPLANE_HOST or 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default TUNEPLANE_PORT or 7071).")] = None,
) -> None:
    """Run the API server. Creates an API key for project 'default' on first start and prints it once."""
    import uvicorn

    from tuneplane.app import create_app
    from tuneplane.services.keys import issue_key

    settings = Settings()
    settings = settings.model_copy(update={"host": host or settings.host, "port": port or settings.port})
    adapters = _open_key_store(settings)
    if not settings.api_key and not adapters.keys.list_keys():
        _, secret = issue_key(adapters.keys, "default", name="first-start")
        out.print(
            Panel(
                f"API key for project 'default' (shown once, stored only as a hash):\n\n[bold]{secret}[/bold]",
                title="tuneplane",
            )
        )
    out.print(f"tuneplane listening on http://{settings.host}:{settings.port}/v1 (data in {settings.home})")
    sys.stdout.flush()
    try:
        uvicorn.run(create_app(settings, adapters), host=settings.host, port=settings.port, log_level="warning")
    finally:
        adapters.close()


# -- keys ---------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    project: Annotated[str, typer.Option(help="The project (tenant) the key belongs to.")],
    name: Annotated[Optional[str], typer.Option(help="A label for humans.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key; the secret is printed once and only its hash is stored."""
    from tuneplane.services.keys import issue_key

    adapters = _open_key_store(Settings())
    try:
        record, secret = issue_key(adapters.keys, project, name=name)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    finally:
        adapters.close()
    row = {"id": record.id, "project": record.project, "name": record.name, "secret": secret}
    _emit(row, as_json, ["id", "project", "name", "secret"], title="New API key (the secret is not shown again)")


@keys_app.command("list")
def keys_list(
    project: Annotated[Optional[str], typer.Option(help="Only this project's keys.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List keys (never their secrets)."""
    adapters = _open_key_store(Settings())
    try:
        rows = [k.model_dump(exclude={"key_hash"}) for k in adapters.keys.list_keys(project)]
    finally:
        adapters.close()
    _emit(rows, as_json, ["id", "project", "name", "prefix", "created_at", "revoked_at"], rows, title="API keys")


@keys_app.command("revoke")
def keys_revoke(key_id: str, as_json: JsonFlag = False) -> None:
    """Revoke a key by its id (key-…)."""
    adapters = _open_key_store(Settings())
    try:
        revoked = adapters.keys.revoke_key(key_id)
    finally:
        adapters.close()
    if not revoked:
        err.print(f"[red]No active key with id {key_id}.[/red]")
        raise typer.Exit(1)
    _emit({"id": key_id, "revoked": True}, as_json, ["id", "revoked"])


# -- files --------------------------------------------------------------------------------------

FILE_COLUMNS = ["id", "filename", "purpose", "bytes", "status", "created_at"]


@files_app.command("upload")
def files_upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    purpose: Annotated[str, typer.Option(help="fine-tune, batch, …")] = "fine-tune",
    as_json: JsonFlag = False,
) -> None:
    """Upload a file (fine-tune files are validated on the server as they stream in)."""
    with path.open("rb") as fh:
        data = _call("POST", "/files", files={"file": (path.name, fh)}, data={"purpose": purpose})
    _emit(data, as_json, FILE_COLUMNS)


@files_app.command("list")
def files_list(
    purpose: Annotated[Optional[str], typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: JsonFlag = False,
) -> None:
    params = {"limit": limit} | ({"purpose": purpose} if purpose else {})
    data = _call("GET", "/files", params=params)
    _emit(data, as_json, FILE_COLUMNS, data["data"], title="Files")


@files_app.command("get")
def files_get(file_id: str, as_json: JsonFlag = False) -> None:
    _emit(_call("GET", f"/files/{file_id}"), as_json, FILE_COLUMNS)


@files_app.command("delete")
def files_delete(file_id: str, as_json: JsonFlag = False) -> None:
    _emit(_call("DELETE", f"/files/{file_id}"), as_json, ["id", "deleted"])


# -- jobs ---------------------------------------------------------------------------------------

JOB_COLUMNS = ["id", "model", "status", "created_at", "fine_tuned_model"]


@jobs_app.command("create")
def jobs_create(
    model: Annotated[str, typer.Option(help="A catalog model or one of your ft: models.")],
    training_file: Annotated[str, typer.Option(help="A file-… id with purpose fine-tune.")],
    validation_file: Annotated[Optional[str], typer.Option()] = None,
    method: Annotated[str, typer.Option(help="supervised or dpo.")] = "supervised",
    n_epochs: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    learning_rate_multiplier: Annotated[Optional[float], typer.Option()] = None,
    beta: Annotated[Optional[float], typer.Option(help="DPO only.")] = None,
    suffix: Annotated[Optional[str], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    peft: Annotated[Optional[str], typer.Option(help="lora, qlora, dora or full.")] = None,
    compute: Annotated[Optional[str], typer.Option(help="local, serverless or a cluster name.")] = None,
    deploy: Annotated[Optional[bool], typer.Option("--deploy/--no-deploy")] = None,
    metadata: Annotated[Optional[list[str]], typer.Option(help="key=value, repeatable.")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a fine-tuning job."""
    hyperparameters = {
        k: v
        for k, v in {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate_multiplier": learning_rate_multiplier, "beta": beta}.items()
        if v is not None
    }
    body: dict[str, Any] = {"model": model, "training_file": training_file, "method": {"type": method}}
    if hyperparameters:
        body["method"][method] = {"hyperparameters": hyperparameters}
    optional = {"validation_file": validation_file, "suffix": suffix, "seed": seed, "compute": compute, "deploy": deploy}
    body |= {k: v for k, v in optional.items() if v is not None}
    if peft:
        body["peft"] = {"type": peft}
    if metadata:
        pairs = [m.partition("=") for m in metadata]
        if any(not sep for _, sep, _ in pairs):
            err.print("[red]--metadata takes key=value[/red]")
            raise typer.Exit(2)
        body["metadata"] = {k: v for k, _, v in pairs}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    _emit(_call("POST", "/fine_tuning/jobs", json=body, headers=headers), as_json, JOB_COLUMNS)


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option()] = 20,
    after: Annotated[Optional[str], typer.Option()] = None,
    as_json: JsonFlag = False,
) -> None:
    params = {"limit": limit} | ({"after": after} if after else {})
    data = _call("GET", "/fine_tuning/jobs", params=params)
    _emit(data, as_json, JOB_COLUMNS, data["data"], title="Fine-tuning jobs")


@jobs_app.command("get")
def jobs_get(job_id: str, as_json: JsonFlag = False) -> None:
    _emit(_call("GET", f"/fine_tuning/jobs/{job_id}"), as_json, JOB_COLUMNS)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonFlag = False) -> None:
    _emit(_call("POST", f"/fine_tuning/jobs/{job_id}/cancel"), as_json, JOB_COLUMNS)


@jobs_app.command("events")
def jobs_events(job_id: str, limit: Annotated[int, typer.Option()] = 50, as_json: JsonFlag = False) -> None:
    data = _call("GET", f"/fine_tuning/jobs/{job_id}/events", params={"limit": limit})
    _emit(data, as_json, ["created_at", "level", "message"], list(reversed(data["data"])), title=f"Events of {job_id}")


# -- models -------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(as_json: JsonFlag = False) -> None:
    data = _call("GET", "/models")
    _emit(data, as_json, ["id", "owned_by", "created"], data["data"], title="Models")


if __name__ == "__main__":
    app()
