"""`python -m pipelines lineage --date D --event-id X [--params F] [--json] [--html FILE]`: one
prediction row followed end to end, each hop read from the store that holds it and checked.

  decision and reason      the date's decisions partition (its row for X)
  score                    the predictions partition (its row for X): score, threshold, scored_by
  model and alias          the model the score stage served (its _model.json: name, version,
                           sha256, the alias it was served as) and the version's aliases now
  MLflow run               the version's run (registry): experiment, who registered it, git commit
  Airflow DAG runs         the nightly_scoring run of D whose score task made these predictions,
                           and the training DAG run that registered the model
  DVC lock                 the model's dvc.* lineage tags and the dvc.lock logged with its run
  inputs                   the partitions under the predictions, down to the raw deliveries: each
                           with the sha256 its record holds, re-hashed now ("verified")
  code and params          the code version the features record names, the params file's sha256

Every hop says where it was read. A hop that does not hold (bytes changed since their record, no
such row, no DAG run) is reported as such and the command exits 1. The HTML page (self-contained,
the reports' stylesheet) is written to --html and to the lake next to the day's reports
(<lake>/reports/lineage/date=D/<event id>.html).
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import json
import sys
from pathlib import Path

import polars as pl

from pipelines.core import storage
from pipelines.core.config import load_params, parse_date


def _sha(uri: str) -> str | None:
    try:
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    except storage.MissingObject:
        return None


@functools.lru_cache(maxsize=None)
def _record(uri: str) -> dict:
    """The lineage record of the partition whose primary object is `uri` ({} when none); read once."""
    try:
        return storage.read_json(storage.record_uri(uri))
    except storage.MissingObject:
        return {}


def _partition(uri: str, event_id: str) -> tuple[dict, dict | None]:
    """A partition as it is now, its bytes read once: the sha256 its record holds, whether the bytes
    still have it, and its row for `event_id` (None when absent)."""
    recorded = (_record(uri).get("objects") or {}).get(uri)
    try:
        data = storage.read_bytes(uri)
    except storage.MissingObject:
        return {"where": uri, "sha256": recorded, "verified": False}, None
    hit = storage.read_parquet_bytes(data, uri).filter(pl.col("event_id") == event_id)
    row = {k: (v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v) for k, v in hit.row(0, named=True).items()} \
        if hit.height else None
    return {"where": uri, "sha256": recorded, "verified": hashlib.sha256(data).hexdigest() == recorded}, row


def _inputs(primary: str, depth: int = 0, seen: set | None = None) -> list[dict]:
    """The partitions under `primary` (its record's inputs, recursively) and the raw sources, each
    with its recorded sha256 and whether the bytes still have it. Look-back partitions a features
    record names are listed once, without their own inputs."""
    seen = seen if seen is not None else set()
    rec = _record(primary)
    out = []
    for kind, items in (("input", rec.get("inputs") or {}), ("source", rec.get("sources") or {})):
        for uri, sha in sorted(items.items()):
            if uri in seen:
                continue
            seen.add(uri)
            now = _sha(uri)
            out.append({"depth": depth + 1, "kind": kind, "uri": uri, "stage": _record(uri).get("stage") if kind == "input"
                        else None, "sha256": sha, "verified": now == sha})
            same_day = primary.rsplit("/date=", 1)[-1].split("/")[0] in uri
            if kind == "input" and same_day and depth < 6:
                out += _inputs(uri, depth + 1, seen)
    return out


def trace(params_file: str, day: dt.date, event_id: str) -> dict:
    from pipelines.core import registry
    from pipelines.ops.airflow_api import AirflowClient

    params = load_params(params_file)
    store, d = params.storage, day.isoformat()
    hops: dict[str, dict] = {}
    problems: list[str] = []

    dec_uri, pred_uri = store.uri("decisions", date=d), store.uri("predictions", date=d)
    hop, decision = _partition(dec_uri, event_id)
    hops["decision"] = {**hop, "row": decision}
    hop, pred = _partition(pred_uri, event_id)
    hops["score"] = {**hop, "row": pred,
                     "decisions_read_these_predictions": (_record(dec_uri).get("inputs") or {}).get(pred_uri)
                     == hop["sha256"]}
    if decision is None or pred is None:
        problems.append(f"event {event_id} is not in {dec_uri if decision is None else pred_uri}")

    served = {}
    try:
        served = storage.read_json(store.uri("scored_model", date=d))
    except storage.MissingObject:
        problems.append(f"{pred_uri}: no _model.json (what the score stage served)")
    name, version = served.get("model_name"), served.get("model_version")
    hop = {"where": "predictions/_model.json + the registry", "name": name, "version": version,
           "served_as": served.get("role"), "why": served.get("reason"), "sha256": served.get("model_sha256"),
           "scored_by": served.get("scored_by"), "fallback": served.get("fallback")}
    training_run = None
    if name and version:
        c = registry.client()
        mv = c.get_model_version(name, version)
        run = c.get_run(mv.run_id)
        tags = run.data.tags
        hop.update({"registry_sha256": mv.tags.get("model_sha256"),
                    "aliases_now": sorted(a for a, v in registry.aliases(c, name).items() if v == str(version)),
                    "verified": mv.tags.get("model_sha256") == served.get("model_sha256")})
        import tempfile

        import mlflow
        import yaml

        ui = mlflow.get_tracking_uri().rstrip("/")
        hops["mlflow_run"] = {"where": "MLflow", "run_id": mv.run_id, "experiment_id": run.info.experiment_id,
                              "run_name": run.info.run_name, "registered_by": tags.get("registered_by"),
                              "url": f"{ui}/#/experiments/{run.info.experiment_id}/runs/{mv.run_id}",
                              "git_commit": tags.get("git.commit"), "git_dirty": tags.get("git.dirty"),
                              "data_range": tags.get("data.range"), "training_key": tags.get("training.key"),
                              "training_uri": tags.get("training.uri")}
        by = str(tags.get("registered_by") or "")
        if by.startswith("airflow:"):
            dag_id, run_id = by[len("airflow:"):].split("/")[:2]
            training_run = (dag_id, run_id)
        dvc = {k: v for k, v in sorted(tags.items()) if k.startswith("dvc.")}
        lock = None
        if str(tags.get("dvc.lineage", "")).startswith("dvc.lock of this run"):
            with tempfile.TemporaryDirectory() as tmp:
                got = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="dvc/dvc.lock", dst_path=tmp))
                stages = (yaml.safe_load(got.read_text()) or {}).get("stages", {})
            lock = {s: [o.get("md5") for o in (stages.get(s) or {}).get("outs", [])] for s in stages}
            lock_ok = all(dvc.get(f"dvc.{s}.md5") in md5s for s, md5s in lock.items() if f"dvc.{s}.md5" in dvc)
        else:
            lock_ok = None
        hops["dvc"] = {"where": "the model's MLflow run: tags dvc.* and artifact dvc/dvc.lock", "tags": dvc,
                       "lock_outs_md5": lock, "tags_match_lock": lock_ok}
    else:
        problems.append("no model served (rules only): no model, MLflow run or DVC lock to follow")
    hops["model"] = hop

    client = AirflowClient()
    runs = [r for r in client.runs_between("nightly_scoring", d, d) if r.get("state") == "success"]
    mine = None
    for r in sorted(runs, key=lambda r: r.get("end_date") or "", reverse=True):
        conf = r.get("conf") or {}
        if Path(str(conf.get("params_file", "params.yaml"))).resolve() == Path(params_file).resolve():
            mine = r
            break
    score_ti = None
    if mine:
        score_ti = {t["task_id"]: t for t in client.task_instances("nightly_scoring", mine["dag_run_id"])}.get("score")
    hops["airflow"] = {"where": "Airflow REST API", "nightly_run": mine and mine["dag_run_id"],
                       "state": mine and mine["state"], "score_task": score_ti and {
                           "try_number": score_ti.get("try_number"), "end_date": score_ti.get("end_date"),
                           "state": score_ti.get("state")},
                       "url": mine and f"{client.base}/dags/nightly_scoring/runs/{mine['dag_run_id']}",
                       "training_run": training_run and {"dag_id": training_run[0], "run_id": training_run[1],
                                                         "state": client.run(*training_run).get("state")}}
    if not mine:
        problems.append(f"no successful nightly_scoring run of {d} with params {params_file}: predictions made outside Airflow")

    inputs = _inputs(pred_uri)
    hops["inputs"] = {"where": "lineage records (storage._lineage.*) and the bytes now", "partitions": inputs,
                      "verified": all(i["verified"] for i in inputs)}
    feats = next((i["uri"] for i in inputs if i["stage"] == "features"), None)
    hops["code"] = {"where": "the features record, the model's run, the params file",
                    "features_code_version": feats and _record(feats).get("code_version"),
                    "model_git_commit": hops.get("mlflow_run", {}).get("git_commit"),
                    "params_file": str(Path(params_file).resolve()),
                    "params_sha256": hashlib.sha256(Path(params_file).read_bytes()).hexdigest()}

    for key in ("decision", "score", "model", "inputs"):
        if hops[key].get("verified") is False:
            problems.append(f"{key}: the bytes or hashes do not match their record")
    if hops.get("dvc", {}).get("tags_match_lock") is False:
        problems.append("dvc: the model's dvc.* tags are not those of its logged dvc.lock")
    return {"date": d, "event_id": event_id, "hops": hops, "problems": problems}


def text(t: dict) -> str:
    h = t["hops"]
    dec, pred, m = h["decision"].get("row") or {}, h["score"].get("row") or {}, h["model"]
    ok = lambda v: "verified" if v else ("NOT verified" if v is False else "-")  # noqa: E731
    lines = [f"lineage of event {t['event_id']} on {t['date']}",
             f"  decision    {dec.get('decision')} (reason {dec.get('reason_code')}; model proposed {dec.get('model_decision')}; "
             f"queue rank {dec.get('queue_rank')}; override {dec.get('overridden_by') or 'none'})  [{ok(h['decision']['verified'])}]",
             f"  score       {pred.get('score')} vs threshold {pred.get('threshold')}, scored_by {pred.get('scored_by')}, "
             f"fallback {pred.get('fallback') or 'none'}  [{ok(h['score']['verified'])}]",
             f"  model       {m.get('name')} v{m.get('version')} served as {m.get('served_as')} ({m.get('why')}); "
             f"sha256 {str(m.get('sha256'))[:16]}; aliases now {m.get('aliases_now')}  [{ok(m.get('verified'))}]"]
    if "mlflow_run" in h:
        r = h["mlflow_run"]
        lines.append(f"  MLflow run  {r['run_id']} ({r['run_name']}), registered by {r['registered_by']}: {r['url']}")
    a = h["airflow"]
    lines.append(f"  Airflow     nightly_scoring {a['nightly_run']} ({a['state']}), score try "
                 f"{(a['score_task'] or {}).get('try_number')}; training {a['training_run']}")
    if "dvc" in h:
        lines.append(f"  DVC lock    {h['dvc']['tags'].get('dvc.lineage')}; tags match the logged lock: "
                     f"{h['dvc']['tags_match_lock']}")
    n = len(h["inputs"]["partitions"])
    lines.append(f"  inputs      {n} partition(s) and source(s) under the predictions  [{ok(h['inputs']['verified'])}]")
    for i in h["inputs"]["partitions"][:12]:
        lines.append(f"    {'  ' * (i['depth'] - 1)}{i['stage'] or i['kind']:9s} {i['uri']}  {i['sha256'][:12]}  "
                     f"[{ok(i['verified'])}]")
    c = h["code"]
    lines.append(f"  code        features code {c['features_code_version']}, model git {str(c['model_git_commit'])[:12]}; "
                 f"params {c['params_file']} sha256 {c['params_sha256'][:12]}")
    lines.append("  every hop holds" if not t["problems"] else "  PROBLEMS: " + " | ".join(t["problems"]))
    return "\n".join(lines)


def html(t: dict) -> str:
    from pipelines.core import report

    return report.render("lineage.html.j2", t=t, pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines lineage", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--date", type=parse_date, required=True)
    ap.add_argument("--event-id", required=True)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--html", help="also write the page here")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    from pipelines.core import services

    services.configure(params.services.timeout_s)
    t = trace(args.params, args.date, args.event_id)
    page = html(t)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in args.event_id)[:120]
    uri = f"{params.storage.lake.rstrip('/')}/reports/lineage/date={args.date.isoformat()}/{safe}.html"
    storage.write_bytes(uri, page.encode(), "text/html")
    if args.html:
        Path(args.html).write_text(page)
    print(json.dumps(t, indent=2, sort_keys=True, default=str) if args.json else text(t))
    print(f"page: {uri}" + (f" and {args.html}" if args.html else ""), file=sys.stderr)
    return 0 if not t["problems"] else 1
