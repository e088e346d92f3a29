"""The admin record page over HTTP: related lists, the activity timeline, workflow buttons (allowed or
not, with reasons; with an inline form for the fields the target state requires), the global search
and the ref lookup, each in the caller's read scope."""

from __future__ import annotations

import re
import textwrap
from html import unescape

import pytest
from litestar.testing import TestClient

from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, make_loom

PASSWORD = "correct horse battery"
FILES = {
    "loom.yaml": "app: {name: Test CRM, locales: [en, zh], timezone: Asia/Shanghai}\n"
                 "include: [entities.yaml, roles.yaml, process.yaml]\n",
    "entities.yaml": textwrap.dedent("""
        entities:
          account:
            label: {en: Account, zh: 客户}
            plural_label: {en: Accounts, zh: 客户}
            title: name
            search: [email]
            fields:
              name: {type: string, required: true, label: {en: Name, zh: 名称}}
              email: {type: email, label: {en: Email, zh: 邮箱}}
              salary_band: {type: string, label: {en: Salary band, zh: 薪资档}}
              rating: {type: integer, label: {en: Rating, zh: 评级}}
          deal:
            label: {en: Deal, zh: 交易}
            plural_label: {en: Deals, zh: 交易}
            title: name
            fields:
              name: {type: string, required: true, label: {en: Name, zh: 名称}}
              account: {type: ref, to: account, related_name: deals, label: {en: Account, zh: 客户}}
              amount: {type: money, currency: CNY, scale: 2, label: {en: Amount, zh: 金额}}
              stage: {type: enum, options: [open, won, lost], default: open, label: {en: Stage, zh: 阶段}}
              lost_reason: {type: text, label: {en: Reason lost, zh: 输单原因}}
              meeting_at: {type: datetime, label: {en: Meeting, zh: 会议}}
              start_date: {type: date, label: {en: Start, zh: 开始}}
              end_date: {type: date, label: {en: End, zh: 结束}}
            rules:
              dates_in_order:
                check: "record.end_date == null || record.start_date == null || record.end_date >= record.start_date"
                message: {en: The end comes after the start.}
                fields: [end_date]
              big_deals_need_account:
                check: "record.amount == null || record.amount < 1000000.0 || record.account != null"
                message: {en: A deal of a million or more needs an account.}
    """),
    "roles.yaml": textwrap.dedent("""
        roles:
          admin:
            entities:
              account: {read: all, create: true, update: all, delete: all}
              deal: {read: all, create: true, update: all, delete: all}
          rep:
            entities:
              account: {read: own, create: true, update: own}
              deal: {read: own, create: true, update: own}
            fields:
              account.salary_band: hidden
              account.rating: read
    """),
    "process.yaml": textwrap.dedent("""
        workflows:
          deal_flow:
            entity: deal
            field: stage
            states:
              lost: {terminal: true, required: [lost_reason]}
            transitions:
              win: {from: open, to: won, label: {en: Mark won, zh: 赢单}, roles: [admin]}
              lose: {from: open, to: lost, label: {en: Mark lost, zh: 输单}}
    """),
}


@pytest.fixture
def crm(db_url):
    loom = make_loom(FILES, db_url)
    users = Users(loom)
    loom.test_users = {name: users.create(name, PASSWORD, roles=[role])["id"]
                       for name, role in (("boss", "admin"), ("rep", "rep"), ("other", "rep"))}
    yield loom
    loom.close()


def create(loom, entity: str, owner: str = "rep", **data) -> dict:
    return loom.records.create(loom.entity(entity), data, Context(), owner=loom.test_users[owner])


def signed_in(loom, username: str) -> TestClient:
    client = TestClient(loom.asgi())
    client.__enter__()
    answer = client.post("/admin/login", data={"username": username, "password": PASSWORD, "_next": "/admin/"},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client


@pytest.fixture
def as_user(crm):
    clients = []

    def sign_in(username: str) -> TestClient:
        clients.append(signed_in(crm, username))
        return clients[-1]
    yield sign_in
    for client in clients:
        client.__exit__(None, None, None)


def token_of(html: str) -> str:
    return re.search(r'name="_csrf" value="([0-9a-f]+)"', html).group(1)


def section(html: str, attribute: str, value: str) -> str:
    """The HTML of the element carrying ``attribute="value"`` up to the next ``</section>``/``</form>``."""
    start = html.index(f'{attribute}="{value}"')
    ends = [i for i in (html.find("</section>", start), html.find("</form>", start)) if i != -1]
    return html[start:min(ends)]


def test_related_list_shows_exactly_the_children_the_api_lists(crm, as_user):
    mine = create(crm, "account", name="Acme")
    elsewhere = create(crm, "account", name="Globex")
    children = [create(crm, "deal", name=f"Deal {i}", account=mine["id"]) for i in range(12)]
    create(crm, "deal", name="Not a child", account=elsewhere["id"])
    with TestClient(crm.asgi()) as api:
        api.headers["Authorization"] = f"Bearer {api_token(crm, 'apiuser', ['admin'])}"
        listed = api.get(f"/api/accounts/{mine['id']}/deals", params={"limit": 10}).json()["data"]
    client = as_user("boss")
    page = client.get(f"/admin/accounts/{mine['id']}")
    assert page.status_code == 200, page.text
    related = section(page.text, "data-relation", "deals")
    shown = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', related)]
    assert shown == [d["id"] for d in listed] == [d["id"] for d in children[:10]]
    assert 'class="count muted">12<' in related
    assert f'/admin/deals?filter[account][eq]={mine["id"]}' in related
    assert f'href="/admin/deals/new?account={mine["id"]}"' in related
    assert "Not a child" not in page.text
    assert ">Account<" not in related  # the column pointing back here is left out


def test_new_link_of_a_related_list_prefills_the_ref_with_the_records_title(crm, as_user):
    account = create(crm, "account", name="Acme")
    page = as_user("boss").get(f"/admin/deals/new?account={account['id']}&stage=won&nonsense=1")
    assert page.status_code == 200, page.text
    field = section(page.text, "data-field", "account")
    assert f'value="Acme #{account["id"]}"' in field
    assert '<option value="won" selected>' in section(page.text, "data-field", "stage")


def test_timeline_shows_a_change_made_through_the_api(crm, as_user):
    account = create(crm, "account", owner="boss", name="Acme", salary_band="B7")
    with TestClient(crm.asgi()) as api:
        api.headers["Authorization"] = f"Bearer {api_token(crm, 'apiuser', ['admin'])}"
        answer = api.patch(f"/api/accounts/{account['id']}", json={"name": "Acme Ltd", "salary_band": "C9"},
                           headers={"If-Match": '"1"'})
        assert answer.status_code == 200, answer.text
    page = as_user("boss").get(f"/admin/accounts/{account['id']}")
    timeline = page.text[page.text.index('class="timeline"'):]
    change = section(timeline, "data-change", "name")
    assert "<del>Acme</del> → <ins>Acme Ltd</ins>" in change
    assert "<del>B7</del> → <ins>C9</ins>" in timeline


def test_transition_buttons_are_enabled_or_disabled_per_role_with_the_reason(crm, as_user):
    deal = create(crm, "deal", name="Deal", lost_reason="price")
    boss = as_user("boss").get(f"/admin/deals/{deal['id']}").text
    assert "disabled" not in section(boss, "data-transition", "win")
    rep = as_user("rep").get(f"/admin/deals/{deal['id']}").text
    win = section(rep, "data-transition", "win")
    assert "disabled" in win
    assert "may be fired by admin only" in unescape(win)
    assert "disabled" not in section(rep, "data-transition", "lose")


def test_a_transition_fired_from_its_button_moves_the_record_and_writes_history(crm, as_user):
    deal = create(crm, "deal", name="Deal")
    client = as_user("boss")
    page = client.get(f"/admin/deals/{deal['id']}").text
    answer = client.post(f"/admin/deals/{deal['id']}/transitions/win",
                         data={"_csrf": token_of(page), "_version": "1"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    assert crm.records.get(crm.entity("deal"), deal["id"], Context())["stage"] == "won"
    history = crm.records.history(crm.entity("deal"), deal["id"], Context(), limit=5, before=None)["data"]
    assert history[0]["transition"]["name"] == "win"
    page = client.get(f"/admin/deals/{deal['id']}").text
    assert '<strong class="step">Mark won</strong>' in page
    assert "<del>open</del> → <ins>won</ins>" in page
    assert 'data-transition="lose"' not in page  # from 'won' nothing leads on: no button to misread


def test_a_transition_whose_state_needs_fields_asks_for_them_inline(crm, as_user):
    deal = create(crm, "deal", name="Deal")
    client = as_user("rep")
    page = client.get(f"/admin/deals/{deal['id']}").text
    lose = section(page, "data-transition", "lose")
    assert 'name="fields[lost_reason]"' in lose and "required" in lose
    empty = client.post(f"/admin/deals/{deal['id']}/transitions/lose",
                        data={"_csrf": token_of(page), "_version": "1", "fields[lost_reason]": ""})
    assert empty.status_code == 422
    assert 'role="alert"' in empty.text and "lost_reason" in unescape(empty.text)
    assert crm.records.get(crm.entity("deal"), deal["id"], Context())["stage"] == "open"
    done = client.post(f"/admin/deals/{deal['id']}/transitions/lose", follow_redirects=False,
                       data={"_csrf": token_of(page), "_version": "1", "fields[lost_reason]": "Too dear"})
    assert done.status_code == 303, done.text
    stored = crm.records.get(crm.entity("deal"), deal["id"], Context())
    assert (stored["stage"], stored["lost_reason"]) == ("lost", "Too dear")


def test_a_refused_transition_shows_its_reason_on_the_page(crm, as_user):
    deal = create(crm, "deal", name="Deal")
    client = as_user("rep")
    page = client.get(f"/admin/deals/{deal['id']}").text
    answer = client.post(f"/admin/deals/{deal['id']}/transitions/win", data={"_csrf": token_of(page), "_version": "1"})
    assert answer.status_code == 403
    assert "may be fired by admin only" in unescape(answer.text)
    assert '<h1>Deal</h1>' in answer.text  # the record page, not an error page
    stale = client.post(f"/admin/deals/{deal['id']}/transitions/lose",
                        data={"_csrf": token_of(page), "_version": "7", "fields[lost_reason]": "x"})
    assert stale.status_code == 409 and 'role="alert"' in stale.text


def test_global_search_finds_records_by_title_and_by_a_search_field(crm, as_user):
    acme = create(crm, "account", name="Acme Trading", email="buyer@northwind.example")
    create(crm, "account", name="Globex", email="info@globex.example")
    deal = create(crm, "deal", name="ACME renewal")
    client = as_user("boss")
    by_title = client.get("/admin/search", params={"q": "acme"})
    assert by_title.status_code == 200
    assert f'href="/admin/accounts/{acme["id"]}"' in by_title.text
    assert f'href="/admin/deals/{deal["id"]}"' in by_title.text
    assert "Globex" not in by_title.text
    by_email = client.get("/admin/search", params={"q": "NORTHWIND"}).text
    hits = section(by_email, "data-entity", "account")
    assert f'href="/admin/accounts/{acme["id"]}"' in hits and "buyer@northwind.example" in hits
    assert 'data-entity="deal"' not in by_email


def test_global_search_stays_in_the_callers_read_scope_and_is_bounded(crm, as_user):
    for i in range(7):
        create(crm, "account", name=f"Shared name {i}")
    create(crm, "account", owner="other", name="Shared name of another rep")
    page = as_user("rep").get("/admin/search", params={"q": "shared"}).text
    assert len(re.findall(r'href="/admin/accounts/\d+"', page)) == 5
    assert "another rep" not in page
    assert "filter[name][contains]=shared" in unescape(page)


def test_lookup_returns_only_records_in_the_callers_read_scope(crm, as_user):
    mine = create(crm, "account", name="Acme North")
    theirs = create(crm, "account", owner="other", name="Acme South")
    rep = as_user("rep").get("/admin/deals/lookup", params={"field": "account", "account": "acme"})
    assert rep.status_code == 200
    assert f'value="Acme North #{mine["id"]}"' in rep.text
    assert "Acme South" not in rep.text
    boss = as_user("boss").get("/admin/deals/lookup", params={"field": "account", "q": "ACME"}).text
    assert f'#{mine["id"]}"' in boss and f'value="Acme South #{theirs["id"]}"' in boss
    by_id = as_user("boss").get("/admin/deals/lookup", params={"field": "account", "q": f"#{theirs['id']}"}).text
    assert re.findall(r'#(\d+)"', by_id) == [str(theirs["id"])]
