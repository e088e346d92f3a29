"""``loom worker``: the background process that runs scheduled rules and delivers webhooks.

Every ``interval`` seconds a *tick* runs the due scheduled rules, then sends the due webhook events until
none is left; once an hour it also purges old events (:func:`~.runtime.delivery.purge_outbox`). Several
workers may run against one database (they claim events, never send one twice at a time). SIGINT and
SIGTERM stop the worker once the events it has claimed (at most ``BATCH``) are sent; a worker that is
killed leaves its claimed events to another once the claim runs out.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from .commands import _missing_sqlite_file
from .runtime.context import utcnow
from .runtime.delivery import KEEP_DEAD_DAYS, KEEP_DELIVERED_DAYS, deliver_due, purge_outbox
from .runtime.schedules import run_schedules

__all__ = ["run_worker", "tick", "WorkerNotReady", "WORKER_TABLES", "PURGE_SECONDS"]

#: The tables a worker reads and writes; created by ``loom migrate``.
WORKER_TABLES = ("loom_schedule_mark", "loom_outbox", "loom_webhook", "loom_webhook_delivery")
#: Events claimed at a time: small, so that a stop request waits for few deliveries.
BATCH = 10
#: Old events are purged at most this often (seconds).
PURGE_SECONDS = 3600.0

Log = Callable[[str], None]


class WorkerNotReady(Exception):
    """The database cannot serve a worker yet (missing, or not migrated)."""


def print_line(line: str) -> None:
    """The default log: one UTC-stamped line on standard output."""
    print(f"{utcnow():%Y-%m-%dT%H:%M:%SZ} {line}", flush=True)


def run_worker(loom, *, once: bool = False, interval: float = 2.0, keep_days: int | None = None,
               log: Log = print_line) -> int:
    """Tick until stopped (SIGINT, SIGTERM), or once; returns the exit status (0). A failing tick is
    logged and tried again after ``interval`` (the database may be restarting), except with ``once``.
    ``keep_days``: how long delivered and given-up events are kept (default: 30 and 90 days)."""
    check_database(loom)
    stop = threading.Event()
    purged_at = float("-inf")
    with _stopping_on_signals(stop, log):
        log(f"worker started: {len(loom.manifest.schedules)} scheduled rules, {len(loom.manifest.webhooks)} "
            f"webhooks in the config" + ("" if once else f"; checking every {interval:g}s"))
        while True:
            try:
                purge = time.monotonic() - purged_at >= PURGE_SECONDS
                tick(loom, log=log, stop=stop, quiet=not once, purge=purge, keep_days=keep_days)
                if purge:
                    purged_at = time.monotonic()
            except Exception as exc:
                if once:
                    raise
                log(f"error: {type(exc).__name__}: {exc}; trying again in {interval:g}s")
            if once or stop.wait(interval):
                break
    log("worker stopped")
    return 0


def tick(loom, *, log: Log = print_line, stop: threading.Event | None = None, quiet: bool = False,
         purge: bool = False, keep_days: int | None = None) -> dict:
    """Run the due scheduled rules, then deliver every due webhook event, then (``purge``) delete old
    events (kept ``keep_days``, else the defaults); ``quiet`` logs only what happened (a busy worker,
    not an idle one). Returns what was done."""
    acted = run_schedules(loom, log=log) or {}
    for name, count in acted.items():
        if count:
            log(f"schedule {name}: acted on {count} record{'s' if count != 1 else ''}")
    totals = {"delivered": 0, "retrying": 0, "dead": 0}
    while not (stop is not None and stop.is_set()):
        counts = deliver_due(loom, limit=BATCH, log=log)
        for key, value in counts.items():
            totals[key] += value
        if sum(counts.values()) < BATCH:
            break
    if not quiet or any(totals.values()):
        log(f"webhooks: {totals['delivered']} delivered, {totals['retrying']} retrying, {totals['dead']} given up")
    purged = 0
    if purge:
        days = (KEEP_DELIVERED_DAYS, KEEP_DEAD_DAYS) if keep_days is None else (keep_days, keep_days)
        purged = purge_outbox(loom, delivered_days=days[0], dead_days=days[1])
        if purged:
            log(f"webhooks: purged {purged} old event{'s' if purged != 1 else ''}")
    return {"schedules": acted, "webhooks": totals, "purged": purged}


def check_database(loom) -> None:
    """:class:`WorkerNotReady` unless the database exists and holds the worker's tables."""
    url = loom.engine.url
    if _missing_sqlite_file(url):
        raise WorkerNotReady(f"there is no database at {url.database}; run 'loom migrate' first")
    with loom.engine.connect() as conn:
        inspector = sa.inspect(conn)
        missing = [name for name in WORKER_TABLES if not inspector.has_table(name)]
    if missing:
        raise WorkerNotReady(f"the database has no table {', '.join(missing)}; run 'loom migrate' to create "
                             "the tables of Loom's scheduled rules and webhooks")


@contextlib.contextmanager
def _stopping_on_signals(stop: threading.Event, log: Log) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while the worker runs (in the main thread only: elsewhere
    Python cannot install handlers, and the caller stops the worker through its own means)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, _frame) -> None:
        if not stop.is_set():
            log(f"{signal.Signals(signum).name}: stopping once the claimed events are sent")
        stop.set()

    signals = [signal.SIGINT, *([signal.SIGTERM] if sys.platform != "win32" else [])]
    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
