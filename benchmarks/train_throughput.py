"""Training throughput: tuneplane's trainer against TRL 1.16 ``SFTTrainer``, in one run.

    .venv/bin/python benchmarks/train_throughput.py                 # default: ~15M random Llama, < 5 min
    .venv/bin/python benchmarks/train_throughput.py --examples 2000 --max-length 1024
    .venv/bin/python benchmarks/train_throughput.py --model SmolLM2-135M-Instruct --examples 300

Contestants (each in its own subprocess, so peak RSS is theirs alone):
- ``ours``: ``tuneplane_training.run.train`` with packing on (best-fit packing, block-diagonal
  attention: contamination-free), exactly as ``tuneplane-train`` runs it.
- ``trl``: ``SFTTrainer`` with ``packing=False`` (one example per row, padded to the longest).
- ``trl-packed``: ``SFTTrainer`` with ``packing=True`` (bfd, padding-free). Labelled *contaminated*:
  TRL does not guarantee that attention stays inside a document with SDPA on CPU.
- ``ours-unpacked`` (``--with-unpacked``): our trainer with packing off, for reference.

Held equal: the model and tokenizer, a deterministic heavy-tailed dataset (lognormal response
lengths), max length, LoRA r=16 (alpha 32, no dropout) on all linear layers, one epoch, the learning
rate, and the tokens per optimizer step (micro-batch x accumulation chosen per contestant so each
optimizer step sees about ``--tokens-per-step`` real tokens).

Reported per contestant: real tokens/s (tokens of examples), supervised tokens/s (tokens with a loss),
padded tokens/s (tokens the model actually computed, padding included), padding waste, LoRA-aware MFU,
and peak RSS. MFU counts useful work only: per real token 4*N_frozen (forward + activation gradients)
+ 6*N_trainable (plus weight gradients), with N counting matmul weights (the LM head, not the input
embedding lookup), plus causal attention 6 * layers * d_attn * L^2 per example of length L; it is
divided by a fp32 GEMM peak measured in this run with the same thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [a + b for a in ("ka", "lo", "mi", "tru", "sen", "dor", "val", "quen", "bra", "fe", "zo", "pil")
         for b in ("n", "ra", "tis", "mon", "del", "ix", "o", "ar", "en", "ulp", "ast", "ir")]
TOPICS = ["rivers", "compilers", "bread", "glaciers", "tax law", "chess", "orbits", "enzymes", "poetry", "bridges"]


# ---- shared setup (parent) ------------------------------------------------------------------------

def heavy_tailed_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Single-turn chats whose answer lengths are lognormal (median ~45 words, long tail past 1000)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = max(3, int(rng.lognormvariate(math.log(45), 1.1)))
        answer = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        question = f"Question {i}: explain {rng.choice(TOPICS)} in {words} words."
        rows.append({"messages": [{"role": "system", "content": "You are concise."},
                                  {"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}]})
    return rows


def build_model(kind: str, cache: Path) -> Path:
    from tuneplane_training.catalog import resolve_base_model

    if kind != "random-llama":
        return resolve_base_model(kind)
    folder = cache / "bench-random-llama-v1"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # The real SmolLM2 tokenizer and chat template (from the tiny catalog model), on a ~15M-parameter
    # random Llama: wide enough that its matmuls (the 49k-row LM head above all) are compute-bound.
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_base_model("tiny-random-llama")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def gemm_peak_flops(threads: int, size: int = 1536, seconds: float = 3.0) -> float:
    """Best fp32 matmul rate over a few seconds: the roofline the MFU figures are measured against."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size ** 3 / (time.perf_counter() - start))
    return best


# ---- workers (one subprocess per contestant) ------------------------------------------------------

class Meter:
    """Counts what each optimizer micro-step fed the model, and times ``Trainer.train`` alone."""

    def __init__(self) -> None:
        self.example_lengths: list[int] = []
        self.padded = 0
        self.supervised = 0
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.params: dict[str, int] = {}

    def instrument(self, trainer_cls: type) -> None:
        meter, train, step = self, trainer_cls.train, trainer_cls.training_step

        def training_step(self, model, inputs, *args, **kwargs):
            meter.padded += int(inputs["input_ids"].numel())
            labels = inputs["labels"]
            meter.supervised += int((labels[..., 1:] != -100).sum())
            return step(self, model, inputs, *args, **kwargs)

        def timed_train(self, *args, **kwargs):
            meter.params = matmul_parameters(self.model)
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return train(self, *args, **kwargs)
            finally:
                meter.train_seconds = time.perf_counter() - start
                meter.train_cpu_seconds = time.process_time() - cpu_start

        trainer_cls.training_step = training_step
        trainer_cls.train = timed_train

    def count_collator(self, collator_cls: type, lengths_of) -> None:
        meter, call = self, collator_cls.__call__

        def counted(self, batch, *args, **kwargs):
            meter.example_lengths.extend(lengths_of(batch))
            return call(self, batch, *args, **kwargs)

        collator_cls.__call__ = counted


def matmul_parameters(model: Any) -> dict[str, int]:
    frozen = trainable = 0
    for p in model.parameters():
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if not getattr(config, "tie_word_embeddings", False):
        frozen -= base.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    d_attn = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
    return {"frozen": frozen, "trainable": trainable, "layers": config.num_hidden_layers, "d_attn": d_attn}


def run_ours(cfg: dict[str, Any], meter: Meter) -> None:
    from tuneplane_training import loop, packing
    from tuneplane_training.run import train
    from tuneplane_training.spec import load_spec

    meter.instrument(loop.TuneplaneTrainer)
    meter.count_collator(packing.PackedCollator, lambda packs: [len(e.input_ids) for pack in packs for e in pack])
    meter.count_collator(packing.PaddedCollator, lambda batch: [len(e.input_ids) for e in batch])
    work = Path(cfg["work"])
    spec = {
        "job_id": "ftjob-bench", "base_model": cfg["model_dir"], "training_file": cfg["train_file"],
        "seed": cfg["seed"], "packing": cfg["packing"], "precision": "fp32", "resume": "never",
        "peft": {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "hyperparameters": {"n_epochs": 1, "batch_size": cfg["batch_size"], "learning_rate": cfg["lr"],
                            "gradient_accumulation_steps": cfg["grad_accum"], "max_seq_length": cfg["max_length"]},
    }
    spec_path = work / f"spec-{cfg['name']}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    train(load_spec(spec_path), work / f"out-{cfg['name']}")


def run_trl(cfg: dict[str, Any], meter: Meter) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    meter.instrument(SFTTrainer)
    rows = [json.loads(line) for line in Path(cfg["train_file"]).read_text(encoding="utf-8").splitlines()]
    # Prompt/completion form: TRL then puts the loss on the assistant answer only, as ours does
    # (the SmolLM2 template has no {% generation %} markers, so assistant_only_loss is unavailable).
    dataset = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model_dir"], dtype=torch.float32, attn_implementation="sdpa")
    args = SFTConfig(
        output_dir=str(Path(cfg["work"]) / f"out-{cfg['name']}"), per_device_train_batch_size=cfg["batch_size"],
        gradient_accumulation_steps=cfg["grad_accum"], num_train_epochs=1, learning_rate=cfg["lr"],
        max_length=cfg["max_length"], packing=cfg["packing"], seed=cfg["seed"], report_to="none",
        save_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, logging_steps=10,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    collator = trainer.data_collator
    # Packed rows carry their documents' lengths; useful attention is per document.
    meter.count_collator(type(collator), lambda batch: [int(n) for x in batch
                                                        for n in (x.get("seq_lengths") or [len(x["input_ids"])])])
    trainer.train()


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    meter = Meter()
    (run_ours if cfg["name"].startswith("ours") else run_trl)(cfg, meter)
    p = meter.params
    per_token = 4 * p["frozen"] + 6 * p["trainable"]
    useful = sum(per_token * n + 6 * p["layers"] * p["d_attn"] * n * n for n in meter.example_lengths)
    return {
        "name": cfg["name"], "train_seconds": meter.train_seconds, "train_cpu_seconds": meter.train_cpu_seconds, "examples": len(meter.example_lengths),
        "real_tokens": sum(meter.example_lengths), "supervised_tokens": meter.supervised,
        "padded_tokens": meter.padded, "useful_flops": useful, "params": p,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ---- orchestration ----------------------------------------------------------------------------------

def plan(packing: bool, mean_len: float, args: argparse.Namespace) -> dict[str, Any]:
    """Micro-batch and accumulation giving ~tokens_per_step real tokens per optimizer step."""
    if packing:
        rows, cap = max(1, args.tokens_per_step // args.max_length), args.packed_batch  # packs are nearly full
    else:
        rows, cap = max(1, round(args.tokens_per_step / mean_len)), args.padded_batch
    accumulation = math.ceil(rows / cap)
    return {"batch_size": max(1, round(rows / accumulation)), "grad_accum": accumulation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random-llama", help='"random-llama" (default) or a catalog name/path')
    parser.add_argument("--examples", type=int, default=60)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--tokens-per-step", type=int, default=4096)
    parser.add_argument("--packed-batch", type=int, default=2, help="packs per micro-batch")
    parser.add_argument("--padded-batch", type=int, default=8, help="examples per micro-batch, unpacked")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--with-unpacked", action="store_true", help="also run ours with packing off")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        result = worker(json.loads(args.worker.read_text(encoding="utf-8")))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    from tuneplane_training.catalog import cache_root

    work = Path(tempfile.mkdtemp(prefix="tuneplane-train-bench-"))
    model_dir = build_model(args.model, cache_root())
    rows = heavy_tailed_rows(args.examples, args.seed)
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    lengths = [min(args.max_length, len(tokenizer(t, add_special_tokens=False).input_ids)) for t in texts]
    mean_len = sum(lengths) / len(lengths)
    peak = gemm_peak_flops(args.threads)
    print(f"model {args.model} ({model_dir}); {len(rows)} examples, {sum(lengths)} tokens, length mean "
          f"{mean_len:.0f} / median {sorted(lengths)[len(lengths) // 2]} / max {max(lengths)} "
          f"(max_length {args.max_length}); {args.threads} threads; fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s", flush=True)

    names = ["ours", "trl", "trl-packed"] + (["ours-unpacked"] if args.with_unpacked else [])
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        packing = name in ("ours", "trl-packed")
        cfg = {"name": name, "work": str(work), "model_dir": str(model_dir), "train_file": str(train_file),
               "max_length": args.max_length, "packing": packing, "seed": args.seed,
               "lr": args.lr, "threads": args.threads, **plan(packing, mean_len, args)}
        cfg_path = work / f"{name}.json"
        cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
        proc = subprocess.run([sys.executable, __file__, "--worker", str(cfg_path)], capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false"))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)
            return 1
        result = json.loads(lines[-1][len("RESULT "):])
        result.update(cfg)
        results[name] = result
        print(f"  ran {name}: {result['train_seconds']:.1f}s of training, micro-batch {cfg['batch_size']} "
              f"x accumulation {cfg['grad_accum']}", flush=True)

    shutil.rmtree(work, ignore_errors=True)  # adapters and checkpoints of the runs are not kept
    report(results, peak)
    if args.json:
        args.json.write_text(json.dumps({"gemm_peak_flops": peak, "results": results}, indent=2), encoding="utf-8")
    return 0


def report(results: dict[str, dict[str, Any]], peak: float) -> None:
    labels = {"ours": "ours (packed, contamination-free)", "trl": "TRL SFTTrainer packing=False",
              "trl-packed": "TRL SFTTrainer packing=True (contaminated)", "ours-unpacked": "ours (packing off)"}
    print(f"\n{'contestant':44} {'real tok/s':>10} {'sup tok/s':>10} {'pad tok/s':>10} {'waste':>6} "
          f"{'MFU':>6} {'peak RSS':>9} {'real tok/CPU-s':>14}")
    for name, r in results.items():
        t = r["train_seconds"]
        r["real_tps"], r["supervised_tps"], r["padded_tps"] = r["real_tokens"] / t, r["supervised_tokens"] / t, r["padded_tokens"] / t
        r["padding_waste"] = 1 - r["real_tokens"] / r["padded_tokens"]
        r["mfu"] = r["useful_flops"] / t / peak
        # Tokens per CPU-second of the trainer process: less swayed than wall time when other jobs
        # share the machine (the wall-clock figures are the ones the targets are judged on).
        r["real_per_cpu_s"] = r["real_tokens"] / r["train_cpu_seconds"]
        print(f"{labels[name]:44} {r['real_tps']:10.0f} {r['supervised_tps']:10.0f} {r['padded_tps']:10.0f} "
              f"{r['padding_waste']:6.1%} {r['mfu']:6.1%} {r['peak_rss_mib']:7.0f}Mi {r['real_per_cpu_s']:14.1f}")
    ours = results["ours"]
    print()
    for other, target in (("trl", 2.0), ("trl-packed", 1.0)):
        ratio = ours["real_tps"] / results[other]["real_tps"]
        rss = ours["peak_rss_mib"] / results[other]["peak_rss_mib"]
        cpu_ratio = ours["real_per_cpu_s"] / results[other]["real_per_cpu_s"]
        print(f"ours / {other:10}: real tokens/s {ratio:5.2f}x (target >= {target:.1f}x: "
              f"{'met' if ratio >= target else 'MISSED'}; per CPU-second {cpu_ratio:5.2f}x), peak RSS {rss:5.2f}x "
              f"(target <= 1.0x: {'met' if rss <= 1.0 else 'MISSED'})")


if __name__ == "__main__":
    sys.exit(main())
