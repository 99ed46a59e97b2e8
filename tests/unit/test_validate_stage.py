"""The validate stage on a lake of local files: where every canonical row passed, the validated partition
is the canonical file's bytes; otherwise the validated rows are written."""
from __future__ import annotations

import dataclasses
import datetime as dt

import polars as pl
import yaml

from pipelines import validate
from pipelines.core import lineage, storage
from pipelines.core.config import load_params
from tests.conftest import REPO
from tests.unit.test_features import small_world

DAY = dt.date(2026, 1, 5)
SUITE = {"name": "transactions", "expectations": [
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount"},
     "meta": {"severity": "block", "name": "not_null:amount"}}]}


def _validated(tmp_path, frame: pl.DataFrame):
    """frame published as the canonical partition of DAY, then validated: (the result, the lake's files)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["storage"]["lake"] = str(tmp_path / "lake")
    tmp_path.mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    store, vp = params.storage, dataclasses.replace(params.validate, max_quarantine_fraction=0.5, engine="polars")
    with storage.Publisher(str(tmp_path / "lake"), None) as pub:
        part = pub.partition(store.uri("canonical", dataset="transactions", date=DAY.isoformat()), "ingest")
        part.put_parquet(store.uri("canonical", dataset="transactions", date=DAY.isoformat()), frame)
        part.commit()
        results = validate.validate_partition("transactions", DAY, SUITE, vp, store, pub)
    uri = store.uri("validated", dataset="transactions", date=DAY.isoformat())
    return results, lineage.Reader().read_parquet(uri), uri, sorted(p.name for p in (tmp_path / "lake").rglob("*"))


def test_a_clean_day_publishes_the_canonical_bytes_and_a_bad_one_the_rows_that_passed(tmp_path):
    events = small_world(seed=5, n=300, days=1)[0].drop("category")
    results, got, uri, files = _validated(tmp_path / "clean", events)
    assert results["rows_validated"] == events.height and got.equals(events)
    canonical = uri.replace("/validated/", "/canonical/")
    assert storage.read_bytes(uri) == storage.read_bytes(canonical)         # the canonical file, copied
    rec = lineage.Reader().record(uri)
    assert rec["objects"][uri] == rec["inputs"][canonical]                   # its record says so: one sha256
    assert not [f for f in files if f.endswith(".tmp")]

    bad = events.with_columns(pl.when(pl.int_range(pl.len()) % 50 == 0).then(None).otherwise(pl.col("amount"))
                              .alias("amount"))
    results, got, uri, files = _validated(tmp_path / "bad", bad)
    assert results["rows_quarantined"] == 6 and got.equals(bad.filter(pl.col("amount").is_not_null()))
    assert not [f for f in files if f.endswith(".tmp")]                     # the staged file dropped

