"""What row- and field-level security costs: the same list and get requests to one Loom server, as
an unrestricted user (the admin role) and as a restricted one (row scope ``team`` and three hidden
fields), on the same rows.

The sales example is copied to a temporary project with one extra role, ``bench_restricted``
(``account: {read: team}``, ``annual_revenue``, ``phone`` and ``email`` hidden). The accounts are
owned alternately by the restricted user and a teammate, so both users reach every row: the
restricted requests return the same records minus three fields, and the difference in req/s is
what the checks cost (the team condition in SQL, the column selection, the policy look-ups).
Target: restricted >= 0.9 x unrestricted.

    .venv/bin/python bench/security.py                       # SQLite, 100k rows, 10 s per run
    .venv/bin/python bench/security.py --duration 5 --rounds 3
    .venv/bin/python bench/security.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

A figure, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import drivers
import sqlalchemy as sa
from api import PROJECT, account_rows, cpus, database, fmt_latency, free_port, median, wait_healthy
from drivers import LIST_PATH, Result, python_load, wrk_load
from sqlalchemy.engine import make_url

TARGET = 0.9
ROLE = """
  bench_restricted:
    label: Bench (restricted)
    entities:
      account: {read: team, create: true, update: own}
    fields:
      account.annual_revenue: hidden
      account.phone: hidden
      account.email: hidden
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="accounts to insert (default 100000)")
    p.add_argument("--duration", type=float, default=10, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each run (default 2)")
    p.add_argument("--rounds", type=int, default=1, help="repeat and report the median (default 1)")
    p.add_argument("--connections", type=int, default=32, help="concurrent keep-alive connections (default 32)")
    p.add_argument("--database-url", help="as in bench/api.py")
    return p.parse_args()


def project(tmp: Path) -> Path:
    """The sales example plus the restricted role."""
    target = tmp / "project"
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("*.db", "*.db-*", "__pycache__"))
    roles = target / "roles.yaml"
    roles.write_text(roles.read_text(encoding="utf-8") + ROLE, encoding="utf-8")
    return target


def prepare(path: Path, url: str, rows: int) -> tuple[tuple[int, int], dict[str, str]]:
    """Migrate, create the users and the team, bulk-insert accounts owned by the team; return the id
    range and a bearer header per user kind."""
    from loomcrm.engine.app import Loom
    from loomcrm.engine.identity import Users
    from loomcrm.engine.testing import api_token

    env = {**os.environ, "LOOM_DATABASE_URL": url}
    subprocess.run([sys.executable, "-c", "import sys; from loomcrm.engine.cli import main; sys.exit(main())",
                    "-p", str(path), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    loom = Loom.from_project(path, database_url=url)
    try:
        users = Users(loom)
        owners = [users.create(name, None, roles=["bench_restricted"])["id"] for name in ("rep", "mate")]
        users.create_team("bench")
        for name in ("rep", "mate"):
            users.add_member("bench", name)
        headers = {"unrestricted": f"Bearer {api_token(loom, 'boss', roles=['admin'])}",
                   "restricted": f"Bearer {api_token(loom, 'rep')}"}
        table = loom.metadata.tables[loom.entity("account").table]
        started = time.perf_counter()
        for start in range(1, rows + 1, 5_000):
            batch = account_rows(start, min(start + 5_000, rows + 1))
            for i, row in enumerate(batch):
                row["owner"] = owners[i % 2]
            with loom.engine.begin() as conn:
                conn.execute(table.insert(), batch)
        with loom.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
            ids = conn.execute(sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id))).one()
        print(f"inserted {rows} accounts owned by team 'bench' in {time.perf_counter() - started:.1f} s")
    finally:
        loom.close()
    return tuple(ids), headers


@contextlib.contextmanager
def server(path: Path, url: str, tmp: Path, pin: list[str]):
    env = {**os.environ, "LOOM_PROJECT": str(path), "LOOM_DATABASE_URL": url, "LOOM_SYNC_TO_THREAD": "1"}
    port = free_port()
    log = tmp / "loom.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*pin, sys.executable, "-m", "uvicorn", "--factory", "loomcrm.engine.app:create_app",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level",
                                 "warning", "--no-access-log"], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy("loom", proc, port, log)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def sanity_check(port: int, headers: dict[str, str]) -> None:
    """Both users must get the same rows, the restricted one without the three hidden fields."""
    import json
    import urllib.request

    pages = {}
    for kind, header in headers.items():
        request = urllib.request.Request(f"http://127.0.0.1:{port}{LIST_PATH}", headers={"Authorization": header})
        with urllib.request.urlopen(request, timeout=10) as response:
            pages[kind] = json.loads(response.read())["data"]
    hidden = {"annual_revenue", "phone", "email"}
    expected = [{k: v for k, v in r.items() if k not in hidden} for r in pages["unrestricted"]]
    if pages["restricted"] != expected or not expected:
        raise SystemExit("the restricted user does not get the same rows minus the hidden fields")
    print(f"sanity check: same {len(expected)} rows for both users, the restricted one without {sorted(hidden)}")


def main() -> None:
    args = parse_args()
    wrk = shutil.which("wrk")
    pin, driver_cpu = cpus()
    if driver_cpu is not None and not wrk:
        os.sched_setaffinity(0, {driver_cpu})
    with tempfile.TemporaryDirectory(prefix="loom-bench-security-") as tmp_name, \
            database(args.database_url, Path(tmp_name)) as url:
        tmp = Path(tmp_name)
        path = project(tmp)
        print(f"database: {make_url(url).render_as_string()}  rows: {args.rows}")
        ids, headers = prepare(path, url, args.rows)
        print(f"driver: {'wrk' if wrk else 'python asyncio'}, {args.connections} connections, {args.warmup:g} s "
              f"warm-up + {args.duration:g} s per run, {args.rounds} round(s); load average "
              f"{os.getloadavg()[0]:.2f}")
        runs: dict[str, dict[str, list[Result]]] = {s: {k: [] for k in headers} for s in ("list", "get")}
        with server(path, url, tmp, pin) as port:
            sanity_check(port, headers)
            for round_ in range(args.rounds):
                for scenario in runs:
                    for kind in (list(headers) if round_ % 2 == 0 else list(reversed(headers))):
                        drivers.AUTHORIZATION = headers[kind]
                        result = None
                        for seconds in (args.warmup, args.duration):
                            if seconds > 0:
                                result = wrk_load(wrk, port, scenario, ids, args.connections, seconds, tmp,
                                                  driver_cpu) if wrk else \
                                    python_load(port, scenario, ids, args.connections, seconds)
                        runs[scenario][kind].append(result)
                        print(f"  round {round_ + 1} {scenario:<5} {kind:<13} {result.rps:8.0f} req/s", flush=True)
        header = f"{'scenario':<9}{'admin req/s':>12}{'restricted req/s':>18}{'ratio':>8}   " \
                 f"{'admin p50/p99':>14}{'restricted p50/p99':>20}{'errors':>8}"
        print("\n" + header + "\n" + "-" * len(header))
        for scenario, by_kind in runs.items():
            free, restricted = median(by_kind["unrestricted"]), median(by_kind["restricted"])
            ratio = statistics.median(r.rps / f.rps for r, f in zip(by_kind["restricted"], by_kind["unrestricted"],
                                                                    strict=True))
            errors = sum(r.errors for k in by_kind.values() for r in k)
            print(f"{scenario:<9}{free.rps:>12.0f}{restricted.rps:>18.0f}{ratio:>6.2f} "
                  f"{'ok' if ratio >= TARGET else 'LOW':<3} {fmt_latency(free):>14}{fmt_latency(restricted):>20}"
                  f"{errors:>8}")
        print(f"target: restricted/admin >= {TARGET} (security costs at most 10 %)")


if __name__ == "__main__":
    main()
