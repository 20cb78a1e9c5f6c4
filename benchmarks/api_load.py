"""Load benchmark for the control plane: job retrieve and job list under concurrent clients, and
the cost of a list page with 100,000 stored jobs versus 100.

    python benchmarks/api_load.py [--clients 32] [--seconds 10] [--big 100000]

It seeds a fresh data directory through the JobStore port, starts the real server (uvicorn, one
process) on a free loopback port, and drives it with a minimal asyncio HTTP/1.1 keep-alive client:
on two shared cores the load generator competes with the server for CPU, so it must be cheap.
Targets (issue 2): retrieve >= 1,000 req/s with p99 <= 50 ms at 32 clients; a list page at 100,000
jobs costs at most 2x a page at 100 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "tp-benchmark-key"


def seed(home: Path, big: int, small: int) -> dict[str, list[str]]:
    from tuneplane.domain.ids import new_id
    from tuneplane.domain.records import JobRecord
    from tuneplane.services.keys import ensure_key
    from tuneplane.settings import Settings
    from tuneplane.wiring import build_adapters

    adapters = build_adapters(Settings(home=home))
    ensure_key(adapters.keys, "small", KEY, name="benchmark")
    ensure_key(adapters.keys, "big", KEY + "-big", name="benchmark")
    ids: dict[str, list[str]] = {"small": [], "big": []}
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0}}}
    for project, count in (("big", big), ("small", small)):
        for i in range(count):
            job = JobRecord(
                id=new_id("ftjob"), project=project, created_at=1_700_000_000 + i, status="queued", model="SmolLM2-135M-Instruct",
                training_file="file-0000000000000000000000", seed=i, method=method, metadata={"i": str(i % 10)},
                peft={"type": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
            )
            adapters.jobs.create_job(job)
            ids[project].append(job.id)
    adapters.close()
    return ids


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for our own server's responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def request_bytes(path: str, key: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\n\r\n".encode()


async def drive(port: int, requests: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def client(conn: Connection, offset: int):
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            req = requests[i % len(requests)]
            i += 7
            t0 = time.perf_counter()
            status = await conn.get(req)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors += 1

    conns = [await Connection.open(port) for _ in range(clients)]
    for conn in conns:  # warm up: connection setup, key cache, SQLite page cache
        for _ in range(20):
            await conn.get(requests[0])
    start = time.perf_counter()
    stop_at = start + seconds
    await asyncio.gather(*(client(c, n) for n, c in enumerate(conns)))
    elapsed = time.perf_counter() - start
    for conn in conns:
        conn.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


async def page_costs(port: int, series: dict[str, tuple[str, list[str]]], rounds: int) -> dict[str, float]:
    """Median latency (ms) of one list page per series, one request at a time. The series take
    turns request by request, so a burst of load from elsewhere hits them all alike."""
    conns = {name: await Connection.open(port) for name in series}
    samples: dict[str, list[float]] = {name: [] for name in series}
    for r in range(rounds + 20):
        for name, (key, paths) in series.items():
            req = request_bytes(paths[r % len(paths)], key)
            t0 = time.perf_counter()
            assert await conns[name].get(req) == 200
            if r >= 20:  # the first rounds warm caches up
                samples[name].append(time.perf_counter() - t0)
    for conn in conns.values():
        conn.close()
    return {name: 1000 * statistics.median(values) for name, values in samples.items()}


def store_page_cost(home: Path, project: str, cursors: list[str | None], rounds: int) -> float:
    """Median time (ms) of JobStore.list_jobs for one page, in process: the query alone."""
    from tuneplane.settings import Settings
    from tuneplane.wiring import build_adapters

    adapters = build_adapters(Settings(home=home))
    samples = []
    for r in range(rounds):
        t0 = time.perf_counter()
        adapters.jobs.list_jobs(project, limit=20, after=cursors[r % len(cursors)])
        samples.append(time.perf_counter() - t0)
    adapters.close()
    return 1000 * statistics.median(samples)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_phase(port: int, server_pid: int, requests: list[bytes], clients: int, seconds: float) -> dict:
    """Run one load phase and add what it cost in CPU: on a shared machine wall-clock throughput
    depends on the neighbours, CPU per request does not."""
    server_before, client_before = cpu_seconds(server_pid), time.process_time()
    result = asyncio.run(drive(port, requests, clients, seconds))
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_before, time.process_time() - client_before
    result["server_cpu_us_per_req"] = 1e6 * server_cpu / result["requests"]
    result["client_cpu_us_per_req"] = 1e6 * client_cpu / result["requests"]
    # Includes the warm-up requests and connection setup, so this slightly overstates the cost.
    result["server_capacity_req_per_core_s"] = 1e6 / result["server_cpu_us_per_req"]
    return result


def start_server(home: Path, port: int) -> subprocess.Popen:
    # The reconciler stays off: the seeded jobs are data to read, not work to run.
    env = os.environ | {"TUNEPLANE_HOME": str(home), "TUNEPLANE_KEY_CACHE_SECONDS": "5", "TUNEPLANE_RECONCILER": "false"}
    env.pop("TUNEPLANE_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tuneplane.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log", "--loop", "uvloop", "--http", "httptools"],
        env=env, cwd=ROOT,
    )
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--big", type=int, default=100_000, help="jobs stored in the large project")
    parser.add_argument("--small", type=int, default=100, help="jobs stored in the small project")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    args = parser.parse_args()

    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-") as tmp:
        home = Path(tmp)
        t0 = time.perf_counter()
        ids = seed(home, args.big, args.small)
        seeded = time.perf_counter() - t0
        port = free_port()
        server = start_server(home, port)
        try:
            sample = random.Random(0).sample(ids["small"], min(50, len(ids["small"])))
            retrieve = [request_bytes(f"/v1/fine_tuning/jobs/{i}", KEY) for i in sample]
            listing = [request_bytes("/v1/fine_tuning/jobs?limit=20", KEY)]
            load_before = os.getloadavg()[0]
            results = {
                "retrieve": load_phase(port, server.pid, retrieve, args.clients, args.seconds),
                "list": load_phase(port, server.pid, listing, args.clients, args.seconds),
            }
            load_after = os.getloadavg()[0]
            # Page cost: first pages and pages deep inside the big project, against the small one.
            big_cursors = [None] + [ids["big"][j] for j in (len(ids["big"]) // 2, len(ids["big"]) // 10, 25)]
            small_cursors = [None, ids["small"][len(ids["small"]) // 2]]
            to_path = lambda c: "/v1/fine_tuning/jobs?limit=20" + (f"&after={c}" if c else "")  # noqa: E731
            costs = asyncio.run(
                page_costs(
                    port,
                    {"small": (KEY, [to_path(c) for c in small_cursors]), "big": (KEY + "-big", [to_path(c) for c in big_cursors])},
                    500,
                )
            )
            http_small, http_big = costs["small"], costs["big"]
        finally:
            server.terminate()
            server.wait(timeout=30)
        store_small = store_page_cost(home, "small", small_cursors, 2000)
        store_big = store_page_cost(home, "big", big_cursors, 2000)

    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "seed_seconds": round(seeded, 1),
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        **{f"{name}_{k}": round(v, 2) for name, r in results.items() for k, v in r.items()},
        f"list_page_ms_at_{args.small}_jobs": round(http_small, 3),
        f"list_page_ms_at_{args.big}_jobs": round(http_big, 3),
        "list_page_ratio_http": round(http_big / http_small, 2),
        "store_page_ms_small": round(store_small, 4),
        "store_page_ms_big": round(store_big, 4),
        "list_page_ratio_store": round(store_big / store_small, 2),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"tuneplane API load: {args.clients} clients x {args.seconds:g} s, one uvicorn process (seeded in {seeded:.1f} s)")
    print(
        f"  machine: {os.cpu_count()} CPUs, 1-minute load average {load_before:.1f} before / {load_after:.1f} after"
        " (anything above the CPU count means other processes took part of the CPU)"
    )
    for name, r in results.items():
        print(
            f"  {name:8s}  {r['req_per_s']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   p99 {r['p99_ms']:6.2f} ms"
            f"   ({r['requests']} requests, {r['errors']} errors)"
        )
        print(
            f"            server CPU {r['server_cpu_us_per_req']:.0f} us/request (= {r['server_capacity_req_per_core_s']:.0f} req/s"
            f" per free core), load generator CPU {r['client_cpu_us_per_req']:.0f} us/request"
        )
    print(
        f"  list page (limit 20), one client: {http_small:.2f} ms at {args.small} jobs, {http_big:.2f} ms at {args.big} jobs"
        f"  -> ratio {http_big / http_small:.2f}x"
    )
    print(
        f"  JobStore.list_jobs page alone:    {store_small:.3f} ms at {args.small} jobs, {store_big:.3f} ms at {args.big} jobs"
        f"  -> ratio {store_big / store_small:.2f}x"
    )
    ok = (
        results["retrieve"]["req_per_s"] >= 1000
        and results["retrieve"]["p99_ms"] <= 50
        and http_big / http_small <= 2
        and results["retrieve"]["errors"] == 0
        and results["list"]["errors"] == 0
    )
    print("  targets (>=1000 req/s retrieve, p99 <= 50 ms, page ratio <= 2x):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
