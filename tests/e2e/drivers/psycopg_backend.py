"""What psycopg's own code relies on about the backend, through Proctor.

Usage: python3 psycopg_backend.py CONNINFO
Prints one JSON object of observations; the Rust test asserts on it.
"""

import json
import sys
import threading
import time

import psycopg
from psycopg import errors

dsn = sys.argv[1]
seen = {}

with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other:
    pid = conn.info.backend_pid
    seen["backend_pid_is_the_backends"] = pid == conn.execute("select pg_backend_pid()").fetchone()[0]
    seen["two_connections_two_pids"] = pid != other.info.backend_pid

    # LISTEN/NOTIFY: a handler tells its own notifications by their pid.
    conn.execute("listen jobs")
    conn.execute("notify jobs, 'mine'")
    other.execute("notify jobs, 'theirs'")
    got = {n.payload: n.pid for n in conn.notifies(timeout=5.0, stop_after=2)}
    seen["own_notification_pid"] = got.get("mine") == pid
    seen["other_notification_pid"] = got.get("theirs") == other.info.backend_pid

    # An error inside a transaction rolls back, and the connection goes on.
    try:
        with conn.transaction():
            conn.execute("select 1/0")
    except errors.DivisionByZero:
        seen["rolled_back_on_error"] = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    seen["usable_after_error"] = conn.execute("select 7").fetchone()[0] == 7

    # Cancels, the legacy way and libpq 17's (a new connection that
    # negotiates TLS as the session did), reach the statement they name.
    for how in ("cancel", "cancel_safe"):
        timer = threading.Timer(0.5, getattr(conn, how))
        timer.start()
        started = time.monotonic()
        try:
            conn.execute("select pg_sleep(30)")
            seen[how] = "not cancelled"
        except errors.QueryCanceled:
            seen[how] = "cancelled" if time.monotonic() - started < 20 else "cancelled late"
        timer.join()
    seen["usable_after_cancel"] = conn.execute("select 8").fetchone()[0] == 8

    # An administrator (or the application itself) terminates the backend
    # by the pid the driver was told.
    seen["terminated"] = other.execute("select pg_terminate_backend(%s)", [pid]).fetchone()[0]
    try:
        conn.execute("select 1")
        seen["broken_after_terminate"] = "still answers"
    except psycopg.OperationalError as error:
        seen["broken_after_terminate"] = conn.broken
        seen["terminate_sqlstate"] = getattr(error, "sqlstate", None)

# libpq 18 may ask for the newest protocol (3.2); Proctor answers that it
# speaks 3.0, as a PostgreSQL server older than 18 does, and the client
# carries on in 3.0.
with psycopg.connect(dsn + " max_protocol_version=latest") as conn:
    seen["newest_protocol_negotiated_down"] = (
        conn.info.pgconn.protocol_version,
        conn.execute("select 9").fetchone()[0],
    )

print(json.dumps(seen, sort_keys=True))
