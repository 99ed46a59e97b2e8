"""`python -m pipelines demo`: the main job on the embedded default, end to end, on the scheduler.

stack up -> the demo's params (params.yaml with the short scenario params.demo.yaml over it: labels
1 day late, 3-day windows, a lake prefix and a model name of its own) -> simulated raw data into the
object store -> a run of the training DAG for the first champion (ingest -> validate -> features ->
train -> evaluate -> register) -> the nights of demo_data.nightly as Airflow runs (drift
injected from demo_data.drift.start_date): for each date a run of the `labels` DAG (the labels
landing that day: validate -> feedback -> lifecycle: realized metrics, shadow comparison,
promotion, rollback), then a run of `nightly_scoring` (ingest -> validate -> features -> score ->
shadow -> decide with its guardrails -> monitor -> the retrain decision), triggered through the REST
API with logical date = the date (run id demo__<date>). A night's run starts with the labels run
of the next date, and the next night's run starts once tonight's has built its features (two nights
at a time); the DAGs' gates order the rest (a night's score waits for the lifecycle of its date, its
decide for the night before's monitor, its shadow and retrain decision for the night before's
retrain decision and the training run it triggered; the next labels' feedback for its shadow scores).
The drift is flagged, the retrain request waits for the labels of the changed days, then the
nightly DAG triggers the training DAG; its model goes through the gate, shadows the champion and is
promoted when it wins. A night with an injected data bug is then run: validation blocks it (a red
run, not retried) -> the champion's realized performance before, during and after -> the audit of
the whole range -> a summary of what is where. `python -m pipelines nightly` runs the same chain
in one process, without the scheduler (a developer tool; the demo does not use it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import textwrap
import time
from pathlib import Path

from pipelines import lifecycle
from pipelines.core import registry as models
from pipelines.core import storage
from pipelines.core.cli import StageFailed
from pipelines.core.config import date_range, load_params
from pipelines.core.lake import REGISTER, REGISTRATION, REPORT, artifact, training_uri
from pipelines.core.state import REPO, state_dir
from pipelines.ops import demo_data, stack


def main(argv: list[str]) -> int:
    """The demo with its library output (stage logs, GX, DVC, tqdm) in a log file: the terminal gets
    one line per step and per date; an error line is printed here too."""
    from pipelines.core import state

    log_path = state.state_dir() / "demo.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    real_stderr = os.dup(2)
    sys.stderr.flush()
    # only its owner reads it: it holds the console's lines, the Airflow admin password among them
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        log_path.chmod(0o600)
        os.dup2(fh.fileno(), 2)
        console, sys.stdout = sys.stdout, _Tee(sys.stdout, fh)      # every console line, timestamped, in the log too
        print(f"full log: {log_path} (the console's lines with their times, and what libraries print; each "
              f"task's own log is in Airflow)", flush=True)
        t = time.monotonic()
        try:
            code = _main(argv)
        finally:
            sys.stdout.flush()
            sys.stdout = console
            sys.stderr.flush()
            os.dup2(real_stderr, 2)
            os.close(real_stderr)
    print(f"demo finished in {(time.monotonic() - t) / 60:.1f} min (exit {code})", flush=True)
    return code


class _Tee:
    """stdout for the demo: the console as it is, and each complete line with its time into the log."""

    def __init__(self, console, log) -> None:
        self.console, self.log, self.part = console, log, ""

    def write(self, text: str) -> int:
        self.console.write(text)
        self.part += text
        *lines, self.part = self.part.split("\n")
        for line in lines:
            self.log.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False


def night_line(store, day: dt.date, out: dict, lab: dict | None, delay: int) -> str:
    """One progress line per date: drift, decisions, guardrails, the retrain state, shadow, the
    labels that landed (the champion's realized AP of the day they belong to) and model moves."""
    d = out["decision"]
    mon = storage.read_json(store.uri("alerts", date=day.isoformat()))
    summ = storage.read_json(store.uri("decision_summary", date=day.isoformat()))
    sh = storage.read_json(store.uri("shadow_model", date=day.isoformat()))
    state = "YES" if d["retrain"] else (f"waiting for labels (onset {d['onset']}, due {d['labels_due']})"
                                        if d.get("state") == "waiting" else
                                        "its challenger is in shadow" if d.get("state") == "shadow" else d.get("state", "no"))
    line = (f"  {day} {'DRIFT ' if mon['drifted'] else 'stable'} review={summ['decisions']['review']:4d} "
            f"block={summ['decisions']['block']:3d}{' HELD' if summ.get('guardrails', {}).get('status') == 'held' else ''}"
            f"{' shadow v' + str(sh['model_version']) if sh.get('scored_by') == 'model' else ''}  retrain: {state}")
    return line + (labels_part(store, day, lab, delay) if lab is not None else "")


def labels_part(store, day: dt.date, lab: dict, delay: int) -> str:
    """The labels that landed on `day`: the champion's realized AP and error rate on the day they
    belong to, the alias moves, a rollback advised, the promotion verdict."""
    fb = storage.read_json(store.uri("feedback_summary", date=(day - dt.timedelta(days=delay)).isoformat()))
    real = fb["realized"].get("champion") or {}
    line = "  | labels of " + fb["date"] + ": " + ", ".join(
        f"v{v} AP {m['average_precision']:.3f} err {m['error_rate']:.4f}" for v, m in real.items())
    r = lab["lifecycle"]
    line += "".join(f"; {m['alias']}: {m['from']} -> {m['to']}" for m in r["moves"])
    if r.get("rollback") and not any(m["alias"] == "champion" for m in r["moves"]):
        line += "; rollback advised, no previous champion (alert)" if "rollback_impossible" in r["alerts"] else \
            "; rollback advised (alert)"
    if r.get("promotion") not in (None, "none", "wait"):
        line += f"; promotion: {r['promotion']}"
    return line


def training_line(params, run: dict) -> str:
    rc, reg = run["conf"], None
    if run["state"] == "success":
        base = training_uri(params, dt.date.fromisoformat(rc["start_date"]), dt.date.fromisoformat(rc["end_date"]))
        reg = storage.read_json(f"{base}/{artifact(REGISTER, REGISTRATION)}")
    return (f"training {rc['start_date']}..{rc['end_date']}: {run['state']}" + (
        f"; {reg['model_name']} v{reg['version']} gate {reg['gate']} -> alias {reg['alias'] or 'none'}"
        f"{' (' + '; '.join(reg['reasons']) + ')' if reg['reasons'] else ''}" if reg else ""))


def recovery_phases(store, nights: list[dt.date], drift_from: dt.date) -> dict[str, dict]:
    """The champion's realized AP and error rate (means over the scored days whose labels landed)
    before the drift, during it (the first champion) and after the promotion of another model:
    {phase: {"average_precision", "error_rate", "days"}}."""
    from pipelines.core.lake import read_realized

    m = read_realized(store, nights)
    m = m.filter((m["role"] == "champion") & (m["slice"] == "")) if m.height else m
    by_day: dict = {}
    for r in m.iter_rows(named=True):
        by_day.setdefault(r["date"], {"version": r["model_version"]})[r["metric"]] = r["value"]
    first_v = by_day[min(by_day)]["version"] if by_day else None
    phases = {"before the drift": [x for d, x in by_day.items() if d < drift_from],
              "during (old champion)": [x for d, x in by_day.items() if d >= drift_from and x["version"] == first_v],
              "after the promotion": [x for d, x in by_day.items() if d >= drift_from and x["version"] != first_v]}

    def mean(xs, k):
        vals = [x[k] for x in xs if x.get(k) is not None]
        return sum(vals) / len(vals) if vals else None

    return {name: {"average_precision": mean(xs, "average_precision"), "error_rate": mean(xs, "error_rate"),
                   "days": len(xs)} for name, xs in phases.items()}


def recovery(store, nights: list[dt.date], drift_from: dt.date | None) -> str:
    """One line: the champion's realized AP and error rate before the drift, during it and after the
    promotion of the retrained model, and after/before."""
    if drift_from is None:
        return "Realized performance: no drift in this scenario"
    phases = recovery_phases(store, nights, drift_from)
    parts = [f"{name}: " + (f"AP {x['average_precision']:.3f}, error rate {x['error_rate']:.4f} ({x['days']} days)"
                            if x["average_precision"] is not None else "no labelled day") for name, x in phases.items()]
    before, after = (phases[k]["average_precision"] for k in ("before the drift", "after the promotion"))
    verdict = f"; after/before AP = {after / before:.2f} (target >= 0.90)" if before and after is not None else ""
    return "Realized performance of the champion: " + " | ".join(parts) + verdict


class DagRuns:
    """The demo's runs on the scheduler: one run per DAG and logical date, run id `demo__<date>`,
    triggered through the REST API with the demo's params file, waited for, and counted."""

    DAGS = ("labels", "nightly_scoring")

    def __init__(self, client, params_file: str) -> None:
        self.client, self.params_file = client, params_file
        self.seen: dict[str, dict[str, str]] = {}
        for dag in (*self.DAGS, "training"):
            client.wait_for_dag(dag)

    def clear(self, first: dt.date, last: dt.date) -> None:
        """Delete the runs an earlier demo left for these dates (the lake is rebuilt, so they describe
        data that no longer exists), and any run of a date past the simulated data (it would wait for
        data that never comes)."""
        gone = 0
        for dag in self.DAGS:
            for r in self.client.runs_between(dag, first.isoformat(), "9999-12-31"):
                gone += self.client.delete_run(dag, r["dag_run_id"])
        for day in date_range(first, last):
            gone += self.client.delete_run("training", f"retrain__{day.isoformat()}")
        if gone:
            print(f"  (deleted {gone} Airflow run(s) an earlier demo left for {first}..: the data is rebuilt)", flush=True)

    @staticmethod
    def run_id(day: dt.date) -> str:
        return f"demo__{day.isoformat()}"

    def start(self, dag_id: str, day: dt.date) -> str:
        """Trigger `dag_id` for logical date `day` with the demo's params file."""
        from pipelines.ops.airflow_api import AirflowApiError

        run_id = self.run_id(day)
        try:
            self.client.trigger(dag_id, {"params_file": self.params_file}, run_id=run_id,
                                logical_date=f"{day.isoformat()}T00:00:00Z")
        except AirflowApiError as exc:     # a retried trigger whose first attempt was committed after all
            if "HTTP 409" not in str(exc):
                raise
        return run_id

    def tasks_done(self, dag_id: str, day: dt.date, tasks: tuple[str, ...], timeout: float = 1800) -> bool:
        """Wait until `tasks` of the run have ended (or the run has); True when they all succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tis = {t["task_id"]: t["state"] for t in self.client.task_instances(dag_id, self.run_id(day))}
            if all(tis.get(t) in ("success", "skipped") for t in tasks):
                return True
            if any(tis.get(t) in ("failed", "upstream_failed") for t in tasks) or \
                    self.client.run(dag_id, self.run_id(day))["state"] in ("success", "failed"):
                return False
            time.sleep(0.5)
        return False

    def finish(self, dag_id: str, day: dt.date, expect_failure: bool = False, timeout: float = 1800) -> dict:
        """Wait for the run of `day`; a run that fails (or, with expect_failure, one that succeeds)
        stops the demo with its failed tasks named."""
        return self._ended(dag_id, self.run_id(day), timeout, poll=0.5, expect_failure=expect_failure)

    def _ended(self, dag_id: str, run_id: str, timeout: float, poll: float, expect_failure: bool = False) -> dict:
        """Wait for a run and count it; a run that fails (or, with expect_failure, one that succeeds)
        stops the demo with its failed tasks named."""
        run = self.client.wait(dag_id, run_id, timeout=timeout, poll=poll)
        self.seen.setdefault(dag_id, {})[run_id] = run["state"]
        if (run["state"] == "success") == expect_failure:
            bad = [f"{t['task_id']}={t['state']}" for t in self.client.task_instances(dag_id, run_id)
                   if t["state"] not in ("success", "skipped")]
            raise StageFailed(f"demo: {dag_id} run {run_id} ended {run['state']}"
                              f"{' (expected a block)' if expect_failure else ''}; tasks: {', '.join(bad) or 'none failed'}; "
                              f"task logs in the Airflow UI ({self.client.base}/dags/{dag_id}/runs/{run_id})")
        return run

    def run(self, dag_id: str, day: dt.date, expect_failure: bool = False) -> dict:
        self.start(dag_id, day)
        return self.finish(dag_id, day, expect_failure)

    def train(self, start: dt.date, end: dt.date, reason: str) -> dict:
        """A run of the training DAG on start..end (run id demo__training__<start>_<end>), waited for;
        a failed run stops the demo with its failed tasks named."""
        from pipelines.ops.airflow_api import AirflowApiError

        run_id = f"demo__training__{start.isoformat()}_{end.isoformat()}"
        self.client.delete_run("training", run_id)
        try:
            self.client.trigger("training", {"start_date": start.isoformat(), "end_date": end.isoformat(),
                                             "force": False, "params_file": self.params_file, "reason": reason},
                                run_id=run_id)
        except AirflowApiError as exc:
            if "HTTP 409" not in str(exc):
                raise
        return self._ended("training", run_id, timeout=2400, poll=1)

    def wait_triggered(self, dag_id: str, run_id: str) -> dict:
        run = self.client.wait(dag_id, run_id, timeout=2400)
        self.seen.setdefault(dag_id, {})[run_id] = run["state"]
        return run

    def counts(self) -> str:
        out = []
        for dag, runs in self.seen.items():
            states: dict[str, int] = {}
            for st in runs.values():
                states[st] = states.get(st, 0) + 1
            out.append(f"{dag}: " + ", ".join(f"{n} {st}" for st, n in sorted(states.items())))
        return "; ".join(out)


def merged(base: dict, over: dict) -> dict:
    """`base` with `over` laid on it key by key (nested mappings merged, anything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def scenario_params(base: str | Path, overlay: str | Path, out: Path, extra: dict | None = None) -> Path:
    """Write `base` (a params file) with the `overlay` file (and `extra`) over it to `out`, atomically;
    the result is checked like any params file."""
    import yaml

    data = merged(merged(yaml.safe_load(Path(base).read_text()), yaml.safe_load(Path(overlay).read_text()) or {}),
                  extra or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(f"# {base} with {overlay} over it (written by python -m pipelines demo; do not edit)\n"
                   + yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, out)
    load_params(out)
    return out


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines demo", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--scenario", default="params.demo.yaml",
                    help="settings laid over --params for the demo (default: the short scenario); '' = none")
    args = ap.parse_args(argv)
    lay = stack.up()
    print(f"stack up: objects {'S3' if lay.s3 else lay.objects}, MLflow {lay.mlflow_url}, Airflow {lay.airflow_url}",
          flush=True)
    params_file = str(scenario_params(REPO / args.params, REPO / args.scenario, state_dir() / "params" / "demo.yaml")
                      if args.scenario else args.params)
    if args.scenario:
        print(f"params: {args.params} with the scenario {args.scenario} over it -> {params_file}", flush=True)
    out = play(params_file, lay, stack.airflow_password(lay))
    if out["contradictions"]:
        return 1
    print("Stop everything: python -m pipelines stack down   (or make down)")
    return 0


def _say(*args, **kwargs) -> None:
    print(*args, **{"flush": True, **kwargs})


def play(params_file: str, lay, password: str, say=_say) -> dict:
    """The scenario of `params_file` on the running stack's scheduler (see the module doc): simulated
    raw data, the first champion from a training DAG run, the nights and label days as DAG runs,
    the blocked bug days, the champion's realized performance before/during/after, the audit.
    Returns {runs: {dag: {run_id: state}}, phases, contradictions, first_champion}; a failed run
    raises StageFailed naming its failed tasks. `say` prints a progress line."""
    demo_data.main(["--params", params_file])
    params = load_params(params_file)
    store, run = params.storage, params.run
    dp = demo_data.DemoParams.from_dict(params.section("demo_data"))
    bugs = dp.bugs

    from pipelines.ops.airflow_api import AirflowClient

    client = AirflowClient()
    runs = DagRuns(client, params_file)
    nights = date_range(*dp.nightly) if dp.nightly else []
    bug_days = [b.date for b in bugs]
    if nights or bug_days:
        runs.clear(min([*nights, *bug_days]), max([*nights, *bug_days]))
    # the first champion: the training DAG on run.start_date..run.end_date (ingest -> validate ->
    # features -> train -> evaluate -> register), on the scheduler like every later training
    t = time.monotonic()
    say(f"training DAG on {run.start_date}..{run.end_date} (ingest -> validate -> features -> train -> evaluate -> "
          f"register) ...", end=" ", flush=True)
    trained = runs.train(run.start_date, run.end_date, "demo: the first champion")
    say(f"{trained['state']} in {time.monotonic() - t:.0f} s (run {trained['dag_run_id']})", flush=True)

    days = date_range(run.start_date, run.end_date)
    feats = [d for d in days if storage.exists(store.uri("features", date=d.isoformat()))]
    rows = sum(storage.read_json(store.uri("features_manifest", date=d.isoformat()))["rows"] for d in feats)
    quarantined = sum(storage.read_json(store.uri("validation_results", dataset="transactions", date=d.isoformat()))
                      ["rows_quarantined"] for d in days)
    say("\n" + "=" * 78)
    say(f"Validated feature partitions: {len(feats)}/{len(days)} days ({run.start_date}..{run.end_date}), "
          f"{rows} rows, in {store.uri('features', date='YYYY-MM-DD')}")
    say(f"Rows quarantined by validation over the range: {quarantined}")
    for bug in bugs:
        say(f"Injected data bug on {bug.date} ({bug.kind}): run through nightly_scoring after the nights (it must be blocked)")
    say(f"Validation report (self-contained HTML): "
          f"{store.uri('validation_report', dataset='transactions', date=run.end_date.isoformat())}; every "
          f"validation run: {store.uri('validation_index')}")
    say("DVC: `dvc repro` runs the same stages on params.yaml (its own lake and model name; see the README)")
    say(f"Airflow UI: {lay.airflow_url}  (user admin, password: {password}; "
          f"file {lay.password_file})")
    say("  trigger the training DAG: python -m pipelines airflow trigger training --wait "
          "(or from the UI, Params form: dates, force)")
    name = params.register.model_name
    reg = storage.read_json(f"{training_uri(params, run.start_date, run.end_date)}/{artifact(REGISTER, REGISTRATION)}")
    c = models.client()
    champion = models.get_alias(c, name, "champion")
    if champion is not None and reg.get("version") and champion != str(reg["version"]):
        # an earlier demo promoted its retrained model: the scenario starts again from the model of the
        # training range (recorded in the alias history like any move)
        models.promote(c, name, str(reg["version"]), "demo: the scenario starts from the model of its training range")
        models.move_alias(c, name, "challenger", None, "demo: a new scenario")
        models.move_alias(c, name, "previous", None, "demo: a new scenario")
        for mv in c.search_model_versions(f"name='{name}'"):
            if str(mv.version) != str(reg["version"]):      # an earlier scenario's models: never rolled back to
                c.set_model_version_tag(name, mv.version, "retired", "demo: a new scenario started")
                c.set_model_version_tag(name, mv.version, "retired.reset", "true")   # may be proposed again
        say(f"  (an earlier demo left v{champion} as champion: back to v{reg['version']}, the model of "
              f"{run.start_date}..{run.end_date}, recorded in the alias history)", flush=True)
        champion = str(reg["version"])
    if champion is None:
        raise StageFailed(f"demo: {name} has no champion after the training run (gate: {reg.get('reasons')})")
    mv = c.get_model_version(name, champion)
    m = c.get_run(mv.run_id).data.metrics
    say(f"Model: {name} v{reg['version']} registered (gate {reg['gate']}); champion = v{champion}: "
          f"test AP {m.get('test.average_precision', float('nan')):.4f} vs rule baseline "
          f"{m.get('baseline.average_precision', float('nan')):.4f}, ROC AUC {m.get('test.roc_auc', float('nan')):.4f}, "
          f"recall {m.get('test.recall', float('nan')):.3f}")
    say(f"  evaluation report (self-contained HTML): {training_uri(params, run.start_date, run.end_date)}/{artifact(REGISTER, REPORT)}")
    say(f"  registry: python -m pipelines models list | history | lineage {champion} | promote V | rollback")
    say(f"MLflow UI:  {lay.mlflow_url}/#/models/{name}/versions/{champion}   "
          f"(run: {lay.mlflow_url}/#/experiments/{c.get_run(mv.run_id).info.experiment_id}/runs/{mv.run_id})")

    # the nights of demo_data.nightly, each with the labels landing that day (drift from
    # demo_data.drift.start_date), as runs of the labels and nightly_scoring DAGs on the scheduler
    if nights:
        delay = params.dataset("labels").delay_days
        k = params.retrain.min_labelled_days_after_onset
        say("\n" + "=" * 78 + f"\nNights {nights[0]}..{nights[-1]} on the Airflow scheduler (drift injected from "
              f"{dp.drift.start_date}): each date, a run of the labels DAG for the labels landing that day (validate -> "
              f"feedback -> lifecycle) and a run of nightly_scoring (ingest -> validate -> features -> score -> shadow "
              f"-> decide -> monitor -> retrain). A retrain waits for the labels of {k} days from the drift's onset "
              f"({delay} days late); the nightly DAG triggers the training DAG.", flush=True)
        # a label day for every night: the labels of night D land on D + delay (the last ones after
        # the last night: that night's realized performance is measured too)
        labelled = date_range(nights[0] + dt.timedelta(days=delay), nights[-1] + dt.timedelta(days=delay))
        ahead = None            # the next date's labels run, started with tonight's run
        training: list[dict] = []       # triggered training runs not yet reported

        def trained(wait: bool) -> None:
            """Report the triggered training runs that have ended (all of them, with `wait`)."""
            for t in list(training):
                if wait or client.run(t["dag_id"], t["run_id"])["state"] in ("success", "failed"):
                    say("  " + training_line(params, runs.wait_triggered(t["dag_id"], t["run_id"])), flush=True)
                    training.remove(t)

        def night_done(day: dt.date) -> None:
            runs.finish("nightly_scoring", day)
            lab = None
            if day in labelled:
                runs.finish("labels", day)
                lab = {"lifecycle": lifecycle.summary(storage.read_json(store.uri("lifecycle_decision", date=day.isoformat())))}
            trained(wait=False)
            d = storage.read_json(store.uri("retrain_decision", date=day.isoformat()))
            say(night_line(store, day, {"decision": d}, lab, delay), flush=True)
            if d["retrain"]:
                t = d["training"]
                say(f"  -> nightly_scoring triggered training run {t['run_id']} ({t['conf']['start_date']}..{day}); "
                      f"the next night's shadow and retrain decision wait for it (its early tasks run meanwhile)",
                    flush=True)
                training.append(t)

        # Two nights at a time: tomorrow's run starts as soon as tonight's has built its features.
        # The DAG's gates keep the order that matters: tomorrow's score waits for its labels run's
        # lifecycle (wait_for_lifecycle), its decide for tonight's monitor (wait_for_previous_night),
        # its shadow and retrain decision for tonight's retrain decision and the training it
        # triggers (wait_for_last_training); the labels run of a date starts with the night before
        # and its feedback waits for that night's shadow (wait_for_last_night).
        running: list[dt.date] = []
        for day in nights:
            if day in labelled and ahead != day:
                runs.start("labels", day)
            runs.start("nightly_scoring", day)
            ahead = None
            if day + dt.timedelta(days=1) in labelled:
                ahead = day + dt.timedelta(days=1)
                runs.start("labels", ahead)
            running.append(day)
            while len(running) > 1:             # the night before ends (its line, in date order)
                night_done(running.pop(0))
            runs.tasks_done("nightly_scoring", day, ("features",))
        for day in running:
            night_done(day)
        trained(wait=True)
        for day in labelled:            # the label days after the last night
            if day > nights[-1]:
                if day != ahead:
                    runs.start("labels", day)
                runs.finish("labels", day)
                rec = lifecycle.summary(storage.read_json(store.uri("lifecycle_decision", date=day.isoformat())))
                say(f"  {day} (labels only: the last night's){labels_part(store, day, {'lifecycle': rec}, delay)}",
                    flush=True)
        for day in bug_days:            # fail closed, shown: a night whose data has a bug is blocked (a red run)
            run = runs.run("nightly_scoring", day, expect_failure=True)
            res = storage.read_json(store.uri("validation_results", dataset="transactions", date=day.isoformat()))
            say(f"  {day} nightly_scoring run {run['dag_run_id']}: {run['state'].upper()} at validate, nothing scored "
                  f"or decided -> {textwrap.shorten('; '.join(res['reasons']), 300, placeholder=' ...')}", flush=True)
        say(f"  Airflow runs of the demo: {runs.counts()}  ({lay.airflow_url}/dags/nightly_scoring/runs)", flush=True)
        last = nights[-1]
        say(f"  aliases now: {models.aliases(c, name)}; history: python -m pipelines models history")
        say(recovery(store, nights, dp.drift.start_date))
        say(f"  realized metrics and shadow comparison (self-contained HTML): "
              f"{store.uri('feedback_report', date=(last - dt.timedelta(days=delay)).isoformat())}")
        index = state_dir() / "reports" / "monitor"
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
        say(f"Monitoring report (self-contained HTML): {index / 'index.html'}  (in the lake: {store.uri('monitor_index')})")
        say(f"  review queue of a day: {store.uri('review_queue', date='YYYY-MM-DD')}; overrides: "
              f"python -m pipelines decide override --date D --event-id ID --decision block --reviewer you")
        say("  the same chain without the scheduler (a developer tool): python -m pipelines nightly --start D --end D")
        from pipelines.ops import audit

        found = audit.contradictions(audit.gather(params, date_range(dp.nightly[0], last), c, client))
        say(f"Audit {dp.nightly[0]}..{last} (lake records vs the registry vs Airflow's runs): "
              + (f"{len(found)} contradiction(s)" if found else "no contradiction"), flush=True)
        for line in found:
            say(f"  CONTRADICTION {line}")
    return {"runs": runs.seen, "phases": recovery_phases(store, nights, dp.drift.start_date) if nights else {},
            "contradictions": found if nights else [], "first_champion": champion}
