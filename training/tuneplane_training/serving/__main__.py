"""``python -m tuneplane_training.serving``: run the local inference server for one base model.

Example::

    python -m tuneplane_training.serving --base-model SmolLM2-135M-Instruct --port 8501 \\
        --adapters-dir ./deployments/SmolLM2-135M-Instruct

Every sub-folder of ``--adapters-dir`` holding an adapter_config.json is registered under the
folder's name; more come and go at runtime through ``POST /adapters`` and ``DELETE /adapters/NAME``.
The server listens only once the base model is loaded, so a 200 from ``GET /health`` means ready.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tuneplane_training.serving.errors import ServingError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tuneplane_training.serving", description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", required=True, help="catalog name, model folder, or Hugging Face id")
    parser.add_argument("--served-name", help="the model name of the base itself (default: --base-model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--adapters-dir", type=Path, help="register every adapter folder found here at start")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help="register one adapter")
    parser.add_argument("--max-loaded-adapters", type=int, default=8, help="adapters kept in memory (LRU)")
    parser.add_argument("--max-tokens", type=int, default=512, help="default max_tokens of a request")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def adapters_to_register(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = []
    if args.adapters_dir is not None:
        if not args.adapters_dir.is_dir():
            raise SystemExit(f"--adapters-dir: {args.adapters_dir} is not a folder")
        for folder in sorted(args.adapters_dir.iterdir()):
            if (folder / "adapter_config.json").is_file():
                pairs.append((folder.name, str(folder)))
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--adapter: expected NAME=PATH, got {item!r}")
        pairs.append((name, path))
    return pairs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    pairs = adapters_to_register(args)

    import uvicorn

    from tuneplane_training.serving.core import ScoringCore
    from tuneplane_training.serving.server import create_app

    core = ScoringCore(
        args.base_model,
        served_name=args.served_name,
        max_loaded_adapters=args.max_loaded_adapters,
        default_max_tokens=args.max_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    for name, path in pairs:
        try:
            core.register_adapter(name, path)
        except ServingError as exc:
            sys.exit(f"adapter {name!r}: {exc.message}")
    uvicorn.run(create_app(core), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
