"""Stage `register`: one MLflow run per training, a registered model version, the champion gate.

In: <training>/train/ and <training>/evaluate/ (what train and evaluate published), the feature
partitions of the test window (to score the current champion on the same rows), the validation
results of the training range. Out: an MLflow run (params, metrics, plots, report, manifest,
validation results, lineage tags; the model with the XGBoost flavor, signature, input example)
and a new version of `register.model_name`, and <training>/register/registration.json.

Gate (register.gate): absolute minimums on the test window, and, when a champion exists, no worse
than the champion on the same rows by more than max_drop_vs_champion on the headline metric and
max_slice_drop_vs_champion on each slice with enough frauds. Cold start (no champion): minimums
only, then it becomes `champion`. Otherwise a passing model becomes `challenger`; a failing one stays
registered without an alias, with the reasons in its description and tags.

Idempotent: the version carries the model's sha256; registering the same model again finds it,
creates nothing and moves no alias.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from pipelines.core import faults, lake, storage
from pipelines.core import modelio as M
from pipelines.core import registry as R
from pipelines.core.cli import resolve, stage_parser
from pipelines.core.config import GateParams
from pipelines.core.metrics import evaluate_scores, score_frame
from pipelines.core.report import evaluation_html

log = logging.getLogger("pipelines.register")
REPO = Path(__file__).resolve().parent.parent
COMPLETE_TAG = "registration.complete"      # set last: every step of the registration is done
PLAN_TAG = "registration.plan"              # the alias moves the gate decided, kept until they are made


@dataclass
class GateDecision:
    passed: bool
    alias: str | None
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)


def gate(candidate: dict, champion: dict | None, g: GateParams, slice_min_positives: int) -> GateDecision:
    """Decide on a candidate from its test-window evaluation and the champion's on the same rows
    (None at cold start). Pure: returns the decision with every check and the failing reasons."""
    checks = []

    def check(name: str, value, bound, ok: bool) -> None:
        checks.append({"check": name, "value": value, "bound": bound, "passed": bool(ok)})

    for metric, minimum in sorted(g.minimums.items()):
        v = candidate.get(metric)
        check(f"{metric} >= {minimum}", v, minimum, v is not None and v >= minimum)
    if champion is not None:
        h = g.headline_metric
        c, b = candidate.get(h), champion.get(h)
        if b is not None:
            bound = b - g.max_drop_vs_champion
            check(f"{h} >= champion {b:.4f} - {g.max_drop_vs_champion}", c, bound, c is not None and c >= bound)
        for key, s in sorted(candidate.get("slices", {}).items()):
            ch = champion.get("slices", {}).get(key)
            if not ch or s["positives"] < slice_min_positives or ch.get("average_precision") is None:
                continue
            bound = ch["average_precision"] - g.max_slice_drop_vs_champion
            v = s.get("average_precision")
            check(f"slice {key} AP >= champion {ch['average_precision']:.4f} - {g.max_slice_drop_vs_champion}",
                  v, bound, v is not None and v >= bound)
    reasons = [f"failed: {c['check']} (got {_f(c['value'])})" for c in checks if not c["passed"]]
    passed = not reasons
    alias = None if not passed else ("champion" if champion is None else "challenger")
    return GateDecision(passed, alias, reasons, checks)


def _f(v) -> str:
    return "none" if v is None else f"{v:.4f}"


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}".replace("=", ".").replace("@", "_at_")
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def git_tags() -> dict[str, str]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
        except OSError:
            return ""
    commit = git("rev-parse", "HEAD") or "unknown"
    # the code differs from the commit (params.yaml and dvc.lock are recorded on their own: a training
    # DAG workspace writes the run's params.yaml, dvc repro its lock)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!params.yaml", ":!dvc.lock"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def dvc_tags(start, end, sha: str) -> dict[str, str]:
    """The dvc.lock hashes of the data, feature, train and evaluate outputs, only when that lock
    describes this model: its train stage ran this range, and its output (data/train) holds this
    model (`dvc repro` writes each stage's entry as it finishes, before register runs). A model
    trained elsewhere (the training DAG, a stage run by hand) gets `dvc.lineage` saying why it has
    no DVC hashes, never another run's."""
    import yaml

    lock = REPO / "dvc.lock"
    if not lock.exists():
        return {"dvc.lineage": "none: no dvc.lock in the project"}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    cmd = str(stages.get("train", {}).get("cmd", ""))
    try:
        snap = json.loads((REPO / "data" / lake.TRAIN / lake.SUMMARY).read_text()).get("model_sha256")
    except (OSError, ValueError):
        snap = None
    if f"--start {start} --end {end}" not in cmd or snap != sha:
        locked = " ".join(cmd.split()[4:8]) or "no train stage"
        return {"dvc.lineage": f"none: trained outside `dvc repro`; the project's dvc.lock describes another run "
                               f"({locked})"[:500]}
    out = {"dvc.lineage": "dvc.lock of this run (dvc repro)"}
    for stage in ("ingest", "validate", "features", "train", "evaluate"):
        for o in stages.get(stage, {}).get("outs", []):
            out[f"dvc.{stage}.md5"] = o.get("md5", "")
    return out


def validation_summary(store, days) -> dict[str, dict]:
    """Per date of the training range: the transactions validation outcome and its row accounting."""
    out = {}
    for day in days:
        try:
            r = storage.read_json(store.uri("validation_results", dataset="transactions", date=day.isoformat()))
        except storage.MissingObject:
            out[day.isoformat()] = {"status": "missing"}
            continue
        out[day.isoformat()] = {k: r[k] for k in ("status", "reasons", "rows_in", "rows_validated", "rows_quarantined",
                                                  "rows_held") if k in r}
    return out


def _champion_eval(c, name: str, version: str, test: pl.DataFrame, manifest: dict, p) -> tuple[dict | None, str]:
    """The champion scored by the same code on the same test rows; or its logged evaluation when
    its feature spec differs (then the windows differ too, and the note says so)."""
    mv = c.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        import mlflow

        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="train", dst_path=tmp)
        ch_manifest = json.loads((Path(tmp) / lake.artifact(lake.TRAIN, lake.MANIFEST)).read_text())
        ch_summary = json.loads((Path(tmp) / lake.artifact(lake.TRAIN, lake.SUMMARY)).read_text())
        booster = M.load_booster((Path(tmp) / lake.artifact(lake.TRAIN, lake.MODEL)).read_bytes())
        if ch_manifest["spec_hash"] == manifest["spec_hash"]:
            scored = score_frame(booster, test, ch_manifest, f"champion v{version}")
            return evaluate_scores(scored, float(ch_summary["operating_threshold"]), p), "same rows"
        mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=lake.artifact(lake.EVALUATE, lake.EVALUATION),
                                            dst_path=tmp)
        logged = json.loads((Path(tmp) / lake.EVALUATION).read_text())["test"]
        return logged, f"feature spec differs ({ch_manifest['spec_hash']} vs {manifest['spec_hash']}): its logged test metrics"


def _reusable_run(c, experiment: str, sha: str, name: str, data_range: str) -> tuple[str | None, str | None]:
    """A run of an earlier, interrupted registration of the same model (sha, registered model name
    and date range) that got as far as logging the model: it is reused, no second run. A run of it
    killed before that is marked FAILED."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None, None
    query = f"tags.model_sha256 = '{sha}' and tags.registered_model = '{name}' and tags.`data.range` = '{data_range}'"
    for run in c.search_runs([exp.experiment_id], query):
        if run.data.tags.get("model_uri"):
            if run.info.status != "FINISHED":
                c.set_terminated(run.info.run_id, "FINISHED")
            return run.info.run_id, run.data.tags["model_uri"]
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, "abandoned", "an interrupted registration; a later run replaced it")
            c.set_terminated(run.info.run_id, "FAILED")
    return None, None


def _log_inputs(store, summary: dict, win: dict) -> None:
    """The feature partitions of each window as the run's inputs (MLflow datasets: the lake prefix,
    the date range, a digest of the partitions' sha256 where training read them)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    source = resolve_dataset_source(store.uri("features", date="@").split("date=@")[0])
    hashes = summary.get("inputs_sha256") or {}
    for context, key in (("training", "train"), ("validation", "valid"), ("testing", "test")):
        first, last = win[key]
        days = {d: h for d, h in hashes.items() if first <= d <= last}
        digest = M.sha256(json.dumps(days, sort_keys=True).encode())[:20] if days else None
        mlflow.log_input(MetaDataset(source, name=f"features {first}..{last}", digest=digest), context=context)


def _log_search(run_id: str, summary: dict) -> None:
    """The grid search as a table artifact (one row per trial) and the chosen model's validation
    metric per boosting round as a metric history (the learning curve in the run's charts)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    trials = summary.get("search") or []
    if trials:
        keys = sorted({k for t in trials for k in t})
        mlflow.log_table({k: [t.get(k) for t in trials] for k in keys}, artifact_file="train/search_trials.json")
    curve = summary.get("learning_curve") or {}
    points = [Metric(f"learning_curve.valid_{curve['metric']}", float(v), int(time.time() * 1000), i)
              for i, v in enumerate(curve.get("valid") or [])]
    for i in range(0, len(points), 1000):          # log_batch takes 1000 metrics a call
        mlflow.MlflowClient().log_batch(run_id, metrics=points[i:i + 1000])


def _log_run(start, end, sha, tags, summary, win, params, ep, rp, metrics, evaluation, champ_eval, base, decision,
             champion, how, val_summary, booster, signature, example) -> tuple[str, str]:
    """The training's MLflow run: params, metrics, artifacts and the model (XGBoost flavor)."""
    import mlflow
    import mlflow.xgboost

    with mlflow.start_run(run_name=f"train {start}..{end} {sha[:8]}") as run:
        mlflow.set_tags(tags)
        _log_inputs(params.storage, summary, win)
        _log_search(run.info.run_id, summary)
        mlflow.log_params({**{f"xgb.{k}": v for k, v in summary["chosen_params"].items()},
                           "best_iteration": summary["best_iteration"], "operating_threshold": summary["operating_threshold"],
                           **{f"window.{k}": "..".join(v) for k, v in win.items()},
                           **{f"train.{k}": v for k, v in asdict(params.train).items() if k not in ("base",)},
                           **{f"evaluate.{k}": v for k, v in asdict(ep).items()},
                           **{f"gate.{k}": v for k, v in asdict(rp.gate).items()}})
        flat = _flatten(metrics)
        flat.update(_flatten({k: v for k, v in evaluation["test"]["slices"].items()}, "slice."))
        if champ_eval:
            flat.update(_flatten({k: champ_eval.get(k) for k in ("average_precision", "roc_auc", "recall", "precision")},
                                 "champion."))
        mlflow.log_metrics(flat)
        with tempfile.TemporaryDirectory() as tmp:
            for stage in ("train", "evaluate"):
                for uri in storage.list_uris(f"{base}/{stage}"):
                    dst = Path(tmp) / stage / uri[len(base) + len(stage) + 2:]
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(storage.read_bytes(uri))
            (Path(tmp) / "gate.json").write_text(json.dumps({**asdict(decision), "champion": champion, "compared": how,
                                                             "champion_eval": champ_eval}, indent=2, default=str))
            (Path(tmp) / "validation_results.json").write_text(json.dumps(val_summary, indent=2, sort_keys=True))
            if tags.get("dvc.lineage", "").startswith("dvc.lock of this run"):
                # the lock the lineage tags come from, and the exact params it ran with: what
                # `models reproduce` needs to rebuild this model
                (Path(tmp) / "dvc").mkdir()
                for name in ("dvc.lock", "params.yaml", "dvc.yaml"):
                    shutil.copy2(REPO / name, Path(tmp) / "dvc" / name)
            mlflow.log_artifacts(tmp)
        info = mlflow.xgboost.log_model(booster, name="model", signature=signature, input_example=example,
                                        pip_requirements=list(rp.pip_requirements), model_format="ubj")
        mlflow.set_tag("model_uri", info.model_uri)      # set last: the run is complete (a resume reuses it)
        return run.info.run_id, info.model_uri


def _plan(c, name: str, decision: GateDecision, champion: str | None, how: str) -> list[dict]:
    """The alias move of this registration ({alias, from, reason}; to the new version), decided
    before the version exists and kept on it until it is made."""
    if decision.alias == "champion":
        reason = "cold start: gate passed (" + "; ".join(ch["check"] for ch in decision.checks) + ")"
    elif decision.alias == "challenger":
        reason = f"gate passed against champion v{champion} ({how})"
    else:
        return []
    return [{"alias": decision.alias, "from": R.get_alias(c, name, decision.alias), "reason": reason}]


ATTEMPT_TAG = "registration.attempt"        # the registrations of this version so far (absent: 1)
RESET_TAG = "retired.reset"                 # retired by a scenario reset (the demo), not by its results


def _proposable_again(c, name: str, mv) -> bool:
    """A complete version registered again (a training that produced the very same model bytes) goes
    through the gate again when no alias points at it and nothing retired it for its results (a
    lost shadow, a rollback): e.g. the demo's scenario replayed after a reset, or a model whose
    gate failed against an earlier champion. One that holds an alias, or was retired, stays as is."""
    if str(mv.version) in R.aliases(c, name).values():
        return False
    return not (set(R.RULED_OUT) & set(mv.tags)) or mv.tags.get(RESET_TAG) == "true"


def _propose_again(c, name: str, mv, decision: GateDecision, champion: str | None, how: str) -> str:
    """A new registration attempt of an existing version: the gate's verdict and planned moves on the
    version (each move recorded once, under an op of this attempt), then the moves."""
    version = str(mv.version)
    attempt = int(mv.tags.get(ATTEMPT_TAG) or 1) + 1
    plan = _plan(c, name, decision, champion, how)
    c.delete_model_version_tag(name, version, COMPLETE_TAG)
    for k, v in {"gate": "passed" if decision.passed else "failed", "gate_alias": decision.alias or "",
                 "gate_reasons": "; ".join(decision.reasons)[:4000], "gate.compared_with": how,
                 PLAN_TAG: json.dumps(plan, sort_keys=True), ATTEMPT_TAG: str(attempt)}.items():
        c.set_model_version_tag(name, version, k, v)
    if plan:                            # a candidate again: no longer retired
        for k in (*R.RULED_OUT, RESET_TAG):
            if k in mv.tags:
                c.delete_model_version_tag(name, version, k)
    log.info("register: model %s is version %s of %s, free since; registration attempt %d: gate %s -> %s",
             mv.tags.get("model_sha256", "")[:12], version, name, attempt, "passed" if decision.passed else "failed",
             decision.alias or "no alias")
    _complete(c, name, version)
    return version


def _complete(c, name: str, version: str) -> None:
    """Finish a registration from what its version records (safe to repeat, and to run after a kill
    at any point): the description, the planned alias moves (each recorded once in the alias history,
    with the op that made it), then the completion tag."""
    mv = c.get_model_version(name, version)
    if mv.tags.get("description_pending"):
        c.update_model_version(name, version, description=mv.tags["description_pending"])
    attempt = int(mv.tags.get(ATTEMPT_TAG) or 1)
    for move in json.loads(mv.tags.get(PLAN_TAG) or "[]"):
        op = f"register:{name}:v{version}:{move['alias']}" + (f":{attempt}" if attempt > 1 else "")
        current = R.get_alias(c, name, move["alias"])
        if current not in (move["from"], version) and not any(h.get("op") == op for h in R.history(c, name)):
            # someone moved the alias after this registration was planned: theirs stands
            log.warning("register: %s is v%s now, not v%s as planned; v%s is not moved there (op %s)",
                        move["alias"], current, move["from"], version, op)
            c.set_model_version_tag(name, version, "registration.skipped_move",
                                    f"{move['alias']} moved to v{current} meanwhile")
            continue
        R.move_alias(c, name, move["alias"], version, move["reason"], op=op, frm=move["from"])
    if mv.tags.get("description_pending"):
        c.delete_model_version_tag(name, version, "description_pending")
    c.set_model_version_tag(name, version, COMPLETE_TAG, "true")


def _evaluation_page(c, name: str, version: str, base: str, out, metrics: dict, evaluation: dict) -> None:
    """The evaluation page titled with the model's name and version ("fraud-xgb v3"): next to the
    registration in the lake (<training>/register/report.html) and on the version's MLflow run
    (evaluation_report.html). The same bytes each time it is written."""
    mv = c.get_model_version(name, version)
    pngs = {uri.rsplit("/", 1)[-1]: storage.read_bytes(uri) for uri in storage.list_uris(f"{base}/{lake.EVALUATE}/images")}
    html = evaluation_html(f"{name} v{version}", metrics, evaluation, pngs,
                           f"Model sha256 {evaluation['model_sha256'][:12]}, MLflow run {mv.run_id}, trained on "
                           f"{'..'.join(evaluation['windows']['train'])}").encode()
    out.put("report.html", html, "text/html")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "evaluation_report.html").write_bytes(html)
        c.log_artifact(mv.run_id, str(Path(tmp) / "evaluation_report.html"))


def _registration(c, name: str, version: str) -> dict:
    mv = c.get_model_version(name, version)
    return {"model_name": name, "version": version, "run_id": mv.run_id, "model_sha256": mv.tags.get("model_sha256"),
            "gate": mv.tags.get("gate"), "alias": mv.tags.get("gate_alias") or None,
            "reasons": [r for r in (mv.tags.get("gate_reasons") or "").split("; ") if r]}


def main(argv: list[str]) -> int:
    import mlflow
    import mlflow.xgboost
    from mlflow.models import infer_signature

    args = stage_parser("register", __doc__).parse_args(argv)
    params, days = resolve(args)
    rp, ep, store, labels = params.register, params.evaluate, params.storage, params.dataset("labels")
    start, end = min(days), max(days)
    base = lake.training_uri(params, start, end)
    art = lambda stage, name: f"{base}/{lake.artifact(stage, name)}"  # noqa: E731
    summary = storage.read_json(art(lake.TRAIN, lake.SUMMARY))
    manifest = storage.read_json(art(lake.TRAIN, lake.MANIFEST))
    raw = storage.read_bytes(art(lake.TRAIN, lake.MODEL))
    evaluation = storage.read_json(art(lake.EVALUATE, lake.EVALUATION))
    metrics = storage.read_json(art(lake.EVALUATE, lake.METRICS))
    sha = M.sha256(raw)
    if sha != summary["model_sha256"] or evaluation["model_sha256"] != sha:
        raise M.TrainingDataError(f"{base}: model.ubj, summary.json and evaluation.json disagree on the model "
                                  f"(sha256 {sha[:12]}); re-run train and evaluate")
    with M.StageOutput(base, "register", args.snapshot) as out:
        c = R.client()
        name = rp.model_name
        from mlflow.exceptions import MlflowException

        try:
            c.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise                   # down, too slow or refused: one line from __main__, nothing created
            c.create_registered_model(name, description="Fraud model (XGBoost). Aliases: champion scores, challenger "
                                                        "shadows, previous is the last champion. See tags alias_history.*")
        existing = [mv for mv in c.search_model_versions(f"name='{name}'") if mv.tags.get("model_sha256") == sha]
        again = None
        if existing:
            mv = min(existing, key=lambda m: int(m.version))
            if mv.tags.get(COMPLETE_TAG) != "true":     # a run killed after the version was created: finish its work
                log.warning("register: version %s of %s (model %s) was left half-registered; completing it",
                            mv.version, name, sha[:12])
                _complete(c, name, str(mv.version))
                _evaluation_page(c, name, str(mv.version), base, out, metrics, evaluation)
                out.put_json(lake.REGISTRATION, _registration(c, name, str(mv.version)))
                return 0
            if not _proposable_again(c, name, mv):
                log.info("register: model %s is already version %s of %s; nothing created, no alias moved",
                         sha[:12], mv.version, name)
                _evaluation_page(c, name, str(mv.version), base, out, metrics, evaluation)
                out.put_json(lake.REGISTRATION, _registration(c, name, str(mv.version)))
                return 0
            again = mv                  # the same bytes, registered before, free now: the gate decides again

        win = evaluation["windows"]
        test, _ = M.load_labelled(store, M.window_days(win["test"]), labels.delay_days, labels.first_date)
        champion = R.get_alias(c, name, "champion")
        champ_eval, how = (None, "cold start: no champion")
        if champion:
            champ_eval, how = _champion_eval(c, name, champion, test, manifest, ep)
        decision = gate(evaluation["test"], champ_eval, rp.gate, ep.slice_min_positives)
        log.info("gate: %s (%s) %s", "PASSED" if decision.passed else "FAILED", how, "; ".join(decision.reasons))

        if again is not None:
            version = _propose_again(c, name, again, decision, champion, how)
            _evaluation_page(c, name, version, base, out, metrics, evaluation)
            rec = _registration(c, name, version)
            out.put_json(lake.REGISTRATION, rec)
            print(f"{name} v{version} (registered before, proposed again): gate {'passed' if decision.passed else 'failed'}, "
                  f"alias {decision.alias or 'none'}")
            return 0

        val_summary = validation_summary(store, M.window_days([win["train"][0], win["test"][1]]))
        booster = M.load_booster(raw)
        # the signature declares every feature a double: a feature partition read as `score` reads it
        # (Float32, Float64, Int8..Int32 columns, nulls) passes MLflow's schema enforcement as it is,
        # and XGBoost casts to float32 as feature_matrix does, so pyfunc gives the stage's scores
        sample = test.head(200)
        doubles = sample.select(pl.col(c).cast(pl.Float64) for c in manifest["feature_names"]).to_pandas()
        example = doubles.head(5)
        signature = infer_signature(doubles, M.predict(booster, M.feature_matrix(sample, manifest, "input example")))
        tags = {"model_sha256": sha, "data.range": f"{start}..{end}", "data.train_window": "..".join(win["train"]),
                "data.valid_window": "..".join(win["valid"]), "data.test_window": "..".join(win["test"]),
                "data.features_sha256": M.sha256(json.dumps(summary["inputs_sha256"], sort_keys=True).encode()),
                "features.spec_hash": manifest["spec_hash"], "features.code_version": str(manifest.get("code_version")),
                "train.code_version": summary["code_version"], "device_requested": summary["device_requested"],
                "device_used": summary["device_used"], "xgboost.version": summary["xgboost"]["version"],
                "xgboost.use_cuda": str(summary["xgboost"]["use_cuda"]).lower(), "gate": "passed" if decision.passed else "failed",
                "gate.compared_with": f"v{champion} ({how})" if champion else how, "registered_by": R.actor(),
                "registered_model": name,
                # which experiment on the range: the lake folder of its artifacts and the key of its settings
                "training.key": lake.training_key(params), "training.uri": base,
                **git_tags(), **dvc_tags(start, end, sha)}
        exp = mlflow.set_experiment(rp.experiment)
        if exp.tags.get("mlflow.experimentKind") != "custom_model_development":   # the UI opens it as classic ML
            c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", "custom_model_development")
        run_id, model_uri = _reusable_run(c, rp.experiment, sha, name, tags["data.range"])
        if run_id is None:
            run_id, model_uri = _log_run(start, end, sha, tags, summary, win, params, ep, rp, metrics, evaluation, champ_eval,
                              base, decision, champion, how, val_summary, booster, signature, example)
        faults.point("register.after_run")
        desc = (f"Trained on {win['train'][0]}..{win['train'][1]}, tested on {win['test'][0]}..{win['test'][1]}: "
                f"AP {_f(evaluation['test']['average_precision'])}, recall {_f(evaluation['test']['recall'])} at "
                f"{summary['operating_threshold']:.4f}. Gate {'passed' if decision.passed else 'FAILED'} ({how})")
        if decision.reasons:
            desc += ": " + "; ".join(decision.reasons)
        plan = _plan(c, name, decision, champion, how)
        mv = mlflow.register_model(model_uri, name, tags={
            **{k: tags[k] for k in ("model_sha256", "data.range", "gate", "features.spec_hash", "device_used")},
            "gate_alias": decision.alias or "", "gate_reasons": "; ".join(decision.reasons)[:4000],
            PLAN_TAG: json.dumps(plan, sort_keys=True), "description_pending": desc[:4000]})
        version = str(mv.version)
        faults.point("register.after_version")
        _complete(c, name, version)
        _evaluation_page(c, name, version, base, out, metrics, evaluation)
        rec = _registration(c, name, version)
        out.put_json(lake.REGISTRATION, rec)
        log.info("registered %s v%s (run %s): gate %s -> %s", name, version, run_id, tags["gate"],
                 decision.alias or "no alias")
        print(f"{name} v{version}: gate {tags['gate']}, alias {decision.alias or 'none'}; MLflow run {run_id}")
    return 0
