"""Shared by the unit tests: the project's params and a lake of local files."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipelines.core.config import load_params
from tests.conftest import REPO

D = dt.date


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def local_lake(tmp_path, params):
    """The project's storage settings with the lake in a folder of this test."""
    return dataclasses.replace(params.storage, lake=str(tmp_path / "lake"))
