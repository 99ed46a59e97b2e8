"""Shared DAG wiring (plugins/ is on Airflow's sys.path): retries with back-off, the Params every
form shares, and the one way a task calls a stage. Light imports only: DAG files import this at
parse time.

No form or conf value ever reaches a shell: a task runs `python -m pipelines <stage> ...` as an
argument vector (no shell at all), each value one `--option=value` element, after checking it
(the Params' JSON schema refuses a bad value when the run is created; `checked_params_file` and
the date check refuse it again here, so a run made some other way fails before anything runs).
"""
from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import Asset, BaseOperator, BaseSensorOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

REPO = Path(__file__).resolve().parent.parent
# Emitted when `register` succeeds: a new model version exists (with or without an alias).
MODEL_ASSET = Asset(name="model", uri="fraudops://registry/model")
NOT_LANDED = 99                     # pipelines.ingest.NOT_LANDED: the sensors poke again on it
DATA_BLOCKED = 3                    # pipelines.core.cli.EXIT_BLOCKED: the data was refused; no retry
# a .yaml/.yml path of plain characters, no ".." (the file must also exist inside the project or
# its state folder: checked_params_file)
PARAMS_FILE_PATTERN = r"^(?!.*\.\.)[A-Za-z0-9_/][A-Za-z0-9_./-]{0,300}\.ya?ml$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
VERSION_PATTERN = r"^[1-9][0-9]{0,8}$"


def state_dir() -> Path:
    return Path(os.environ.get("FRAUDOPS_HOME") or REPO / ".state").resolve()


def alerts_file() -> Path:
    return state_dir() / "alerts" / "airflow.jsonl"


def record_alert(context) -> None:
    """on_failure_callback: append an alert record (dag, task, run, try, error) to the alerts log."""
    ti = context.get("ti") or context.get("task_instance")
    rec = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kind": "task_failed",
           "dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None),
           "run_id": getattr(ti, "run_id", None), "try_number": getattr(ti, "try_number", None),
           "error": str(context.get("exception"))[:2000]}
    path = alerts_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")


def default_args() -> dict:
    return {
        "owner": "fraudops",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": record_alert,
    }


def params_file_param() -> Param:
    return Param("params.yaml", type="string", pattern=PARAMS_FILE_PATTERN, title="Params file",
                 description="a .yaml file inside the project (relative to its root) or its state folder; "
                             "letters, digits, _ . / - only")


def checked_params_file(value: Any) -> str:
    """The params file of a run, refused (the run fails, nothing runs) unless it is an existing
    .yaml file inside the project or its state folder, named with plain characters only."""
    text = value if isinstance(value, str) else ""
    if not re.fullmatch(PARAMS_FILE_PATTERN, text):
        raise AirflowFailException(f"params_file {str(value)[:80]!r} refused: only a .yaml path of letters, digits, "
                                   f"_ . / - (no '..', spaces or shell characters); nothing ran")
    path = (REPO / text).resolve()
    if not _allowed_params_path(path):
        raise AirflowFailException(f"params_file {text!r} refused: not a file of the project ({REPO}, outside its "
                                   f"state and data folders) or of {state_dir() / 'params'}; nothing ran")
    if not path.is_file():
        raise AirflowFailException(f"params_file {text!r} refused: no such file ({path}); nothing ran")
    return str(path)


def _allowed_params_path(path: Path) -> bool:
    """A params file is a project file (not under a hidden folder such as .state/.git/.venv, nor
    data/) or a file under <state>/params/ (where operators and tests keep variants)."""
    params_dir = state_dir() / "params"
    if path.is_relative_to(params_dir):
        return True
    repo = REPO.resolve()
    if not path.is_relative_to(repo):
        return False
    top = path.relative_to(repo).parts[0]
    return not (top.startswith(".") or top == "data")


def _ds(context) -> str:
    """The run's logical date (YYYY-MM-DD); a run made without one has nothing to work on."""
    ds = context.get("ds")
    if not ds:
        raise AirflowFailException("this DAG works on one date (ds): trigger it with a logical date; nothing ran")
    return _checked(ds, DATE_PATTERN, "ds")


def _checked(value: Any, pattern: str, name: str) -> str:
    text = str(value)
    if not re.fullmatch(pattern, text):
        raise AirflowFailException(f"{name} {text[:80]!r} refused: does not match {pattern}; nothing ran")
    return text


class _Subprocess:
    """Runs `argv` (no shell) in the project root with the task's Airflow context variables; its
    output goes to the task log. A killed task sends SIGTERM to the child."""

    _hook = None

    def _run(self, argv: list[str], context) -> tuple[int, str]:
        """The exit code and the last line of output."""
        from airflow.providers.standard.hooks.subprocess import SubprocessHook
        from airflow.sdk.execution_time.context import context_to_airflow_vars

        env = {**os.environ, **context_to_airflow_vars(context, in_env_var_format=True)}
        self._hook = SubprocessHook()
        result = self._hook.run_command(argv, env=env, cwd=str(REPO))
        return result.exit_code, result.output

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.send_sigterm()


class StageOperator(_Subprocess, BaseOperator):
    """`python -m pipelines <stage> --params=<params_file> [--date=<ds>] <args> <form options>`,
    run as an argument vector in the project root (no shell); its output goes to the task log and
    its last line is the task's XCom.

    `date`: pass the run's logical date (ds). `options`: form param -> CLI option, for dates
    (checked as YYYY-MM-DD) and free text (passed as one `--option=value` element, never parsed);
    `flags`: boolean form param -> CLI flag."""

    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, args: tuple[str, ...] = (), date: bool = False,
                 options: dict[str, str] | None = None, dates: tuple[str, ...] = (),
                 flags: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage, self.args, self.date = stage, tuple(args), date
        self.options, self.dates, self.flags = dict(options or {}), tuple(dates), dict(flags or {})

    def argv(self, context) -> list[str]:
        params = context["params"]
        argv = [sys.executable, "-m", "pipelines", self.stage, f"--params={checked_params_file(params.get('params_file'))}"]
        if self.date:
            argv.append(f"--date={_ds(context)}")
        argv += self.args
        for name, option in self.options.items():
            value = params.get(name)
            if value in (None, ""):
                continue
            if name in self.dates:
                value = _checked(value, DATE_PATTERN, name)
            argv.append(f"{option}={value}")
        argv += [flag for name, flag in self.flags.items() if params.get(name) is True]
        return argv

    def run(self, context) -> tuple[int, str]:
        return self._run(self.argv(context), context)

    def execute(self, context):
        code, last = self.run(context)
        if code == DATA_BLOCKED:      # validation refused the data: the same input gives the same answer
            raise AirflowFailException(f"python -m pipelines {self.stage}: the data was blocked (not retried): "
                                       f"{last[-500:]}")
        if code != 0:
            raise AirflowException(f"python -m pipelines {self.stage} exited with {code}: {last[-500:]}")
        return last


class ShardPlan(StageOperator):
    """`python -m pipelines shards --params=<params_file> --date=<ds>`: the argument vectors of the
    date's shard tasks (params shards.count; [] for one shard), as the XCom the shard tasks are
    mapped over (dynamic task mapping). Each vector is checked: `--shard=K/N`, nothing else."""

    def __init__(self, **kwargs) -> None:
        super().__init__(stage="shards", date=True, **kwargs)

    def execute(self, context):
        last = super().execute(context)
        try:
            plan = json.loads(last.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AirflowFailException(f"python -m pipelines shards: not a JSON list: {last[-300:]!r}") from None
        n = len(plan) if isinstance(plan, list) else -1
        if plan != [[f"--shard={k}/{n}"] for k in range(n)] or n == 1 or n > 64:
            raise AirflowFailException(f"python -m pipelines shards: refused {str(plan)[:300]}: not [] nor "
                                       f"[[\"--shard=0/N\"], ..., [\"--shard=N-1/N\"]]")
        return plan


class DvcStageOperator(StageOperator):
    """The DVC stage `stage` of dvc.yaml, run by `dvc repro --single-item` in this DAG run's own DVC
    workspace (`python -m pipelines workspace repro --run-id=<run id> --stage=<stage> --params=...
    [--start=.. --end=..] [--force]`; pipelines/ops/workspace.py): a git worktree of the deployed
    commit with the run's params, sharing the project's DVC cache. A stage DVC has run before on the
    same code, params and inputs is restored from its run-cache, and the log says so. With
    stage="push": `workspace push` (the run's outputs to the DVC remote; the workspace removed)."""

    def argv(self, context) -> list[str]:
        params = context["params"]
        params_file = checked_params_file(params.get("params_file"))
        run_id = context.get("run_id")
        if not run_id:
            raise AirflowFailException("a training task runs in its DAG run's DVC workspace: no run id; nothing ran")
        if self.stage == "push":
            return [sys.executable, "-m", "pipelines", "workspace", "push", f"--run-id={run_id}"]
        argv = [sys.executable, "-m", "pipelines", "workspace", "repro", f"--run-id={run_id}", f"--stage={self.stage}",
                f"--params={params_file}"]
        for name, option in self.options.items():
            value = params.get(name)
            if value not in (None, ""):
                argv.append(f"{option}={_checked(value, DATE_PATTERN, name) if name in self.dates else value}")
        return argv + [flag for name, flag in self.flags.items() if params.get(name) is True]


class StageSensor(_Subprocess, BaseSensorOperator):
    """Pokes `python -m pipelines <stage> --check ...` (exit 0: ready; NOT_LANDED: poke again;
    anything else: fail). Built like StageOperator: an argument vector, never a shell."""

    def __init__(self, *, stage: str, args: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.stage, self.args = stage, tuple(args)

    def poke(self, context) -> bool:
        argv = [sys.executable, "-m", "pipelines", self.stage,
                f"--params={checked_params_file(context['params'].get('params_file'))}",
                f"--date={_ds(context)}", *self.args, "--check"]
        code, last = self._run(argv, context)
        if code == NOT_LANDED:
            return False
        if code != 0:
            raise AirflowFailException(f"python -m pipelines {self.stage} --check exited with {code}: {last[-500:]}")
        return True


SETTLED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


class SettledSensor(BaseSensorOperator):
    """Waits until task `other_task` of DAG `other_dag`'s run for this run's logical date minus
    `days` has ended, in any state (success, failed, skipped, ...), or there is no such run: nothing
    to wait for. It orders work across runs without making one run's failure block another: a
    failed or missing run lets this one go on (the failure alerts where it happened). Asks Airflow
    (the task execution API), starts no process.

    Each try polls every `every` seconds for up to `window` seconds (an answer within seconds when
    the other run is nearly done, as in the demo), then gives its worker slot back and is tried
    again `poke_interval` seconds later (reschedule mode; not a short reschedule interval: on the
    local stack a task rescheduled within the few seconds its previous try takes to wind down was
    failed by Airflow as "changed externally"). Past `timeout` it is skipped (soft_fail) and its
    downstream task, with trigger_rule none_failed, goes on."""

    ui_color = "#fff4e0"

    def __init__(self, *, other_dag: str, other_task: str, days: int = 0, window: float = 60, every: float = 1,
                 **kwargs) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 60)
        kwargs.setdefault("soft_fail", True)
        super().__init__(**kwargs)
        self.other_dag, self.other_task, self.days = other_dag, other_task, days
        self.window, self.every = window, every

    def poke(self, context) -> bool:
        import time

        deadline = time.monotonic() + self.window
        while not self._settled(context):
            if time.monotonic() + self.every > deadline:
                return False
            time.sleep(self.every)
        return True

    def _settled(self, context, runs: dict | None = None) -> bool:
        """`runs`: {run_id: {task: state}} of the other DAG's runs for the date (asked when not given)."""
        when = context["logical_date"] - timedelta(days=self.days)
        if runs is None:
            runs = self._runs(context)
        what = f"{self.other_dag}.{self.other_task} of {when.date()}"
        if not runs:
            self.log.info("%s: no run, nothing to wait for", what)
            return True
        states = {run_id: tasks.get(self.other_task) for run_id, tasks in runs.items()}
        if all(state in SETTLED for state in states.values()):
            self.log.info("%s ended: %s", what, states)
            return True
        self.log.info("%s not ended yet: %s", what, states)
        return False

    def _runs(self, context) -> dict:
        when = context["logical_date"] - timedelta(days=self.days)
        return context["ti"].get_task_states(dag_id=self.other_dag, task_ids=[self.other_task], logical_dates=[when])


class TrainingSettledSensor(SettledSensor):
    """Waits until the last night's retrain decision is final and the training it triggered (if
    any) has ended: the nightly run of ds - `days` has its `trigger_training` task settled (skipped
    when no retrain was called for), and when it triggered a run (`should_retrain` pushed its
    {dag_id, run_id}), that run has ended, in any state. No run of that night, or no training
    triggered: nothing to wait for. Tonight's shadow then scores with the challenger that training
    registered, and tonight's retrain decision knows it is in shadow."""

    def __init__(self, *, days: int = 1, **kwargs) -> None:
        # a training takes minutes: a try polls through it (every second, up to 15 min), so tonight
        # goes on within a second of its end, not up to a reschedule interval later (the demo lost
        # 60 s there with the one-minute window of the other gates)
        kwargs.setdefault("window", 900)
        super().__init__(other_dag="nightly_scoring", other_task="trigger_training", days=days, **kwargs)

    def _settled(self, context, runs: dict | None = None) -> bool:
        runs = self._runs(context) if runs is None else runs
        if not super()._settled(context, runs):
            return False
        ti = context["ti"]
        for run_id, tasks in runs.items():
            if tasks.get(self.other_task) not in ("success", "skipped"):     # skipped: no retrain, or the run existed
                continue
            training = ti.xcom_pull(task_ids="should_retrain", dag_id=self.other_dag, run_id=run_id)
            if not isinstance(training, dict) or not training.get("run_id"):
                continue
            try:
                state = ti.get_dagrun_state(dag_id=training.get("dag_id", "training"), run_id=training["run_id"])
            except Exception as exc:        # no such run (deleted, cleaned up): nothing to wait for
                self.log.info("training run %s (triggered by %s): no state (%s), nothing to wait for",
                              training["run_id"], run_id, str(exc)[:200])
                continue
            if state not in ("success", "failed"):
                self.log.info("training run %s (triggered by %s) not ended yet: %s", training["run_id"], run_id, state)
                return False
            self.log.info("training run %s (triggered by %s) ended: %s", training["run_id"], run_id, state)
        return True


def _confirmed(params, what: str) -> None:
    if params.get("confirm") is not True:
        raise AirflowFailException(f"not confirmed: tick confirm in the form to {what}; nothing changed")


class ConfirmedModelsOperator(StageOperator):
    """`python -m pipelines models <action> [version] --reason=<reason>` from a Params form, refused
    unless `confirm` is ticked (the run fails and nothing moves)."""

    def __init__(self, *, action: str, **kwargs) -> None:
        super().__init__(stage="models", **kwargs)
        self.action = action

    def argv(self, context) -> list[str]:
        params = context["params"]
        _confirmed(params, "move the alias")
        argv = super().argv(context)
        if self.action == "promote":
            argv += ["promote", _checked(params.get("version"), VERSION_PATTERN, "version")]
        else:
            argv.append(self.action)
        return argv + [f"--reason={params.get('reason') or 'manual'}"]


class ReleaseHoldOperator(StageOperator):
    """`python -m pipelines decide release --date=<date> --action=release|reject --reason=<reason>`
    from the release_hold form, refused unless `confirm` is ticked."""

    def __init__(self, **kwargs) -> None:
        super().__init__(stage="decide", **kwargs)

    def argv(self, context) -> list[str]:
        params = context["params"]
        _confirmed(params, "release or reject the held day")
        action = params.get("action")
        if action not in ("release", "reject"):
            raise AirflowFailException(f"action {action!r} refused: release | reject")
        return super().argv(context) + ["release", f"--date={_checked(params.get('date'), DATE_PATTERN, 'date')}",
                                        f"--action={action}", f"--reason={params.get('reason') or 'manual'}"]


def schedule_end() -> datetime | None:
    """The last day the daily DAGs are scheduled for: FRAUDOPS_SCHEDULE_END=YYYY-MM-DD (the local
    stack sets it to the end of its simulated data, so that starting it creates no run that would
    wait for data that never comes); unset or "none": open-ended, as in production."""
    raw = os.environ.get("FRAUDOPS_SCHEDULE_END", "").strip()
    if raw.lower() in ("", "none"):
        return None
    if not re.fullmatch(DATE_PATTERN, raw):
        raise ValueError(f"FRAUDOPS_SCHEDULE_END={raw[:40]!r}: expected YYYY-MM-DD or none")
    return datetime.fromisoformat(raw).replace(tzinfo=timezone.utc)


class DailyUntil(CronDataIntervalTimetable):
    """Daily at 00:00 UTC for the day before, like `schedule="@daily"`, but the scheduler creates no
    run for a day after `until` (schedule_end()). Unlike a DAG end_date, it leaves manual and REST
    runs alone: a run triggered for any date runs its tasks (Airflow creates no task instance past a
    DAG's end_date, so such a run would end green having done nothing). Registered by
    FraudopsPlugin, so the scheduler can read it back."""

    def __init__(self, until: datetime | None = None):
        super().__init__("0 0 * * *", timezone.utc)
        self.until = until

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> DailyUntil:
        return cls(datetime.fromisoformat(data["until"]) if data.get("until") else None)

    def serialize(self) -> dict[str, Any]:
        return {"until": self.until.isoformat() if self.until else None}

    @property
    def summary(self) -> str:
        return "daily" + (f" until {self.until.date()}" if self.until else "")

    def next_dagrun_info(self, *, last_automated_data_interval, restriction):
        info = super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                        restriction=restriction)
        if info is not None and self.until is not None and info.data_interval.start > self.until:
            return None
        return info


class FraudopsPlugin(AirflowPlugin):
    name = "fraudops"
    timetables = [DailyUntil]


def daily_dag(dag_id: str, description: str, start: datetime, catchup_env: str, doc_md: str | None, tags: list[str]):
    """A DAG run daily at 00:00 UTC for the day before (ds = the data interval's start), on one
    date partition, with up to 3 dates side by side, from `start` to schedule_end() (the scheduler
    creates no run past it; a run triggered by hand for a later date still runs); it catches up only
    when `catchup_env`=true and takes a `params_file` param. Used as `with daily_dag(...) as dag:`."""
    from airflow.sdk import DAG

    return DAG(dag_id=dag_id, description=description, schedule=DailyUntil(schedule_end()), start_date=start,
               catchup=os.environ.get(catchup_env, "false").lower() == "true", max_active_runs=3,
               default_args=default_args(), params={"params_file": params_file_param()},
               tags=["fraudops", *tags], doc_md=doc_md)


def manual_dag(dag_id: str, description: str, doc_md: str | None, reason: str, task, extra: dict | None = None,
               tags: tuple[str, ...] = ("registry",)):
    """A DAG triggered by hand for an action a person confirms (promote, rollback, release_hold): one
    task `task(dag_id)`, a form with the `extra` params, `confirm` (must be ticked), `reason` (recorded
    with the action) and `params_file`; no retries (a refused action is not retried)."""
    from airflow.sdk import DAG

    dag = DAG(dag_id=dag_id, description=description, schedule=None, catchup=False, max_active_runs=1,
              default_args={**default_args(), "retries": 0},
              params={**(extra or {}),
                      "confirm": Param(False, type="boolean", title="Confirm", description="tick to really do it"),
                      "reason": Param(reason, type="string", minLength=1, maxLength=2000, title="Reason",
                                      description="recorded with the action"),
                      "params_file": params_file_param()},
              tags=["fraudops", *tags], doc_md=doc_md)
    with dag:
        task(dag_id)
    return dag


def registry_dag(dag_id: str, description: str, doc_md: str | None, reason: str, extra: dict | None = None):
    """promote | rollback: a ConfirmedModelsOperator named after the action."""
    return manual_dag(dag_id, description, doc_md, reason,
                      lambda name: ConfirmedModelsOperator(task_id=name, action=name), extra)


def retrain_requested(ti) -> dict | bool:
    """ShortCircuit callable: the `training` part of the retrain decision (pushed by the `retrain`
    task as its last stdout line), or False to skip the trigger."""
    raw = ti.xcom_pull(task_ids="retrain")
    rec = json.loads(raw) if isinstance(raw, str) else raw
    if not rec or not rec.get("retrain"):
        return False
    return rec["training"]
