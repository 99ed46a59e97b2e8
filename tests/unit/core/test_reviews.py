"""Reviewers' overrides: each verdict an object of its own (two reviewers at once both count), read
with an older day's table, the latest per event winning; and the decide CLI's subcommands."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import polars as pl
import pytest

from pipelines.core import storage
from pipelines.core.reviews import (OVERRIDE_SCHEMA, add_override, has_overrides, latest_overrides,
                                    override_objects, read_overrides)
from tests.unit.conftest import local_lake

D = dt.date(2026, 3, 10)
T0 = dt.datetime(2026, 3, 11, 9, 0, tzinfo=dt.timezone.utc)


def test_reviewers_recording_at_the_same_moment_all_count(tmp_path, params):
    """add_override never reads the day's verdicts before it writes: eight reviewers released at once
    (a barrier, as eight processes would) leave eight verdicts, none lost."""
    store = local_lake(tmp_path, params)
    gate = threading.Barrier(8)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            gate.wait(timeout=30)
            add_override(store, D, f"e{i}", "block", f"r{i}", "", T0)
        except BaseException as exc:          # noqa: BLE001 (raised below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    got = read_overrides(store, D)
    assert sorted(zip(got["event_id"], got["reviewer"])) == sorted((f"e{i}", f"r{i}") for i in range(8))
    assert len(override_objects(store, D)) == 8 and has_overrides(store, D)
    assert not has_overrides(store, D + dt.timedelta(days=1))
    assert read_overrides(store, D + dt.timedelta(days=1)).height == 0


def test_an_older_table_and_the_verdicts_beside_it_latest_wins(tmp_path, params):
    """A day's table as an older writer left it is read first, then the verdicts in the order recorded
    (to the microsecond; two at the very same instant are ordered by their random token: arbitrary,
    but the same on every read); the latest per event wins."""
    store = local_lake(tmp_path, params)
    uri = store.uri("overrides", date=D.isoformat())
    table = pl.DataFrame({"event_id": ["e0", "e1"], "decision": ["block", "approve"], "reviewer": ["ann", "ann"],
                          "note": ["", ""], "at": [T0, T0]}, schema=OVERRIDE_SCHEMA)
    storage.write_bytes(uri, storage.parquet_bytes(table))
    assert has_overrides(store, D)
    later = add_override(store, D, "e0", "approve", "bob", "checked", T0 + dt.timedelta(hours=1))
    assert later.rsplit("/", 1)[0] == uri.rsplit("/", 1)[0] and later != uri
    add_override(store, D, "e2", "review", "cy", "", T0 + dt.timedelta(hours=2))
    add_override(store, D, "e2", "block", "dee", "", T0 + dt.timedelta(hours=2, microseconds=1))
    every = read_overrides(store, D)
    assert every.height == 5 and every["reviewer"].to_list()[:2] == ["ann", "ann"]
    latest = {r["event_id"]: (r["decision"], r["reviewer"]) for r in latest_overrides(every).iter_rows(named=True)}
    assert latest == {"e0": ("approve", "bob"), "e1": ("approve", "ann"), "e2": ("block", "dee")}
    # the verdicts are hidden objects: a listing of the day's partition files does not see them
    assert storage.list_uris(uri.rsplit("/", 1)[0]) == [uri]
    # a damaged verdict fails the read naming it, it is not skipped
    broken = add_override(store, D, "e3", "block", "eve", "", T0 + dt.timedelta(hours=3))
    storage.write_bytes(broken, b"not parquet")
    with pytest.raises(Exception, match="_override"):
        read_overrides(store, D)


def test_days_sharing_a_folder_keep_their_own_verdicts(tmp_path, params):
    """A layout that puts every day's overrides in one folder: each day reads its own verdicts only."""
    store = local_lake(tmp_path, params)
    store = dataclasses.replace(store, layout={**store.layout, "overrides": "overrides/{date}.parquet"})
    add_override(store, D, "a", "block", "ann", "", T0)
    add_override(store, D + dt.timedelta(days=1), "b", "approve", "ann", "", T0)
    assert read_overrides(store, D)["event_id"].to_list() == ["a"]
    assert read_overrides(store, D + dt.timedelta(days=1))["event_id"].to_list() == ["b"]
    assert not has_overrides(store, D + dt.timedelta(days=2))


def test_a_verdict_must_be_a_decision(tmp_path, params):
    store = local_lake(tmp_path, params)
    with pytest.raises(ValueError, match="must be one of"):
        add_override(store, D, "e0", "maybe", "ann", "", T0)
    assert not has_overrides(store, D)


@pytest.mark.parametrize("argv,sub,rest", [
    (["release", "--date", "D", "--action", "release", "--reason", "release"], "release",
     ["--date", "D", "--action", "release", "--reason", "release"]),
    (["--params", "p.yaml", "release", "--action", "release"], "release", ["--params", "p.yaml", "--action", "release"]),
    (["--params=p.yaml", "release", "--reason", "release"], "release", ["--params=p.yaml", "--reason", "release"]),
    (["--params", "p.yaml", "override", "--event-id", "release"], "override", ["--params", "p.yaml", "--event-id", "release"]),
    (["--date", "D"], None, ["--date", "D"]),
    (["--params", "release", "--date", "D"], None, ["--params", "release", "--date", "D"]),   # a params file named so
    ([], None, []),
])
def test_the_decide_subcommand_is_one_word_where_it_stands(argv, sub, rest):
    from pipelines.decide import _subcommand

    assert _subcommand(argv) == (sub, rest)


def test_release_as_the_readme_writes_it_reaches_the_day(tmp_path):
    """`decide release --date D --action release --reason ...` (spaced values, as in the README): the
    arguments reach the command (which then refuses a day that is not held, by name)."""
    from pipelines import decide
    from tests.conftest import params_with_lake

    path = params_with_lake(tmp_path, str(tmp_path / "lake"))
    for argv in (["release", "--params", str(path)], ["--params", str(path), "release"]):
        with pytest.raises(decide.DecideError, match=f"decide release {D}: the day is not held"):
            decide.main([*argv, "--date", D.isoformat(), "--action", "release", "--reason", "release"])
