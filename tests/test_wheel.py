"""The built wheel stands alone: installed into a fresh virtualenv, `gad demo --preset tiny` runs from an empty folder.

The wheel is built from a copy of the sources (a stale ``build/`` folder cannot leak into it) and installed without
its dependencies, which the new environment borrows from this one as a plain path entry: nothing is downloaded, and
the repository's editable install is not on that path, so every file the demo reads must come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

from conftest import REPO


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command[:3]}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def test_the_wheel_runs_the_tiny_demo_from_an_empty_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(source)])  # fmt: skip
    (wheel,) = wheels.glob("gad-*.whl")

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)])
    new_site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    (new_site / "borrowed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GAD_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = _run([str(python), "-c", "import gad.resources, sys; print(gad.resources.__file__)"], cwd=empty, env=env)
    assert Path(where.stdout.strip()).is_relative_to(new_site)  # the wheel's copy, not the repository's
    demo = _run([str(env_dir / "bin" / "gad"), "demo", "--preset", "tiny", "--out", "out", "--quiet", "--threads", "1"],
                cwd=empty, env=env)  # fmt: skip
    assert "Report:" in demo.stdout
    assert (empty / "out" / "report.html").is_file() and (empty / "out" / "demo.json").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["out"]  # nothing written outside --out
