"""Exit-code plumbing of tuneplane-train: failure classification and the launcher hand-off."""

import pytest
import torch

from tuneplane_training import cli, exitcodes
from tuneplane_training.data import DataError
from tuneplane_training.loop import NonFiniteLossError
from tuneplane_training.spec import SpecError


@pytest.mark.parametrize("error, code", [
    (SpecError("spec field x: bad"), exitcodes.BAD_INPUT),
    (DataError("training_file line 3: bad"), exitcodes.BAD_INPUT),
    (NonFiniteLossError("nan"), exitcodes.NON_FINITE_LOSS),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), exitcodes.OUT_OF_MEMORY),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"), exitcodes.OUT_OF_MEMORY),
    (MemoryError(), exitcodes.OUT_OF_MEMORY),
    (KeyError("oops"), exitcodes.UNEXPECTED_ERROR),
])
def test_failures_map_to_documented_codes(error, code):
    assert cli._classify(error) == code


def test_first_failing_rank_records_the_code_for_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert cli._exit(exitcodes.OUT_OF_MEMORY, tmp_path, launched=True) == exitcodes.OUT_OF_MEMORY
    monkeypatch.setenv("RANK", "0")  # rank 0 then fails only because its peer left
    cli._exit(exitcodes.UNEXPECTED_ERROR, tmp_path, launched=True)
    assert (tmp_path / cli.EXIT_CODE_FILE).read_text() == "4\n"


def test_rank_zero_records_success_and_other_ranks_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    cli._exit(exitcodes.OK, tmp_path, launched=True)
    assert not (tmp_path / cli.EXIT_CODE_FILE).exists()
    monkeypatch.setenv("RANK", "0")
    cli._exit(exitcodes.STOPPED, tmp_path, launched=True)
    assert (tmp_path / cli.EXIT_CODE_FILE).read_text() == "75\n"
    cli._exit(exitcodes.OK, tmp_path / "single", launched=False)  # single process: no file at all
    assert not (tmp_path / "single").exists()
