"""Throughput of `gad collect` against a local server with a fixed latency.

The bound for a run is min(concurrency / latency, RPM / 60) requests per second; the goal is at least 90 % of it. A
sequential client (one request at a time, plain httpx) is the baseline. Each run goes through the whole collection
path (prompt file, SQLite cache with a commit per answer, output file), not just the HTTP client.

    .venv/bin/python benchmarks/collect_throughput.py [--latency 0.2] [--out benchmarks/results/collect_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from gad.collect import CollectConfig, collect

ROOT = Path(__file__).resolve().parents[1]
# The test suite's fault-injecting server, with no faults: a real HTTP server that answers after a fixed latency.
SERVER = ROOT / "tests" / "fault_server.py"

SCENARIOS = [
    {"name": "concurrency-bound", "concurrency": 16, "rpm": None, "requests": 400},
    {"name": "rpm-bound", "concurrency": 32, "rpm": 1800, "requests": 300},
]


def write_prompts(path: Path, count: int, tag: str) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            handle.write(json.dumps({"id": f"{tag}{number}", "prompt": f"{tag} question {number}"}) + "\n")
    return path


def sequential(url: str, count: int) -> float:
    """Requests per second of a one-at-a-time client."""
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        for number in range(count):
            response = client.post(
                f"{url}/chat/completions",
                json={"model": "bench", "messages": [{"role": "user", "content": f"sequential {number}"}]},
            )
            response.raise_for_status()
        return count / (time.perf_counter() - started)


def run_scenario(url: str, folder: Path, scenario: dict, latency: float) -> dict:
    prompts = write_prompts(folder / f"{scenario['name']}.jsonl", scenario["requests"], scenario["name"])
    config = CollectConfig(
        prompts=prompts,
        out=folder / f"{scenario['name']}-out.jsonl",
        model="bench",
        base_url=url,
        concurrency=scenario["concurrency"],
        rpm=scenario["rpm"],
        progress=False,
    )
    started = time.perf_counter()
    summary = collect(config)
    elapsed = time.perf_counter() - started
    assert summary.answered == scenario["requests"], summary.format()
    achieved = summary.answered / elapsed
    bounds = [scenario["concurrency"] / latency] + ([scenario["rpm"] / 60] if scenario["rpm"] else [])
    bound = min(bounds)
    return {
        **scenario,
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(achieved, 2),
        "bound_rps": round(bound, 2),
        "fraction_of_bound": round(achieved / bound, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request in seconds")
    parser.add_argument("--sequential-requests", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "collect_throughput.json")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results = []
    # The server runs in its own process so that it does not share the client's interpreter lock.
    server = subprocess.Popen([sys.executable, str(SERVER), str(args.latency), "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        tmp = tempfile.mkdtemp(prefix="gad-bench-")
        baseline = sequential(url, args.sequential_requests)
        for scenario in SCENARIOS:
            result = run_scenario(url, Path(tmp), scenario, args.latency)
            result["speedup_vs_sequential"] = round(result["achieved_rps"] / baseline, 2)
            results.append(result)
            print(
                f"{result['name']}: {result['achieved_rps']} req/s = {result['fraction_of_bound']:.1%} of the bound "
                f"{result['bound_rps']} req/s; {result['speedup_vs_sequential']}x the sequential client"
            )
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    report = {
        "benchmark": "collect_throughput",
        "command": " ".join(["python benchmarks/collect_throughput.py", *sys.argv[1:]]),
        "latency_s": args.latency,
        "sequential_rps": round(baseline, 2),
        "scenarios": results,
        "goal": "achieved >= 90% of min(concurrency / latency, RPM / 60)",
        "goal_met": all(result["fraction_of_bound"] >= 0.9 for result in results),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"sequential client: {report['sequential_rps']} req/s; goal met: {report['goal_met']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if report["goal_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
