"""``loom serve --workers N``: several processes share one database without losing writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main as loom
from loomcrm.engine.testing import api_token

ROOT = Path(__file__).resolve().parents[2]
SALES = ROOT / "examples" / "sales"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(db_url):
    assert loom(["-p", str(SALES), "migrate", "--database", db_url]) == 0
    app = Loom.from_project(SALES, database_url=db_url)
    token = api_token(app)
    app.close()
    port = free_port()
    env = {**os.environ, "LOOM_DATABASE_URL": db_url}
    process = subprocess.Popen(
        [Path(sys.executable).parent / "loom", "-p", SALES, "serve", "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            process.kill()
            pytest.fail("server did not start:\n" + (process.stdout.read() if process.stdout else ""))
        yield httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_two_workers_accept_concurrent_writes_without_losing_any(server):
    def create(i: int) -> int:
        body = {"name": f"Parallel {i}", "region": ["north", "east", "south"][i % 3]}
        return server.post("/api/accounts", json=body).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(create, range(60)))
    assert statuses == [201] * 60
    page = server.get("/api/accounts?count=true&limit=1&filter[name][startswith]=Parallel").json()
    assert page["count"] == 60


def test_concurrent_patches_through_two_workers_bump_version_once_each(server):
    record = server.post("/api/accounts", json={"name": "Counter", "employees": 0}).json()

    def bump(n: int) -> int:
        return server.patch(f"/api/accounts/{record['id']}", json={"employees": n}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(bump, range(1, 25)))
    assert statuses == [200] * 24
    assert server.get(f"/api/accounts/{record['id']}").json()["version"] == 25
