"""pytest glue: run trial-style tests the way trial runs them."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
