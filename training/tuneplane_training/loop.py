"""The transformers ``Trainer`` subclass and the callbacks that turn its loop into tuneplane's
contract: per-step metrics events, checkpoints every epoch (and every N steps) marked complete by a
``checkpoint.json``, a stop on SIGTERM after a checkpoint, and a hard stop on a non-finite loss.

Trainer brings optimizer/scheduler/RNG/data-position checkpointing and DeepSpeed/FSDP; we only add
what it lacks.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from .data import IGNORE
from .outputs import EventLog, prune_checkpoints, write_checkpoint_marker, write_results_csv


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf (exit code 3)."""


class StopRequest:
    """Set from the SIGTERM handler; read by the loop at the next step boundary."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over supervised positions per row, and the per-row correct-token count."""
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    safe = targets.masked_fill(~mask, 0)
    token_logps = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    correct = ((logits.argmax(-1) == targets) & mask).sum(-1)
    return (token_logps * mask).sum(-1), correct


class TuneplaneTrainer(Trainer):
    """Supervised or DPO loss, plus the token accuracy and trained-token counts our events need."""

    def __init__(self, *args: Any, method: str = "supervised", beta: float = 0.1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method = method
        self.beta = beta
        if method == "dpo":
            # Our DPO loss is already a mean per micro-batch; let Trainer scale it for accumulation.
            self.model_accepts_loss_kwargs = False
        self.reset_step_stats()

    def reset_step_stats(self) -> None:
        # Device tensors (or 0) summed without .item(), so there is no extra GPU sync per micro-batch.
        self.step_correct = 0
        self.step_tokens = 0
        self.step_reward_hits = 0
        self.step_pairs = 0
        self.step_trained = 0  # supervised tokens (DPO: both sides)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.method == "dpo":
            return self._dpo_loss(model, inputs, return_outputs)
        labels = inputs["labels"]
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        with torch.no_grad():
            targets = labels[:, 1:]
            mask = targets != IGNORE
            correct = ((outputs.logits[:, :-1].argmax(-1) == targets) & mask).sum()
            self.step_correct += correct.detach()
            self.step_tokens += mask.sum().detach()
            self.step_trained += mask.sum().detach()
        return (loss, outputs) if return_outputs else loss

    def _dpo_loss(self, model, inputs, return_outputs):
        labels = inputs["labels"]
        pairs = labels.shape[0] // 2  # rows: chosen first, then rejected
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        policy, correct = sequence_logprobs(outputs.logits, labels)
        # The reference is the same weights with the adapter switched off: no second model copy.
        with torch.no_grad(), self.accelerator.unwrap_model(model).disable_adapter():
            reference, _ = sequence_logprobs(
                model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits, labels)
        margin = (policy[:pairs] - reference[:pairs]) - (policy[pairs:] - reference[pairs:])
        loss = -F.logsigmoid(self.beta * margin).mean()
        with torch.no_grad():
            chosen_mask = labels[:pairs, 1:] != IGNORE
            self.step_correct += correct[:pairs].sum()
            self.step_tokens += chosen_mask.sum()
            self.step_reward_hits += (margin > 0).sum()
            self.step_pairs += float(pairs)
            self.step_trained += (labels[:, 1:] != IGNORE).sum()
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def validation_metrics(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Token-weighted loss and accuracy over the whole validation set (every rank runs it all,
        which keeps sharded models' collectives in step)."""
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        was_training = model.training
        model.eval()
        loss_sum = correct = tokens = 0.0
        try:
            for batch in batches:
                batch = {k: v.to(self.args.device) for k, v in batch.items()}
                labels = batch["labels"]
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                if self.method == "dpo":
                    pairs = labels.shape[0] // 2
                    labels, logits = labels[:pairs], logits[:pairs]
                logps, hits = sequence_logprobs(logits, labels)
                loss_sum -= float(logps.sum())
                correct += float(hits.sum())
                tokens += float((labels[:, 1:] != IGNORE).sum())
        finally:
            model.train(was_training)
        return {"valid_loss": loss_sum / max(tokens, 1.0), "valid_mean_token_accuracy": correct / max(tokens, 1.0)}


class ContractCallback(TrainerCallback):
    """Emits tuneplane's metrics events, checkpoints on policy, and enforces stop/NaN rules."""

    def __init__(self, trainer: TuneplaneTrainer, events: EventLog, output_dir, *, every_n_steps: int | None,
                 stop: StopRequest, validation_batches: list | None, trained_tokens: int, keep_last: int,
                 mlflow: Any = None):
        self.trainer = trainer
        self.events = events
        self.output_dir = output_dir
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.stop = stop
        self.validation_batches = validation_batches
        self.trained_tokens = trained_tokens
        self.last_saved_step = -1
        self.last_metrics: dict[str, Any] = {}
        self.stopped_by_signal = False
        self.mlflow = mlflow

    def _is_main(self, state) -> bool:
        return state.is_world_process_zero

    def _validate(self, state) -> None:
        if not self.validation_batches:
            return
        metrics = self.trainer.validation_metrics(self.validation_batches)
        self.last_metrics.update(metrics)
        if self._is_main(state):
            self.events.metrics({"step": state.global_step, "total_steps": state.max_steps,
                                 "trained_tokens": self.trained_tokens, **metrics})
            self._mlflow(metrics, state.global_step)

    def _mlflow(self, metrics: dict[str, Any], step: int) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.stop.is_set()
        if _distributed():  # every rank must agree, or one rank would wait forever in a collective
            stop = _all_reduce([1.0 if stop else 0.0], args.device, op="max")[0] > 0
        if stop:
            self.stopped_by_signal = True
            control.should_training_stop = True
        if stop or (self.every_n_steps and state.global_step % self.every_n_steps == 0):
            if state.global_step != self.last_saved_step:
                self._validate(state)
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.global_step != self.last_saved_step and not control.should_save:
            self._validate(state)
            control.should_save = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return control
        trainer = self.trainer
        stats = [float(trainer.step_correct), float(trainer.step_tokens), float(trainer.step_reward_hits),
                 float(trainer.step_pairs), float(trainer.step_trained)]
        trainer.reset_step_stats()
        correct, tokens, hits, pairs, trained = _all_reduce(stats, args.device)
        self.trained_tokens += int(trained)
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            if self._is_main(state):
                self.events.emit(f"Training stopped at step {state.global_step}: the loss is {loss}. "
                                 "Lower the learning rate or check the data.", level="error")
            raise NonFiniteLossError(f"loss is {loss} at step {state.global_step}")
        data = {"step": state.global_step, "total_steps": state.max_steps, "trained_tokens": self.trained_tokens,
                "train_loss": loss, "train_mean_token_accuracy": correct / tokens if tokens else None}
        if trainer.method == "dpo" and pairs:
            data["train_reward_accuracy"] = hits / pairs
        self.last_metrics.update(data)
        if self._is_main(state):
            self.events.metrics(data)
            self._mlflow({k: v for k, v in data.items() if k.startswith("train_")}, state.global_step)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last_saved_step = state.global_step
        if self._is_main(state):
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            metrics = {k: v for k, v in self.last_metrics.items() if k.startswith(("train_", "valid_"))}
            write_checkpoint_marker(Path(folder), {
                "step": state.global_step, "epoch": state.epoch, "metrics": metrics,
                "trained_tokens": self.trained_tokens,
            })
            self.events.emit(f"Checkpoint saved at step {state.global_step}",
                             data={"step": state.global_step, "checkpoint": f"checkpoints/checkpoint-{state.global_step}"})
            write_results_csv(self.output_dir, self.events.read())
            prune_checkpoints(Path(args.output_dir), self.keep_last)
        return control

