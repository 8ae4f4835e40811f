"""TeacherServer: ``gad serve-teacher`` in a child process that never outlives the process that started it.

The server runs in its own process group, so stopping it stops everything it started. It is stopped (SIGTERM to the
group, then SIGKILL after a grace period) when the ``with`` block ends, normally or by an exception, when the parent
is interrupted (SIGINT, or SIGTERM through :func:`gad.runtime.stop_on_sigterm`), and at interpreter exit as a last
resort (:mod:`atexit`, also for a server started and never stopped). A parent killed outright (SIGKILL), which runs
none of that, is noticed by the server itself (``--parent-pid``), which then exits within a couple of seconds.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gad.errors import GadError
from gad.serve.server import LOOPBACK_HOSTS, model_folder

# Servers started by this process and not yet stopped: the atexit fallback stops them. Strong references: a server
# whose TeacherServer object was dropped without stop() still runs, and must still be stopped.
_RUNNING: set[TeacherServer] = set()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class TeacherServer:
    """Run ``gad serve-teacher`` in a subprocess; ``with TeacherServer(folder) as server: server.base_url``.

    ``port=0`` picks a free port. ``start()`` returns once ``/health`` answers (the model is loaded by then) and
    raises :class:`GadError` with the server's last log lines if it exits or does not come up within
    ``startup_timeout`` seconds. ``base_url`` ends in ``/v1``, ready for :class:`gad.collect.ChatClient`.
    ``batching=False`` generates one request at a time (``--no-batching``); ``threads`` sets torch's thread count.
    Without ``log_path`` the server logs to a temporary file, removed on stop unless a failed start's error named it.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        system: str | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        api_key_env: str | None = None,
        device: str = "cpu",
        seed: int | None = None,
        batching: bool = True,
        threads: int | None = None,
        startup_timeout: float = 300.0,
        log_path: str | Path | None = None,
    ):
        self.model, self.system, self.host, self.device, self.seed = model, system, host, device, seed
        self.batching, self.threads = batching, threads
        self.port = port or free_port(host if host in LOOPBACK_HOSTS else "127.0.0.1")
        self.api_key_env, self.startup_timeout = api_key_env, startup_timeout
        self.log_path = Path(log_path) if log_path else None
        self._process: subprocess.Popen | None = None
        self._model_id: str | None = None
        self._log_handle: Any = None
        self._temporary_log = False  # a log file this object made up, to be removed on stop

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (``python -m gad.serve ...``)."""
        command = [
            sys.executable,
            "-m",
            "gad.serve",
            self._model_id or str(self.model),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--device",
            self.device,
            "--batching" if self.batching else "--no-batching",
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.system:
            command += ["--system", self.system]
        if self.api_key_env:
            command += ["--api-key-env", self.api_key_env]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        return command

    def start(self) -> TeacherServer:
        """Start the server and wait until it answers; a server already running is returned as it is."""
        if self.running:
            return self
        self.stop()  # a server that exited by itself: close its log and clear its group before starting anew
        # Resolve (build a builtin model, convert a GGUF) here: a bad path fails with one line, not in the subprocess.
        self._model_id = model_folder(self.model)
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="gad-teacher-", suffix=".log")
            os.close(handle)
            self.log_path, self._temporary_log = Path(name), True
        self._log_handle = self.log_path.open("wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._process = subprocess.Popen(
            self.command(), stdout=self._log_handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        _RUNNING.add(self)
        try:
            self._wait_until_up()
        except BaseException:  # a failed start, or Ctrl-C while the model loads: leave nothing behind
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        import httpx

        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        health = self.base_url.removesuffix("/v1") + "/health"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self._start_failed(f"exited with status {self._process.returncode}")
            try:
                if httpx.get(health, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise self._start_failed(f"did not answer on {health} within {self.startup_timeout:g} s")

    def _start_failed(self, what: str) -> GadError:
        self._temporary_log = False  # the error names the log: it is the user's to read, stop() keeps it
        return GadError(f"the teacher server {what}: {self.log_tail()} (its log: {self.log_path})")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds; safe to call more than once."""
        process = self._process
        if process is not None and self in _RUNNING:  # once stopped, its pid (and group id) may be reused: hands off
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            _signal_group(process.pid, signal.SIGKILL)  # anything the server left in its group
        _RUNNING.discard(self)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
            if self._temporary_log:  # nothing left in /tmp unless an error message named the file
                self.log_path.unlink(missing_ok=True)
                self.log_path, self._temporary_log = None, False

    def __enter__(self) -> TeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the server leads its own group (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(grace=2.0)
