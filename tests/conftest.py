"""pytest glue: run trial-style tests the way trial runs them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _trial_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # trial's TestCase.mktemp() makes paths relative to the working directory, which trial
    # points at _trial_temp; do the same so tests never write into the checkout.
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(before)
