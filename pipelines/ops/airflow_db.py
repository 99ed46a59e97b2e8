"""Connection arguments for Airflow's metadata database when it is SQLite (the local stack), named
by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC): how long a writer waits for SQLite's one
write lock before it fails with "database is locked".

The api-server waits 5 s, the scheduler, dag-processor and triggerer 30 s. Measured on 2 cores
(the recovery test, 2026-12-02): now and then the api-server deadlocks itself. A REST request's
audit-log dependency (airflow/api_fastapi/logging/decorators.py, log_action) commits its INSERT
with a blocking call on the server's event loop while a task-execution request of the same server
(PATCH .../run, in a worker thread) holds the write lock and waits for that loop. Nothing moves
until the audit-log write times out: the request ends with HTTP 500 (our REST client retries: run
ids make it idempotent). Every other writer waits as long. With one timeout for all: at 30 s the
scheduler stalled 31 s, failed its own heartbeat check and reset a running task (it ran twice); at
10 s the scheduler itself timed out on an UPDATE and died (the supervisor restarted it). A short
wait for the api-server ends its deadlock within 5 s, well inside the others' 30 s, and far above
the sub-second waits of ordinary contention. PostgreSQL (production, issue 17) needs none of this.
Plain data: imported by Airflow."""

SQLITE_CONNECT_ARGS = {"timeout": 30}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 30}
SQLITE_CONNECT_ARGS_API = {"timeout": 5}
SQLITE_CONNECT_ARGS_API_ASYNC = {"timeout": 5}


def worker_hostname() -> str:
    """AIRFLOW__CORE__HOSTNAME_CALLABLE of the distributed stack's Celery workers: the worker's own
    name (FRAUDOPS_WORKER_NAME, e.g. worker1@<host>), so a task instance says which worker ran it
    even when both workers share one machine."""
    import os
    import socket

    return os.environ.get("FRAUDOPS_WORKER_NAME") or socket.getfqdn()
