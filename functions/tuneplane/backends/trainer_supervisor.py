"""The supervisor of one trainer attempt: ``python -m tuneplane.backends.trainer_supervisor RUN_DIR ATTEMPT -- COMMAND…``.

The local runner (tuneplane.backends.local_runner, whose docstring explains the design) starts it in
a session of its own, holding the run's flock on the inherited fd ``$TUNEPLANE_LOCK_FD``. It starts
the trainer with that fd, so the lock lasts as long as either process; makes the trainer die with
it (PR_SET_PDEATHSIG, SIGTERM, so the trainer still saves a checkpoint); forwards SIGTERM (pause,
cancel, server shutdown) to the trainer's process group and escalates to SIGKILL after
``$TUNEPLANE_TRAINER_GRACE`` seconds; and records how the attempt ended in ``RUN_DIR/exit.json``.
It imports only the standard library, so it starts in a few milliseconds.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)




def supervise(run: Path, attempt: int, command: list[str]) -> int:
    lock_fd = int(os.environ.pop("TUNEPLANE_LOCK_FD"))
    grace = float(os.environ.pop("TUNEPLANE_TRAINER_GRACE", "30"))
    _atomic_write(run / "supervisor.json", json.dumps({"pid": os.getpid(), "attempt": attempt}))
    (run / "output").mkdir(exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)

    supervisor_pid = os.getpid()

    def die_with_supervisor() -> None:
        # Runs in the child between fork and exec; this process is single-threaded, so it is safe.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor_pid:
            os._exit(1)  # the supervisor died before prctl took effect

    stopping = threading.Event()
    forwarded = threading.Event()
    trainer: subprocess.Popen | None = None

    def escalate() -> None:
        if trainer is None or trainer.poll() is not None:
            return
        try:
            os.killpg(trainer.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def forward() -> None:
        if forwarded.is_set():
            return
        forwarded.set()
        try:
            # The whole group: torchrun and deepspeed launchers have children of their own.
            os.killpg(trainer.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        timer = threading.Timer(grace, escalate)
        timer.daemon = True
        timer.start()

    def on_term(signum, frame) -> None:
        if stopping.is_set():
            return
        stopping.set()
        if trainer is not None:
            forward()

    # Installed before the trainer starts, so a stop that arrives early is not lost.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(run / "trainer.log", "ab") as log:
        log.write(f"--- attempt {attempt} ---\n".encode())
        log.flush()
        try:
            trainer = subprocess.Popen(
                command,
                pass_fds=(lock_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_supervisor,
            )
        except OSError as exc:
            # A missing or broken trainer is a failure to report, not a crash to retry.
            log.write(f"cannot start the trainer {command[0]!r}: {exc.strerror or exc}\n".encode())
            trainer = None
    if trainer is None:
        code = 127
    else:
        if stopping.is_set():
            forward()
        code = trainer.wait()
    stop_file = run / "stop"
    stop = stop_file.read_text().strip() if stop_file.exists() else None
    ended = {"attempt": attempt, "returncode": code, "stop": stop, "finished_at": int(time.time())}
    _atomic_write(run / "exit.json", json.dumps(ended))
    os.close(lock_fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or "--" not in args:
        print("usage: python -m tuneplane.backends.trainer_supervisor RUN_DIR ATTEMPT -- COMMAND…", file=sys.stderr)
        return 2
    split = args.index("--")
    return supervise(Path(args[0]), int(args[1]), args[split + 1 :])


if __name__ == "__main__":
    sys.exit(main())
