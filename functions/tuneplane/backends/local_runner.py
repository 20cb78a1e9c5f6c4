"""The local TrainingBackend: each job runs ``tuneplane-train`` as a subprocess on this machine.

Everything about a run lives in ``${TUNEPLANE_HOME}/runs/<job_id>/``::

    spec.json       the trainer spec (resume "auto", so every start continues from a checkpoint)
    lock            held with flock(LOCK_EX) for as long as a supervisor or trainer is alive
    attempts.jsonl  one line per start: attempt number, why, when
    exit.json       how the latest attempt ended: return code, the stop request, when
    released        the last attempt whose end ``observe`` has seen (its slot is free from then on)
    stop            "pause" or "cancel" while such a request is pending
    trainer.log     the trainer's stdout and stderr
    output/         the trainer's output folder (adapter, checkpoints/, events.jsonl, results.csv, …)

Crash safety. The trainer must outlive a ``kill -9`` of the server and must never run twice.

* A small supervisor (``tuneplane.backends.trainer_supervisor``) starts the
  trainer, forwards stop signals, escalates to SIGKILL after a grace period, and records the exit in
  ``exit.json``. It starts in its own session, so neither a signal to the server's process group
  (Ctrl-C) nor the server's death reaches it: training goes on, and a restarted server adopts the run
  by reading the files above. A run is observed from the files, never from memory.
* The lock is taken by the server *before* the attempt is recorded and the supervisor spawned, and its
  file descriptor is inherited by the supervisor and the trainer. flock belongs to the open file
  description, so it is held until the last of them exits, whoever dies first. "Lock held" therefore
  means "a trainer may be alive": nothing starts another attempt then, so a job never trains twice in
  parallel. "Lock free, attempt recorded, no exit for it" means the attempt died with its supervisor
  (a reboot, an OOM kill); the next start continues from the last complete checkpoint.
* The trainer dies with its supervisor (PR_SET_PDEATHSIG, SIGTERM: it saves a checkpoint first), so
  no trainer is ever left running without someone to record its exit.

Stopping: pause and cancel write ``stop`` and send SIGTERM to the supervisor, which forwards it; the
trainer saves a checkpoint and exits 75. A graceful server shutdown does the same without a stop
request, and the next start resumes. The FIFO queue is the reconciler walking unfinished jobs oldest
first: ``submit`` starts a run only while fewer than ``max_concurrent`` runs hold their lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from tuneplane.backends.run_output import progress as _progress
from tuneplane.backends.run_output import read_checkpoints as _read_checkpoints
from tuneplane.backends.run_output import read_events as _read_events
from tuneplane.backends.run_output import trainer_failure
from tuneplane.domain.records import CheckpointRecord, EventRecord, JobRecord

STOPPED = 75  # tuneplane_training.exitcodes.STOPPED: checkpoint saved, then stopped on SIGTERM


@dataclass
class LocalRunState:
    status: Literal["queued", "running", "paused", "succeeded", "failed", "cancelled", "unknown"]
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None
    estimated_finish: int | None = None
    output_uri: str | None = None
    attempt: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    returncode: int | None = None
    stopping: str | None = None  # a pause or cancel was requested and the trainer is still saving


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on ``path``, or None if someone else holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def default_trainer_command() -> list[str]:
    script = Path(sys.executable).with_name("tuneplane-train")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tuneplane_training.cli"]


class LocalRunner:
    """TrainingBackend for ``compute="local"``."""

    def __init__(
        self,
        home: Path | str,
        *,
        max_concurrent: int = 1,
        trainer_command: Sequence[str] | None = None,
        grace_seconds: float = 30.0,
        max_restarts: int = 3,
        env: dict[str, str] | None = None,
    ):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.runs_dir = Path(home).resolve() / "runs"  # absolute: the supervisor may outlive our cwd
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = max_concurrent
        self.trainer_command = list(trainer_command or default_trainer_command())
        self.grace_seconds = grace_seconds
        self.max_restarts = max_restarts
        self.env = env
        self._slots = threading.Lock()

    def run_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.runs_dir / job_id

    # -- TrainingBackend port ---------------------------------------------------------------------

    def submit(self, job: JobRecord, spec: dict[str, Any]) -> str:
        """Record the spec and start the run if a slot is free; idempotent, safe to call every pass.

        A paused, interrupted or crashed run is started again (it resumes from its last checkpoint);
        a running or finished one is left alone.
        """
        run = self.run_dir(job.id)
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "spec.json").exists():
            spec = {**spec, "job_id": job.id, "resume": "auto"}
            _atomic_write(run / "spec.json", json.dumps(spec, indent=2, sort_keys=True))
        state = self.observe(job)
        if state.status not in ("queued", "paused"):
            return job.id
        # One process-wide lock plus a file lock: the slot count and the start are one step, even
        # if two reconcilers (threads or processes) race.
        with self._slots, open(self.runs_dir / ".slots.lock", "a+") as slots:
            fcntl.flock(slots, fcntl.LOCK_EX)
            if self.active_count() >= self.max_concurrent:
                return job.id
            self._start(run, reason="resume" if state.status == "paused" else self._start_reason(run))
        return job.id

    def observe(self, job: JobRecord) -> LocalRunState:
        run = self.run_dir(job.id)
        if not (run / "spec.json").exists():
            return LocalRunState(status="unknown")
        output = run / "output"
        attempts = self._attempts(run)
        started_at = attempts[-1]["started_at"] if attempts else None
        base = dict(output_uri=str(output), attempt=len(attempts), started_at=started_at, **_progress(output, started_at))
        if not attempts:
            return LocalRunState(status="queued", **base)
        stop = (run / "stop").read_text().strip() if (run / "stop").exists() else None
        if self._alive(run):
            return LocalRunState(status="running", stopping=stop, **base)
        if self._released(run) != len(attempts):
            _atomic_write(run / "released", str(len(attempts)))
        ended = _read_json(run / "exit.json")
        if ended is None or ended.get("attempt") != len(attempts):
            # Nobody recorded this attempt's end. If a stop was asked for, that is what happened.
            if stop == "cancel":
                return LocalRunState(status="cancelled", **base)
            if stop == "pause":
                return LocalRunState(status="paused", **base)
            # The attempt died with its supervisor: continue from the last checkpoint, unless
            # that keeps happening.
            if self._crash_restarts(attempts) >= self.max_restarts:
                return LocalRunState(
                    status="failed",
                    error={"code": "trainer_crashed", "message": f"The trainer stopped unexpectedly {len(attempts)} times in a row."},
                    **base,
                )
            return LocalRunState(status="queued", **base)
        code, stop = ended["returncode"], ended.get("stop")
        done = dict(base, finished_at=ended["finished_at"], returncode=code)
        if stop == "cancel":
            return LocalRunState(status="cancelled", **done)
        if code == 0:
            if not (output / "adapter_config.json").exists() and not (output / "config.json").exists():
                return LocalRunState(
                    status="failed",
                    error={"code": "missing_output", "message": "The trainer exited cleanly but wrote no model or adapter."},
                    **done,
                )
            return LocalRunState(status="succeeded", **done)
        if code == STOPPED:
            return LocalRunState(status="paused" if stop == "pause" else "queued", **done)
        if code < 0 and stop is None:
            # Killed by a signal nobody here sent (the OOM killer, an operator): retry a few times.
            if self._crash_restarts(attempts) >= self.max_restarts:
                return LocalRunState(
                    status="failed",
                    error={"code": "trainer_crashed", "message": f"The trainer was killed by signal {-code}."},
                    **done,
                )
            return LocalRunState(status="queued", **done)
        if stop == "pause":
            # The trainer could not checkpoint in time and was killed: it is paused at its last checkpoint.
            return LocalRunState(status="paused", **done)
        return LocalRunState(status="failed", error=trainer_failure(code, output, run / "trainer.log"), **done)

    def read_events(self, job: JobRecord, after: str | None = None) -> list[EventRecord]:
        events = _read_events(job.id, self.run_dir(job.id) / "output" / "events.jsonl")
        return [e for e in events if after is None or e.id > after]

    def read_checkpoints(self, job: JobRecord) -> list[CheckpointRecord]:
        return _read_checkpoints(job, self.run_dir(job.id) / "output")

    def read_results(self, job: JobRecord) -> bytes | None:
        try:
            return (self.run_dir(job.id) / "output" / "results.csv").read_bytes()
        except FileNotFoundError:
            return None

    def cancel(self, job: JobRecord) -> None:
        self._stop(job, "cancel")

    def pause(self, job: JobRecord) -> None:
        self._stop(job, "pause")

    # -- beyond the port --------------------------------------------------------------------------

    def active_count(self) -> int:
        """Runs holding a slot: alive, or ended but not yet observed since.

        A slot is freed by the ``observe`` that sees the run's end, not by the end itself. The
        reconciler observes older jobs before it submits newer ones, so the job store never shows
        two jobs running beyond the limit, even when a run ends in the middle of a pass.
        """
        count = 0
        for run in self.runs_dir.iterdir():
            attempts = len(self._attempts(run)) if run.is_dir() else 0
            if attempts and (self._alive(run) or self._released(run) != attempts):
                count += 1
        return count

    def alive(self, job_id: str) -> bool:
        return self._alive(self.run_dir(job_id))

    def shutdown(self) -> None:
        """Ask every live run to checkpoint and stop (a graceful server stop); they resume on restart."""
        for run in self.runs_dir.iterdir():
            if run.is_dir() and self._alive(run):
                self._signal_supervisor(run, signal.SIGTERM)

    # -- internals --------------------------------------------------------------------------------

    def _stop(self, job: JobRecord, request: str) -> None:
        run = self.run_dir(job.id)
        if not run.exists():
            return
        if not (run / "stop").exists() or (run / "stop").read_text().strip() != "cancel":
            _atomic_write(run / "stop", request)  # a cancel is never downgraded to a pause
        self._signal_supervisor(run, signal.SIGTERM)

    @staticmethod
    def _signal_supervisor(run: Path, sig: int) -> None:
        info = _read_json(run / "supervisor.json")
        if not info:
            return
        try:
            os.kill(info["pid"], sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _alive(run: Path) -> bool:
        fd = _try_lock(run / "lock")
        if fd is None:
            return True
        os.close(fd)
        return False

    @staticmethod
    def _released(run: Path) -> int:
        try:
            return int((run / "released").read_text())
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def _attempts(run: Path) -> list[dict[str, Any]]:
        try:
            lines = (run / "attempts.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        # A torn last line (a crash mid-append) is ignored: that attempt never started.
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    @staticmethod
    def _crash_restarts(attempts: list[dict[str, Any]]) -> int:
        count = 0
        for attempt in reversed(attempts):
            if attempt.get("reason") != "crash":
                break
            count += 1
        return count

    def _start_reason(self, run: Path) -> str:
        attempts = self._attempts(run)
        if not attempts:
            return "start"
        ended = _read_json(run / "exit.json")
        if ended and ended.get("attempt") == len(attempts) and ended["returncode"] == STOPPED:
            return "interrupted"
        return "crash"

    def _start(self, run: Path, reason: str) -> None:
        fd = _try_lock(run / "lock")
        if fd is None:
            return  # a trainer for this job is alive after all; never start a second
        try:
            (run / "stop").unlink(missing_ok=True)
            attempt = len(self._attempts(run)) + 1
            line = json.dumps({"attempt": attempt, "reason": reason, "started_at": int(time.time())})
            with open(run / "attempts.jsonl", "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            env = dict(self.env if self.env is not None else os.environ)
            env["PYTHONUNBUFFERED"] = "1"
            env["TUNEPLANE_LOCK_FD"] = str(fd)
            env["TUNEPLANE_TRAINER_GRACE"] = str(self.grace_seconds)
            command = [
                sys.executable, "-m", "tuneplane.backends.trainer_supervisor",
                str(run), str(attempt), "--", *self.trainer_command,
                "--spec", str(run / "spec.json"), "--output-dir", str(run / "output"),
            ]
            subprocess.Popen(
                command,
                pass_fds=(fd,),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(run / "supervisor.log", "ab"),
                start_new_session=True,
            )
        finally:
            os.close(fd)  # the supervisor holds the lock now
