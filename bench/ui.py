"""Pages per second of the admin app next to the REST API: the list page against the API's list, the
record page against the API's get, on the same records, for the same signed-in user, through one real
uvicorn server on 127.0.0.1.

The sales example is migrated and seeded (its demo data: 200 opportunities with accounts, pipelines and
history) into a temporary database; one ``loom serve`` process (one worker, pinned to the first CPU
when ``taskset`` is available) serves it. One session (``admin`` signs in through ``/admin/login``)
makes every request: the API accepts the session cookie too, so both sides pay the same sign-in.
Requests are sequential, one keep-alive connection (httpx), so the figure is the inverse of the
latency of one page: what one user clicking through the app costs the server, with nothing queued.

    .venv/bin/python bench/ui.py                       # SQLite, 300 requests per scenario
    .venv/bin/python bench/ui.py --requests 500 --rounds 3
    .venv/bin/python bench/ui.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

A figure, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from api import PROJECT, cpus, database, free_port, wait_healthy

USER, PASSWORD = "admin", "loom-demo-2026"  # the sales example's demo sign-in (examples/sales/seed.py)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="measured requests per scenario (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="unmeasured requests before each (default 30)")
    p.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order, and report the median")
    p.add_argument("--plural", default="opportunities", help="the entity's list (default opportunities)")
    p.add_argument("--limit", type=int, default=50, help="rows per list page (default 50)")
    p.add_argument("--database-url", help="as in bench/api.py")
    return p.parse_args()


def scenarios(plural: str, limit: int, ref_columns: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (path template, what it is); ``{id}`` cycles through the records. The API's list asks
    for what the list page shows: the same page size, the count, the ref columns expanded."""
    expand = f"&expand={','.join(ref_columns)}" if ref_columns else ""
    return {
        "admin list": (f"/admin/{plural}?limit={limit}", "the list page (HTML)"),
        "api list": (f"/api/{plural}?limit={limit}&count=true{expand}", "GET /api/<plural> (JSON)"),
        "admin record": (f"/admin/{plural}/{{id}}", "the record page: fields, workflow, related lists, history"),
        "api get": (f"/api/{plural}/{{id}}", "GET /api/<plural>/{id} (JSON)"),
    }


def prepare(project: Path, url: str) -> None:
    env = {**os.environ, "LOOM_DATABASE_URL": url}
    for command in (["migrate", "--no-backup"], ["seed"]):
        subprocess.run([sys.executable, "-c", "import sys; from loomcrm.engine.cli import main; sys.exit(main())",
                        "-p", str(project), *command], env=env, check=True, stdout=subprocess.DEVNULL)


def ref_columns(plural: str) -> list[str]:
    """The ref columns the list page shows (it expands them): the ones the API list must expand too."""
    from loomcrm.engine.app import Loom
    from loomcrm.generators.admin.views import list_columns

    loom = Loom.from_project(PROJECT, database_url="sqlite://")
    try:
        entity = next(e for e in loom.manifest.entities.values() if e.plural == plural)
        return [c.name for c in list_columns(loom.manifest, entity, None, "en") if c.widget == "ref"]
    finally:
        loom.close()


def measure(client: httpx.Client, path: str, ids: list[int], count: int, warmup: int) -> list[float]:
    """Seconds per request, for ``count`` sequential requests after ``warmup`` unmeasured ones."""
    cycle = itertools.cycle(ids)
    times = []
    for n in range(warmup + count):
        target = path.format(id=next(cycle))
        started = time.perf_counter()
        response = client.get(target)
        elapsed = time.perf_counter() - started
        if response.status_code != 200 or not response.content:
            raise SystemExit(f"GET {target}: {response.status_code}\n{response.text[:1000]}")
        if n >= warmup:
            times.append(elapsed)
    return times


def same_rows(client: httpx.Client, plan: dict[str, tuple[str, str]], plural: str) -> None:
    """Both lists show the same records (so they do the same work), and both record requests answer."""
    api = [r["id"] for r in client.get(plan["api list"][0]).json()["data"]]
    html = client.get(plan["admin list"][0]).text
    shown = list(dict.fromkeys(int(i) for i in re.findall(rf'href="/admin/{plural}/(\d+)"', html)))
    if not api or shown != api:
        raise SystemExit(f"the list page and the API list differ: {shown[:10]}... against {api[:10]}...")


def main() -> None:
    args = parse_args()
    pin, _ = cpus()
    refs = ref_columns(args.plural)
    with tempfile.TemporaryDirectory(prefix="loom-bench-ui-") as tmp_name:
        tmp = Path(tmp_name)
        project = tmp / "sales"
        shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("*.db", "*.db-*", "__pycache__", "phases"))
        with database(args.database_url, tmp) as url:
            started = time.perf_counter()
            prepare(project, url)
            print(f"ui bench: sales example migrated and seeded in {time.perf_counter() - started:.1f} s "
                  f"({url.split('://')[0]}); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            port = free_port()
            log = tmp / "server.log"
            with log.open("wb") as out:
                server = subprocess.Popen(
                    [*pin, str(Path(sys.executable).parent / "loom"), "-p", str(project), "serve",
                     "--port", str(port)], env={**os.environ, "LOOM_DATABASE_URL": url},
                    stdout=out, stderr=subprocess.STDOUT)
                try:
                    wait_healthy("loom", server, port, log)
                    run(args, port, refs)
                finally:
                    server.terminate()
                    try:
                        server.wait(10)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()


def run(args: argparse.Namespace, port: int, refs: list[str]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, follow_redirects=True) as client:
        signed = client.post("/admin/login", data={"username": USER, "password": PASSWORD, "_next": "/admin/"})
        if signed.status_code != 200 or "loom_session" not in client.cookies:
            raise SystemExit(f"could not sign in as {USER}: {signed.status_code}")
        page = client.get(f"/api/{args.plural}?limit=100&fields=id").json()
        ids = [r["id"] for r in page["data"]]
        plan = scenarios(args.plural, args.limit, refs)
        same_rows(client, plan, args.plural)
        runs: dict[str, list[list[float]]] = {name: [] for name in plan}
        for round_ in range(args.rounds):
            order = list(plan) if round_ % 2 == 0 else list(reversed(plan))
            for name in order:
                runs[name].append(measure(client, plan[name][0], ids, args.requests, args.warmup))
    print(f"{args.requests} sequential requests per scenario (after {args.warmup} unmeasured), {args.rounds} "
          f"round(s), as {USER}, {len(ids)} records cycled; median round shown\n")
    print(f"{'scenario':<14}{'pages/s':>9}{'p50 ms':>9}{'p99 ms':>9}  request")
    rates = {}
    for name, (path, what) in plan.items():
        best = sorted(runs[name], key=sum)[len(runs[name]) // 2]
        rates[name] = len(best) / sum(best)
        ordered = sorted(best)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"{name:<14}{rates[name]:>9.0f}{statistics.median(ordered) * 1000:>9.1f}{p99 * 1000:>9.1f}  "
              f"GET {path}: {what}")
    print(f"\nlist page: {rates['admin list'] / rates['api list']:.2f} x the API's list; record page: "
          f"{rates['admin record'] / rates['api get']:.2f} x the API's get")


if __name__ == "__main__":
    main()
