"""Stage `shadow`: the challenger scores the same feature partition as the champion, next to it.

`python -m pipelines shadow --date YYYY-MM-DD`

The model under `models:/<name>@<shadow.alias>` (default `challenger`) scores the ds feature
partition with the champion's own code path (`scoring.score_day`, role "shadow"), into
shadow/date=ds/. Shadow scores never drive a decision: `decide` reads only the champion's
predictions. Once the labels of ds land, `feedback` compares both on the same rows and `lifecycle`
decides on promotion.

No fallbacks here: with no challenger, an unreachable registry, a challenger that fails to load or
does not fit the features (manifest mismatch), nothing is scored, a stale shadow partition of ds
is withdrawn, `_model.json` says why, and the stage still succeeds (the champion's night must not
fail because of its challenger). Missing features fail, as in `score`.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

from pipelines.core import modelio as M
from pipelines.core import scoring, storage
from pipelines.core.cli import progress, resolve, stage_parser

log = logging.getLogger("pipelines.shadow")


def shadow_day(params, ds: dt.date, served: scoring.Served, snapshot: str | None = None) -> dict:
    """Score ds with `served` into the shadow partition, or record why nothing was scored."""
    store = params.storage
    d = ds.isoformat()
    out = {"date": d, "alias": params.shadow.alias, **{k: served.meta()[k] for k in ("model_name", "model_version", "run_id")}}
    if served.scored_by == "model":
        try:
            stats = scoring.score_day(params, ds, served, snapshot, role="shadow")
            return {**out, "shadowed": True, "rows": stats["rows"], "reason": served.reason}
        except M.ManifestMismatch as exc:
            served = scoring.Served("none", [], f"{served.name} v{served.version} cannot score these features: {exc}")
            log.error("shadow %s: %s", d, served.reason)
    with storage.publishing(store.lake, snapshot) as pub:
        pub.remove(store.uri("shadow_predictions", date=d))
        pub.put_json(store.uri("shadow_model", date=d), {"role": "shadow", "scored_by": "none", "reason": served.reason,
                                                         "model_name": served.name, "model_version": served.version})
    log.info("shadow %s: nothing scored (%s)", d, served.reason)
    return {**out, "shadowed": False, "rows": 0, "reason": served.reason}


def main(argv: list[str]) -> int:
    args = stage_parser("shadow", __doc__).parse_args(argv)
    params, days = resolve(args)
    if params.shadow.enabled:
        served = scoring.resolve_model(dataclasses.replace(params.score, alias=params.shadow.alias), shadow=True)
    else:
        served = scoring.Served("none", [], "shadow.enabled is false")
    with storage.Publisher(params.storage.lake, args.snapshot) as pub:
        for ds in progress(days, "shadow"):
            print(json.dumps(shadow_day(params, ds, served, pub), sort_keys=True))
    return 0
