"""A nightly date split into N shards (params.yaml `shards`), merged into the same bytes as one run.

Each shard is a partition of its own under storage.layout `shards` (`_shards/<stage>/date=D/of=N/
shard=k/...`), published atomically with a record whose run key is the date's run key plus "k/N":
a shard made from other inputs, settings or code is never merged. The stage's own run for the date
merges the N shards (making, one at a time, those it does not find), publishes the date's partition
exactly as an unsharded run does, then removes the shards. How rows are split:
  * features: by a hash of each entity's id, entity by entity, so that an entity's events, state
    and look-back are all in one shard (each entity's features depend on its own rows only);
  * score and monitor: by row batch (batch i of the date's feature partition goes to shard i mod N).

`python -m pipelines shards --date D` prints the argument vectors of the date's shard tasks as JSON
(`[["--shard=0/3"], ...]`, `[]` when shards.count is 1): what the nightly DAG maps its shard tasks
over.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import polars as pl

from pipelines.core import lineage, storage

DEFAULT_LAYOUT = "_shards/{stage}/date={date}/of={count}/shard={index}"
SEED = 20261203               # the entity hash's seed: part of the code, so part of every run key


class ShardError(RuntimeError):
    """Shards that cannot be merged (missing rows, a row twice, a shard of another run)."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            k, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ValueError(f"--shard {text!r}: expected k/N (e.g. 0/3)") from None
        if not (1 <= n <= 64 and 0 <= k < n):
            raise ValueError(f"--shard {text!r}: k/N with 0 <= k < N <= 64")
        return cls(k, n)

    def of_entity(self, column: str) -> pl.Expr:
        """Rows of this shard for `column`'s entity: a fixed hash of the id (same id, same shard)."""
        return (pl.col(column).cast(pl.String).hash(seed=SEED) % self.count) == self.index

    def owns(self, batch: int) -> bool:
        return batch % self.count == self.index


def _option(text: str) -> Shard:
    import argparse

    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_option(ap) -> None:
    ap.add_argument("--shard", type=_option, metavar="K/N",
                    help="compute and publish only shard K of N (N = shards.count) of one date; the date's own run "
                         "merges the shards")


def checked(shard: "Shard | None", count: int, days: list, what: str) -> None:
    if shard is None:
        return
    if shard.count != count:
        raise ShardError(f"{what} --shard {shard}: shards.count is {count} in the params (a shard of {shard.count} "
                         f"would never be merged)")
    if len(days) != 1:
        raise ShardError(f"{what} --shard {shard}: one --date at a time")


def all_of(count: int) -> list[Shard]:
    return [Shard(k, count) for k in range(count)]


def folder(store, stage: str, day: dt.date, shard: Shard) -> str:
    layout = store.layout.get("shards", DEFAULT_LAYOUT)
    return f"{store.lake.rstrip('/')}/" + layout.format(stage=stage, date=day.isoformat(), count=shard.count,
                                                          index=shard.index)


def key(date_key: dict | None, shard: Shard) -> dict | None:
    """A shard's run key: the date's run key and which shard of how many."""
    return None if date_key is None else lineage.keyed({"date_key": date_key["key"], "shard": str(shard)})


def found(log, stage: str, day: dt.date, shard: Shard, primary: str, date_key: dict | None,
          recompute: bool = False) -> tuple[dict | None, dict | None]:
    """The shard's run key, and the record of the shard published under it at `primary` whose objects
    still have their bytes (None: make it; never when asked to recompute); `log` says which."""
    skey = key(date_key, shard)
    rec = None if recompute else lineage.unchanged(primary, skey, {})
    if rec is not None:
        log.info("%s %s shard %s: unchanged since its record (key %s) -> %s", stage, day, shard, skey["key"][:12],
                 primary)
    return skey, rec


def clear(store, stage: str, day: dt.date, count: int) -> int:
    """The date's shards of `stage` removed once their merge is published: each shard's folder with
    everything in it (record, objects, timings), whether a merge used it or not. The objects count."""
    return sum(storage.delete_prefix(folder(store, stage, day, s)) for s in all_of(count))


def check_rows(rows: pl.Series, n: int, what: str) -> None:
    """The merged shards' row positions must be 0..n-1, each once: nothing lost, nothing twice."""
    if rows.len() != n or not rows.sort().equals(pl.int_range(n, dtype=rows.dtype, eager=True), check_names=False):
        raise ShardError(f"{what}: the shards hold {rows.len()} rows ({rows.n_unique()} distinct) for {n} rows of the "
                         f"date; nothing published (run the date's shards again)")


def check_batches(batches: list[int], rows: int, total: int, what: str) -> None:
    """Shards split by batch: every batch index 0..B-1 once, and `rows` (theirs) == `total` (the date's)."""
    seen = pl.Series(batches, dtype=pl.Int64)
    check_rows(seen, seen.n_unique(), f"{what} (batches)")
    if rows != total:
        raise ShardError(f"{what}: the shards hold {rows} rows for the date's {total}; nothing published (run the "
                         f"date's shards again)")


def plan(count: int) -> list[list[str]]:
    return [] if count <= 1 else [[f"--shard={s}"] for s in all_of(count)]


def main(argv: list[str]) -> int:
    from pipelines.core.cli import resolve, stage_parser

    ap = stage_parser("shards", __doc__)
    args = ap.parse_args(argv)
    params, _days = resolve(args)
    print(json.dumps(plan(params.shards.count)))
    return 0
