"""The Azure ML command job for one fine-tuning job: where it runs, and the entity itself.

Storage layout on the tuneplane datastore (the blob container of the ContentStore, registered in
the workspace as ``TUNEPLANE_AZURE_DATASTORE``), per job:

    tuneplane-runs/{job_id}/input/spec.json           the spec, with data paths relative to it
    tuneplane-runs/{job_id}/input/training.jsonl      copies of the job's files
    tuneplane-runs/{job_id}/input/validation.jsonl
    tuneplane-runs/{job_id}/model/                    the trainer's output folder (all attempts)

The job mounts ``input/`` as the ``spec`` folder and runs
``tuneplane-train --spec ${{inputs.spec}}/spec.json --output-dir ${{outputs.model}}``: the spec
names its data relative to itself (training/SPEC.md), so the trainer reads the spec and its data
from one mounted folder. Continued training (the spec has ``init_adapter``, the parent adapter's URI,
e.g. ``azureml://jobs/{parent}/outputs/model``) mounts that adapter as a second input,
``init_adapter``, and adds ``--init-adapter ${{inputs.init_adapter}}``: the mount's path replaces the
URI in the spec at run time. The output path is the same for every attempt of a job, so a run that
was paused (cancelled after a checkpoint) resumes from its checkpoints (``resume: auto``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneplane.domain import estimate as est
from tuneplane.domain.records import JobRecord
from tuneplane.ports import BackendMisconfigured

COMMAND = "tuneplane-train --spec ${{inputs.spec}}/spec.json --output-dir ${{outputs.model}}"
CONTINUED_COMMAND = COMMAND + " --init-adapter ${{inputs.init_adapter}}"
REPO_ROOT = Path(__file__).resolve().parents[3]
# The folder that holds the tuneplane package: functions/ in the repository, the app's root in a
# Function App package, where scripts/publish-functions puts training/ beside tuneplane/.
APP_ROOT = Path(__file__).resolve().parents[2]
SERVERLESS_ALIASES = frozenset({"serverless", "local", "auto"})


def attempt_name(job_id: str, index: int) -> str:
    """The Azure ML job name of attempt ``index`` (0-based) of a fine-tuning job: derived from our
    id, so a resubmission after a crash finds the run it already started. Each attempt (a resume
    after pause) is a new Azure ML job, because Azure ML never reuses a name."""
    return job_id if index == 0 else f"{job_id}-r{index}"


def job_id_of(azure_name: str) -> str:
    return re.sub(r"-r\d+$", "", azure_name)


def run_folder(job_id: str) -> str:
    return f"tuneplane-runs/{job_id}"


def datastore_uri(datastore: str, key: str) -> str:
    return f"azureml://datastores/{datastore}/paths/{key}"


def job_output_uri(azure_name: str) -> str:
    return f"azureml://jobs/{azure_name}/outputs/model"


@dataclass(frozen=True)
class Placement:
    """Where a job runs: serverless (no compute target) or a named compute cluster."""

    kind: Literal["serverless", "cluster"]
    instance_type: str
    instance_count: int
    gpus_per_instance: int
    tier: Literal["standard", "spot"] = "standard"
    compute: str | None = None  # the cluster's name

    @property
    def world_size(self) -> int:
        return self.instance_count * self.gpus_per_instance


def parameters_of(job: JobRecord, spec: dict[str, Any]) -> float:
    names = [job.model, str(spec.get("base_model", ""))]
    for name in names:
        try:
            return est.model_parameters_b(name)
        except est.EstimateError:
            continue
    raise est.EstimateError(f"model: cannot tell the parameter count of {job.model!r} to size its compute")


def serverless_placement(job: JobRecord, spec: dict[str, Any], *, tier: str, instance_types: dict) -> Placement:
    peft_type = (spec.get("peft") or {}).get("type") or job.peft.get("type", "lora")
    plan = est.plan_compute(parameters_of(job, spec), peft_type, instance_types=instance_types, tier=tier)
    return Placement("serverless", plan.instance_type, plan.instance_count, plan.gpus_per_instance, tier)  # type: ignore[arg-type]


def cluster_placement(job: JobRecord, spec: dict[str, Any], *, name: str, vm_size: str, max_instances: int,
                      instance_types: dict) -> Placement:
    """On a cluster the VM size is fixed; the memory rule only decides how many nodes to use."""
    peft_type = (spec.get("peft") or {}).get("type") or job.peft.get("type", "lora")
    instance = instance_types.get(vm_size) or next(
        (t for n, t in instance_types.items() if n.lower() == vm_size.lower()), None
    )
    if instance is None:  # a CPU or unlisted size: one process per node, one node
        return Placement("cluster", vm_size, 1, 1, compute=name)
    try:
        params = parameters_of(job, spec)
    except est.EstimateError:
        return Placement("cluster", instance.name, 1, instance.gpus, compute=name)
    count = 1
    while count < max(1, max_instances):
        plan = est.instance_plan(instance.name, params, peft_type, instance_count=count, instance_types=instance_types)
        if plan.memory_required_gb <= instance.gpu_memory_gb or peft_type != "full":
            break
        count += 1
    return Placement("cluster", instance.name, count, instance.gpus, compute=name)


def distribution_of(spec: dict[str, Any], placement: Placement) -> dict[str, Any]:
    """The spec's distribution block for this placement: DeepSpeed ZeRO-3 for full fine-tuning,
    ZeRO-2 for adapters, DDP for qlora (bitsandbytes weights cannot be sharded)."""
    if placement.world_size <= 1:
        return {"type": "none", "num_processes": 1, "num_nodes": 1}
    peft_type = (spec.get("peft") or {}).get("type", "lora")
    if peft_type == "qlora":
        kind: dict[str, Any] = {"type": "ddp"}
    else:
        kind = {"type": "deepspeed", "zero_stage": 3 if peft_type == "full" else 2}
    return {**kind, "num_processes": placement.gpus_per_instance, "num_nodes": placement.instance_count}


def job_spec(spec: dict[str, Any], placement: Placement, *, has_validation: bool) -> dict[str, Any]:
    """The spec as the Azure run sees it: data next to it, distribution from the placement."""
    out = copy.deepcopy(spec)
    # A catalog name the local trainer builds from bundled files is fetched from its source
    # (a Hugging Face id) on Azure ML.
    from tuneplane.domain.catalog import KNOWN_MODELS

    known = KNOWN_MODELS.get(str(out.get("base_model")))
    if known is not None:
        out["base_model"] = known.source
    out["training_file"] = "training.jsonl"
    out["validation_file"] = "validation.jsonl" if has_validation else None
    out["distribution"] = distribution_of(spec, placement)
    out.setdefault("resume", "auto")
    return out


def tags_of(job: JobRecord) -> dict[str, str]:
    return {
        "tuneplane.project": job.project,
        "tuneplane.job": job.id,
        "tuneplane.base_model": job.model,
    }


def code_of(training_dir: str | Path | None) -> str:
    """The jobs' code: a local ``training/`` folder (uploaded, cached by hash), or a registered
    code asset (``azureml:NAME:VERSION``) for a Function App that does not ship the folder."""
    value = str(training_dir or "")
    if not value:
        # The repository's training/, or the copy in a published Function App package.
        value = str(next((p for p in (REPO_ROOT / "training", APP_ROOT / "training") if p.is_dir()), REPO_ROOT / "training"))
    elif not value.startswith("azureml:") and not Path(value).is_absolute():
        value = str(APP_ROOT / value)
    if not value.startswith("azureml:") and not (Path(value) / "tuneplane_training").is_dir():
        raise BackendMisconfigured(
            "TUNEPLANE_AZURE_TRAINING_DIR",
            f"TUNEPLANE_AZURE_TRAINING_DIR: {value} is not the training/ folder (no tuneplane_training inside)",
        )
    return value


def environment_of(environment: str | None, training_dir: str | Path | None) -> Any:
    """The registered environment if one is configured, else an anonymous one built from
    ``training/environment`` (Azure ML names it by the folder's hash, so it builds once)."""
    if environment:
        return environment
    code = code_of(training_dir)
    if code.startswith("azureml:"):
        raise BackendMisconfigured(
            "TUNEPLANE_AZURE_ENVIRONMENT",
            "TUNEPLANE_AZURE_ENVIRONMENT must name a registered environment when the code is a registered asset",
        )
    from azure.ai.ml.entities import BuildContext, Environment

    return Environment(build=BuildContext(path=str(Path(code) / "environment")))


def build_command_job(
    job: JobRecord,
    placement: Placement,
    *,
    name: str,
    datastore: str,
    experiment: str,
    environment: str | None = None,
    training_dir: str | Path | None = None,
    timeout_s: int = 7 * 24 * 3600,
    init_adapter: str | None = None,
) -> Any:
    from azure.ai.ml import Input, Output, PyTorchDistribution
    from azure.ai.ml.entities import CommandJob, CommandJobLimits, JobResourceConfiguration, QueueSettings

    folder = run_folder(job.id)
    fields: dict[str, Any] = dict(
        name=name,
        display_name=f"{job.id} ({job.model})",
        experiment_name=experiment,
        description=f"tuneplane fine-tuning job {job.id} of project {job.project}",
        tags=tags_of(job),
        code=code_of(training_dir),
        command=COMMAND,
        environment=environment_of(environment, training_dir),
        environment_variables={"TOKENIZERS_PARALLELISM": "false", "TUNEPLANE_JOB_ID": job.id},
        inputs={"spec": Input(type="uri_folder", path=datastore_uri(datastore, folder + "/input/"), mode="ro_mount")},
        outputs={"model": Output(type="uri_folder", path=datastore_uri(datastore, folder + "/model/"), mode="rw_mount")},
        limits=CommandJobLimits(timeout=timeout_s),
        resources=JobResourceConfiguration(instance_type=placement.instance_type, instance_count=placement.instance_count),
    )
    if init_adapter:
        # Read-only: the parent's output is the parent's; this job writes only its own model folder.
        fields["inputs"]["init_adapter"] = Input(type="uri_folder", path=init_adapter, mode="ro_mount")
        fields["command"] = CONTINUED_COMMAND
    if placement.world_size > 1:
        # Azure ML starts every process (process_count_per_instance = GPUs), so the trainer sees
        # the full WORLD_SIZE and does not re-launch itself (tuneplane_training.distributed).
        fields["distribution"] = PyTorchDistribution(process_count_per_instance=placement.gpus_per_instance)
    if placement.kind == "serverless":
        fields["queue_settings"] = QueueSettings(job_tier=placement.tier)
    else:
        fields["compute"] = placement.compute
        # A cluster has one VM size; only the node count is ours to choose.
        fields["resources"] = JobResourceConfiguration(instance_count=placement.instance_count)
    return CommandJob(**fields)
