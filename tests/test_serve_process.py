"""TeacherServer's process hygiene: one process per server, the whole group stopped, nothing left behind by a parent
that is interrupted, killed or forgets to stop; and the real server exits promptly on SIGTERM mid-generation.

Most tests run a stand-in server (a plain HTTP /health answering script with a grandchild that ignores SIGTERM), which
starts in a fraction of a second and has something in its group for the stop to find; the SIGTERM and parent-kill
tests run the real `python -m gad.serve` over the tiny model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from gad.errors import GadError
from gad.serve import TeacherServer

REPO = Path(__file__).resolve().parent.parent

FAKE_SERVER = """
import http.server, subprocess, sys

# A grandchild in the server's process group that ignores SIGTERM: only the group-wide SIGKILL ends it.
subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "time.sleep(600)"])


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""

# Run by a parent script: a TeacherServer subclass that starts the stand-in instead of the real server.
FAKE_CLASS = """
import sys
from gad.serve import TeacherServer


class FakeTeacherServer(TeacherServer):
    def command(self):
        return [sys.executable, {script!r}, str(self.port)]
"""


@pytest.fixture
def fake_script(tmp_path) -> Path:
    script = tmp_path / "fake_teacher.py"
    script.write_text(FAKE_SERVER)
    return script


@pytest.fixture
def fake_server(fake_script, tiny_model_dir):
    """A FakeTeacherServer class bound to the stand-in script, and the model folder it is given."""
    namespace: dict = {}
    exec(FAKE_CLASS.format(script=str(fake_script)), namespace)
    return lambda **kwargs: namespace["FakeTeacherServer"](tiny_model_dir, **kwargs)


def group(pid: int) -> list[psutil.Process]:
    """The live processes of the process group that ``pid`` leads."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def gone_within(pid: int, seconds: float) -> bool:
    """Whether the process group led by ``pid`` has no live member within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not group(pid):
            return True
        time.sleep(0.1)
    return False


def run_parent(tmp_path: Path, body: str, fake_script: Path | None = None) -> tuple[subprocess.Popen, int]:
    """Start a parent script that starts a server and prints its pid; return the parent and the server's pid."""
    prelude = FAKE_CLASS.format(script=str(fake_script)) if fake_script else ""
    script = tmp_path / "parent.py"
    script.write_text(prelude + textwrap.dedent(body))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"the parent script printed {line!r}"
    return parent, int(line)


def test_start_twice_and_with_after_start_use_one_process(fake_server):
    server = fake_server()
    first = server.start().pid
    assert server.start().pid == first
    with server as same:
        assert same is server and server.pid == first
        assert len(group(first)) == 2  # the stand-in and its grandchild, once
    assert not server.running
    assert gone_within(first, 3)
    server.stop()  # again: harmless


def test_stop_kills_the_whole_group_even_a_child_that_ignores_sigterm(fake_server):
    server = fake_server().start()
    members = group(server.pid)
    assert len(members) == 2
    server.stop(grace=2)
    _gone, alive = psutil.wait_procs(members, timeout=3)
    assert not alive


def test_an_exception_inside_with_stops_the_server(fake_server):
    server = fake_server()
    with pytest.raises(RuntimeError, match="boom"), server:
        pid = server.pid
        raise RuntimeError("boom")
    assert not server.running and gone_within(pid, 3)


def test_a_stopped_server_leaves_no_temporary_log_and_a_failed_start_keeps_it(fake_server, tiny_model_dir):
    server = fake_server()
    with server:
        log = server.log_path
        assert log.exists()
    assert not log.exists() and server.log_path is None

    class CrashingServer(TeacherServer):
        def command(self):
            return [sys.executable, "-c", "import sys; print('no model here', flush=True); sys.exit(3)"]

    crashing = CrashingServer(tiny_model_dir)
    with pytest.raises(GadError, match="exited with status 3: no model here") as failure:
        crashing.start()
    log = crashing.log_path
    try:
        assert str(log) in str(failure.value) and "no model here" in log.read_text()
    finally:
        log.unlink()

    class StuckServer(TeacherServer):
        def command(self):
            return [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(60)"]

    stuck = StuckServer(tiny_model_dir, startup_timeout=3)
    with pytest.raises(GadError, match="did not answer .* within 3 s: still loading") as failure:
        stuck.start()
    log = stuck.log_path
    try:
        assert not stuck.running and str(log) in str(failure.value) and "still loading" in log.read_text()
    finally:
        log.unlink()


@pytest.mark.parametrize("use_with", [True, False], ids=["with", "start-only"])
def test_a_parent_stopped_by_sigterm_leaves_no_server(tmp_path, fake_script, tiny_model_dir, use_with):
    with_block, plain = "with FakeTeacherServer(MODEL) as server:\n    ", "server = FakeTeacherServer(MODEL).start()\n"
    start = with_block if use_with else plain
    body = f"""
from gad.runtime import stop_on_sigterm
import time
MODEL = {str(tiny_model_dir)!r}
stop_on_sigterm()
{start}print(server.pid, flush=True); time.sleep(600)
"""
    parent, pid = run_parent(tmp_path, body, fake_script)
    assert len(group(pid)) == 2
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=10)
    assert gone_within(pid, 5)


def test_atexit_stops_a_server_that_was_never_stopped(tmp_path, fake_script, tiny_model_dir):
    # No reference is kept: the atexit fallback must hold one itself.
    body = f"""
print(FakeTeacherServer({str(tiny_model_dir)!r}).start().pid, flush=True)
"""
    parent, pid = run_parent(tmp_path, body, fake_script)
    assert parent.wait(timeout=15) == 0
    assert gone_within(pid, 5)


def test_the_real_server_exits_within_a_second_of_sigterm_while_generating(tiny_model_dir):
    server = TeacherServer(tiny_model_dir, startup_timeout=120).start()
    try:
        answered: list = []

        def long_request() -> None:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "temperature": 0}
            try:
                answered.append(httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60))
            except httpx.HTTPError as error:
                answered.append(error)

        client = threading.Thread(target=long_request, daemon=True)
        client.start()
        time.sleep(1.0)
        assert not answered, "the request finished before SIGTERM; it must be longer for this test to mean anything"
        signalled = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)
        while server.running and time.monotonic() - signalled < 10:
            time.sleep(0.02)
        elapsed = time.monotonic() - signalled
        assert elapsed < 2.0, f"the server took {elapsed:.1f} s to exit after SIGTERM"
        client.join(timeout=10)
    finally:
        server.stop()


def test_a_parent_killed_outright_leaves_no_server(tmp_path, tiny_model_dir):
    body = f"""
import time
from gad.serve import TeacherServer
server = TeacherServer({str(tiny_model_dir)!r}, startup_timeout=120, log_path={str(tmp_path / "server.log")!r}).start()
print(server.pid, flush=True)
time.sleep(600)
"""
    parent, pid = run_parent(tmp_path, body)  # its own log: a parent killed outright cannot remove a temporary one
    parent.kill()  # no atexit, no signal handler: only the server's own parent watch can notice
    parent.wait(timeout=10)
    assert gone_within(pid, 6)


def test_the_session_guard_fails_a_session_that_leaves_a_process_behind(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_leak.py").write_text(
        "import subprocess\n\n\ndef test_leaks():\n    subprocess.Popen(['sleep', '300'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_leak.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "still running" in result.stdout and "sleep 300" in result.stdout
