"""Connection arguments for Airflow's metadata database when it is SQLite (the local stack), named
by AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS(_ASYNC): a writer waits up to 30 s for the lock
instead of SQLite's 5 s, after which the api-server answered a trigger with HTTP 500 ("database
is locked") while the scheduler and two task runners were writing (measured on 2 cores during the
demo). PostgreSQL (production, issue 17) needs none of this. Plain data: imported by Airflow."""

SQLITE_CONNECT_ARGS = {"timeout": 30}
SQLITE_CONNECT_ARGS_ASYNC = {"timeout": 30}
