"""pytest glue: run trial-style tests the way trial runs them."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# CI runs on a shared machine: a slow draw there is the machine's load, not a bad strategy.
# (./run-tests.sh selects this profile; the default one stays strict for development.)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="session")
def _trial_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # trial's TestCase.mktemp() makes paths relative to the working directory, which trial
    # points at _trial_temp; do the same so tests never write into the checkout.
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True, scope="session")
def _scratch_directories_removed() -> Iterator[None]:
    """
    Every directory the tests make with C{tempfile.mkdtemp} (servers' data
    directories, etcd members, clusters: hundreds of MB a run) is removed
    when the run ends, unless C{K3STW_KEEP_TEST_DIRS} is set (to look at a
    failure's).  A directory with something still mounted under it is left
    alone and named: removing it would reach into the mount.
    """
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recorded(*args: Any, **kwargs: Any) -> Any:
        path = mkdtemp(*args, **kwargs)
        made.append(os.fsdecode(path))
        return path

    tempfile.mkdtemp = recorded
    try:
        yield
    finally:
        tempfile.mkdtemp = mkdtemp
    if os.environ.get("K3STW_KEEP_TEST_DIRS"):
        return
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for path in made:
        if any(m == path or m.startswith(path + "/") for m in mounts):
            print(f"\n{path} still has a mount under it: left in place", file=sys.stderr)
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
