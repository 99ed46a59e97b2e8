"""A column's repeated values found on their 64-bit hashes: exactly polars' own answer, cheaper.

polars finds the repeats of a text column (`is_duplicated`, `is_first_distinct`, `n_unique`) with a hash
table of the texts themselves: 2.2 s of one core for 10M ids of 16 bytes, and ingest and validate each
ask it of every night's ids. Sorting the ids' 64-bit hashes takes ~0.3 s. A hash value found on one row
is a value found on one row (two equal values hash alike), so only the rows of the hash values found on
several rows (a repeat, or two values that collide) are asked of polars, on the values themselves: the
answer is polars' own, whatever the hash (the tests force collisions), nulls included (they hash alike
and are compared by polars as before). A nested or Object column is asked of polars whole (a null
struct and a struct of nulls hash apart, yet polars' is_duplicated holds them equal).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import polars as pl

SEED = 20261204

Hasher = Callable[[pl.Series], pl.Series]


def _hash(s: pl.Series) -> pl.Series:
    return s.hash(seed=SEED)


def _repeated(ordered: np.ndarray) -> np.ndarray:
    """The values found on more than one row of the sorted array `ordered`, sorted and unique."""
    return np.unique(ordered[1:][ordered[1:] == ordered[:-1]])


def shared(hashes: pl.Series) -> np.ndarray:
    """The hash values found on more than one row, sorted and unique."""
    return _repeated(hashes.sort().to_numpy())


def _suspects(values: pl.Series, hashed: Hasher) -> pl.Series | None:
    """The rows whose hash value is on several rows (a Boolean mask), or None where there is none."""
    h = hashed(values)
    again = shared(h)
    return h.is_in(pl.Series(again).implode()) if len(again) else None


def _flat(values: pl.Series) -> bool:
    return not (values.dtype.is_nested() or values.dtype == pl.Object)


def _on_suspects(values: pl.Series, hashed: Hasher, ask: Callable[[pl.Series], pl.Series], otherwise: bool
                 ) -> pl.Series:
    """`ask(values)` (a Boolean per row), asked of the suspect rows only; `otherwise` for the others."""
    if not _flat(values):
        return ask(values)
    out = np.full(values.len(), otherwise)
    suspect = _suspects(values, hashed)
    if suspect is not None:
        out[suspect.arg_true().to_numpy()] = ask(values.filter(suspect)).to_numpy()
    return pl.Series(values.name, out, dtype=pl.Boolean)


def is_duplicated(values: pl.Series, hashed: Hasher = _hash) -> pl.Series:
    """`values.is_duplicated()`: a row whose value is on another row too."""
    return _on_suspects(values, hashed, lambda s: s.is_duplicated(), False)


def is_first_distinct(values: pl.Series, hashed: Hasher = _hash) -> pl.Series:
    """`values.is_first_distinct()`: the first row of each value, in the column's order."""
    return _on_suspects(values, hashed, lambda s: s.is_first_distinct(), True)


def n_unique(values: pl.Series, hashed: Hasher = _hash) -> int:
    """`values.n_unique()` (a null counts as one value)."""
    if not _flat(values):
        return values.n_unique()
    h = hashed(values)
    s = h.sort().to_numpy()
    again = _repeated(s)
    distinct = int(np.count_nonzero(s[1:] != s[:-1])) + 1 if len(s) else 0
    if not len(again):
        return distinct
    suspect = values.filter(h.is_in(pl.Series(again).implode()))
    return distinct - len(again) + suspect.n_unique()
