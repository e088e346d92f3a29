"""Load drivers for bench/api.py: ``wrk`` with Lua scripts, or a bounded asyncio fallback.

Both keep ``connections`` HTTP/1.1 keep-alive connections busy for ``seconds`` and report req/s,
p50/p99 latency and failed requests (transport errors and 4xx/5xx answers). The Python driver shares
one interpreter among all connections, so it adds its own overhead and caps at a few thousand
req/s: prefer wrk (``apt-get install -y wrk``) for figures you compare across machines.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = ("list", "get", "create")
#: ``filter[region][eq]=east&limit=50``, brackets percent-encoded as a browser would send them
LIST_PATH = "/api/accounts?filter%5Bregion%5D%5Beq%5D=east&limit=50"
SEED = 20240101
REGIONS = ("north", "east", "south", "west", "overseas")
INDUSTRIES = ("technology", "retail", "finance", "logistics")


@dataclass
class Result:
    rps: float
    requests: int
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None


def create_body(n: int) -> str:
    """The JSON the create scenario posts (the Lua script below builds the same text)."""
    return (f'{{"name":"Bench account {n}","region":"{REGIONS[n % 5]}","industry":"{INDUSTRIES[n % 4]}",'
            f'"city":"Shanghai","annual_revenue":{n % 100000}.5}}')


#: Sent with every request (Loom requires sign-in; the baseline ignores the header). Set by api.py.
AUTHORIZATION = ""


# --- wrk ---------------------------------------------------------------------------------------------
LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %.0f %.0f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""
LUA = {
    "list": f'request = function() return wrk.format("GET", "{LIST_PATH}") end\n',
    "get": """
math.randomseed({seed})
request = function() return wrk.format("GET", "/api/accounts/" .. math.random({low}, {high})) end
""",
    "create": """
local n = 0
local regions = {{"north", "east", "south", "west", "overseas"}}
local industries = {{"technology", "retail", "finance", "logistics"}}
local headers = {{["Content-Type"] = "application/json", ["Authorization"] = wrk.headers["Authorization"]}}
request = function()
  n = n + 1
  local body = string.format('{{"name":"Bench account %d","region":"%s","industry":"%s","city":"Shanghai",'
    .. '"annual_revenue":%d.5}}', n, regions[n % 5 + 1], industries[n % 4 + 1], n % 100000)
  return wrk.format("POST", "/api/accounts", headers, body)
end
""",
}


def wrk_load(wrk: str, port: int, scenario: str, ids: tuple[int, int], connections: int, seconds: float,
             tmp: Path, cpu: int | None) -> Result:
    script = tmp / f"{scenario}.lua"
    body = LUA[scenario].format(seed=SEED, low=ids[0], high=ids[1]) if scenario != "list" else LUA[scenario]
    auth = f'wrk.headers["Authorization"] = "{AUTHORIZATION}"\n' if AUTHORIZATION else ""
    script.write_text(auth + body + LUA_DONE)
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd = [*pin, wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    requests, duration_us, transport, status, p50, p99 = map(int, match.groups())
    return Result(requests / (duration_us / 1e6), requests, transport + status, p50 / 1000, p99 / 1000)


# --- the Python fallback -------------------------------------------------------------------------------
def _request(method: str, path: str, body: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if AUTHORIZATION:
        head += f"Authorization: {AUTHORIZATION}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n"
    return (head + "\r\n" + body).encode()


def _factory(scenario: str, ids: tuple[int, int]):
    counter = itertools.count(1)
    if scenario == "list":
        fixed = _request("GET", LIST_PATH)
        return lambda rng: fixed
    if scenario == "get":
        return lambda rng: _request("GET", f"/api/accounts/{rng.randint(*ids)}")
    return lambda rng: _request("POST", "/api/accounts", create_body(next(counter)))


CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


async def _drive(port: int, make, connections: int, seconds: float) -> Result:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    latencies: list[float] = []
    errors = 0

    async def connection(k: int) -> None:
        nonlocal errors
        rng = random.Random(SEED + k)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                started = time.perf_counter()
                writer.write(make(rng))
                head = await reader.readuntil(b"\r\n\r\n")
                length = CONTENT_LENGTH.search(head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append(time.perf_counter() - started)
                errors += int(head[9:12]) >= 400
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    started = loop.time()
    await asyncio.gather(*(connection(k) for k in range(connections)))
    elapsed = loop.time() - started
    latencies.sort()

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None

    return Result(len(latencies) / elapsed, len(latencies), errors, pct(0.5), pct(0.99))


def python_load(port: int, scenario: str, ids: tuple[int, int], connections: int, seconds: float) -> Result:
    """Run in the calling process (bench/api.py pins itself to the driver CPU first)."""
    assert os.environ.get("PYTHONASYNCIODEBUG") != "1", "asyncio debug mode distorts the figures"
    return asyncio.run(_drive(port, _factory(scenario, ids), connections, seconds))
