"""Webhooks: the transactional outbox, signed deliveries retried until they succeed, field and row
security of the payloads, several workers at once, API subscriptions, config errors and ``loom worker``.

A real HTTP receiver (``http.server`` on 127.0.0.1) takes the deliveries; ``deliver_due(now=...)``
moves the clock past the backoff instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from loomcrm.engine.cli import main as loom_cli
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context, utcnow
from loomcrm.engine.runtime.delivery import deliver_due
from loomcrm.engine.testing import api_token, compile_files, config_errors, make_loom

ROOT = Path(__file__).resolve().parents[2]

ENTITIES = """
entities:
  deal:
    fields:
      title: {type: string, required: true}
      amount: {type: money}
      margin: {type: decimal}
  note:
    fields:
      text: {type: string}
"""
ROLES = """
roles:
  rep:
    entities:
      deal: {read: all, create: true, update: all}
      note: {read: all}
    fields:
      deal.margin: hidden
  own_rep:
    entities:
      deal: {read: own, create: true}
  outsider:
    entities:
      note: {read: all}
  big_deals:
    entities:
      deal: {read: all, where: "record.amount >= 100.0 && record.title != 'secret'"}
"""


def project(webhooks: str = "webhooks: {}\n", *, roles: bool = False) -> dict[str, str]:
    include = "entities.yaml, webhooks.yaml" + (", roles.yaml" if roles else "")
    return {"loom.yaml": f"app: {{name: Hooks}}\ninclude: [{include}]\n", "entities.yaml": ENTITIES,
            "webhooks.yaml": webhooks, **({"roles.yaml": ROLES} if roles else {})}


def hook(url: str, events: str = "[deal.*]", **settings) -> str:
    """``webhooks.yaml`` holding one webhook ``crm``; ``settings`` are more of its keys (YAML values)."""
    lines = "".join(f"\n    {key}: {value}" for key, value in settings.items())
    return f"webhooks:\n  crm:\n    url: {url}\n    events: {events}{lines}\n"


class Receiver:
    """An HTTP endpoint that answers 500 to its first ``failures`` requests and then 200; request
    number ``stall`` (counting from 0) is answered only after ``stall_seconds``; ``on_request(number)``
    runs before each answer."""

    def __init__(self, *, failures: int = 0, stall: int | None = None, stall_seconds: float = 0.0,
                 delay: float = 0.0):
        self.failures, self.stall, self.stall_seconds, self.delay = failures, stall, stall_seconds, delay
        self.on_request = lambda number: None
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    number = len(receiver.requests)
                    status = 500 if number < receiver.failures else 200
                    receiver.requests.append({"headers": self.headers, "body": body, "status": status,
                                              "key": self.headers["X-Loom-Delivery"]})
                receiver.on_request(number)
                time.sleep(receiver.stall_seconds if number == receiver.stall else receiver.delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up waiting
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def payloads(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified(secret: str, request: dict) -> bool:
    """Check a request's signature the way docs/api.md tells receivers to."""
    headers, body = request["headers"], request["body"]
    timestamp = headers["X-Loom-Timestamp"]
    expected = "sha256=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Loom-Signature", "")) \
        and abs(time.time() - int(timestamp)) < 300


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
def build(db_url):
    """``build(files, plugins=...)``: a migrated Loom on the test's database, closed afterwards."""
    made = []

    def make(files, **kwargs):
        made.append(make_loom(files, db_url, **kwargs))
        return made[-1]

    yield make
    for loom in made:
        loom.close()


def outbox(loom) -> list[dict]:
    table = loom.metadata.tables["loom_outbox"]
    with loom.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(table.c.id)).mappings()]


def attempts(loom, outbox_id: int) -> list[tuple]:
    table = loom.metadata.tables["loom_webhook_delivery"]
    with loom.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table.c.attempt, table.c.status_code, table.c.error)
                                               .where(table.c.outbox_id == outbox_id).order_by(table.c.id))]


def drain(loom, *, rounds: int = 8, step: dt.timedelta = dt.timedelta(minutes=5)) -> None:
    """Deliver until nothing is due, moving the clock on by ``step`` each round (past any backoff)."""
    now = utcnow()
    for _ in range(rounds):
        deliver_due(loom, now=now)
        if all(row["status"] != "pending" for row in outbox(loom)):
            return
        now += step


def create(loom, entity: str, data: dict, actor: int | None = None) -> dict:
    return loom.records.create(loom.entity(entity), data, Context(actor=actor))


def subscribe(loom, url: str, events: list[str], username: str = "ann") -> int:
    """An API subscription of ``username`` (a rep); returns its id."""
    with TestClient(loom.asgi()) as client:
        answer = client.post("/api/webhooks", json={"url": url, "events": events},
                             headers={"Authorization": f"Bearer {api_token(loom, username, ['rep'])}"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


# --- delivery ---------------------------------------------------------------------------------------
def test_failing_receiver_gets_every_event_after_retries_with_one_key_per_event(build, receiver, monkeypatch):
    monkeypatch.setenv("CRM_HOOK_SECRET", "s3cret")
    server = receiver(failures=3, stall=3, stall_seconds=1.0)  # then one answer comes too late
    loom = build(project(hook(server.url, secret_env="CRM_HOOK_SECRET", backoff_seconds=1, timeout_seconds=0.3)))
    deals = [create(loom, "deal", {"title": f"deal {i}", "amount": "10.00"}) for i in range(3)]
    loom.records.update(loom.entity("deal"), deals[0]["id"], {"title": "renamed"}, Context())
    loom.records.delete(loom.entity("deal"), deals[1]["id"], Context())

    drain(loom)

    rows = outbox(loom)
    assert [r["event"] for r in rows] == ["deal.created"] * 3 + ["deal.updated", "deal.deleted"]
    assert all(r["status"] == "delivered" for r in rows)
    keys = {r["key"] for r in rows}
    assert len(keys) == 5
    received = {}
    for request in server.requests:  # a retry repeats the same event under the same key, byte for byte
        assert request["key"] in keys
        received.setdefault(request["key"], set()).add(request["body"])
    assert set(received) == keys and all(len(bodies) == 1 for bodies in received.values())
    assert len(server.requests) == 9  # 5 events + 3 failures retried + 1 late answer sent again
    assert all(verified("s3cret", request) for request in server.requests)
    assert [attempt[:2] for attempt in attempts(loom, rows[0]["id"])] == [(1, 500), (2, 200)]
    assert attempts(loom, rows[3]["id"]) == [(1, None, "no answer within 0.3 seconds"), (2, 200, None)]
    assert attempts(loom, rows[4]["id"]) == [(1, 200, None)]
    payload = json.loads(next(r["body"] for r in server.requests if r["key"] == rows[3]["key"]))
    assert payload["event"] == "deal.updated" and payload["record"]["title"] == "renamed"
    assert payload["changes"] == {"title": ["deal 0", "renamed"]} and payload["id"] == rows[3]["key"]
    assert server.requests[0]["headers"]["X-Loom-Event"] == "deal.created"


def test_an_event_is_given_up_after_max_attempts(build, receiver):
    server = receiver(failures=100)
    loom = build(project(hook(server.url, max_attempts=3, backoff_seconds=1)))
    create(loom, "deal", {"title": "never heard of"})
    start = utcnow()
    assert deliver_due(loom, now=start) == {"delivered": 0, "retrying": 1, "dead": 0}
    assert deliver_due(loom, now=start) == {"delivered": 0, "retrying": 0, "dead": 0}  # backoff: not yet due
    assert deliver_due(loom, now=start + dt.timedelta(seconds=2))["retrying"] == 1
    assert deliver_due(loom, now=start + dt.timedelta(seconds=10))["dead"] == 1
    (row,) = outbox(loom)
    assert row["status"] == "dead" and row["attempts"] == 3 and row["last_error"] == "HTTP 500"
    assert deliver_due(loom, now=start + dt.timedelta(days=2)) == {"delivered": 0, "retrying": 0, "dead": 0}


def test_missing_secret_variable_fails_the_attempt_instead_of_sending_unsigned(build, receiver, monkeypatch):
    monkeypatch.delenv("CRM_HOOK_SECRET", raising=False)
    server = receiver()
    loom = build(project(hook(server.url, secret_env="CRM_HOOK_SECRET")))
    create(loom, "deal", {"title": "signed or nothing"})
    assert deliver_due(loom)["retrying"] == 1
    assert server.requests == []
    (row,) = outbox(loom)
    assert row["last_error"].startswith("environment variable CRM_HOOK_SECRET is not set")
    monkeypatch.setenv("CRM_HOOK_SECRET", "now set")
    drain(loom)
    assert verified("now set", server.requests[0])


def test_two_workers_at_once_deliver_each_event_once(build, receiver):
    server = receiver(delay=0.005)
    loom = build(project(hook(server.url)))
    for i in range(30):
        create(loom, "deal", {"title": f"deal {i}"})
    errors = []

    def worker():
        try:
            while sum(deliver_due(loom, limit=4).values()):
                pass
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    keys = [request["key"] for request in server.requests]
    assert len(keys) == 30 and len(set(keys)) == 30
    assert all(row["status"] == "delivered" and row["attempts"] == 1 for row in outbox(loom))


def test_a_worker_whose_claim_ran_out_mid_send_records_nothing(build, receiver):
    server = receiver(failures=1)  # the first try fails...
    loom = build(project(hook(server.url, max_attempts=1)))
    create(loom, "deal", {"title": "slow receiver"})
    start = utcnow()
    takeover = {}
    # ...but only after the first worker's claim has run out and a second worker delivered the event
    server.on_request = lambda number: number == 0 and takeover.update(deliver_due(loom, now=start + dt.timedelta(hours=1)))
    assert deliver_due(loom, now=start) == {"delivered": 0, "retrying": 0, "dead": 0}  # its "given up" is void
    assert takeover["delivered"] == 1
    (row,) = outbox(loom)
    assert row["status"] == "delivered" and row["attempts"] == 1 and row["last_error"] is None
    assert attempts(loom, row["id"]) == [(1, 200, None)]


def test_deleting_a_subscription_while_its_event_is_sent_spares_the_rest_of_the_batch(build, receiver, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOKS_ALLOW_PRIVATE", "1")
    from loomcrm.engine.runtime.subscriptions import Subscriptions

    server = receiver()
    loom = build(project(hook(server.url), roles=True))
    api_server = receiver()
    subscription = subscribe(loom, api_server.url, ["deal.created"])
    ann = Users(loom).find("ann")["id"]
    create(loom, "deal", {"title": "one"})
    create(loom, "deal", {"title": "two"})
    # its owner unsubscribes while the first event is being sent (its rows go, the claimed ones too)
    api_server.on_request = lambda number: number == 0 and Subscriptions(loom.records).delete(Context(actor=ann),
                                                                                              subscription)
    lines = []
    counts = deliver_due(loom, log=lines.append)
    assert counts == {"delivered": 2, "retrying": 0, "dead": 0}
    assert len(server.requests) == 2 and len(api_server.requests) == 2  # both claimed before the deletion
    assert {r["subscription"] for r in outbox(loom)} == {"crm"}
    assert sum("not recorded" in line for line in lines) == 2


def test_a_corrected_url_reaches_events_already_queued(build, db_url, receiver):
    wrong, right = receiver(failures=100), receiver()
    loom = build(project(hook(wrong.url, backoff_seconds=1)))
    create(loom, "deal", {"title": "queued before the fix"})
    assert deliver_due(loom)["retrying"] == 1
    fixed = build(project(hook(right.url, backoff_seconds=1)))  # the config corrected, the worker restarted
    drain(fixed)
    assert len(wrong.requests) == 1
    assert [p["record"]["title"] for p in right.payloads()] == ["queued before the fix"]


def test_old_delivered_and_given_up_events_are_purged_with_their_log(build, receiver):
    from loomcrm.engine.runtime.delivery import purge_outbox

    server = receiver()
    loom = build(project(hook(server.url, max_attempts=1)))
    start = utcnow()
    create(loom, "deal", {"title": "delivered"})
    drain(loom)
    server.failures = 100
    create(loom, "deal", {"title": "given up"})
    deliver_due(loom)
    delivered, dead = outbox(loom)
    assert dead["status"] == "dead"
    create(loom, "deal", {"title": "pending"})
    assert purge_outbox(loom, now=start + dt.timedelta(days=29)) == 0
    assert purge_outbox(loom, now=start + dt.timedelta(days=31)) == 1
    assert [r["status"] for r in outbox(loom)] == ["dead", "pending"]
    assert attempts(loom, delivered["id"]) == [] and len(attempts(loom, dead["id"])) == 1
    assert purge_outbox(loom, now=start + dt.timedelta(days=91)) == 1
    assert [r["status"] for r in outbox(loom)] == ["pending"] and attempts(loom, dead["id"]) == []
    assert purge_outbox(loom, now=start + dt.timedelta(days=3), delivered_days=1) == 0  # kept: still pending


def test_the_worker_purges_old_events_at_most_once_an_hour(build, receiver, monkeypatch):
    from loomcrm.engine import worker

    server = receiver()
    loom = build(project(hook(server.url)))
    create(loom, "deal", {"title": "delivered"})
    drain(loom)
    later = utcnow() + dt.timedelta(days=2)
    monkeypatch.setattr("loomcrm.engine.runtime.delivery.utcnow", lambda: later)
    assert worker.tick(loom, purge=True)["purged"] == 0  # kept 30 days by default
    assert worker.tick(loom, purge=True, keep_days=1)["purged"] == 1
    assert outbox(loom) == []
    clock, purges = [0.0], []

    def tick(loom, *, stop, purge, **kwargs):  # each round takes 1000 seconds; stop after six
        purges.append(purge)
        clock[0] += 1000
        if len(purges) == 6:
            stop.set()

    monkeypatch.setattr(worker, "tick", tick)
    monkeypatch.setattr(worker, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    assert worker.run_worker(loom, interval=0.01, log=lambda line: None) == 0
    assert purges == [True, False, False, False, False, True]


# --- what is queued ---------------------------------------------------------------------------------
def test_a_write_that_rolls_back_queues_nothing(build, receiver):
    class Doomed:
        """After a deal is created, writes a note (queued in the same transaction), then fails."""

        records = None

        @hookimpl
        def loom_after_create(self, ctx, entity, record):
            if entity.name == "deal" and record["title"] == "doomed":
                self.records.create(self.records.manifest.entities["note"], {"text": "inner"}, ctx.acting())
                raise RuntimeError("the deal cannot be stored")

    plugin = Doomed()
    server = receiver()
    loom = build(project(hook(server.url, events="[deal.*, note.*]")), plugins=[plugin])
    plugin.records = loom.records
    with pytest.raises(Exception, match="the deal cannot be stored"):
        create(loom, "deal", {"title": "doomed"})
    assert outbox(loom) == []
    with pytest.raises(RuntimeError), loom.records.writing(Context()) as conn:
        record = loom.records.store.insert(conn, loom.entity("note"), {"text": "x", "created_at": utcnow(),
                                                                       "updated_at": utcnow()})
        assert loom.records.outbox.enqueue(conn, Context(), "note.created", loom.entity("note"), record) == 1
        raise RuntimeError("rolled back")
    assert outbox(loom) == []
    create(loom, "deal", {"title": "kept"})
    drain(loom)
    assert [p["event"] for p in server.payloads()] == ["deal.created"]


def test_where_selects_the_records_whose_events_are_sent(build, receiver):
    server = receiver()
    loom = build(project(hook(server.url, events="[deal.created, deal.updated]",
                              where='"record.amount != null && record.amount >= 1000.0"')))
    big = create(loom, "deal", {"title": "big", "amount": "5000.00"})
    create(loom, "deal", {"title": "small", "amount": "10.00"})
    create(loom, "deal", {"title": "unknown"})
    loom.records.update(loom.entity("deal"), big["id"], {"amount": "20.00"}, Context())
    drain(loom)
    assert [(p["event"], p["record"]["title"]) for p in server.payloads()] == [("deal.created", "big")]


def test_custom_events_reach_only_their_subscribers(build, receiver):
    server = receiver()
    loom = build(project(hook(server.url, events="[deal.won, note.created]")))
    deal = create(loom, "deal", {"title": "won it"})
    with loom.records.writing(Context()) as conn:
        stored = loom.records.store.fetch(conn, loom.entity("deal"), deal["id"])
        loom.records.outbox.enqueue(conn, Context(), "deal.won", loom.entity("deal"), stored)
        loom.records.outbox.enqueue(conn, Context(), "deal.lost", loom.entity("deal"), stored)
    drain(loom)
    assert [p["event"] for p in server.payloads()] == ["deal.won"]


def test_no_subscription_costs_no_query(build):
    loom = build(project())
    deal = loom.entity("deal")
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    with loom.records.writing(Context()) as conn:
        record = loom.records.store.insert(conn, deal, {"title": "x", "created_at": utcnow(), "updated_at": utcnow()})
        loom.records.outbox.enqueue(conn, Context(), "deal.created", deal, record)  # reads the API subscriptions
        sa.event.listen(loom.engine, "before_cursor_execute", count)
        try:
            for _ in range(50):
                assert loom.records.outbox.enqueue(conn, Context(), "deal.created", deal, record) == 0
        finally:
            sa.event.remove(loom.engine, "before_cursor_execute", count)
    assert statements == []


# --- field and row security ---------------------------------------------------------------------------
@pytest.fixture
def secured(build, receiver):
    """Users ann (rep: margin hidden), olga (own_rep: her own deals only), otto (outsider: no deals),
    bea (big_deals: a row rule), gone (disabled rep); webhooks running as each of them, as a user who
    does not exist, and as nobody."""
    server = receiver()
    webhooks = "webhooks:\n" + "".join(
        f"  as_{name}: {{url: '{server.url}?as={name}', events: [deal.*], run_as: {name}}}\n"
        for name in ("ann", "olga", "otto", "bea", "gone", "ghost"))
    webhooks += f"  everything: {{url: '{server.url}?as=everything', events: [deal.*]}}\n"
    loom = build(project(webhooks, roles=True))
    users = Users(loom)
    ids = {name: users.create(name, None, roles=[role])["id"]
           for name, role in (("ann", "rep"), ("olga", "own_rep"), ("otto", "outsider"), ("bea", "big_deals"),
                              ("gone", "rep"))}
    users.set_active("gone", False)
    loom.records.outbox.forget()
    return loom, server, ids


def test_payload_leaves_out_fields_hidden_from_the_run_as_user(secured):
    loom, server, ids = secured
    deal = create(loom, "deal", {"title": "t", "amount": "100.00", "margin": "0.25"}, actor=ids["ann"])
    loom.records.update(loom.entity("deal"), deal["id"], {"margin": "0.3", "title": "t2"}, Context())
    drain(loom)
    rows = {(r["subscription"], r["event"]): r["payload"] for r in outbox(loom)}
    assert "margin" not in rows["as_ann", "deal.created"]["record"]
    assert rows["as_ann", "deal.created"]["record"]["title"] == "t"
    assert rows["as_ann", "deal.updated"]["changes"] == {"title": ["t", "t2"]}
    assert rows["everything", "deal.created"]["record"]["margin"] is not None
    assert set(rows["everything", "deal.updated"]["changes"]) == {"title", "margin"}
    sent = [json.loads(r["body"]) for r in server.requests]
    assert sum("margin" not in p["record"] for p in sent) == 2  # ann's two events, as queued


def test_events_of_records_the_run_as_user_cannot_read_are_not_queued(secured):
    loom, server, ids = secured
    create(loom, "deal", {"title": "ann's"}, actor=ids["ann"])
    mine = create(loom, "deal", {"title": "olga's"}, actor=ids["olga"])
    loom.records.delete(loom.entity("deal"), mine["id"], Context())
    queued = [(r["subscription"], r["event"], r["payload"]["record"]["title"]) for r in outbox(loom)]
    assert [q for q in queued if q[0] == "as_olga"] == [("as_olga", "deal.created", "olga's"),
                                                          ("as_olga", "deal.deleted", "olga's")]
    assert not [q for q in queued if q[0] in ("as_otto", "as_gone", "as_ghost")]  # no read; disabled; no such user
    assert len([q for q in queued if q[0] == "as_ann"]) == 3


def test_row_rules_of_the_run_as_user_decide_which_events_are_sent(secured):
    loom, _, _ = secured
    deal = loom.entity("deal")
    small = create(loom, "deal", {"title": "small", "amount": "50.00"})
    big = create(loom, "deal", {"title": "big", "amount": "500.00"})
    create(loom, "deal", {"title": "secret", "amount": "900.00"})
    loom.records.update(deal, small["id"], {"amount": "150.00"}, Context())
    loom.records.delete(deal, big["id"], Context())
    queued = [(r["event"], r["payload"]["record"]["title"]) for r in outbox(loom) if r["subscription"] == "as_bea"]
    assert queued == [("deal.created", "big"), ("deal.updated", "small"), ("deal.deleted", "big")]


def test_row_rules_decide_for_events_of_actions_on_stored_and_deleted_records(build, receiver):
    server = receiver()
    files = project(f"webhooks:\n  as_bea: {{url: '{server.url}', events: [deal.won, deal.removed], run_as: bea}}\n"
                    "automations:\n"
                    "  won:\n    entity: deal\n    on: update\n    actions: [{webhook: deal.won}]\n"
                    "  removed:\n    entity: deal\n    on: delete\n    actions: [{webhook: deal.removed}]\n",
                    roles=True)
    loom = build(files)
    Users(loom).create("bea", None, roles=["big_deals"])
    deal = loom.entity("deal")
    small = create(loom, "deal", {"title": "small", "amount": "50.00"})
    big = create(loom, "deal", {"title": "big", "amount": "500.00"})
    for record in (small, big):
        loom.records.update(deal, record["id"], {"title": f"{record['title']}!"}, Context())
        loom.records.delete(deal, record["id"], Context())
    queued = [(r["event"], r["payload"]["record"]["title"]) for r in outbox(loom)]
    assert queued == [("deal.won", "big!"), ("deal.removed", "big!")]


# --- subscriptions through the API ----------------------------------------------------------------------
def test_api_subscription_lifecycle_with_signed_payloads_shaped_by_the_caller(build, receiver, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOKS_ALLOW_PRIVATE", "1")  # the receiver listens on 127.0.0.1
    server = receiver(failures=1)
    loom = build(project(roles=True))
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'ann', ['rep'])}"
        answer = client.post("/api/webhooks", json={"url": server.url, "events": ["deal.created", "deal.*"]})
        assert answer.status_code == 201, answer.text
        created = answer.json()
        secret = created["secret"]
        assert secret.startswith("whsec_") and created["events"] == ["deal.created", "deal.*"]
        listed = client.get("/api/webhooks").json()["data"]
        assert [s["id"] for s in listed] == [created["id"]] and "secret" not in listed[0]

        deal = create(loom, "deal", {"title": "seen by ann", "margin": "0.5"})
        drain(loom)
        assert len(server.requests) == 2 and all(verified(secret, r) for r in server.requests)
        payload = server.payloads()[-1]
        assert payload["record"]["id"] == deal["id"] and "margin" not in payload["record"]

        log = client.get(f"/api/webhooks/{created['id']}/deliveries").json()["data"]
        assert [(e["attempt"], e["ok"], e["status_code"]) for e in log] == [(2, True, 200), (1, False, 500)]
        assert log[0]["key"] == payload["id"] and log[0]["event_status"] == "delivered"

        bob = {"Authorization": f"Bearer {api_token(loom, 'bob', ['rep'])}"}
        assert client.get("/api/webhooks", headers=bob).json()["data"] == []
        assert client.delete(f"/api/webhooks/{created['id']}", headers=bob).status_code == 404
        assert client.get(f"/api/webhooks/{created['id']}/deliveries", headers=bob).status_code == 404

        assert client.delete(f"/api/webhooks/{created['id']}").status_code == 204
        assert client.get("/api/webhooks").json()["data"] == []
        assert client.delete(f"/api/webhooks/{created['id']}").status_code == 404
        create(loom, "deal", {"title": "after unsubscribing"})
        assert outbox(loom) == []


def test_api_refuses_callers_who_cannot_read_everything_and_events_that_do_not_exist(build, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOKS_ALLOW_PRIVATE", "1")  # no name look-ups
    loom = build(project(roles=True))
    with TestClient(loom.asgi()) as client:
        olga = {"Authorization": f"Bearer {api_token(loom, 'olga', ['own_rep'])}"}
        answer = client.post("/api/webhooks", json={"url": "https://example.com/h", "events": ["deal.created"]},
                             headers=olga)
        assert answer.status_code == 403
        assert answer.json()["errors"][0] == {"field": "events", "code": "forbidden",
                                              "message": "you may not read every deal record"}
        ann = {"Authorization": f"Bearer {api_token(loom, 'ann', ['rep'])}"}
        answer = client.post("/api/webhooks", json={"url": "ftp://example.com", "events": ["deals.created", "deal.crated",
                                                                                       "deal.won"], "x": 1}, headers=ann)
        assert answer.status_code == 422
        errors = {e["field"]: e for e in answer.json()["errors"]}
        assert set(errors) == {"x", "url", "events[0]", "events[1]"}
        assert "did you mean 'deal'?" in errors["events[0]"]["message"]
        assert "did you mean 'deal.created'?" in errors["events[1]"]["message"]
        assert client.post("/api/webhooks", json={"url": "https://example.com"}, headers=ann).status_code == 422
        assert client.get("/api/webhooks").status_code == 401


def test_webhook_routes_are_in_the_openapi_document(build):
    loom = build(project())
    with TestClient(loom.asgi()) as client:
        document = client.get("/schema/openapi.json").json()
    assert {"/api/webhooks", "/api/webhooks/{subscription_id}", "/api/webhooks/{subscription_id}/deliveries"} \
        <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert "secret" in schemas["WebhookCreated"]["properties"] and "WebhookDeliveryPage" in schemas


def test_api_subscriptions_may_not_reach_into_the_servers_network(build):
    loom = build(project(roles=True))
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'ann', ['rep'])}"
        for url in ("http://127.0.0.1:5432/", "http://10.0.0.7/hook", "http://169.254.169.254/latest/meta-data",
                    "http://localhost:8000/", "http://[::1]/", "http://[::ffff:127.0.0.1]/"):
            answer = client.post("/api/webhooks", json={"url": url, "events": ["deal.created"]})
            assert answer.status_code == 422, url
            (error,) = answer.json()["errors"]
            assert error["field"] == "url" and error["message"].startswith("address not allowed")
            assert "LOOM_WEBHOOKS_ALLOW_PRIVATE=1" in error["message"]
        for url in ("http://[::1/", "http://example.com:99999/"):  # not URLs at all: 422, not 500
            answer = client.post("/api/webhooks", json={"url": url, "events": ["deal.created"]})
            assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "url"
        assert client.get("/api/webhooks").json()["data"] == []


def test_a_private_address_is_refused_again_at_delivery(build, receiver, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOKS_ALLOW_PRIVATE", "1")
    server = receiver()
    loom = build(project(hook(server.url), roles=True))  # the config's own webhooks are not restricted
    subscription = subscribe(loom, server.url, ["deal.created"])
    monkeypatch.delenv("LOOM_WEBHOOKS_ALLOW_PRIVATE")  # (or: its name now resolves to a private address)
    create(loom, "deal", {"title": "inside"})
    lines = []
    assert deliver_due(loom, log=lines.append) == {"delivered": 1, "retrying": 1, "dead": 0}
    assert [r["headers"]["X-Loom-Event"] for r in server.requests] == ["deal.created"]
    refused = next(r for r in outbox(loom) if r["subscription"] == f"api:{subscription}")
    assert attempts(loom, refused["id"]) == [(1, None, "address not allowed: 127.0.0.1 is not a public address")]
    assert "address not allowed" in lines[0]


def test_a_user_may_have_at_most_20_api_subscriptions(build, monkeypatch):
    monkeypatch.setenv("LOOM_WEBHOOKS_ALLOW_PRIVATE", "1")  # no name look-ups for the URLs below
    loom = build(project(roles=True))
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'ann', ['rep'])}"
        for i in range(20):
            assert client.post("/api/webhooks", json={"url": f"https://h{i}.example.com/",
                                                      "events": ["deal.created"]}).status_code == 201
        answer = client.post("/api/webhooks", json={"url": "https://one-more.example.com/", "events": ["deal.*"]})
        assert answer.status_code == 422
        assert "the most one user may have (20)" in answer.json()["errors"][0]["message"]
        bob = {"Authorization": f"Bearer {api_token(loom, 'bob', ['rep'])}"}
        assert client.post("/api/webhooks", json={"url": "https://bob.example.com/", "events": ["deal.*"]},
                           headers=bob).status_code == 201


def test_subscription_ids_beyond_64_bits_are_not_found(build):
    loom = build(project(roles=True))
    with TestClient(loom.asgi()) as client:
        client.headers["Authorization"] = f"Bearer {api_token(loom, 'ann', ['rep'])}"
        huge = 2**64
        for answer in (client.delete(f"/api/webhooks/{huge}"), client.get(f"/api/webhooks/{huge}/deliveries")):
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"] == f"no webhook subscription with id {huge}"


def test_api_subscriptions_reach_a_database_migrated_while_the_server_runs(build, monkeypatch):
    from loomcrm.engine.runtime import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "CACHE_SECONDS", 0.0)  # every write looks again
    loom = build(project(roles=True))
    tables = [loom.metadata.tables[name] for name in ("loom_webhook_delivery", "loom_outbox", "loom_webhook")]
    with loom.engine.begin() as conn:  # a database from before webhooks
        for table in tables:
            table.drop(conn)
    create(loom, "deal", {"title": "before migrating"})
    loom.metadata.create_all(loom.engine, tables=tables)  # 'loom migrate', run from another process
    ann = Users(loom).create("ann", None, roles=["rep"])["id"]
    with loom.engine.begin() as conn:  # a subscription made through another server process
        conn.execute(tables[2].insert().values(url="https://example.com/h", events=["deal.created"], secret="s",
                                               run_as=ann, created_at=utcnow(), active=True))
    create(loom, "deal", {"title": "after migrating"})
    assert [r["payload"]["record"]["title"] for r in outbox(loom)] == ["after migrating"]


# --- config errors ------------------------------------------------------------------------------------------
def test_webhook_config_errors_name_their_place_and_a_fix():
    text = config_errors(project("""\
webhooks:
  bad_url: {url: "mailto:x@example.com", events: [deal.created]}
  typos:
    url: https://example.com/h
    events: [deals.created, deal.crated, deal.closed]
  mixed:
    url: https://example.com/h
    events: [deal.created, note.created]
    where: "record.amount > 1.0"
  bad_where:
    url: https://example.com/h
    events: [deal.updated]
    where: "record.amout > 1.0"
  as_user:
    url: https://example.com/h
    events: [deal.updated]
    where: "user.id == record.owner"
    secret_env: "not a name"
"""))
    assert "webhooks.yaml:2:18 E140 webhook 'bad_url': 'mailto:x@example.com' is not an http(s) URL" in text
    assert "webhooks.yaml:5:14 E140 webhook 'typos': event 'deals.created' names entity 'deals', which does not " \
           "exist\n    hint: did you mean 'deal'?" in text
    assert "webhooks.yaml:5:29 E140 webhook 'typos': event 'deal.crated' is neither" in text
    assert "hint: did you mean 'deal.created'?" in text
    assert "deal.closed" not in text  # a word of its own: a webhook action or a plugin may emit it
    assert "webhooks.yaml:9:12 E140 webhook 'mixed': 'where' reads the records of one entity, but the events " \
           "are of deal, note" in text
    assert "webhooks.yaml:13:12 E135 webhook 'bad_where': deal has no field 'amout' (record.amout)\n" \
           "    hint: did you mean 'amount'?" in text
    assert "webhooks.yaml:18:17 E140 webhook 'as_user': 'not a name' is not an environment variable name" in text


def test_where_reading_user_is_refused():
    text = config_errors(project(hook("https://example.com/h", where='"user.id == record.owner"')))
    assert "webhooks.yaml:5:12 E135 webhook 'crm': 'where' cannot read 'user'" in text


def test_event_word_close_to_an_action_event_is_taken_for_a_typo():
    files = project(hook("https://example.com/h", events="[deal.wno]"))
    files["webhooks.yaml"] += ("automations:\n  celebrate:\n    entity: deal\n    on: update\n"
                               "    actions:\n      - webhook: {event: deal.won}\n")
    assert "did you mean 'deal.won'?" in config_errors(files)


def test_urls_that_cannot_be_parsed_are_config_errors():
    text = config_errors(project("""\
webhooks:
  bracket: {url: "http://[::1/", events: [deal.created]}
  port: {url: "http://a:99999/", events: [deal.created]}
"""))
    assert "webhooks.yaml:2:18 E140 webhook 'bracket': 'http://[::1/' is not a URL Loom can send to" in text
    assert "webhooks.yaml:3:15 E140 webhook 'port': 'http://a:99999/' is not a URL Loom can send to: Port out of " \
           "range" in text


def test_webhook_names_must_be_identifiers():
    long = "h" * 130
    text = config_errors(project(f"""\
webhooks:
  "api:1": {{url: "https://example.com/h", events: [deal.created]}}
  has space: {{url: "https://example.com/h", events: [deal.created]}}
  {long}: {{url: "https://example.com/h", events: [deal.created]}}
"""))
    assert "webhooks.yaml:2:3 E121 webhook name 'api:1' must be snake_case" in text  # API subscriptions' names
    assert "webhooks.yaml:3:3 E121 webhook name 'has space' must be snake_case" in text
    assert f"webhooks.yaml:4:3 E121 webhook name '{long}' has 130 characters" in text


def test_a_webhook_action_emits_events_of_its_own_entity():
    def automation(action: str) -> dict[str, str]:
        files = project(hook("https://example.com/h", events="[deal.won]"))
        files["webhooks.yaml"] += ("automations:\n  celebrate:\n    entity: deal\n    on: update\n"
                                   f"    actions:\n      - {action}\n")
        return files

    text = config_errors(automation("webhook: {event: note.won}"))
    assert "webhooks.yaml:10:26 E137" in text and "emits deal events, not 'note.won'" in text
    assert "hint: write deal.won" in text
    text = config_errors(automation("webhook: won"))
    assert "E137" in text and "event 'won' names no entity" in text and "hint: write deal.won" in text
    assert "an action emits one" in config_errors(automation("webhook: deal.*"))
    compile_files(automation("webhook: deal.won"))


def test_webhooks_and_the_events_they_hear_may_come_from_any_included_file():
    files = {"loom.yaml": "app: {name: Hooks}\ninclude: [entities.yaml, hooks/*.yaml]\n", "entities.yaml": ENTITIES,
             "hooks/erp.yaml": hook("https://example.com/h", events="[deal.won]"),
             "hooks/automations.yaml": "automations:\n  celebrate:\n    entity: deal\n    on: update\n"
                                       "    actions:\n      - webhook: deal.won\n"}
    assert list(compile_files(files).webhooks) == ["crm"]
    files["hooks/erp.yaml"] = hook("https://example.com/h", events="[deal.wno]")
    assert "hooks/erp.yaml:4:14 E140 webhook 'crm': event 'deal.wno'" in config_errors(files)


# --- loom worker -----------------------------------------------------------------------------------------
@pytest.fixture
def worker_project(tmp_path, receiver):
    server = receiver()
    (tmp_path / "loom.yaml").write_text("app: {name: Worker}\ninclude: [entities.yaml, webhooks.yaml]\n"
                                        "database: {url: sqlite:///crm.db}\n")
    (tmp_path / "entities.yaml").write_text(ENTITIES)
    (tmp_path / "webhooks.yaml").write_text(hook(server.url))
    return tmp_path, server


def test_worker_once_delivers_and_exits(worker_project, capsys):
    path, server = worker_project
    assert loom_cli(["-p", str(path), "worker", "--once"]) == 1
    assert "run 'loom migrate' first" in capsys.readouterr().err
    assert not (path / "crm.db").exists()
    assert loom_cli(["-p", str(path), "migrate"]) == 0
    from loomcrm.engine.app import Loom

    loom = Loom.from_project(path)
    try:
        create(loom, "deal", {"title": "from the app"})
    finally:
        loom.close()
    capsys.readouterr()
    assert loom_cli(["-p", str(path), "worker", "--once", "--keep-days", "0"]) == 1
    assert "--keep-days must be a whole number of days from 1 to 36500" in capsys.readouterr().err
    assert loom_cli(["-p", str(path), "worker", "--once", "--keep-days", "7"]) == 0
    out = capsys.readouterr().out
    assert "webhooks: 1 delivered, 0 retrying, 0 given up" in out and "worker stopped" in out
    assert [p["record"]["title"] for p in server.payloads()] == ["from the app"]


def test_worker_stops_cleanly_on_sigterm(worker_project):
    path, _ = worker_project
    assert loom_cli(["-p", str(path), "migrate"]) == 0
    process = subprocess.Popen([sys.executable, "-m", "loomcrm.engine.cli", "-p", str(path), "worker",
                                "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "worker started" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert "SIGTERM: stopping" in out and "worker stopped" in out


def test_worker_refuses_a_database_without_the_schedule_marks(build):
    from loomcrm.engine.worker import WorkerNotReady, run_worker

    loom = build(project())
    with loom.engine.begin() as conn:
        loom.metadata.tables["loom_schedule_mark"].drop(conn)
    with pytest.raises(WorkerNotReady, match="no table loom_schedule_mark; run 'loom migrate'"):
        run_worker(loom, once=True, log=lambda line: None)


def test_sales_example_worker_runs_once(tmp_path, capsys):
    database = f"sqlite:///{tmp_path / 'sales.db'}"
    sales = str(ROOT / "examples" / "sales")
    assert loom_cli(["-p", sales, "migrate", "--database", database]) == 0
    assert loom_cli(["-p", sales, "worker", "--once", "--database", database]) == 0
    assert "webhooks: 0 delivered" in capsys.readouterr().out


def test_migrating_an_existing_database_adds_the_webhook_tables(db_url):
    """A database migrated before webhooks came gets their tables on its next ``loom migrate``."""
    from loomcrm.engine.commands import migrate_manifest
    from loomcrm.engine.testing import compile_files
    from loomcrm.generators.tables import MIGRATIONS_TABLE

    manifest = compile_files(project())
    migrate_manifest(manifest, database_url=db_url)
    mine = ("loom_webhook_delivery", "loom_outbox", "loom_webhook")
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as conn:  # as it was before: no webhook tables, and a manifest that never had them
            for name in mine:
                conn.exec_driver_sql(f"DROP TABLE {name}")
            stored = json.loads(conn.exec_driver_sql(f"SELECT manifest FROM {MIGRATIONS_TABLE}").scalar_one())
            stored["system_tables"] = [t for t in stored["system_tables"] if t not in mine]
            conn.execute(sa.text(f"UPDATE {MIGRATIONS_TABLE} SET manifest = :m"), {"m": json.dumps(stored)})
        engine.dispose()  # SQLite: a pooled connection may keep reading the schema it knew
        plan = migrate_manifest(manifest, database_url=db_url)
        assert [s.description.split(" (")[0] for s in plan.steps if s.description.startswith("create table")] == [
            "create table loom_outbox", "create table loom_webhook", "create table loom_webhook_delivery"]
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            assert "ix_loom_outbox_due" in {i["name"] for i in inspector.get_indexes("loom_outbox")}
            assert [c["column_names"] for c in inspector.get_unique_constraints("loom_outbox")] == [["key"]]
    finally:
        engine.dispose()
