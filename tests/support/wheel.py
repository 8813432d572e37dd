"""The wheel an appliance image installs, built from this checkout, and virtualenvs holding it."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
NOT_SOURCE = (".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp")


def build_wheel(work: Path) -> Path:
    """Build k3stw's wheel from a clean copy of the checkout under C{work}; its path."""
    # A clean copy: setuptools would otherwise reuse a stale build/ of the checkout.
    source = work / "source"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(work / "dist"), str(source)],
        check=True, capture_output=True, cwd=work, timeout=300,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("k3stw-*.whl")
    return wheel


def install_wheel(wheel: Path, python: Path) -> Path:
    """
    Install C{wheel} alone into the fresh virtualenv of C{python}, with this
    environment's packages behind its own (a plain path in a ``.pth``: the
    parent's own ``.pth`` files, an editable checkout's among them, are not
    processed), offline.  The virtualenv's site-packages.
    """
    venv = python.parent.parent
    child_site = next((venv / "lib").glob("python*/site-packages"))
    (child_site / "parent-environment.pth").write_text("\n".join(site.getsitepackages()))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", "--force-reinstall", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return child_site
