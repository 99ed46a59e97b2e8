"""Connection arguments for Airflow's metadata database when it is SQLite (the local stack), named
by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC): how long a writer waits for SQLite's one
write lock. Measured on 2 cores during the demo: now and then a REST trigger (POST .../dagRuns)
holds the write lock while its audit-log insert waits for it, until this timeout ends the request
with HTTP 500 "database is locked" (the client retries: run ids make it idempotent). Every other
writer waits as long: with 30 s the scheduler stalled 31 s, failed its own heartbeat check and reset
a running task (it ran twice). 10 s clears that stall well inside the scheduler's 30 s heartbeat
threshold and is far above the sub-second waits of ordinary contention. PostgreSQL (production,
issue 17) needs none of this. Plain data: imported by Airflow."""

SQLITE_CONNECT_ARGS = {"timeout": 10}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 10}
