"""The demo's client side (``./scripts/demo`` starts the service, then runs this).

It teaches SmolLM2-135M-Instruct to answer every question as compact JSON, ``{"answer": "..."}``,
with a LoRA job created through the official openai client, follows the job live, waits for the
deployment, and compares base and fine-tuned answers on held-out questions. The score is the format
exact-match rate: the share of answers that are exactly one JSON object with one string ``answer``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from openai import OpenAI
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "json_answers"
BASE = "SmolLM2-135M-Instruct"
HYPERPARAMETERS = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5}
PEFT = {"type": "lora", "r": 16, "alpha": 32}
console = Console()


def format_ok(text: str) -> bool:
    """Exactly one JSON object whose only key is a string "answer"."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and list(value) == ["answer"] and isinstance(value["answer"], str)


def answer_ok(text: str, expected: str) -> bool:
    try:
        value = json.loads(text.strip())["answer"]
    except (ValueError, KeyError, TypeError):
        value = text
    return expected.lower() in str(value).lower()


def follow(client: OpenAI, job_id: str):
    """Poll the job and its metric events until it finishes; show a progress bar with the live loss."""
    progress = Progress(
        TextColumn("[bold]{task.fields[status]:<10}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("{task.fields[eta]}"), TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("training", total=None, status="queued", loss="-", eta="")
    with Live(progress, console=console, refresh_per_second=4):
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            events = client.fine_tuning.jobs.list_events(job_id, limit=20).data
            metrics = next((e.data for e in events if e.type == "metrics" and e.data and "step" in e.data), None)
            fields = {"status": job.status}
            if metrics:
                progress.update(task, total=metrics.get("total_steps"), completed=metrics["step"])
                if metrics.get("train_loss") is not None:
                    fields["loss"] = f"{metrics['train_loss']:.3f}"
            if job.estimated_finish and job.status == "running":
                fields["eta"] = f"ETA {max(0, job.estimated_finish - int(time.time()))}s"
            progress.update(task, **fields)
            if job.status in ("succeeded", "failed", "cancelled"):
                if job.status == "succeeded":
                    progress.update(task, completed=progress.tasks[0].total or 1, eta="")
                return job
            time.sleep(1)


def wait_for_deployment(client: OpenAI, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    with console.status("Waiting for the deployment (the local inference process loads the base model)…"):
        while time.monotonic() < deadline:
            job = client.fine_tuning.jobs.retrieve(job_id)
            deployment = (job.model_extra or {}).get("deployment") or {}
            if deployment.get("status") == "succeeded":
                return deployment
            if deployment.get("status") == "failed":
                sys.exit(f"The deployment failed: {deployment.get('error')}")
            time.sleep(1)
    sys.exit("The deployment did not become ready in time.")


def ask(client: OpenAI, model: str, prompt: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=40, temperature=0, seed=0)
    return response.choices[0].message.content or ""


def main() -> None:
    started = time.monotonic()
    base_url = os.environ["TUNEPLANE_BASE_URL"]
    client = OpenAI(base_url=base_url, api_key=os.environ["TUNEPLANE_API_KEY"], timeout=600, max_retries=2)

    console.rule("[bold]1. Upload the training data")
    upload = client.files.create(file=open(DATA / "train.jsonl", "rb"), purpose="fine-tune")
    console.print(f"{upload.id}: {upload.filename}, {upload.bytes} bytes, "
                  f"48 questions answered as [green]{{\"answer\": \"...\"}}[/green]")

    console.rule("[bold]2. Create a LoRA fine-tuning job with the openai client")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=upload.id, suffix="json", seed=42,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
        extra_body={"peft": PEFT},
    )
    console.print(f"{job.id} created ({BASE}, {HYPERPARAMETERS}, peft {PEFT})")
    job = follow(client, job.id)
    if job.status != "succeeded":
        error = job.error.message if job.error else job.status
        sys.exit(f"The job ended {job.status}: {error}")
    console.print(f"Fine-tuned model: [bold]{job.fine_tuned_model}[/bold]")

    console.rule("[bold]3. Wait for the deployment")
    deployment = wait_for_deployment(client, job.id)
    console.print(f"Deployed on the local inference process at {deployment.get('endpoint')}")

    console.rule("[bold]4. Base vs fine-tuned on held-out questions")
    heldout = [json.loads(line) for line in (DATA / "heldout.jsonl").read_text().splitlines() if line.strip()]
    table = Table(show_lines=True)
    table.add_column("question", style="bold", max_width=28)
    table.add_column(f"base ({BASE})", max_width=46)
    table.add_column("fine-tuned", max_width=46)
    scores = {"base": [0, 0], "tuned": [0, 0]}
    for item in heldout:
        cells = []
        for who, model in (("base", BASE), ("tuned", job.fine_tuned_model)):
            text = ask(client, model, item["prompt"])
            ok, right = format_ok(text), answer_ok(text, item["answer"])
            scores[who][0] += ok
            scores[who][1] += right
            cells.append(("[green]✔ " if ok else "[red]✘ ") + "[/]" + text.strip().replace("[", r"\["))
        table.add_row(item["prompt"], *cells)
    console.print(table)
    n = len(heldout)
    for who, label in (("base", "base      "), ("tuned", "fine-tuned")):
        fmt, right = scores[who]
        console.print(f"{label}: format exact match [bold]{fmt}/{n} ({100 * fmt / n:.0f}%)[/bold], "
                      f"expected answer present {right}/{n}")
    console.print(f"\nDemo client finished in {time.monotonic() - started:.0f}s.")
    (Path(os.environ.get("TUNEPLANE_HOME", ".")) / "demo-model.txt").write_text(job.fine_tuned_model + "\n")


if __name__ == "__main__":
    main()
