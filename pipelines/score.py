"""Stage `score`: the champion scores one date's feature partition, with flagged fallbacks.

`python -m pipelines score --date YYYY-MM-DD`

Which scorer, in order (every row says which one scored it, `scored_by`, and which fallbacks
touched it, `fallback`):
  1. `models:/<name>@<alias>` from the registry. Its files (model.ubj, feature manifest, training
     summary with the operating threshold, reference profile) come from its MLflow run, are checked
     against the version's `model_sha256` tag and are kept in a local cache by version.
  2. Registry unreachable -> the last champion served from the cache (`fallback=registry_cache`).
  3. No model under the alias, a model that fails to download/verify/load, or no registry and no
     cache -> the rule scorer of params `score.rules` (`fallback=rules`).
Per row, a null in a feature listed in `score.feature_defaults` is filled with its default
(`fallback=feature_default`, the names in `defaulted_features`).

The feature manifest of the model must match the partition (spec hash, names, order, dtypes): a
mismatch stops the stage with ManifestMismatch, nothing is scored (a silent mis-score is worse than
a late one). Scoring is chunked `inplace_predict`; per-chunk latency goes to `_stats.json`.

Out (one partition per date, rows in = rows out): predictions/date=ds/part-0.parquet with the key
columns, ds, score, threshold, model name/version, MLflow run id, feature spec hash, scored_by,
fallback, defaulted_features and the columns of `score.carry_columns` as built (decide's rules read
them); `_model.json` (the model served and its reference profile, for `monitor`);
`_features_observed.json` (the features counted against that profile as they were read: what decide's
guardrails and monitor's drift use, so neither reads the feature partition again); `_stats.json`
(timings: the only output that differs between re-runs).

A date is a run-cache entry: its predictions record names what they were made from (`run`: the
feature partition's and manifest's sha256, the model served, the sha256 of the score params, the
scoring code's version, and their `key`). Scoring a date again with the same key (its objects
intact) recomputes nothing and says so; `--recompute` scores it anyway (the same bytes).
"""
from __future__ import annotations

import json
import logging

from pipelines.core import shards, storage
from pipelines.core.cli import progress, resolve, stage_parser
from pipelines.core.scoring import resolve_model, score_day

log = logging.getLogger("pipelines.score")


def main(argv: list[str]) -> int:
    ap = stage_parser("score", __doc__)
    ap.add_argument("--recompute", action="store_true",
                    help="score even a date whose predictions were made from the same features, model, params and code")
    shards.add_option(ap)
    args = ap.parse_args(argv)
    params, days = resolve(args)
    count = params.shards.count if not args.snapshot else 1      # a DVC output: one process, no shards
    shards.checked(args.shard, count, days, "score")
    served = resolve_model(params.score)
    (log.info if not served.fallback else log.warning)("scorer: %s (%s)", served.scored_by, served.reason)
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        for ds in progress(days, "score"):
            stats = score_day(params, ds, served, pub, recompute=args.recompute, shard=args.shard, count=count)
            if args.shard is not None:
                print(json.dumps({"date": ds.isoformat(), "shard": str(args.shard), **served.meta()}, sort_keys=True))
                continue
            print(json.dumps({"date": ds.isoformat(), "rows": stats["rows"], **served.meta(),
                              "fallback_rows": stats["fallback_rows"]}, sort_keys=True))
    return 0
