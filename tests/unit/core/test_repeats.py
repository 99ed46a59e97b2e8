"""repeats: a column's repeats found on the values' 64-bit hashes give polars' own answer exactly,
whatever the hash: with polars' hash, and with one that makes every two values of a length collide."""
import random

import polars as pl
import pytest

from pipelines.core import repeats

WEAK = {"polars": lambda s: s.hash(seed=1),
        "by length": lambda s: s.cast(pl.String).str.len_bytes().fill_null(1).cast(pl.UInt64)}


def _cases() -> list[pl.Series]:
    rng = random.Random(7)
    return [pl.Series("a", [], dtype=pl.String), pl.Series("a", [None], dtype=pl.String),
            pl.Series("a", ["a", None, None, "a", "b"]), pl.Series("a", ["x"] * 5), pl.Series("a", ["ab", "cd"]),
            pl.Series("a", ["a", None]), pl.Series("a", [3, 1, 3, None, 2], dtype=pl.Int64),
            pl.Series("a", [str(rng.randint(0, 500)) if rng.random() > 0.01 else None for _ in range(5000)]),
            pl.concat([pl.Series("a", ["z", "y"]), pl.Series("a", ["y", None, "z"])], rechunk=False)]


@pytest.mark.parametrize("hashed", list(WEAK), ids=list(WEAK))
def test_the_repeats_are_polars_own_whatever_the_hash(hashed):
    h = WEAK[hashed]
    for values in _cases():
        dup, first = repeats.is_duplicated(values, h), repeats.is_first_distinct(values, h)
        assert dup.dtype == first.dtype == pl.Boolean and dup.name == first.name == "a"
        assert dup.to_list() == values.is_duplicated().to_list(), values.to_list()[:10]
        assert first.to_list() == values.is_first_distinct().to_list(), values.to_list()[:10]
        assert repeats.n_unique(values, h) == values.n_unique(), values.to_list()[:10]


def test_a_column_without_repeats_is_answered_without_asking_the_values():
    """No hash value on two rows: every row is its value's first and none is duplicated, from the hashes
    alone (the values are never compared: a hasher that lies about them shows it)."""
    values = pl.Series("id", ["a", "a", "b"])          # a repeat the hashes below do not show
    distinct = lambda s: pl.Series([1, 2, 3], dtype=pl.UInt64)   # noqa: E731
    assert repeats.is_duplicated(values, distinct).to_list() == [False, False, False]
    assert repeats.is_first_distinct(values, distinct).to_list() == [True, True, True]
    assert repeats.n_unique(values, distinct) == 3
    assert repeats.is_duplicated(values).to_list() == [True, True, False]      # polars' hash: the repeat found


def test_a_nested_column_is_asked_of_polars_whole():
    """A null struct and a struct of nulls hash apart, yet polars' is_duplicated holds them equal:
    a nested column gets polars' own answer, not the hashes'."""
    s = pl.Series("a", [{"x": 1}, {"x": 1}, None, {"x": None}])
    assert repeats.is_duplicated(s).to_list() == s.is_duplicated().to_list()
    assert repeats.is_first_distinct(s).to_list() == s.is_first_distinct().to_list()
    assert repeats.n_unique(s) == s.n_unique()
    lists = pl.Series("l", [[1], [1, 2], [1], None, []])
    assert repeats.is_duplicated(lists).to_list() == lists.is_duplicated().to_list()
