"""One training run, top to bottom: resolve the model, load data, build the Trainer, resume if asked,
train, and write the output folder. ``train`` is what the CLI calls (in every rank)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .catalog import resolve_base_model
from .data import ChatRenderer, DataError, LoadReport, load_chat_examples, load_preference_pairs
from .loop import ContractCallback, StopRequest, TuneplaneTrainer
from .model import check_init_adapter, compute_dtype, load_model, load_tokenizer, parameter_counts
from .outputs import EventLog, complete_checkpoints, read_checkpoint_marker, write_manifest, write_results_csv
from .packing import PackedCollator, PaddedCollator, pack
from .spec import TrainingSpec


@dataclass
class RunResult:
    stopped: bool  # True when a SIGTERM stopped the run after a checkpoint
    model: Any
    tokenizer: Any
    metrics: dict[str, Any]
    trained_tokens: int


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class DpoCollator:
    """Chosen rows first, then rejected rows, padded together (one forward pass scores both)."""

    def __init__(self, pad_token_id: int):
        self.padded = PaddedCollator(pad_token_id)

    def __call__(self, batch):
        return self.padded([p.chosen for p in batch] + [p.rejected for p in batch])


def _warn_fitting(events: EventLog, report: LoadReport, what: str, max_len: int) -> None:
    def lines(numbers: list[int]) -> str:
        shown = ", ".join(str(n) for n in numbers[:10])
        return shown + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")

    if report.truncated:
        events.emit(f"{len(report.truncated)} {what} examples were longer than max_seq_length={max_len} "
                    f"and were truncated (lines {lines(report.truncated)})", level="warn")
    if report.dropped:
        events.emit(f"{len(report.dropped)} {what} examples were longer than max_seq_length={max_len} "
                    f"and were dropped (lines {lines(report.dropped)})", level="warn")


def _resume_point(spec: TrainingSpec, checkpoints_dir: Path) -> Path | None:
    if spec.resume == "never":
        return None
    if spec.resume == "auto":
        found = complete_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    folder = Path(spec.resume)
    if read_checkpoint_marker(folder) is None:
        raise DataError(f"spec field resume: {folder} is not a complete checkpoint (no checkpoint.json)")
    return folder


def _drop_incomplete_checkpoints(checkpoints_dir: Path) -> None:
    complete = set(complete_checkpoints(checkpoints_dir))
    for folder in checkpoints_dir.glob("checkpoint-*"):
        if folder.is_dir() and folder not in complete:
            shutil.rmtree(folder, ignore_errors=True)  # half-written by a killed run: never used


def _mlflow_client() -> Any:
    if not os.environ.get("MLFLOW_TRACKING_URI") or importlib.util.find_spec("mlflow") is None:
        return None
    import mlflow

    return mlflow


def _training_arguments(spec: TrainingSpec, checkpoints_dir: Path, dtype: torch.dtype) -> Any:
    from transformers import TrainingArguments

    hp = spec.hyperparameters
    kwargs: dict[str, Any] = dict(
        output_dir=str(checkpoints_dir),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_steps if hp.warmup_steps > 0 else hp.warmup_ratio,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps if hp.max_steps is not None else -1,
        seed=spec.seed,
        data_seed=spec.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN must stop the run, not be averaged away
        save_strategy="no",  # ContractCallback decides when to save
        save_total_limit=None,  # ContractCallback prunes, after the new checkpoint is marked complete
        save_only_model=False,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=not torch.cuda.is_available(),
    )
    kwargs.update(distributed.training_arguments_kwargs(spec))
    return TrainingArguments(**kwargs)


def train(spec: TrainingSpec, output_dir: Path, stop: StopRequest | None = None) -> RunResult:
    output_dir = Path(output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    main = _rank() == 0
    if main:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        _drop_incomplete_checkpoints(checkpoints_dir)
    events = EventLog(output_dir, enabled=main)
    stop = stop or StopRequest()

    model_dir = resolve_base_model(spec.base_model)
    if spec.init_adapter is not None:
        check_init_adapter(spec, model_dir)  # before any data or weights are loaded: fail fast, exit 2
    tokenizer = load_tokenizer(model_dir)
    renderer = ChatRenderer(tokenizer)
    hp = spec.hyperparameters
    dpo = spec.method.type == "dpo"
    loader = load_preference_pairs if dpo else load_chat_examples
    train_items, report = loader(spec.training_file, renderer, hp.max_seq_length, spec.truncation, "training_file")
    _warn_fitting(events, report, "training_file", hp.max_seq_length)
    valid_items = None
    if spec.validation_file:
        valid_items, valid_report = loader(spec.validation_file, renderer, hp.max_seq_length, spec.truncation,
                                           "validation_file")
        _warn_fitting(events, valid_report, "validation_file", hp.max_seq_length)

    if dpo:
        collator: Any = DpoCollator(tokenizer.pad_token_id)
        dataset: list[Any] = train_items
        supervised = sum(p.chosen.supervised_tokens + p.rejected.supervised_tokens for p in train_items)
    elif spec.packing:
        collator = PackedCollator(tokenizer.pad_token_id)
        dataset = pack(train_items, hp.max_seq_length)
        supervised = sum(e.supervised_tokens for e in train_items)
    else:
        collator = PaddedCollator(tokenizer.pad_token_id)
        dataset = train_items
        supervised = sum(e.supervised_tokens for e in train_items)
    validation_batches = None
    if valid_items:
        valid_collator = DpoCollator(tokenizer.pad_token_id) if dpo else PaddedCollator(tokenizer.pad_token_id)
        validation_batches = [valid_collator(valid_items[i:i + hp.batch_size])
                              for i in range(0, len(valid_items), hp.batch_size)]

    resume_from = _resume_point(spec, checkpoints_dir)
    trained_tokens = 0
    if resume_from is not None:
        trained_tokens = int(read_checkpoint_marker(resume_from).get("trained_tokens", 0))

    # Seed before the adapter is created: its random init must be the same in every run and rank.
    from transformers import set_seed

    set_seed(spec.seed)
    model = load_model(spec, model_dir)
    counts = parameter_counts(model)
    args = _training_arguments(spec, checkpoints_dir, compute_dtype(spec))
    trainer = TuneplaneTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                               processing_class=tokenizer, method=spec.method.type, beta=spec.method.dpo.beta)
    callback = ContractCallback(trainer, events, output_dir, every_n_steps=spec.checkpoint.every_n_steps, stop=stop,
                                validation_batches=validation_batches, trained_tokens=trained_tokens,
                                keep_last=spec.checkpoint.keep_last,
                                mlflow=_mlflow_client() if main else None)
    trainer.add_callback(callback)
    distributed.prepare_trainer(trainer)  # FSDP on CPU: accelerate would silently fall back to DDP

    if resume_from is not None:
        events.emit(f"Resuming from {resume_from.name} (step {read_checkpoint_marker(resume_from)['step']})")
    else:
        if spec.init_adapter is not None:
            events.emit(f"Continuing training from the adapter {spec.init_adapter}", data={"init_adapter": spec.init_adapter})
        events.emit(f"Fine-tuning {spec.base_model} with {spec.peft.type} ({spec.method.type}): "
                    f"{len(train_items)} examples, {supervised} supervised tokens per epoch, "
                    f"{counts['trainable']} of {counts['total']} parameters trainable",
                    data={"examples": len(train_items), "supervised_tokens_per_epoch": supervised,
                          "trainable_parameters": counts["trainable"], "total_parameters": counts["total"]})
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)

    if callback.stopped_by_signal:
        events.emit(f"Training stopped by request at step {trainer.state.global_step} after saving a checkpoint")
        return RunResult(True, trainer.model, tokenizer, callback.last_metrics, callback.trained_tokens)

    trainer.save_model(str(output_dir))  # adapter (peft) or full model; gathers shards under ZeRO-3/FSDP
    if main:
        tokenizer.save_pretrained(str(output_dir))
        write_results_csv(output_dir, events.read())
        final = {k: v for k, v in callback.last_metrics.items() if k.startswith(("train_", "valid_"))}
        write_manifest(output_dir, {
            "spec_version": spec.spec_version,
            "job_id": spec.job_id,
            "base_model": spec.base_model,
            "base_model_path": str(model_dir),
            "method": spec.method.model_dump(),
            "peft": spec.peft.model_dump(),
            "init_adapter": spec.init_adapter,
            "packing": spec.packing,
            "trained_tokens": callback.trained_tokens,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "final_metrics": final,
            "parameters": counts,
        })
        events.emit("The job has successfully completed", data={"trained_tokens": callback.trained_tokens,
                                                                 "step": trainer.state.global_step})
    _barrier()
    return RunResult(False, trainer.model, tokenizer, callback.last_metrics, callback.trained_tokens)
