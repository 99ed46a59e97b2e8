"""Argument helpers shared by the stage entry points (thin: parse, load params, call the core)."""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import threading

from pipelines.core.config import Params, date_range, load_params, parse_date


class StageFailed(RuntimeError):
    """A stage could not complete one or more partitions; the message lists each and why."""

    @classmethod
    def of(cls, what: str, failures: list[str]) -> "StageFailed":
        """One line for any number of failed partitions: "<what> N partition(s): a | b"."""
        return cls(f"{what} {len(failures)} partition(s): " + " | ".join(failures))


class DataBlocked(StageFailed):
    """The data itself was refused (a validation block): running the stage again on the same input
    gives the same answer, so a scheduler must not retry it. `python -m pipelines` exits with
    EXIT_BLOCKED for it."""


EXIT_BLOCKED = 3        # plugins/fraudops_wiring.DATA_BLOCKED: the task fails without retries


def progress(items, what: str):
    """The items, with a progress line (`what`: i/n, elapsed, about how long is left) after the
    first, every tenth of the way and the last, when there is more than one."""
    import time

    items = list(items)
    n, started, log = len(items), time.monotonic(), logging.getLogger("pipelines")
    step = max(1, n // 10)
    for i, item in enumerate(items, 1):
        yield item
        if n > 1 and (i == 1 or i == n or i % step == 0):
            spent = time.monotonic() - started
            log.info("%s: %d/%d (%d%%) in %.1fs%s", what, i, n, 100 * i // n, spent,
                     f", about {spent / i * (n - i):.0f}s left" if i < n else "")


def shut_down(pool, stop: threading.Event | None = None) -> None:
    """Shut `pool` (a ThreadPoolExecutor) down: its queued work cancelled, its threads waited for. An
    interrupt meanwhile (a second Ctrl-C) sets `stop` (what tells the threads to end early) and is
    raised once they have ended: what they write into is cleaned up after, not under them."""
    held = None
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            break
        except KeyboardInterrupt as exc:
            if stop is not None:
                stop.set()
            held = exc
    if held is not None:
        raise held


def each_partition(items, one, errors: type[Exception] | tuple[type[Exception], ...], what: str,
                   failure: type[StageFailed] = StageFailed, stage: str = "partitions",
                   lane=None, threads: int = 1) -> None:
    """`one(item)` for every partition: one that fails with `errors` is logged and the others still
    run (each is a transaction of its own); then one `failure` (a StageFailed) names every failed
    partition, in the items' order. With `lane` (item -> a key) and `threads` > 1, the lanes run side
    by side in threads (at most `threads`), each lane's items one after the other in their order (a
    lane holds what must not run at once: ingest's lane is a dataset, whose days read each other)."""
    items = list(items)
    failures: dict[int, str] = {}
    stop = threading.Event()                    # a lane failed otherwise, or an interrupt: the others stop

    def run(indexed, what_: str) -> None:
        for i, item in progress(indexed, what_):
            if stop.is_set():
                return
            try:
                one(item)
            except errors as exc:
                logging.getLogger("pipelines").error("%s", exc)
                failures[i] = str(exc)
    lanes: dict = {}
    for i, item in enumerate(items):
        lanes.setdefault(lane(item) if lane is not None else None, []).append((i, item))
    if threads <= 1 or len(lanes) <= 1:
        run(list(enumerate(items)), stage)
    else:
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        pool = ThreadPoolExecutor(min(threads, len(lanes)), thread_name_prefix=stage)
        try:
            running = [pool.submit(run, indexed, f"{stage} {key}") for key, indexed in lanes.items()]
            wait(running, return_when=FIRST_EXCEPTION)     # (the first lane to fail otherwise, whichever)
            for done in running:
                if done.done() and done.exception() is not None:
                    done.result()
            for done in running:
                done.result()
        except BaseException:       # an error other than `errors`, or an interrupt: no lane starts another item
            stop.set()
            raise
        finally:
            shut_down(pool, stop)   # the items in flight end (each a transaction of its own)
    if failures:
        raise failure.of(what, [failures[i] for i in sorted(failures)])


def stage_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m pipelines {prog}", description=(doc or "").split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--date", type=parse_date, help="one logical date (YYYY-MM-DD)")
    ap.add_argument("--start", type=parse_date, help="first date of a range (default: run.start_date)")
    ap.add_argument("--end", type=parse_date, help="last date of a range (default: run.end_date)")
    ap.add_argument("--snapshot", help="also write the published objects under this folder (DVC outs)")
    ap.add_argument("--with-lookback", action="store_true",
                    help="start features.lookback_days earlier: the history the features of the range need")
    return ap


def range_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A tool over a date range (nightly, audit): --params, --start and --end (both required)."""
    ap = argparse.ArgumentParser(prog=f"python -m pipelines {prog}", description=(doc or "").split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--start", type=parse_date, required=True)
    ap.add_argument("--end", type=parse_date, required=True)
    return ap


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("great_expectations", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_process(params: Params) -> None:
    """What `resolve` sets up in a stage's process (logging, the services' timeouts), for a process
    the stage spawns."""
    from pipelines.core import services

    _logging()
    services.configure(params.services.timeout_s)


def resolve(args: argparse.Namespace) -> tuple[Params, list[dt.date]]:
    _logging()
    params = load_params(args.params)
    from pipelines.core import services

    services.configure(params.services.timeout_s)
    services.require_lake(params.storage.lake)
    if args.date:
        return params, [args.date]
    start = args.start or params.run.start_date         # params.run only when the range is not given
    if getattr(args, "with_lookback", False):
        start -= dt.timedelta(days=params.lookback_days)
    return params, date_range(start, args.end or params.run.end_date)
