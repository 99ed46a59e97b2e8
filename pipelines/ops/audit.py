"""`python -m pipelines audit --start D --end D`: do the lake's records, the registry and Airflow's
runs tell one story for these dates? Every contradiction is one line; exit 1 when there is any;
exit 2 when there is nothing to judge (no date of the range has a record in the lake: the wrong lake,
params or range) or a source could not be read (the registry answered an error): an audit that read
nothing never says "no contradiction".

Checked per date (read only, nothing changes):
  * a retrain decision that says YES has its training run (`<dag_id>/<run_id>` in Airflow);
  * predictions were scored by a model version the registry holds, with the same sha256;
  * predictions have their validated input and features; decisions have their predictions, one per row;
  * a day held by the guardrails (held or rejected) has no published action but human overrides;
  * every alias move made by an Airflow task (alias history, in the range) names a run Airflow holds.
The facts are gathered first (`gather`), then judged by a pure function (`contradictions`).
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import sys

from pipelines.core import storage
from pipelines.core.cli import range_parser
from pipelines.core.config import date_range, load_params

log = logging.getLogger("pipelines.audit")
ACTIONS = ("approve", "review", "block")


_json = storage.read_json_optional


def _rows(uri: str) -> int | None:
    if not storage.exists(uri):
        return None
    return storage.read_parquet(uri).height


class AuditError(RuntimeError):
    """Nothing to judge, or a source that could not be read: exit 2."""


RECORDS = ("retrain", "model", "predictions", "validated", "features", "summary", "decisions")


def recorded(f: dict) -> bool:
    """Whether the lake holds any record of the date."""
    return any(f.get(k) not in (None, False) for k in RECORDS)


def day_facts(store, day: dt.date) -> dict:
    """What the lake says about one date."""
    d = day.isoformat()
    f = {"date": d, "retrain": _json(store.uri("retrain_decision", date=d)),
         "model": _json(store.uri("scored_model", date=d)),
         "predictions": _rows(store.uri("predictions", date=d)),
         "validated": storage.exists(store.uri("validated", dataset="transactions", date=d)),
         "features": storage.exists(store.uri("features", date=d)),
         "summary": _json(store.uri("decision_summary", date=d)), "decisions": None, "acted": None}
    dec_uri = store.uri("decisions", date=d)
    if storage.exists(dec_uri):
        dec = storage.read_parquet(dec_uri)
        f["decisions"] = dec.height
        acted = dec.filter(dec["decision"].is_in(ACTIONS) & (dec["reason_code"] != "human_override"))
        f["acted"] = acted.height
    return f


def _in_range(move: dict, days: list[dt.date]) -> bool:
    """A move belongs to the range when the Airflow run that made it is for a date in it (its run id
    holds the logical date: retrain__D, scheduled__D...), or else when it was made on such a date."""
    lo, hi = days[0].isoformat(), days[-1].isoformat()
    found = re.search(r"\d{4}-\d{2}-\d{2}", move.get("by", "").split("/", 1)[-1]) if move.get("by", "").startswith(
        "airflow:") else None
    return lo <= (found.group(0) if found else move.get("at", "")[:10]) <= hi


def gather(params, days: list[dt.date], registry=None, airflow=None) -> dict:
    """Facts from the lake, the registry (`registry`: an MlflowClient) and Airflow (`airflow`: an
    AirflowClient); a source that is None is not consulted (and the audit says so)."""
    facts = {"days": [day_facts(params.storage, d) for d in days], "versions": {}, "runs": None, "moves": []}
    names = {f["model"]["model_name"] for f in facts["days"] if f["model"] and f["model"].get("model_name")}
    names.add(params.register.model_name)
    if registry is not None:
        from pipelines.core import registry as models

        for name in sorted(names):
            try:        # (an unknown name: an empty answer, not an error)
                facts["versions"][name] = {str(mv.version): (mv.tags or {}).get("model_sha256")
                                           for mv in registry.search_model_versions(f"name='{name}'")}
            except Exception as exc:
                raise AuditError(f"audit: the registry did not answer for {name}: {type(exc).__name__}: "
                                 f"{str(exc)[:300]}; nothing judged") from None
            if facts["versions"][name]:
                facts["moves"] += [{**m, "model": name} for m in models.history(registry, name) if _in_range(m, days)]
    if airflow is not None:
        dags = {(f["retrain"]["training"] or {}).get("dag_id") for f in facts["days"]
                if f["retrain"] and f["retrain"].get("training")}
        dags |= {m["by"].split(":", 1)[1].split("/")[0] for m in facts["moves"] if m.get("by", "").startswith("airflow:")}
        facts["runs"] = {dag: airflow.run_ids(dag) for dag in sorted(x for x in dags if x)}
    return facts


def contradictions(facts: dict) -> list[str]:
    """Every place where the records disagree, one line each."""
    out = []
    runs, versions = facts.get("runs"), facts.get("versions") or {}
    for f in facts["days"]:
        d = f["date"]
        r = f["retrain"]
        if r and r.get("retrain") and runs is not None:
            t = r.get("training") or {}
            if t.get("run_id") not in runs.get(t.get("dag_id"), set()):
                out.append(f"{d}: the retrain decision says YES but Airflow holds no run {t.get('dag_id')}/{t.get('run_id')}"
                           + (f" (triggering failed: {r['trigger_error']})" if r.get("trigger_error") else ""))
        m = f["model"]
        if f["predictions"] is not None and m and m.get("scored_by") == "model" and versions:
            held = versions.get(m.get("model_name"), {})
            v = str(m.get("model_version"))
            if v not in held:
                out.append(f"{d}: predictions scored by {m.get('model_name')} v{v}, a version the registry does not hold")
            elif held[v] and m.get("model_sha256") and held[v] != m["model_sha256"]:
                out.append(f"{d}: predictions scored by {m.get('model_name')} v{v} with sha256 {m['model_sha256'][:12]}, "
                           f"the registry says {held[v][:12]}")
        if f["predictions"] is not None and not (f["validated"] and f["features"]):
            out.append(f"{d}: predictions without their input ({'no validated transactions' if not f['validated'] else 'no features'})")
        if f["decisions"] is not None and f["predictions"] is None:
            out.append(f"{d}: decisions without predictions")
        elif f["decisions"] is not None and f["decisions"] != f["predictions"]:
            out.append(f"{d}: {f['decisions']} decisions for {f['predictions']} predictions")
        g = (f["summary"] or {}).get("guardrails") or {}
        if g.get("status") in ("held", "rejected") and f["acted"]:
            out.append(f"{d}: the day is {g['status']} by the guardrails but {f['acted']} decision(s) act on it")
    for mv in facts.get("moves") or []:
        by = mv.get("by", "")
        if by.startswith("airflow:") and runs is not None:
            dag, run = (by.split(":", 1)[1].split("/") + ["", ""])[:2]
            if run not in runs.get(dag, set()):
                out.append(f"{mv['at'][:10]}: {mv['model']} alias {mv['alias']} moved {mv.get('from')} -> {mv.get('to')} "
                           f"by {by}, a run Airflow does not hold")
    return out


def main(argv: list[str]) -> int:
    ap = range_parser("audit", __doc__)
    ap.add_argument("--no-airflow", action="store_true", help="do not consult Airflow (its checks are skipped)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    params = load_params(a.params)
    from pipelines.core import registry as models

    airflow = None
    if not a.no_airflow:
        from pipelines.ops.airflow_api import AirflowClient, _require_api_server

        _require_api_server()
        airflow = AirflowClient()
    days = date_range(a.start, a.end)
    try:
        facts = gather(params, days, models.client(), airflow)
        seen = sum(recorded(f) for f in facts["days"])
        if not seen:
            raise AuditError(f"audit {a.start}..{a.end}: no date of the range has a record in the lake "
                             f"{params.storage.lake} (the wrong lake, params or range?); nothing judged")
    except AuditError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    found = contradictions(facts)
    for line in found:
        print(f"CONTRADICTION {line}")
    print(f"audit {a.start}..{a.end}: {len(days)} date(s), {seen} with records, {len(found)} contradiction(s)"
          + ("" if airflow else " (Airflow not consulted)"))
    return 1 if found else 0
