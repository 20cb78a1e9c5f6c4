"""``tuneplane-train --spec SPEC.json --output-dir DIR``: the one entry point the local runner and the
Azure ML command job both call. Exit codes are in ``exitcodes`` and documented in SPEC.md."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

from . import exitcodes
from .spec import SpecError, load_spec

# Written by rank 0 of a launched run; the launcher (torchrun/deepspeed) only reports "failed", so the
# parent reads the real code from here.
EXIT_CODE_FILE = ".exit_code"


def _classify(exc: BaseException) -> int:
    from .catalog import UnknownModelError
    from .data import DataError
    from .loop import NonFiniteLossError
    from .model import ModelSpecError

    if isinstance(exc, (SpecError, DataError, ModelSpecError, UnknownModelError)):
        return exitcodes.BAD_INPUT
    if isinstance(exc, NonFiniteLossError):
        return exitcodes.NON_FINITE_LOSS
    if isinstance(exc, MemoryError):
        return exitcodes.OUT_OF_MEMORY
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return exitcodes.OUT_OF_MEMORY
    except ImportError:
        pass
    text = str(exc).lower()
    # CPU allocations that fail raise a plain RuntimeError ("can't allocate memory").
    if isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text):
        return exitcodes.OUT_OF_MEMORY
    return exitcodes.UNEXPECTED_ERROR


def _error_event(output_dir: Path, code: int, exc: BaseException) -> None:
    from .outputs import EventLog

    if code == exitcodes.NON_FINITE_LOSS:
        return  # the loop already wrote a precise event
    prefix = {exitcodes.BAD_INPUT: "Invalid input", exitcodes.OUT_OF_MEMORY: "Out of memory"}.get(code, "Training failed")
    try:
        EventLog(output_dir).emit(f"{prefix}: {exc}", level="error", data={"exit_code": code})
    except OSError:
        pass


def _launch(command: list[str], output_dir: Path, env: dict[str, str]) -> int:
    marker = output_dir / EXIT_CODE_FILE
    marker.unlink(missing_ok=True)
    child = subprocess.Popen(command, env=env, start_new_session=True)

    def forward(signum, _frame):
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = child.wait()
    try:
        return int(marker.read_text().strip())
    except (OSError, ValueError):
        return exitcodes.OK if status == 0 else exitcodes.UNEXPECTED_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneplane-train", description="Fine-tune a model from a tuneplane spec.")
    parser.add_argument("--spec", required=True, help="path of the training spec JSON (see training/SPEC.md)")
    parser.add_argument("--output-dir", required=True, help="folder for the model, checkpoints and events")
    parser.add_argument("--init-adapter", default=None,
                        help="adapter folder to continue; replaces the spec's init_adapter (e.g. an Azure ML input mount)")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    rank = int(os.environ.get("RANK", "0"))
    # Under torchrun/deepspeed rank 0 records the real exit code for the parent (see _launch).
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        spec = load_spec(args.spec, init_adapter=args.init_adapter)
    except (SpecError, OSError) as exc:
        print(f"tuneplane-train: {exc}", file=sys.stderr)
        if rank == 0 and output_dir.is_dir():
            _error_event(output_dir, exitcodes.BAD_INPUT, exc)
        return _exit(exitcodes.BAD_INPUT, output_dir, launched)

    from . import distributed

    try:
        command = distributed.launch_command(spec, args.spec, str(output_dir))
    except SpecError as exc:  # a launcher/spec mismatch (e.g. WORLD_SIZE) is bad input too
        print(f"tuneplane-train: {exc}", file=sys.stderr)
        if rank == 0:
            _error_event(output_dir, exitcodes.BAD_INPUT, exc)
        return exitcodes.BAD_INPUT
    if command:
        if args.init_adapter is not None:  # the workers read the same spec, so they need the same override
            command += ["--init-adapter", args.init_adapter]
        return _launch(command, output_dir, distributed.worker_environment())

    from .loop import StopRequest
    from .run import train

    stop = StopRequest()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    try:
        result = train(spec, output_dir, stop)
        code = exitcodes.STOPPED if result.stopped else exitcodes.OK
    except Exception as exc:  # every failure maps to a documented exit code
        code = _classify(exc)
        if code == exitcodes.UNEXPECTED_ERROR:
            traceback.print_exc()
        else:
            print(f"tuneplane-train: {exc}", file=sys.stderr)
        if rank == 0:
            _error_event(output_dir, code, exc)
    return _exit(code, output_dir, launched)


def _exit(code: int, output_dir: Path, launched: bool) -> int:
    """Under a launcher, record the code for the parent: the first failing rank's code wins (the
    others then fail only because it left), and rank 0 records success or a SIGTERM stop."""
    rank = int(os.environ.get("RANK", "0"))
    failed = code not in (exitcodes.OK, exitcodes.STOPPED)
    if launched and (failed or rank == 0):
        try:
            fd = os.open(output_dir / EXIT_CODE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return code  # another rank recorded its code first
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
