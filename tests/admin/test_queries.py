"""The admin pages' SQL does not grow with what they show (no N+1): a list page reads its rows, their
count and each expanded ref column in one statement each, a record page reads its history in one,
whatever the number of rows or history entries.

Statements are counted with SQLAlchemy's ``before_cursor_execute`` on the app's engine, for requests
through the ASGI app in-process (the sales example on SQLite). The auth cache is emptied before each
counted request, so the figures include the per-request sign-in look-up (a warm cache skips it); each
page is requested once before, uncounted, so what a process reads once and keeps is not counted.
Transaction statements (``BEGIN``) are left out: they are SQLite's, not the page's.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main as loom
from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context

SALES = Path(__file__).resolve().parents[2] / "examples" / "sales"
PASSWORD = "a long password used only in tests"

#: What signing in a page request costs when the auth cache is cold: the session, the user, the user's
#: teams, the teams the user manages (``Auth._lookup`` and ``access_for``); 0 when warm (5 s cache).
SIGN_IN = 4
#: The list page's statements that do not depend on its rows, measured on 2026-12-02: the filter bar's
#: choices for each ref filter of ``activity`` whose target has few records (``account``, ``contact``,
#: ``owner``: the users and their teams, 4) and the user's saved views of the entity (1).
LIST_FIXED = 5
#: The record page's, measured the same day for an opportunity: the record and its expanded ``account``
#: and ``owner`` (the user and their teams: 2), the record again for its workflow buttons, the history's
#: existence and access checks (2), the schema check and last manifest hash it is read against (2), the
#: audit rows, the names of its actors (users and their teams: 2) and the titles of the refs it names.
RECORD_FIXED = 13


def statement_kinds(statements: list[str], entity: str) -> Counter:
    """How many statements of each kind: ``rows``, ``count``, ``expand:<table>`` (a batch of refs by
    id), ``other``."""
    kinds: Counter = Counter()
    for sql in statements:
        text = " ".join(sql.split())
        if re.search(r"\bcount\(", text) and f"FROM {entity}" in text:
            kinds["count"] += 1
        elif re.search(rf"FROM {entity}\b(?! WHERE {entity}\.id)", text) and " LIMIT " in text:
            kinds["rows"] += 1
        elif found := re.search(r"FROM (\w+) WHERE \1\.id IN \(", text):
            kinds[f"expand:{found.group(1)}"] += 1
        else:
            kinds["other"] += 1
    return kinds


def compared(first: list[str], second: list[str]) -> str:
    """The statements of two requests side by side, for a failure message."""
    def lines(statements: list[str]) -> list[str]:
        return [" ".join(s.split())[:160] for s in statements]
    return "\n" + "\n".join(difflib.unified_diff(lines(first), lines(second), lineterm="", n=len(first) + len(second)))


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    """The sales example with 50 activities (each on its own account and contact), an opportunity with
    only its creation in the history and one with 15 more entries by three users, and a page client
    signed in as an admin; ``crm.count(path)`` -> the statements of one GET."""
    url = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'crm.db'}"
    assert loom(["-p", str(SALES), "migrate", "--database", url, "--no-backup"]) == 0
    app = Loom.from_project(SALES, database_url=url)
    users = Users(app, channel="python")
    actors = [users.create(name, PASSWORD, roles=["admin"])["id"] for name in ("boss", "ana", "bo")]
    records, system = app.records, Context(channel="python")
    account, contact, activity, opportunity = (app.entity(n) for n in ("account", "contact", "activity", "opportunity"))
    accounts = []
    for i in range(50):
        accounts.append(records.create(account, {"name": f"Account {i}", "region": "east"}, system)["id"])
        person = records.create(contact, {"last_name": f"Contact {i}", "account": accounts[-1]}, system)
        records.create(activity, {"subject": f"Call {i}", "account": accounts[-1], "contact": person["id"]}, system)
    quiet = records.create(opportunity, {"name": "Quiet", "account": accounts[0]}, Context(actor=actors[0]))
    busy = records.create(opportunity, {"name": "Busy", "account": accounts[0]}, Context(actor=actors[0]))
    for i in range(1, 16):
        records.update(opportunity, busy["id"], {"account": accounts[i], "amount": str(1000 * i)},
                       Context(actor=actors[i % 3], channel="admin"))

    executed: list[str] = []
    sa.event.listen(app.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: executed.append(statement))

    class Crm:
        quiet_id, busy_id = quiet["id"], busy["id"]

        def count(self, path: str) -> tuple[str, list[str]]:
            client.get(path)  # warms what the process keeps for good (the stored manifests the history reads)
            app.auth.forget()
            executed.clear()
            response = client.get(path)
            assert response.status_code == 200, response.text[:500]
            return response.text, [s for s in executed if s.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]

    with TestClient(app.asgi()) as client:
        signed = client.post("/admin/login", data={"username": "boss", "password": PASSWORD}, follow_redirects=False)
        assert signed.status_code == 303 and "loom_session" in client.cookies
        yield Crm()
    app.close()


def test_list_page_statements_do_not_grow_with_its_rows(crm):
    few_html, few = crm.count("/admin/activities?limit=10")
    many_html, many = crm.count("/admin/activities?limit=50")
    assert len(re.findall(r'href="/admin/activities/\d+"', few_html)) == 10
    assert len(re.findall(r'href="/admin/activities/\d+"', many_html)) == 50
    assert "Account 49" in many_html and "Contact 49" in many_html  # both ref columns are shown by title

    assert len(many) == len(few), compared(few, many)
    kinds = statement_kinds(many, "activity")
    assert kinds["rows"] == 1 and kinds["count"] == 1, kinds
    assert kinds["expand:account"] == 1 and kinds["expand:contact"] == 1, kinds  # one batch per ref column
    assert len(many) <= 1 + 1 + 2 + SIGN_IN + LIST_FIXED, compared([], many)


def test_record_page_statements_do_not_grow_with_its_history(crm):
    quiet_html, quiet = crm.count(f"/admin/opportunities/{crm.quiet_id}")
    busy_html, busy = crm.count(f"/admin/opportunities/{crm.busy_id}")
    assert quiet_html.count("<time") == 1
    assert busy_html.count("<time") == 16  # all of its history fits the page: every entry is rendered

    assert len(busy) == len(quiet), compared(quiet, busy)
    assert len(busy) <= SIGN_IN + RECORD_FIXED, compared([], busy)
