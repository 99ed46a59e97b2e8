"""A training's lake folder is keyed by its range and its settings: two experiments on one range
never overwrite each other, and the same settings always land in the same folder."""
from __future__ import annotations

import copy
import datetime as dt

import yaml

from pipelines.core.config import load_params
from pipelines.core.lake import training_key, training_uri
from tests.conftest import REPO

START, END = dt.date(2026, 1, 1), dt.date(2026, 2, 28)


def _params(tmp_path, name: str, mutate=None):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    if mutate:
        mutate(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(data), sort_keys=False))
    return load_params(path)


def test_training_folder_is_the_range_and_the_key_of_its_settings(tmp_path):
    base = _params(tmp_path, "base")
    uri = training_uri(base, START, END)
    assert uri == base.storage.uri("training", run=f"2026-01-01_2026-02-28/{training_key(base)}")
    assert len(training_key(base)) == 12
    # the same settings (a re-run, another file, a key order of its own): the same folder
    again = _params(tmp_path, "again", lambda d: d.update(train=dict(reversed(list(d["train"].items())))))
    assert training_uri(again, START, END) == uri
    # settings that change the model or its evaluation: another folder, on the same range
    deeper = _params(tmp_path, "deeper", lambda d: d["train"]["search"].update(max_depth=[3]))
    later = _params(tmp_path, "later", lambda d: d["evaluate"].update(slice_min_positives=d["evaluate"]["slice_min_positives"] + 1))
    uris = {training_uri(p, START, END) for p in (base, deeper, later)}
    assert len(uris) == 3, uris
    # what does not shape a training (the nightly decisions) keeps the folder
    other = _params(tmp_path, "other", lambda d: d["decide"].update(review_capacity=d["decide"]["review_capacity"] + 1))
    assert training_uri(other, START, END) == uri
    # the range is in the folder too
    assert training_uri(base, START, END - dt.timedelta(days=1)) != uri
