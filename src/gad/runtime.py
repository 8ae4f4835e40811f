"""Process-wide set-up shared by the CLI, the demo and the benchmarks: offline hubs, CPU threads, signals, quiet
libraries, and a record of the environment a figure was measured in."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import sys
from collections.abc import Mapping
from typing import Any

from gad.errors import GadError

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def offline() -> None:
    """Do not reach a model hub from this process nor from the processes it starts, unless the environment already
    says otherwise (an exported ``HF_HUB_OFFLINE=0`` is respected)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def pick_threads(value: str | int = "auto") -> int:
    """Threads for torch: ``auto`` = cores minus the 1-minute load average (rounded), at least 1."""
    cores = os.cpu_count() or 1
    if str(value) != "auto":
        try:
            threads = int(value)
        except ValueError:
            raise GadError(f"--threads must be a number or 'auto', got {value!r}") from None
        if threads < 1:
            raise GadError(f"--threads must be at least 1, got {threads}")
        return threads
    busy = (load_average() or [0.0])[0]
    return max(1, min(cores, cores - round(busy)))


def use_threads(threads: int) -> None:
    """Set the thread count here and, through the environment, in the processes started from here."""
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


LAUNCH_COMMANDS = (
    "on CPUs with `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N -m gad.cli train ...` (gloo), "
    "on GPUs with `accelerate launch --multi_gpu --num_processes N -m gad.cli train ...`"
)


def check_launch(num_processes: int, env: Mapping[str, str] | None = None) -> None:
    """Refuse a multi-process launch that accelerate runs as single processes, each training alone and all writing
    the same files. Two launches do that: torchrun or ``accelerate launch --multi_gpu`` on a machine without GPUs
    and without ``ACCELERATE_USE_CPU=1`` (``WORLD_SIZE`` > 1, yet accelerate sees one process), and
    ``accelerate launch --cpu --num_processes N``, whose launcher starts one process only (it sets ``MASTER_ADDR``
    for N > 1 but no ``WORLD_SIZE``). ``num_processes`` is what accelerate sees (``TrainingArguments.world_size``)."""
    env = os.environ if env is None else env
    if num_processes > 1:
        return
    world_size = int(env.get("WORLD_SIZE") or 1)
    if world_size > 1:
        raise GadError(
            f"WORLD_SIZE={world_size} but accelerate sees one process (without GPUs it needs ACCELERATE_USE_CPU=1), "
            f"so each process would train alone; launch {LAUNCH_COMMANDS}"
        )
    if "ACCELERATE_DYNAMO_BACKEND" in env and "MASTER_ADDR" in env and "WORLD_SIZE" not in env:
        raise GadError(
            f"`accelerate launch --cpu --num_processes N` starts one process only; launch {LAUNCH_COMMANDS} "
            "(or unset MASTER_ADDR to run one process on purpose)"
        )


def stop_on_sigterm() -> None:
    """``kill PID`` unwinds like Ctrl-C, so ``with`` blocks (a teacher server, a lock) are left cleanly."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def quiet_libraries() -> None:
    """No progress bars or INFO logs from the libraries underneath; gad's own phase lines stay."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("transformers", "trl", "gad", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets  # its map/filter bars ignore TQDM_DISABLE

    datasets.disable_progress_bars()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """What a measured figure depends on: machine, load, threads and library versions."""
    import importlib.metadata

    versions = {}
    for package in ("gad", "torch", "transformers", "trl", "accelerate", "peft"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    threads = device = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        threads = torch.get_num_threads()
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "device": device,
        "torch_threads": threads,
        "nice": os.nice(0),
        "load_average": load_average(),
        "versions": versions,
    }
