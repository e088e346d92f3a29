"""Loom's REST API against a hand-written litestar + SQLAlchemy Core app (bench/baseline_app.py).

Same entity (account of examples/sales), same database file, same server (uvicorn, one worker
process pinned to one CPU), same load driver pinned to another CPU, loopback only. Prints req/s,
latency and the Loom/baseline ratio per scenario; the target is a ratio of at least 0.8.

    .venv/bin/python bench/api.py                      # SQLite, 100k rows, 10 s per run
    .venv/bin/python bench/api.py --duration 5 --sync-to-thread both
    .venv/bin/python bench/api.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

A figure, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import decimal
import importlib.util
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import drivers
import sqlalchemy as sa
from drivers import LIST_PATH, SCENARIOS, Result, create_body, python_load, wrk_load
from sqlalchemy.engine import make_url

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent / "examples" / "sales"
TARGET = 0.8
REGIONS = ("north", "east", "south", "west", "overseas")
INDUSTRIES = ("manufacturing", "retail", "technology", "finance", "healthcare", "education", "logistics", "energy")
CITIES = ("Shanghai", "Beijing", "Shenzhen", "Chengdu", "Hangzhou", "Wuhan", "Singapore", "Berlin")
APPS = {"loom": ["loomcrm.engine.app:create_app"], "baseline": ["--app-dir", str(BENCH), "baseline_app:create_app"]}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="accounts to insert (default 100000)")
    p.add_argument("--duration", type=float, default=10, help="seconds measured per scenario and app (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each run (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every run this often and report the median "
                   "(default 1; use 3 on a busy machine)")
    p.add_argument("--no-analyze", action="store_true", help="skip ANALYZE after the bulk insert (Loom does not "
                   "run it; without statistics SQLite sorts the region filter through the (region, industry) index)")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    p.add_argument("--sync-to-thread", choices=("0", "1", "both"), default="1",
                   help="LOOM_SYNC_TO_THREAD for both apps: run sync handlers in threads (1, default) or on the loop (0)")
    p.add_argument("--baseline-audit", choices=("on", "off"), default="on",
                   help="the baseline writes the audit row Loom writes with every create (on, default: the same "
                   "job), or skips it (off: what the audit trail costs)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    p.add_argument("--driver", choices=("auto", "wrk", "python"), default="auto",
                   help="load driver: wrk if installed (auto), or the bundled asyncio driver (less precise)")
    p.add_argument("--database-url", help="run against this database instead of a temporary SQLite file; a "
                   "PostgreSQL URL naming database 'test' gets a temporary database created and dropped")
    return p.parse_args()


# --- the database ----------------------------------------------------------------------------------
@contextlib.contextmanager
def database(url: str | None, tmp: Path) -> Iterator[str]:
    """A fresh SQLite file by default; for PostgreSQL '.../test' a unique database, dropped afterwards."""
    if url is None:
        yield f"sqlite:///{tmp / 'bench.db'}"
        return
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "postgresql" or parsed.database != "test":
        yield parsed.render_as_string(hide_password=False)
        return
    name = f"loom_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def account_rows(start: int, stop: int) -> list[dict]:
    """Deterministic accounts: region cycles through 5 values (a filter selects 20%), industry through 8."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(start, stop):
        at = base + dt.timedelta(seconds=i)
        rows.append({
            "name": f"Account {i:06d} Ltd", "industry": INDUSTRIES[i * 3 % 8], "type": ("prospect", "customer",
            "partner")[i % 3], "website": f"https://a{i}.example.com", "phone": f"+86138{i % 10**8:08d}",
            "email": f"info@a{i}.example.com", "city": CITIES[i % 8], "region": REGIONS[i % 5],
            "annual_revenue": decimal.Decimal(i * 7919 % 10**9) / 100, "employees": i * 31 % 5000,
            "rating": ("hot", "warm", "cold")[i % 3], "description": f"Benchmark account number {i}.",
            "created_at": at, "updated_at": at, "created_by": None, "updated_by": None, "owner": None, "version": 1,
        })
    return rows


def prepare(url: str, rows: int, analyze: bool, batch: int = 5_000) -> tuple[int, int]:
    """``loom migrate`` the sales example into ``url``, bulk-insert ``rows`` accounts; return (min id, max id)."""
    from loomcrm.engine.compiler import compile_project
    from loomcrm.engine.database import create_db_engine
    from loomcrm.generators.tables import build_metadata

    env = {**os.environ, "LOOM_DATABASE_URL": url}
    subprocess.run([sys.executable, "-c", "import sys; from loomcrm.engine.cli import main; sys.exit(main())",
                    "-p", str(PROJECT), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    manifest, _ = compile_project(PROJECT)
    table = build_metadata(manifest).tables[manifest.entities["account"].table]
    engine = create_db_engine(url)
    started = time.perf_counter()
    try:
        for start in range(1, rows + 1, batch):
            with engine.begin() as conn:
                conn.execute(table.insert(), account_rows(start, min(start + batch, rows + 1)))
        with engine.begin() as conn:
            if analyze:
                conn.exec_driver_sql("ANALYZE")
            low, high = conn.execute(sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id))).one()
    finally:
        engine.dispose()
    print(f"inserted {rows} accounts in {time.perf_counter() - started:.1f} s" + (", then ANALYZE" if analyze else ""))
    return low, high


# --- the servers ------------------------------------------------------------------------------------
def bench_token(url: str) -> str:
    """An API token of a bench user: every Loom request is signed in, as in production."""
    from loomcrm.engine.app import Loom
    from loomcrm.engine.testing import api_token

    loom = Loom.from_project(PROJECT, database_url=url)
    try:
        return api_token(loom, "bench")
    finally:
        loom.close()


def cpus() -> tuple[list[str], int | None]:
    """(prefix pinning the servers to one CPU, CPU for the load driver) or ([], None) when not possible."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) < 2 or not shutil.which("taskset"):
        return [], None
    return ["taskset", "-c", str(allowed[0])], allowed[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers(url: str, sync: str, tmp: Path, pin: list[str], audit: str = "on") -> Iterator[dict[str, int]]:
    """Start Loom and the baseline (idle one costs nothing); always stop them."""
    env = {**os.environ, "LOOM_PROJECT": str(PROJECT), "LOOM_DATABASE_URL": url, "LOOM_SYNC_TO_THREAD": sync,
           "BASELINE_AUDIT": "1" if audit == "on" else "0"}
    procs: dict[str, subprocess.Popen] = {}
    ports = {name: free_port() for name in APPS}
    try:
        for name, app in APPS.items():
            log = open(tmp / f"{name}-{sync}.log", "wb")  # noqa: SIM115 (closed with the process)
            procs[name] = subprocess.Popen(
                [*pin, sys.executable, "-m", "uvicorn", "--factory", *app, "--host", "127.0.0.1",
                 "--port", str(ports[name]), "--workers", "1", "--log-level", "warning", "--no-access-log"],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        for name, proc in procs.items():
            wait_healthy(name, proc, ports[name], tmp / f"{name}-{sync}.log")
        yield ports
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(name: str, proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)
    raise SystemExit(f"{name} server did not answer /health within {timeout:.0f} s")


def call(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": drivers.AUTHORIZATION})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


def sanity_check(ports: dict[str, int], ids: tuple[int, int]) -> None:
    """Both apps must give the same answers, or the comparison means nothing."""
    loom, base = ports["loom"], ports["baseline"]
    for path in (LIST_PATH, f"/api/accounts/{ids[1]}"):
        a, b = call(loom, path), call(base, path)
        if a != b:
            raise SystemExit(f"the apps disagree on GET {path}:\n loom:     {str(a)[:300]}\n baseline: {str(b)[:300]}")
    (sa_, a), (sb, b) = call(loom, "/api/accounts", json.loads(create_body(0))), \
        call(base, "/api/accounts", json.loads(create_body(0)))
    moving = {"id", "created_at", "updated_at", "created_by", "updated_by", "owner"}  # Loom knows who called
    if (sa_, {k: v for k, v in a.items() if k not in moving}) != (sb, {k: v for k, v in b.items() if k not in moving}):
        raise SystemExit(f"the apps disagree on POST /api/accounts:\n loom:     {sa_} {a}\n baseline: {sb} {b}")
    print("sanity check: both apps return identical JSON for list, get and create")


# --- the run ---------------------------------------------------------------------------------------------
def fmt_latency(r: Result) -> str:
    return f"{r.p50_ms:.1f}/{r.p99_ms:.1f}" if r.p99_ms is not None else "n/a"


def median(results: list[Result]) -> Result:
    """The run with the median req/s (with its own latencies)."""
    return sorted(results, key=lambda r: r.rps)[len(results) // 2]


def report(sync: str, runs: dict[str, dict[str, list[Result]]]) -> None:
    """Median req/s per app; the ratio is the median of the per-round ratios (each round runs both apps
    back to back, so a burst of other work on the machine hits both)."""
    print(f"\nsync_to_thread={sync}")
    header = f"{'scenario':<9}{'Loom req/s':>12}{'baseline req/s':>16}{'Loom/base':>11}   " \
             f"{'Loom p50/p99 ms':>16}{'base p50/p99 ms':>17}{'errors L/B':>12}"
    print(header + "\n" + "-" * len(header))
    for scenario, by_app in runs.items():
        loom, base = median(by_app["loom"]), median(by_app["baseline"])
        ratios = [a.rps / b.rps for a, b in zip(by_app["loom"], by_app["baseline"], strict=True) if b.rps]
        ratio = round(statistics.median(ratios), 2) if ratios else float("nan")
        errors = f"{sum(r.errors for r in by_app['loom'])}/{sum(r.errors for r in by_app['baseline'])}"
        print(f"{scenario:<9}{loom.rps:>12.0f}{base.rps:>16.0f}{ratio:>9.2f} {'ok' if ratio >= TARGET else 'LOW':<3}  "
              f"{fmt_latency(loom):>16}{fmt_latency(base):>17}{errors:>12}")
    print(f"target: Loom/baseline >= {TARGET} (LOW marks a miss)")


def measure(wrk: str | None, port: int, scenario: str, ids: tuple[int, int], args, tmp: Path,
            cpu: int | None) -> Result:
    """Warm up, then measure one scenario against one server."""
    result = None
    for seconds in (args.warmup, args.duration):
        if seconds > 0:
            result = wrk_load(wrk, port, scenario, ids, args.connections, seconds, tmp, cpu) if wrk else \
                python_load(port, scenario, ids, args.connections, seconds)
    assert result is not None, "--duration must be positive"
    return result


def main() -> None:
    args = parse_args()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    wrk = shutil.which("wrk") if args.driver in ("auto", "wrk") else None
    if args.driver == "wrk" and not wrk:
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or use --driver python")
    pin, driver_cpu = cpus()
    if driver_cpu is not None and not wrk:
        os.sched_setaffinity(0, {driver_cpu})  # the Python driver runs in this process
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    modes = ["1", "0"] if args.sync_to_thread == "both" else [args.sync_to_thread]
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp_name, database(args.database_url, Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        print(f"database: {make_url(url).render_as_string()}  rows: {args.rows}")
        ids = prepare(url, args.rows, not args.no_analyze)
        drivers.AUTHORIZATION = f"Bearer {bench_token(url)}"
        print(f"server: uvicorn, 1 worker, loop={loop}, http={http}, "
              f"{'pinned to CPU ' + pin[-1] if pin else 'not pinned (needs taskset and 2 CPUs)'}")
        print(f"driver: {'wrk' if wrk else 'python asyncio (less precise than wrk)'}, {args.connections} "
              f"connections, {args.warmup:g} s warm-up + {args.duration:g} s per run"
              + (f", CPU {driver_cpu}" if driver_cpu is not None else "") + f", {args.rounds} round(s)")
        print(f"baseline audit row on create: {args.baseline_audit}")
        print(f"load average before the runs: {os.getloadavg()[0]:.2f} (other work on the CPUs skews the figures)")
        for sync in modes:
            runs: dict[str, dict[str, list[Result]]] = {s: {"loom": [], "baseline": []} for s in scenarios}
            with servers(url, sync, tmp, pin, args.baseline_audit) as ports:
                sanity_check(ports, ids)
                for round_ in range(args.rounds):
                    for scenario in scenarios:
                        for name in (APPS if round_ % 2 == 0 else reversed(APPS)):  # alternate who goes first
                            r = measure(wrk, ports[name], scenario, ids, args, tmp, driver_cpu)
                            runs[scenario][name].append(r)
                            print(f"  sync_to_thread={sync} round {round_ + 1} {scenario:<7} {name:<9} "
                                  f"{r.rps:8.0f} req/s", flush=True)
            report(sync, runs)

if __name__ == "__main__":
    main()
