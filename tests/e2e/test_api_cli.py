"""The ``tuneplane`` CLI: client commands against the e2e server, key management on a data
directory, and ``serve``'s first-start key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import chat_jsonl
from tests.e2e.conftest import ROOT, free_port, stop, wait_healthy
from tuneplane.cli import app

runner = CliRunner()


def run(args: list[str], env: dict[str, str]) -> str:
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def cli_env(server):
    # A wide "terminal", so that tables do not truncate the ids the test looks for.
    return {"TUNEPLANE_BASE_URL": server.base_url + "/v1", "TUNEPLANE_API_KEY": server.key_for("cli"), "COLUMNS": "220"}


def test_files_jobs_and_models_commands(cli_env, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(chat_jsonl(10))
    uploaded = json.loads(run(["files", "upload", str(path), "--json"], cli_env))
    assert uploaded["filename"] == "train.jsonl" and uploaded["purpose"] == "fine-tune"
    assert uploaded["id"] in run(["files", "list"], cli_env)
    assert json.loads(run(["files", "get", uploaded["id"], "--json"], cli_env))["bytes"] == path.stat().st_size

    job = json.loads(
        run(
            ["jobs", "create", "--model", "tiny-random-llama", "--training-file", uploaded["id"], "--n-epochs", "2",
             "--suffix", "cli", "--metadata", "team=cli", "--no-deploy", "--json"],
            cli_env,
        )
    )
    assert job["status"] == "queued" and job["hyperparameters"]["n_epochs"] == 2 and job["deploy"] is False
    assert job["metadata"] == {"team": "cli"}
    table = run(["jobs", "list"], cli_env)
    assert job["id"] in table and "queued" in table
    assert json.loads(run(["jobs", "get", job["id"], "--json"], cli_env))["id"] == job["id"]
    assert json.loads(run(["jobs", "cancel", job["id"], "--json"], cli_env))["status"] == "cancelled"
    assert "Validating training file" in run(["jobs", "events", job["id"]], cli_env)
    assert "SmolLM2-135M-Instruct" in run(["models", "list"], cli_env)
    assert json.loads(run(["files", "delete", uploaded["id"], "--json"], cli_env))["deleted"] is True


def test_errors_are_reported_with_exit_code_1(cli_env):
    result = runner.invoke(app, ["jobs", "get", "ftjob-missing"], env=cli_env)
    assert result.exit_code == 1
    assert "fine_tuning_job_not_found" in result.output
    result = runner.invoke(app, ["jobs", "create", "--model", "nope", "--training-file", "file-x"], env=cli_env)
    assert result.exit_code == 1 and "param: model" in result.output


def test_keys_create_list_revoke(tmp_path):
    env = {"TUNEPLANE_HOME": str(tmp_path / "home")}
    created = json.loads(run(["keys", "create", "--project", "team-a", "--name", "ci", "--json"], env))
    assert created["secret"].startswith("tp-") and created["project"] == "team-a"
    listed = json.loads(run(["keys", "list", "--project", "team-a", "--json"], env))
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key_hash" not in listed[0] and created["secret"] not in json.dumps(listed)
    assert json.loads(run(["keys", "revoke", created["id"], "--json"], env))["revoked"] is True
    assert runner.invoke(app, ["keys", "revoke", created["id"]], env=env).exit_code == 1
    assert runner.invoke(app, ["keys", "create", "--project", "bad project!"], env=env).exit_code == 2
    # Only the hash is stored.
    db = (tmp_path / "home" / "tuneplane.db").read_bytes()
    assert created["secret"].encode() not in db


@pytest.mark.slow
def test_serve_prints_a_key_once_and_stores_only_its_hash(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEPLANE_")}
    env |= {"TUNEPLANE_HOME": str(tmp_path / "home"), "TUNEPLANE_PORT": str(port)}
    cmd = [sys.executable, "-m", "tuneplane.cli", "serve"]

    def start():
        log = open(tmp_path / f"serve-{time.monotonic_ns()}.log", "w+")
        process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        wait_healthy(f"http://127.0.0.1:{port}", process)
        return process, log

    process, log = start()
    try:
        log.seek(0)
        printed = log.read()
        secret = next(word for word in printed.split() if word.startswith("tp-"))
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200
    finally:
        stop(process)
    assert secret.encode() not in (tmp_path / "home" / "tuneplane.db").read_bytes()
    process, log = start()  # second start: the existing key stays, nothing new is printed
    try:
        log.seek(0)
        assert "tp-" not in log.read()
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"api-key": secret}).status_code == 200
    finally:
        stop(process)
