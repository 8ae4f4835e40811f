"""Throughput of `gad collect`: against a server with a fixed latency, and against a local model teacher.

Fixed latency (the default): the bound for a run is min(concurrency / latency, RPM / 60) requests per second; the goal
is at least 90 % of it. A sequential client (one request at a time, plain httpx) is the baseline. Each run goes
through the whole collection path (prompt file, SQLite cache with a commit per answer, output file), not just the HTTP
client.

    .venv/bin/python benchmarks/collect_throughput.py [--latency 0.2] [--out benchmarks/results/collect_throughput.json]

Local teacher (``--local MODEL``, e.g. ``smollm2``): answers per second of ``gad collect`` from ``gad serve-teacher``
over MODEL (40-token answers, temperature 0.7, through :class:`gad.serve.TeacherServer`), with batching at concurrency
1 and 8, and with ``--no-batching`` (transformers serve's one-request-at-a-time generation) at concurrency 8: the
serial rate. Both servers stay up and the three measurements take turns, round after round, so that a change in the
machine's load falls on all three alike. Goal: batching at concurrency 8 gives at least 3x the serial rate.

    nice .venv/bin/python benchmarks/collect_throughput.py --local smollm2 [--rounds 3]
        [--out benchmarks/results/collect_throughput_local.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import RESULTS, ROOT, goal, print_goals, write_result

from gad.collect import CollectConfig, collect

# The test suite's fault-injecting server, with no faults: a real HTTP server that answers after a fixed latency.
SERVER = ROOT / "tests" / "fault_server.py"

SCENARIOS = [
    {"name": "concurrency-bound", "concurrency": 16, "rpm": None, "requests": 400},
    {"name": "rpm-bound", "concurrency": 32, "rpm": 1800, "requests": 300},
]

# The local teacher's runs: name, batching, concurrency, requests per round (about the same time each).
LOCAL_RUNS = [("batched-c8", True, 8, 24), ("serial-c8", False, 8, 8), ("batched-c1", True, 1, 6)]
LOCAL_PARAMS = {"max_tokens": 40, "temperature": 0.7}
TOPICS = "the moon, bread, rivers, chess, volcanoes, bees, trains, glass, music, clouds, maps, salt, tides".split(", ")


def write_prompts(path: Path, count: int, tag: str) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            handle.write(json.dumps({"id": f"{tag}{number}", "prompt": f"{tag} question {number}"}) + "\n")
    return path


def write_questions(path: Path, count: int, tag: str) -> Path:
    """Real questions for a real model (answers longer than 40 tokens, so every answer costs the same)."""
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            topic = TOPICS[number % len(TOPICS)]
            prompt = f"Tell me about {topic}, in a few sentences. ({tag} {number})"
            handle.write(json.dumps({"id": f"{tag}{number}", "prompt": prompt}) + "\n")
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


def timed_collect(config: CollectConfig, expected: int) -> tuple[float, int]:
    """Seconds a collection run took, and the completion tokens it got; every prompt must be answered."""
    started = time.perf_counter()
    summary = collect(config)
    elapsed = time.perf_counter() - started
    assert summary.answered == expected, summary.format()
    return elapsed, summary.tokens_out


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
    elapsed, _tokens = timed_collect(config, scenario["requests"])
    achieved = scenario["requests"] / elapsed
    bounds = [scenario["concurrency"] / latency] + ([scenario["rpm"] / 60] if scenario["rpm"] else [])
    bound = min(bounds)
    return {
        **scenario,
        "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(achieved, 2),
        "bound_rps": round(bound, 2),
        "fraction_of_bound": round(achieved / bound, 4),
    }


def latency_benchmark(args: argparse.Namespace) -> int:
    results = []
    tmp = tempfile.mkdtemp(prefix="gad-bench-")
    # The server runs in its own process so that it does not share the client's interpreter lock.
    server = subprocess.Popen([sys.executable, str(SERVER), str(args.latency), "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
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
    print(f"sequential client: {round(baseline, 2)} req/s")
    worst = min(result["fraction_of_bound"] for result in results)
    goals = {
        "fraction_of_bound": goal(worst, worst >= 0.9, "every scenario >= 90% of min(concurrency / latency, RPM / 60)")
    }
    print_goals(goals)
    result = {"goals": goals, "latency_s": args.latency, "sequential_rps": round(baseline, 2), "scenarios": results}
    write_result(args.out or RESULTS / "collect_throughput.json", "collect_throughput", result)
    return 0 if all(entry["met"] for entry in goals.values()) else 1


def local_config(folder: Path, tag: str, base_url: str, concurrency: int, requests: int) -> CollectConfig:
    """A collection of ``requests`` questions from a local teacher, keeping every answer (only the rate counts)."""
    return CollectConfig(
        prompts=write_questions(folder / f"{tag}.jsonl", requests, tag),
        out=folder / f"{tag}-out.jsonl",
        model="teacher",
        base_url=base_url,
        concurrency=concurrency,
        drop_truncated=False,
        drop_empty=False,
        refusal_regex=None,
        progress=False,
        **LOCAL_PARAMS,
    )


def local_benchmark(args: argparse.Namespace) -> int:
    from gad.serve import TeacherServer

    folder = Path(tempfile.mkdtemp(prefix="gad-bench-local-"))
    totals = {name: {"answers": 0, "seconds": 0.0, "tokens": 0} for name, *_ in LOCAL_RUNS}
    servers = {
        batching: TeacherServer(args.local, batching=batching, log_path=folder / f"server-batching-{batching}.log")
        for batching in (True, False)
    }
    try:
        for batching, server in servers.items():
            server.start()
            # Not measured: the first generations of a fresh process are slower (allocator, kernel selection).
            timed_collect(local_config(folder, f"warmup-{batching}", server.base_url, 8, 8), 8)
        for round_number in range(args.rounds):
            for name, batching, concurrency, requests in LOCAL_RUNS:
                config = local_config(
                    folder, f"{name}-r{round_number}", servers[batching].base_url, concurrency, requests
                )
                seconds, tokens = timed_collect(config, requests)
                totals[name]["answers"] += requests
                totals[name]["seconds"] += seconds
                totals[name]["tokens"] += tokens
                print(f"round {round_number + 1} {name}: {requests / seconds:.2f} answers/s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    runs = {
        name: {
            "batching": batching,
            "concurrency": concurrency,
            **totals[name],
            "seconds": round(totals[name]["seconds"], 2),
            "answers_per_s": round(totals[name]["answers"] / totals[name]["seconds"], 3),
            "tokens_per_s": round(totals[name]["tokens"] / totals[name]["seconds"], 1),
        }
        for name, batching, concurrency, _requests in LOCAL_RUNS
    }
    speedup = runs["batched-c8"]["answers_per_s"] / runs["serial-c8"]["answers_per_s"]
    goals = {
        "batched_c8_vs_serial": goal(
            round(speedup, 2), speedup >= 3.0, "answers/s with batching at concurrency 8 >= 3x the serial rate"
        )
    }
    for name, run in runs.items():
        print(f"{name}: {run['answers_per_s']} answers/s, {run['tokens_per_s']} tokens/s")
    print_goals(goals)
    result = {"goals": goals, "model": args.local, "params": LOCAL_PARAMS, "rounds": args.rounds, "runs": runs}
    write_result(
        args.out or RESULTS / "collect_throughput_local.json",
        "collect_throughput_local",
        result,
        script="collect_throughput",
    )
    return 0 if all(entry["met"] for entry in goals.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request in seconds")
    parser.add_argument("--sequential-requests", type=int, default=20)
    parser.add_argument("--local", metavar="MODEL", default=None, help="measure a local teacher over MODEL instead")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the local runs (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default under benchmarks/results)")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return local_benchmark(args) if args.local else latency_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
