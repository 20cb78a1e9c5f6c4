"""Distribution: which launcher starts the trainer, and what the Trainer is told about it.

The spec's ``distribution`` block (``type``: none | ddp | fsdp | deepspeed, ``zero_stage``,
``num_processes`` per node, ``num_nodes``) maps onto two seams of the trainer:

- ``launch_command``: when more processes are asked for than are running, ``tuneplane-train``
  re-executes itself under torchrun with the same spec and output folder. torchrun starts DDP, FSDP
  and DeepSpeed alike (the Hugging Face integration initialises DeepSpeed from the env torchrun
  sets), so there is one launcher to reason about locally and on Azure ML.
- ``training_arguments_kwargs``: the extra ``transformers.TrainingArguments`` for the chosen type,
  built from the JSON files in ``configs/`` (see ``configs/README.md``).

Azure ML's ``PyTorchDistribution`` either starts every process itself (``process_count_per_instance``
equal to the spec's ``num_processes``: each process already sees the full ``WORLD_SIZE``, nothing is
re-launched) or starts one process per node (``process_count_per_instance=1``: ``WORLD_SIZE`` equals
the node count, and we run torchrun on each node with the ``NODE_RANK``/``MASTER_ADDR``/``MASTER_PORT``
that Azure ML sets).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from tuneplane_training.spec import SpecError

CONFIG_DIR = Path(__file__).with_name("configs")
DEEPSPEED_CONFIG_ENV = "TUNEPLANE_DEEPSPEED_CONFIG"
FSDP_CONFIG_ENV = "TUNEPLANE_FSDP_CONFIG"
_DEFAULT_MASTER_PORT = "29500"


class DistributionError(SpecError):
    """The distribution cannot be set up as asked; the message names the field or variable.

    A ``SpecError``, so the CLI exits with code 2 as for any other bad spec.
    """


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DistributionError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise DistributionError(f"{what}: {path} is not valid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DistributionError(f"{what}: {path} must hold a JSON object")
    return data


def _config_override(variable: str, environ: Mapping[str, str]) -> Path | None:
    # A bare file name selects a bundled config (e.g. the ZeRO-3 offload variant); anything else is a path.
    value = environ.get(variable)
    if not value:
        return None
    bundled = CONFIG_DIR / value
    return bundled if "/" not in value and bundled.is_file() else Path(value)


def deepspeed_config(zero_stage: int, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for a ZeRO stage, with ``"auto"`` values left for the HF integration."""
    environ = os.environ if environ is None else environ
    override = _config_override(DEEPSPEED_CONFIG_ENV, environ)
    if override is not None:
        config = _read_json(override, DEEPSPEED_CONFIG_ENV)
        stage = config.get("zero_optimization", {}).get("stage", 0)
        if stage != zero_stage:
            raise DistributionError(
                f"{DEEPSPEED_CONFIG_ENV}: {override} uses ZeRO stage {stage} but spec field "
                f"distribution.zero_stage is {zero_stage}"
            )
        return config
    name = "deepspeed_zero3.json" if zero_stage == 3 else "deepspeed_zero2.json"
    config = copy.deepcopy(_read_json(CONFIG_DIR / name, "distribution.zero_stage"))
    # Stage 1 shards only optimizer state; it shares the stage-2 tuning, minus gradient reduce-scatter.
    if zero_stage == 1:
        config["zero_optimization"]["stage"] = 1
        config["zero_optimization"].pop("reduce_scatter", None)
    return config


def fsdp_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    override = _config_override(FSDP_CONFIG_ENV, environ)
    return _read_json(override or CONFIG_DIR / "fsdp.json", FSDP_CONFIG_ENV if override else "distribution.type")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments_kwargs(spec: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Extra ``TrainingArguments`` kwargs for ``spec.distribution``; empty for ``type: none``."""
    dist = spec.distribution
    if dist.type == "none":
        return {}
    kwargs: dict[str, Any] = {}
    if not _cuda_available():
        # NCCL needs GPUs; gloo is torch's CPU backend (DeepSpeed's CPU accelerator also falls back
        # to gloo when oneCCL is not installed, which it is not here).
        kwargs["ddp_backend"] = "gloo"
    if dist.type == "ddp":
        # Every LoRA/full-model parameter that requires grad is used in each forward, so DDP need not
        # walk the graph looking for unused ones (the default when gradient checkpointing is off).
        kwargs["ddp_find_unused_parameters"] = False
    elif dist.type == "fsdp":
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = fsdp_config(environ)
    elif dist.type == "deepspeed":
        kwargs["deepspeed"] = deepspeed_config(dist.zero_stage, environ)
    else:  # the spec's Literal makes this unreachable; a new type must be wired here on purpose.
        raise DistributionError(f"spec field distribution.type: unsupported value {dist.type!r}")
    return kwargs


def prepare_trainer(trainer: Any) -> None:
    """Make the Trainer honour ``type: fsdp`` on CPU; call it right after constructing the Trainer.

    accelerate 1.15 only switches to FSDP on accelerator devices: on a CPU/gloo world it keeps
    ``MULTI_CPU`` and the Trainer silently falls back to DDP. torch's FSDP2 (``fully_shard``) itself
    runs on CPU with gloo, so we mark the shared accelerate state as FSDP with the plugin the Trainer
    already built. accelerate copies ``distributed_type`` from ``PartialState`` whenever an
    ``AcceleratorState`` is re-created, so both are set. A no-op on GPUs and for other types.
    """
    if not getattr(trainer.args, "fsdp", False) or getattr(trainer, "is_fsdp_enabled", False):
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise DistributionError(f"environment variable {name}: expected an integer, got {value!r}") from exc


def _rendezvous(environ: Mapping[str, str]) -> tuple[str, str]:
    addr, port = environ.get("MASTER_ADDR"), environ.get("MASTER_PORT")
    # Older Azure ML (MPI-style) images publish the head node as AZ_BATCH_MASTER_NODE="host:port".
    batch_master = environ.get("AZ_BATCH_MASTER_NODE", "")
    if not addr and batch_master:
        addr, _, batch_port = batch_master.partition(":")
        port = port or batch_port
    if not addr:
        raise DistributionError(
            "distribution.num_nodes > 1 needs MASTER_ADDR (or AZ_BATCH_MASTER_NODE) in the environment, "
            "as Azure ML's PyTorch distribution sets it"
        )
    return addr, port or _DEFAULT_MASTER_PORT


def launch_command(spec: Any, spec_path: str | Path, output_dir: str | Path,
                   environ: Mapping[str, str] | None = None) -> list[str] | None:
    """The torchrun command to re-exec ``tuneplane-train`` under, or None to train in this process.

    None when one process is asked for, or when a launcher already started all of them (its
    ``WORLD_SIZE`` equals the spec's world size). Raises ``DistributionError`` when a multi-node run
    lacks the rendezvous variables, or a launcher started a different number of processes.
    """
    environ = os.environ if environ is None else environ
    dist = spec.distribution
    world_size = dist.num_processes * dist.num_nodes
    if world_size <= 1:
        return None
    launched_world = _int_env(environ, "WORLD_SIZE")
    if launched_world == world_size:
        return None  # inside torchrun/deepspeed/Azure ML per-process launch already
    if launched_world is not None and launched_world != dist.num_nodes:
        raise DistributionError(
            f"spec field distribution: asks for {dist.num_nodes} node(s) x {dist.num_processes} process(es) "
            f"= {world_size}, but the launcher started WORLD_SIZE={launched_world}"
        )
    if launched_world is not None and _int_env(environ, "LOCAL_RANK") not in (None, 0):
        raise DistributionError(f"per-node launch expects one process per node, got LOCAL_RANK={environ['LOCAL_RANK']}")

    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={dist.num_processes}",
               "--max-restarts=0"]
    if dist.num_nodes == 1:
        # --standalone picks a free local rendezvous port, so concurrent local jobs never collide.
        command.append("--standalone")
    else:
        # One process per node was started for us (WORLD_SIZE == num_nodes): this node's index is
        # NODE_RANK, or RANK under a per-node launch that only sets the process-level variables.
        node_rank = _int_env(environ, "NODE_RANK")
        if node_rank is None:
            node_rank = _int_env(environ, "RANK")
        if node_rank is None:
            raise DistributionError("distribution.num_nodes > 1 needs NODE_RANK (or RANK) in the environment")
        if not 0 <= node_rank < dist.num_nodes:
            raise DistributionError(f"NODE_RANK={node_rank} is outside distribution.num_nodes={dist.num_nodes}")
        addr, port = _rendezvous(environ)
        command += [f"--nnodes={dist.num_nodes}", f"--node-rank={node_rank}",
                    f"--master-addr={addr}", f"--master-port={port}"]
    command += ["-m", "tuneplane_training.cli", "--spec", str(spec_path), "--output-dir", str(output_dir)]
    return command


def worker_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the launched workers: the per-node launcher's rank variables removed.

    Under a per-node launch Azure ML sets RANK/LOCAL_RANK/WORLD_SIZE for the single process it
    started; torchrun sets its own for each worker, and stale values must not leak into them.
    """
    environ = dict(os.environ if environ is None else environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
        environ.pop(name, None)
    return environ


def is_main_process(environ: Mapping[str, str] | None = None) -> bool:
    """True on global rank 0 (or when not distributed): the one process that writes outputs."""
    return (_int_env(os.environ if environ is None else environ, "RANK") or 0) == 0
