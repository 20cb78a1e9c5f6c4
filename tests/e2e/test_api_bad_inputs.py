"""The bad-input battery: each case checks the status, the error envelope (type, param, code) and
that nothing was stored: no file record, no job, no content object, no pending upload."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import chat_jsonl, dpo_jsonl
from tests.e2e.conftest import MAX_UPLOAD_BYTES

BOUNDARY = "tuneplaneboundary"


def multipart(parts: list[tuple[str, str | None, bytes]], *, close: bool = True) -> bytes:
    """Build a multipart body by hand, so that malformed ones can be sent too."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode("utf-8") + data + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post_multipart(body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}"):
    def send(s, ctx):
        return s.client().post("/files", content=body, headers={"Content-Type": content_type})

    return send


def upload_lines(lines: list, *, filename: str = "train.jsonl", purpose: bytes = b"fine-tune", purpose_first: bool = True):
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    parts = [("purpose", None, purpose), ("file", filename, data)]
    return post_multipart(multipart(parts if purpose_first else parts[::-1]))


def upload_named(filename: str):
    return post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", filename, chat_jsonl(10))]))


def create_job(body_of: Callable[[dict], object], headers: dict | None = None):
    def send(s, ctx):
        body = body_of(ctx)
        if isinstance(body, bytes):
            return s.client().post("/fine_tuning/jobs", content=body, headers={"Content-Type": "application/json"} | (headers or {}))
        return s.client().post("/fine_tuning/jobs", json=body, headers=headers or {})

    return send


def job_with(**fields):
    return create_job(lambda ctx: {"model": "tiny-random-llama", "training_file": ctx["chat"]} | fields)


def raw(method: str, path: str, *, headers: dict | None = None, project: str = "default", auth: bool = True):
    def send(s, ctx):
        url = s.base_url + "/v1" + path.format(**ctx)
        h = {"Authorization": f"Bearer {s.key_for(project)}"} if auth else {}
        return httpx.request(method, url, headers=h | (headers or {}), timeout=60)

    return send


CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@dataclass
class Case:
    id: str
    send: Callable
    status: int
    param: str | None
    code: str
    type: str = "invalid_request_error"


CASES = [
    # -- uploads: the multipart envelope ----------------------------------------------------
    Case("json-instead-of-multipart", lambda s, c: s.client().post("/files", json={"purpose": "fine-tune"}), 400, "file", "invalid_multipart"),
    Case("multipart-without-boundary", post_multipart(multipart([("purpose", None, b"fine-tune")]), "multipart/form-data"), 400, "file", "invalid_multipart"),
    Case("multipart-truncated", post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", "t.jsonl", chat_jsonl(10))], close=False)), 400, "file", "invalid_multipart"),
    Case("multipart-garbage", post_multipart(b"this is not multipart at all"), 400, "file", "invalid_multipart"),
    Case("missing-file-part", post_multipart(multipart([("purpose", None, b"fine-tune")])), 400, "file", "missing_required_parameter"),
    Case("missing-purpose", post_multipart(multipart([("file", "t.jsonl", chat_jsonl(10))])), 400, "purpose", "missing_required_parameter"),
    Case("unknown-purpose", upload_lines([CHAT] * 10, purpose=b"training"), 400, "purpose", "invalid_value"),
    Case("empty-purpose", upload_lines([CHAT] * 10, purpose=b""), 400, "purpose", "invalid_value"),
    Case("file-part-is-not-a-file", post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", None, b"x")])), 400, "file", "invalid_multipart"),
    Case("two-file-parts", post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", "a.jsonl", chat_jsonl(10)), ("file", "b.jsonl", chat_jsonl(10))])), 400, "file", "invalid_multipart"),
    Case("unknown-form-field", post_multipart(multipart([("purpose", None, b"fine-tune"), ("colour", None, b"red"), ("file", "a.jsonl", chat_jsonl(10))])), 400, "colour", "unknown_parameter"),
    # -- uploads: filenames -------------------------------------------------------------------
    Case("path-traversal-filename", upload_named("../../etc/passwd"), 400, "file", "invalid_filename"),
    Case("windows-traversal-filename", upload_named("..\\..\\boot.ini"), 400, "file", "invalid_filename"),
    Case("absolute-filename", upload_named("/tmp/x.jsonl"), 400, "file", "invalid_filename"),
    Case("control-char-filename", upload_named("a\x01b.jsonl"), 400, "file", "invalid_filename"),
    Case("rtl-override-filename", upload_named("evil\u202egnp.jsonl"), 400, "file", "invalid_filename"),
    Case("overlong-filename", upload_named("é" * 200 + ".jsonl"), 400, "file", "invalid_filename"),
    Case("empty-filename", upload_named(""), 400, "file", "invalid_filename"),
    # -- uploads: contents ----------------------------------------------------------------------
    Case("oversized-file", post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", "big.jsonl", chat_jsonl(MAX_UPLOAD_BYTES // 80))])), 413, "file", "file_too_large"),
    Case("oversized-batch-file", post_multipart(multipart([("purpose", None, b"batch"), ("file", "big.jsonl", b"x" * (MAX_UPLOAD_BYTES + 1))])), 413, "file", "file_too_large"),
    Case("malformed-json-line", upload_lines([CHAT, b'{"messages": [', CHAT]), 400, "file", "invalid_json"),
    Case("line-not-an-object", upload_lines([CHAT, [1, 2, 3]]), 400, "file", "not_an_object"),
    Case("wrong-role", upload_lines([CHAT, {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}]), 400, "file", "invalid_role"),
    Case("no-assistant-message", upload_lines([{"messages": [{"role": "user", "content": "x"}]}]), 400, "file", "missing_assistant_message"),
    Case("weight-not-0-or-1", upload_lines([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}]), 400, "file", "invalid_weight"),
    Case("unknown-example-key", upload_lines([CHAT | {"prompt": "legacy"}]), 400, "file", "unknown_field"),
    Case("not-utf8", upload_lines([b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}']), 400, "file", "invalid_encoding"),
    Case("empty-training-file", post_multipart(multipart([("purpose", None, b"fine-tune"), ("file", "e.jsonl", b"")])), 400, "file", "empty_file"),
    Case("mixed-formats", upload_lines([CHAT, json.loads(dpo_jsonl(1))]), 400, "file", "mixed_formats"),
    Case("bad-file-when-purpose-comes-last", upload_lines([CHAT, b"nope"], purpose_first=False), 400, "file", "invalid_json"),
    # -- job creation: the body -----------------------------------------------------------------
    Case("malformed-json-body", create_job(lambda c: b'{"model": "tiny-random-llama",'), 400, "body", "invalid_json"),
    Case("body-is-an-array", create_job(lambda c: b"[1, 2]"), 400, "body", "invalid_type"),
    Case("missing-model", create_job(lambda c: {"training_file": c["chat"]}), 400, "model", "missing_required_parameter"),
    Case("unknown-field", job_with(learning_rate=0.1), 400, "learning_rate", "unknown_parameter"),
    Case("unknown-hyperparameter", job_with(hyperparameters={"warmup": 3}), 400, "hyperparameters.warmup", "unknown_parameter"),
    # -- job creation: model and files ------------------------------------------------------------
    Case("unknown-model", job_with(model="gpt-4o-mini"), 400, "model", "model_not_found"),
    Case("other-projects-ft-model", job_with(model="ft:tiny-random-llama:other:x:ftjob-0660e9e1af5c087cf1799dd5"), 400, "model", "model_not_found"),
    Case("missing-training-file", job_with(training_file="file-doesnotexist"), 400, "training_file", "file_not_found"),
    Case("other-projects-training-file", create_job(lambda c: {"model": "tiny-random-llama", "training_file": c["other_file"]}), 400, "training_file", "file_not_found"),
    Case("training-file-wrong-purpose", create_job(lambda c: {"model": "tiny-random-llama", "training_file": c["batch"]}), 400, "training_file", "invalid_file_purpose"),
    Case("too-few-examples", create_job(lambda c: {"model": "tiny-random-llama", "training_file": c["small"]}), 400, "training_file", "too_few_examples"),
    Case("missing-validation-file", job_with(validation_file="file-nope"), 400, "validation_file", "file_not_found"),
    Case("dpo-needs-preference-data", job_with(method={"type": "dpo"}), 400, "training_file", "invalid_file_format"),
    Case("supervised-with-dpo-file", create_job(lambda c: {"model": "tiny-random-llama", "training_file": c["dpo"]}), 400, "training_file", "invalid_file_format"),
    # -- job creation: ranges ----------------------------------------------------------------------
    Case("suffix-too-long", job_with(suffix="a" * 65), 400, "suffix", "invalid_value"),
    Case("suffix-bad-characters", job_with(suffix="my model!"), 400, "suffix", "invalid_value"),
    Case("seed-too-large", job_with(seed=2**31), 400, "seed", "invalid_value"),
    Case("seed-negative", job_with(seed=-1), 400, "seed", "invalid_value"),
    Case("seed-not-an-integer", job_with(seed="42"), 400, "seed", "invalid_type"),
    Case("n-epochs-zero", job_with(hyperparameters={"n_epochs": 0}), 400, "hyperparameters.n_epochs", "invalid_value"),
    Case("n-epochs-51", job_with(method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}), 400, "method.supervised.hyperparameters.n_epochs", "invalid_value"),
    Case("n-epochs-fraction", job_with(hyperparameters={"n_epochs": 2.5}), 400, "hyperparameters.n_epochs", "invalid_value"),
    Case("batch-size-257", job_with(hyperparameters={"batch_size": 257}), 400, "hyperparameters.batch_size", "invalid_value"),
    Case("batch-size-bool", job_with(hyperparameters={"batch_size": True}), 400, "hyperparameters.batch_size", "invalid_value"),
    Case("lr-multiplier-zero", job_with(hyperparameters={"learning_rate_multiplier": 0}), 400, "hyperparameters.learning_rate_multiplier", "invalid_value"),
    Case("beta-above-2", job_with(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}), 400, "method.dpo.hyperparameters.beta", "invalid_value"),
    Case("beta-zero", job_with(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}), 400, "method.dpo.hyperparameters.beta", "invalid_value"),
    Case("method-reinforcement", job_with(method={"type": "reinforcement"}), 400, "method.type", "unsupported_method"),
    Case("method-unknown-type", job_with(method={"type": "magic"}), 400, "method.type", "invalid_value"),
    Case("method-mismatched-section", job_with(method={"type": "supervised", "dpo": {}}), 400, "method.dpo", "invalid_value"),
    Case("hyperparameters-twice", job_with(method={"type": "supervised"}, hyperparameters={"n_epochs": 2}), 400, "hyperparameters", "invalid_value"),
    Case("metadata-17-pairs", job_with(metadata={f"k{i}": "v" for i in range(17)}), 400, "metadata", "invalid_value"),
    Case("metadata-key-too-long", job_with(metadata={"k" * 65: "v"}), 400, "metadata", "invalid_value"),
    Case("metadata-value-too-long", job_with(metadata={"k": "v" * 513}), 400, "metadata.k", "invalid_value"),
    Case("peft-unknown-type", job_with(peft={"type": "adapterless"}), 400, "peft.type", "invalid_value"),
    Case("peft-rank-zero", job_with(peft={"r": 0}), 400, "peft.r", "invalid_value"),
    Case("peft-unknown-field", job_with(peft={"rank": 8}), 400, "peft.rank", "unknown_parameter"),
    Case("compute-bad-name", job_with(compute="my cluster!"), 400, "compute", "invalid_value"),
    Case("deploy-not-bool", job_with(deploy=5), 400, "deploy", "invalid_value"),
    Case("integrations-unsupported", job_with(integrations=[{"type": "wandb", "wandb": {"project": "p"}}]), 400, "integrations", "invalid_value"),
    Case("idempotency-key-too-long", create_job(lambda c: {"model": "tiny-random-llama", "training_file": c["chat"]}, headers={"Idempotency-Key": "k" * 300}), 400, "Idempotency-Key", "invalid_value"),
    # -- queries and ids -------------------------------------------------------------------------------
    Case("list-limit-zero", raw("GET", "/fine_tuning/jobs?limit=0"), 400, "limit", "invalid_value"),
    Case("list-limit-not-a-number", raw("GET", "/files?limit=ten"), 400, "limit", "invalid_value"),
    Case("list-order-unknown", raw("GET", "/files?order=sideways"), 400, "order", "invalid_value"),
    Case("metadata-filter-malformed", raw("GET", "/fine_tuning/jobs?metadata=x"), 400, "metadata", "invalid_value"),
    Case("cancel-unknown-job", raw("POST", "/fine_tuning/jobs/ftjob-nope/cancel"), 404, "fine_tuning_job_id", "fine_tuning_job_not_found"),
    Case("cancel-finished-job", raw("POST", "/fine_tuning/jobs/{cancelled_job}/cancel"), 400, "fine_tuning_job_id", "invalid_job_state"),
    Case("unknown-route", raw("GET", "/fine_tuning/nothing-here"), 404, None, "not_found"),
    # -- auth and isolation ----------------------------------------------------------------------------
    Case("no-api-key", raw("GET", "/files", auth=False), 401, None, "missing_api_key"),
    Case("wrong-api-key", raw("GET", "/files", auth=False, headers={"Authorization": "Bearer tp-wrong"}), 401, None, "invalid_api_key"),
    Case("non-bearer-scheme", raw("GET", "/files", auth=False, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, None, "missing_api_key"),
    Case("revoked-api-key", lambda s, c: httpx.get(s.base_url + "/v1/files", headers={"api-key": c["revoked_key"]}), 401, None, "invalid_api_key"),
    Case("no-key-with-bad-body", lambda s, c: httpx.post(s.base_url + "/v1/fine_tuning/jobs", content=b"{"), 401, None, "missing_api_key"),
    Case("other-projects-job", raw("GET", "/fine_tuning/jobs/{other_job}"), 404, "fine_tuning_job_id", "fine_tuning_job_not_found"),
    Case("other-projects-job-cancel", raw("POST", "/fine_tuning/jobs/{other_job}/cancel"), 404, "fine_tuning_job_id", "fine_tuning_job_not_found"),
    Case("other-projects-job-events", raw("GET", "/fine_tuning/jobs/{other_job}/events"), 404, "fine_tuning_job_id", "fine_tuning_job_not_found"),
    Case("other-projects-file", raw("GET", "/files/{other_file}"), 404, "file_id", "file_not_found"),
    Case("other-projects-file-content", raw("GET", "/files/{other_file}/content"), 404, "file_id", "file_not_found"),
    Case("other-projects-file-delete", raw("DELETE", "/files/{other_file}"), 404, "file_id", "file_not_found"),
]


@pytest.fixture(scope="module")
def ctx(server):
    """Objects the cases refer to: files of each kind, another project's file and job, a revoked key."""
    from tuneplane.services.keys import issue_key

    def upload(project, data, purpose="fine-tune"):
        with server.client(project) as c:
            r = c.post("/files", files={"file": ("f.jsonl", data)}, data={"purpose": purpose})
            assert r.status_code == 200, r.text
            return r.json()["id"]

    out = {
        "chat": upload("default", chat_jsonl(10)),
        "small": upload("default", chat_jsonl(5)),
        "dpo": upload("default", dpo_jsonl(10)),
        "batch": upload("default", b'{"custom_id": "1"}\n', purpose="batch"),
        "other_file": upload("other", chat_jsonl(10)),
    }
    with server.client("other") as c:
        out["other_job"] = c.post("/fine_tuning/jobs", json={"model": "tiny-random-llama", "training_file": out["other_file"]}).json()["id"]
    with server.client() as c:
        job = c.post("/fine_tuning/jobs", json={"model": "tiny-random-llama", "training_file": out["chat"]}).json()
        assert c.post(f"/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        out["cancelled_job"] = job["id"]
    record, out["revoked_key"] = issue_key(server.adapters.keys, "default", name="to-revoke")
    server.adapters.keys.revoke_key(record.id)
    return out


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(server, ctx, case: Case):
    before = server.snapshot()
    response = case.send(server, ctx)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == (case.type, case.param, case.code), error
    assert error["message"]
    assert server.snapshot() == before


def test_bad_line_error_names_the_line_and_field(server, ctx):
    lines = [CHAT, CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}]}]
    response = upload_lines(lines)(server, ctx)
    message = response.json()["error"]["message"]
    assert "line 3" in message and "messages[1].role" in message
