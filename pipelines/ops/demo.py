"""`python -m pipelines demo`: the main job on the embedded default, end to end.

stack up -> simulated raw data into the object store -> `dvc repro` (ingest -> validate -> features -> train ->
evaluate -> register) -> `dvc push` -> a fail-closed showcase (a day with an injected data bug is
blocked and quarantined) -> the nightly job (score, decide, monitor, retrain decision) over
demo_data.nightly, with drift injected from demo_data.drift.start_date: the drift is flagged, the
training DAG is triggered once (through the Airflow REST API, as the nightly DAG would) and its
model goes through the gate -> when it became challenger, demo_data.shadow_nights more nights with
it in shadow -> the labels of every night fed back as they land (realized metrics, shadow
comparison, automatic rollback check, promotion or retirement) -> a summary of what is where.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from pipelines import ingest, validate
from pipelines.core import registry as models
from pipelines.core import storage
from pipelines.core.cli import StageFailed
from pipelines.core.config import date_range, load_params
from pipelines.core.lake import REGISTER, REGISTRATION, artifact, training_uri
from pipelines.ops import demo_data, nightly, stack

REPO = Path(__file__).resolve().parent.parent


def _dvc(*args: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    print(f"$ dvc {' '.join(args)}", flush=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=REPO, env=env, check=True, timeout=3600)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines demo", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    lay = stack.up()
    print(f"stack up: objects {'S3' if lay.s3 else lay.objects}, MLflow {lay.mlflow_url}, Airflow {lay.airflow_url}",
          flush=True)
    demo_data.main(["--params", args.params])
    params = load_params(args.params)
    store, run = params.storage, params.run
    # DVC judges stages by data/ and dvc.lock; the lake can be empty while they are current (a new
    # state folder, a wiped lake). Then re-run every stage: same bytes, same lock.
    last = run.end_date.isoformat()
    in_lake = all(storage.exists(u) for u in (store.uri("canonical", dataset="transactions", date=last),
                                              store.uri("validated", dataset="transactions", date=last),
                                              store.uri("features", date=last),
                                              f"{training_uri(store, run.start_date, run.end_date)}/{artifact(REGISTER, REGISTRATION)}"))
    _dvc("repro", *([] if in_lake else ["--force"]))
    _dvc("push")

    days = date_range(run.start_date, run.end_date)
    feats = [d for d in days if storage.exists(store.uri("features", date=d.isoformat()))]
    rows = sum(storage.read_json(store.uri("features_manifest", date=d.isoformat()))["rows"] for d in feats)
    quarantined = sum(storage.read_json(store.uri("validation_results", dataset="transactions", date=d.isoformat()))
                      ["rows_quarantined"] for d in days)

    # fail closed, shown: a day with an injected bug is blocked, its bad rows quarantined
    bugs = demo_data.DemoParams.from_dict(params.section("demo_data")).bugs
    showcase = []
    for bug in bugs:
        day = bug.date.isoformat()
        try:
            ingest.main(["--params", args.params, "--date", day, "--dataset", "transactions"])
            validate.main(["--params", args.params, "--date", day])
            showcase.append(f"{day} ({bug.kind}): passed (no block rule caught it)")
        except StageFailed as exc:
            first = str(exc).split(": ", 1)[-1]
            showcase.append(f"{day} ({bug.kind}): BLOCKED as it should be -> {first[:400]}")

    report = REPO / "data" / "validate" / store.layout["validation_report"].format(
        dataset="transactions", date=run.end_date.isoformat())
    print("\n" + "=" * 78)
    print(f"Validated feature partitions: {len(feats)}/{len(days)} days ({run.start_date}..{run.end_date}), "
          f"{rows} rows, in {store.uri('features', date='YYYY-MM-DD')}")
    print(f"Rows quarantined by validation over the range: {quarantined}")
    for line in showcase:
        print(f"Injected data bug on {line}")
    print(f"Validation report (self-contained HTML): {report}")
    print(f"DVC: `dvc repro` is up to date now; outputs pushed to the remote s3://{stack.BUCKETS[2]}/cache"
          + ("" if lay.s3 else f" ({lay.objects / stack.BUCKETS[2] / 'cache'})"))
    print(f"Airflow UI: {lay.airflow_url}  (user admin, password: {stack.airflow_password(lay)}; "
          f"file {lay.password_file})")
    print("  trigger the training DAG: python -m pipelines airflow trigger training --wait "
          "(or from the UI, Params form: dates, force)")
    name = params.register.model_name
    reg = storage.read_json(f"{training_uri(store, run.start_date, run.end_date)}/{artifact(REGISTER, REGISTRATION)}")
    c = models.client()
    champion = models.get_alias(c, name, "champion")
    if champion is None:
        raise StageFailed(f"demo: {name} has no champion after the training pipeline (gate: {reg.get('reasons')})")
    mv = c.get_model_version(name, champion)
    m = c.get_run(mv.run_id).data.metrics
    print(f"Model: {name} v{reg['version']} registered (gate {reg['gate']}); champion = v{champion}: "
          f"test AP {m.get('test.average_precision', float('nan')):.4f} vs rule baseline "
          f"{m.get('baseline.average_precision', float('nan')):.4f}, ROC AUC {m.get('test.roc_auc', float('nan')):.4f}, "
          f"recall {m.get('test.recall', float('nan')):.3f}")
    print(f"  evaluation report (self-contained HTML): {REPO / 'data' / 'evaluate' / 'report.html'}")
    print(f"  registry: python -m pipelines models list | history | lineage {champion} | promote V | rollback")
    print(f"MLflow UI:  {lay.mlflow_url}/#/models/{name}/versions/{champion}   "
          f"(run: {lay.mlflow_url}/#/experiments/{c.get_run(mv.run_id).info.experiment_id}/runs/{mv.run_id})")

    # the nightly job over demo_data.nightly (drift from demo_data.drift.start_date)
    dp = demo_data.DemoParams.from_dict(params.section("demo_data"))
    if dp.nightly:
        print("\n" + "=" * 78 + f"\nNightly scoring {dp.nightly[0]}..{dp.nightly[1]} (drift injected from "
              f"{dp.drift.start_date}): ingest -> validate -> features -> score -> decide -> monitor -> retrain", flush=True)
        triggered = []
        for day in date_range(*dp.nightly):
            out = nightly.run_day(args.params, day)
            d = out["decision"]
            mon = storage.read_json(store.uri("alerts", date=day.isoformat()))
            summ = storage.read_json(store.uri("decision_summary", date=day.isoformat()))
            print(f"  {day}  {'DRIFT ' if mon['drifted'] else 'stable'} alerts={len(mon['alerts']):2d}  "
                  f"review={summ['decisions']['review']:4d} block={summ['decisions']['block']:3d}  "
                  + (f"HELD ({summ['decisions'].get('hold', 0)} rows)  " if summ.get("guardrails", {}).get("status") == "held" else "")
                  + 
                  f"retrain={'YES' if d['retrain'] else 'no '}  ({sum(out['seconds'].values()):.1f}s) {d['reason'][:90]}",
                  flush=True)
            if d["retrain"]:
                triggered.append((day, nightly.trigger(d, replace=True)))
        from pipelines.ops.airflow_api import AirflowClient

        client = AirflowClient()
        for day, run_id in triggered:
            print(f"Drift-triggered retraining: training DAG run {run_id}; waiting for it ...", flush=True)
            run = client.wait("training", run_id, timeout=2400)
            rc = run["conf"]
            reg = None
            if run["state"] == "success":
                base = training_uri(store, dt.date.fromisoformat(rc["start_date"]), dt.date.fromisoformat(rc["end_date"]))
                reg = storage.read_json(f"{base}/{artifact(REGISTER, REGISTRATION)}")
            print(f"  training {rc['start_date']}..{rc['end_date']}: {run['state']}" + (
                f"; {reg['model_name']} v{reg['version']} gate {reg['gate']} -> alias {reg['alias'] or 'none'}"
                f"{' (' + '; '.join(reg['reasons']) + ')' if reg['reasons'] else ''}" if reg else ""), flush=True)
        print(f"  aliases now: {models.aliases(c, name)}")
        last = dp.nightly[1]
        if dp.shadow_nights and models.get_alias(c, name, params.shadow.alias):
            more = date_range(last + dt.timedelta(days=1), last + dt.timedelta(days=dp.shadow_nights))
            print(f"\nShadow nights {more[0]}..{more[-1]}: the challenger scores next to the champion", flush=True)
            for day in more:
                out = nightly.run_day(args.params, day)
                sh = storage.read_json(store.uri("shadow_model", date=day.isoformat()))
                print(f"  {day}  champion v{champion} scored, shadow: "
                      f"{'v' + str(sh['model_version']) if sh.get('scored_by') == 'model' else 'none (' + sh['reason'] + ')'}"
                      f"  ({sum(out['seconds'].values()):.1f}s)", flush=True)
            last = more[-1]
        delay = params.dataset("labels").delay_days
        lab = date_range(dp.nightly[0] + dt.timedelta(days=delay), last + dt.timedelta(days=delay))
        print(f"\nLabels landing {lab[0]}..{lab[-1]} (for {dp.nightly[0]}..{last}): validate -> feedback -> lifecycle",
              flush=True)
        for day in lab:
            out = nightly.run_labels_day(args.params, day)
            r = out["lifecycle"]
            fb = storage.read_json(store.uri("feedback_summary", date=(day - dt.timedelta(days=delay)).isoformat()))
            real = fb["realized"]["champion"]
            cmp_ = fb.get("comparison")
            print(f"  {day}  labels of {fb['date']}: " + ", ".join(
                f"v{v} AP {m['average_precision']:.3f} error rate {m['error_rate']:.4f}" for v, m in real.items())
                + (f"; shadow v{cmp_['challenger_version']} AP {cmp_['challenger']:.3f}" if cmp_ else "")
                + "  -> rollback " + ("done" if any(m["alias"] == "champion" for m in r["moves"]) else
                                      "NEEDED (no previous champion: alert)" if "rollback_impossible" in r["alerts"] else
                                      "advised (alert)" if r["rollback"] else "no")
                + f", promotion: {r['promotion']}"
                + "".join(f"\n      {m['alias']}: {m['from']} -> {m['to']} ({m['reason'][:110]})" for m in r["moves"]),
                flush=True)
        print(f"  aliases now: {models.aliases(c, name)}; history: python -m pipelines models history")
        print(f"  realized metrics and shadow comparison (self-contained HTML): "
              f"{store.uri('feedback_report', date=(lab[-1] - dt.timedelta(days=delay)).isoformat())}")
        index = REPO / ".state" / "reports" / "monitor"
        index.mkdir(parents=True, exist_ok=True)
        for day in date_range(dp.nightly[0], last):
            rel = f"date={day.isoformat()}/report.html"
            (index / rel).parent.mkdir(parents=True, exist_ok=True)
            (index / rel).write_bytes(storage.read_bytes(store.uri("monitor_report", date=day.isoformat())))
        (index / "index.html").write_bytes(storage.read_bytes(store.uri("monitor_index")))
        for uri in storage.list_uris(store.uri("feedback_report", date="@").split("date=@")[0]):
            dst = index.parent / "feedback" / uri.rsplit("/", 2)[-2] / "report.html"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(storage.read_bytes(uri))
        print(f"Monitoring report (self-contained HTML): {index / 'index.html'}  (in the lake: {store.uri('monitor_index')})")
        print(f"  review queue of a day: {store.uri('review_queue', date='YYYY-MM-DD')}; overrides: "
              f"python -m pipelines decide override --date D --event-id ID --decision block --reviewer you")
        print("  the same job under the scheduler: DAG nightly_scoring (backfill: airflow backfill create --dag-id "
              "nightly_scoring --from-date D --to-date D)")
        from pipelines.ops import audit

        found = audit.contradictions(audit.gather(params, date_range(dp.nightly[0], last), c, client))
        print(f"Audit {dp.nightly[0]}..{last} (lake records vs the registry vs Airflow's runs): "
              + (f"{len(found)} contradiction(s)" if found else "no contradiction"), flush=True)
        for line in found:
            print(f"  CONTRADICTION {line}")
        if found:
            return 1
    print("Stop everything: python -m pipelines stack down   (or make down)")
    return 0
