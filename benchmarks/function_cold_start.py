"""Cold start of the Function App: what a fresh Python worker pays before it can answer.

    .venv/bin/python benchmarks/function_cold_start.py [--runs 7] [--json results.json]

Each run is a fresh interpreter (as a new worker is) over an empty TUNEPLANE_HOME, and measures:
- ``import``: ``import function_app``, what the host does to index the functions (target <= 0.5 s);
- ``first_response``: from there to the answer of a first ``GET /health`` through the ASGI function
  with a ``func.HttpRequest``: building the FastAPI app, the stores and the lifespan startup;
- the heavy modules loaded by then (torch, transformers, peft, azure.ai.ml): must be none.

Wall time depends on how busy the machine is, so CPU time is printed beside it; the figure for the
target is the median wall time of the import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_IMPORT_SECONDS = 0.5

PROBE = r"""
import asyncio, json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
import function_app
w1, c1 = time.perf_counter(), time.process_time()
import azure.functions as func
handler = next(f for f in function_app.app.get_functions() if f.get_function_name() == "http_app_func")
request = func.HttpRequest("GET", "http://localhost/health", headers={}, body=b"")
response = asyncio.run(handler.get_user_function()(request, None))
w2, c2 = time.perf_counter(), time.process_time()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft") or m.startswith("azure.ai.ml"))
print(json.dumps({"import_wall": w1 - w0, "import_cpu": c1 - c0, "first_response_wall": w2 - w1,
                  "first_response_cpu": c2 - c1, "status": response.status_code, "heavy": heavy}))
"""


def run_once(home: Path) -> dict:
    env = {**os.environ, "TUNEPLANE_HOME": str(home), "TUNEPLANE_INBOX_SCAN_SECONDS": "0", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT / "functions", env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tp-cold-") as home:
            runs.append(run_once(Path(home)))
    figures = {}
    for key in ("import_wall", "import_cpu", "first_response_wall", "first_response_cpu"):
        values = [r[key] for r in runs]
        figures[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    figures["heavy_modules"] = sorted({m for r in runs for m in r["heavy"]})
    figures["statuses"] = sorted({r["status"] for r in runs})
    print(f"function_app cold start over {args.runs} fresh interpreters (seconds: median [min, max])")
    for key in ("import_wall", "import_cpu", "first_response_wall", "first_response_cpu"):
        f = figures[key]
        print(f"  {key:<20} {f['median']:.3f} [{f['min']:.3f}, {f['max']:.3f}]")
    print(f"  heavy modules loaded: {figures['heavy_modules'] or 'none'}; /health status {figures['statuses']}")
    ok = figures["import_wall"]["median"] <= TARGET_IMPORT_SECONDS and not figures["heavy_modules"]
    print(f"  target: import <= {TARGET_IMPORT_SECONDS} s and no heavy module: {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
