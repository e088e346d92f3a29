"""The admin app's defences and its reader's language, over HTTP: CSP and nosniff on every answer,
CSRF tokens on every form, the sign-in rate limit, signing out everywhere, no secret in a page, a
language remembered per user, per-entity template overrides and pages added by plugins."""

from __future__ import annotations

import re

import pytest
from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.identity import Users
from loomcrm.engine.plugins import AdminPage
from loomcrm.engine.runtime import auth as auth_module
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import ListQuery
from loomcrm.engine.testing import sql_rows
from loomcrm.generators.admin.security import CSP

CRM = """
entities:
  opportunity:
    label: {en: Opportunity, zh: 商机}
    plural_label: {en: Opportunities, zh: 商机列表}
    fields:
      name: {type: string, required: true, label: {en: Name, zh: 名称}}
      amount: {type: money, currency: CNY, scale: 2, label: {en: Amount, zh: 金额}}
      close_date: {type: date, label: {en: Close date, zh: 预计成交日期}}
      stage:
        type: enum
        label: {en: Stage, zh: 阶段}
        options: [{value: open, label: {en: Open, zh: 进行中}}, {value: won, label: {en: Won, zh: 赢单}}]
  account:
    label: {en: Account, zh: 客户}
    fields:
      name: {type: string, required: true, label: {en: Name, zh: 名称}}
"""
PASSWORD = "correct horse battery"
SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff"}


@pytest.fixture(autouse=True)
def fresh_lookups(monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_SECONDS", 0.0)  # every sign-out is seen at once


@pytest.fixture
def loom(loom_factory):
    loom = loom_factory(CRM)
    Users(loom).create("zhang", PASSWORD)
    loom.records.create(loom.entity("opportunity"), {"name": "Big deal", "amount": "1234567.5",
                                                     "close_date": "2026-12-02", "stage": "open"}, Context())
    return loom


def client_of(loom: Loom, *, headers: dict[str, str] | None = None, **kwargs) -> TestClient:
    client = TestClient(loom.asgi(), **kwargs)
    client.headers.update(headers or {})
    return client


def sign_in(client: TestClient, username: str = "zhang", password: str = PASSWORD):
    return client.post("/admin/login", data={"username": username, "password": password, "_next": "/admin/"},
                       follow_redirects=False)


def token_of(page_text: str) -> str:
    return re.search(r'name="_csrf" value="([0-9a-f]+)"', page_text).group(1)


def count(loom: Loom, entity: str = "opportunity") -> int:
    return loom.records.list(loom.entity(entity), ListQuery(limit=1, fields=["id"], count=True), Context())["count"]


def assert_secured(response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, f"{response.request.url}: {name} is {response.headers.get(name)}"


# --- headers ---------------------------------------------------------------------------------------


def test_pages_redirects_error_pages_and_files_carry_the_csp_and_nosniff(loom):
    with client_of(loom) as client:
        visitor = client.get("/admin/", follow_redirects=False)
        assert visitor.status_code == 303 and visitor.headers["location"].startswith("/admin/login")
        assert_secured(visitor)
        assert_secured(client.get("/admin/login"))
        assert_secured(sign_in(client))
        for path in ("/admin/", "/admin/opportunities", "/admin/opportunities/1", "/admin/opportunities/1/edit",
                     "/admin/opportunities/new"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-store"
            assert_secured(page)
        missing = client.get("/admin/opportunities/999")
        assert missing.status_code == 404 and "<html" in missing.text
        assert_secured(missing)
        unknown = client.get("/admin/no-such-list")
        assert unknown.status_code == 404 and "<html" in unknown.text
        assert_secured(unknown)
        broken = client.post("/admin/opportunities/new", content=b"garbage",
                             headers={"Content-Type": "multipart/form-data"})  # no boundary: unreadable
        assert broken.status_code in (400, 422) and "<html" in broken.text
        assert_secured(broken)
        stylesheet = client.get("/admin/static/loom.css")
        assert stylesheet.status_code == 200
        assert "max-age=86400" in stylesheet.headers["cache-control"]
        assert stylesheet.headers["x-content-type-options"] == "nosniff"


def test_csp_allows_only_our_own_files():
    directives = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'"


def test_the_session_cookie_is_httponly_lax_and_secure_over_https(loom):
    with client_of(loom) as client:
        cookie = sign_in(client).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie and "secure" not in cookie
    with client_of(loom, base_url="https://testserver.local") as client:
        cookie = sign_in(client).headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "; secure" in cookie


# --- CSRF ----------------------------------------------------------------------------------------------


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(loom):
    with client_of(loom) as client:
        sign_in(client)
        token = token_of(client.get("/admin/opportunities/new").text)
        before = loom.records.get(loom.entity("opportunity"), 1, Context())
        forged = [
            ("/admin/opportunities/new", {"name": "Forged"}),
            ("/admin/opportunities/new", {"name": "Forged", "_csrf": "0" * 64}),
            ("/admin/opportunities/new", {"name": "Forged", "_csrf": "ü" * 64}),
            ("/admin/opportunities/1/edit", {"name": "Forged", "_version": "1"}),
            ("/admin/opportunities/1/edit", {"name": "Forged", "_version": "1", "_csrf": token[::-1]}),
            ("/admin/locale", {"locale": "zh", "_next": "/admin/"}),
            ("/admin/logout", {"everywhere": "1", "_csrf": "nope"}),
        ]
        for path, form in forged:
            refused = client.post(path, data=form, follow_redirects=False)
            assert refused.status_code == 403, (path, form)
            assert_secured(refused)
        assert count(loom) == 1
        assert loom.records.get(loom.entity("opportunity"), 1, Context()) == before
        assert client.get("/admin/").status_code == 200  # still signed in: the forged sign-out did nothing
        assert 'lang="en"' in client.get("/admin/").text
        made = client.post("/admin/opportunities/new", data={"name": "Real", "_csrf": token}, follow_redirects=False)
        assert made.status_code == 303 and count(loom) == 2


def test_the_csrf_token_is_an_hmac_of_the_session_and_the_secret_never_appears(loom):
    with client_of(loom) as client:
        sign_in(client)
        secret = client.cookies[SESSION_COOKIE]
        pages = [client.get(path).text for path in ("/admin/", "/admin/opportunities", "/admin/opportunities/1",
                                                    "/admin/opportunities/1/edit", "/admin/opportunities/new",
                                                    "/admin/opportunities/999")]
        token = token_of(pages[0])
    assert len(secret) > 20
    for page in pages:
        assert secret not in page
        assert set(re.findall(r'name="_csrf" value="([^"]*)"', page)) == {token}
    stored = [row[0] for row in sql_rows(loom.engine.url.render_as_string(hide_password=False),
                                         "SELECT id FROM loom_session")]
    assert token not in stored and secret not in stored
    with client_of(loom) as other:
        sign_in(other)
        assert token_of(other.get("/admin/").text) != token  # every session has its own


# --- sign-in and sign-out --------------------------------------------------------------------------------


def test_the_sign_in_page_says_when_too_many_attempts_failed(loom):
    limit = loom.manifest.auth["max_failures"]
    with client_of(loom) as client:
        for _ in range(limit):
            wrong = sign_in(client, password="wrong")
            assert wrong.status_code == 401 and "Wrong username or password." in wrong.text
        locked = sign_in(client)  # even the right password waits now
        assert locked.status_code == 429
        assert "Too many failed sign-ins" in locked.text and 'role="alert"' in locked.text
        assert int(locked.headers["retry-after"]) > 0
        assert_secured(locked)
        assert SESSION_COOKIE not in client.cookies


def test_the_rate_limit_message_is_in_the_readers_language(loom):
    with client_of(loom, headers={"Accept-Language": "zh-CN,zh;q=0.9"}) as client:
        for _ in range(loom.manifest.auth["max_failures"] + 1):
            last = sign_in(client, password="wrong")
    assert last.status_code == 429 and "登录失败次数过多" in last.text and '<html lang="zh">' in last.text


def test_signing_out_everywhere_ends_the_users_other_sessions(loom):
    with client_of(loom) as laptop, client_of(loom) as phone, client_of(loom) as tablet:
        for client in (laptop, phone, tablet):
            sign_in(client)
            assert client.get("/admin/").status_code == 200
        page = laptop.get("/admin/").text
        assert 'name="everywhere" value="1"' in page
        out = laptop.post("/admin/logout", data={"_csrf": token_of(page)}, follow_redirects=False)
        assert out.status_code == 303 and out.headers["location"] == "/admin/login"
        assert laptop.get("/admin/", follow_redirects=False).status_code == 303
        assert phone.get("/admin/").status_code == 200  # a plain sign-out ends this session only
        page = phone.get("/admin/").text
        out = phone.post("/admin/logout", data={"_csrf": token_of(page), "everywhere": "1"}, follow_redirects=False)
        assert out.status_code == 303
        assert_secured(out)
        gone = tablet.get("/admin/", follow_redirects=False)
        assert gone.status_code == 303 and gone.headers["location"].startswith("/admin/login")
    assert sql_rows(loom.engine.url.render_as_string(hide_password=False), "SELECT count(*) FROM loom_session") \
        == [(0,)]


# --- the reader's language ------------------------------------------------------------------------------


def choose(client: TestClient, locale: str, back: str = "/admin/opportunities"):
    page = client.get(back).text
    return client.post("/admin/locale", data={"locale": locale, "_next": back, "_csrf": token_of(page)},
                       follow_redirects=False)


def test_the_chosen_language_is_kept_for_the_user_across_sessions(loom_factory, db_url):
    loom = loom_factory(CRM)
    Users(loom).create("zhang", PASSWORD)
    with client_of(loom) as client:
        sign_in(client)
        assert '<html lang="en">' in client.get("/admin/").text
        chosen = choose(client, "zh")
        assert chosen.status_code == 303 and chosen.headers["location"] == "/admin/opportunities"
        assert "loom_locale=zh" in chosen.headers["set-cookie"]
        page = client.get("/admin/opportunities").text
        assert '<html lang="zh">' in page and "商机列表" in page
    assert Users(loom).find("zhang")["locale"] == "zh"
    with client_of(loom, headers={"Accept-Language": "en"}) as elsewhere:  # another browser: no cookie
        sign_in(elsewhere)
        assert "loom_locale" not in elsewhere.cookies
        page = elsewhere.get("/admin/").text
        assert '<html lang="zh">' in page and "退出所有设备" in page
        choose(elsewhere, "en")
        assert '<html lang="en">' in elsewhere.get("/admin/").text
    assert Users(loom).find("zhang")["locale"] == "en"


def test_labels_options_dates_and_numbers_read_in_chinese_after_switching(loom):
    with client_of(loom) as client:
        sign_in(client)
        english = client.get("/admin/opportunities/1").text
        assert "Close date" in english and "Open" in english and "1,234,567.50" in english
        choose(client, "zh", "/admin/opportunities/1")
        page = client.get("/admin/opportunities/1").text
        assert "预计成交日期" in page and "进行中" in page and "2026年12月2日" in page
        assert "CNY 1,234,567.50" in page
        assert "Close date" not in page and "Sign out" not in page
        listing = client.get("/admin/opportunities").text
        assert "名称" in listing and "金额" in listing and "新建" in listing
        form = client.get("/admin/opportunities/new").text
        assert "请选择…" in form and "赢单" in form and "保存" in form


def test_a_visitor_chooses_the_sign_in_pages_language(loom):
    with client_of(loom) as client:
        assert '<html lang="en">' in client.get("/admin/login").text
        chosen = client.post("/admin/locale", data={"locale": "zh", "_next": "/admin/login"}, follow_redirects=False)
        assert chosen.status_code == 303 and chosen.headers["location"] == "/admin/login"
        page = client.get("/admin/login").text
        assert '<html lang="zh">' in page and "用户名" in page
        assert client.post("/admin/locale", data={"locale": "xx"}, follow_redirects=False).status_code == 303
        assert '<html lang="zh">' in client.get("/admin/login").text  # a locale the app lacks is ignored
        sign_in(client)
        assert '<html lang="zh">' in client.get("/admin/").text
    assert Users(loom).find("zhang").get("locale") in (None, "")  # the visitor's choice stays in the browser


def test_no_inline_scripts_or_styles_in_the_admin_templates():
    from loomcrm.generators.templates import BUILT_IN

    for path in sorted((BUILT_IN / "admin").glob("*.html")):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{path.name}: inline script"
        assert "<style" not in text and not re.search(r"\sstyle=", text), f"{path.name}: inline style"
        assert not re.search(r"\son[a-z]+=", text), f"{path.name}: inline event handler"
        assert "javascript:" not in text and "hx-on" not in text, path.name


# --- overrides and plugin pages -----------------------------------------------------------------------------


def test_a_projects_template_for_one_entity_wins_over_the_built_in(tmp_path):
    (tmp_path / "loom.yaml").write_text("app: {name: Own, locales: [en, zh]}\ninclude: [e.yaml]\n"
                                        f"database: {{url: 'sqlite:///{tmp_path / 'own.db'}'}}\n")
    (tmp_path / "e.yaml").write_text(CRM)
    admin = tmp_path / "templates" / "admin"
    admin.mkdir(parents=True)
    for name in ("list", "record", "form"):
        (admin / f"{name}-opportunity.html").write_text(
            '{% extends "admin/' + name + '.html" %}{% block main %}<p id="ours">our ' + name
            + ' of {{ entity.name }}</p>{{ super() }}{% endblock %}')
    assert main(["-p", str(tmp_path), "migrate"]) == 0
    loom = Loom.from_project(tmp_path)
    try:
        Users(loom).create("zhang", PASSWORD)
        for entity, name in (("opportunity", "Deal"), ("account", "Acme")):
            loom.records.create(loom.entity(entity), {"name": name}, Context())
        with client_of(loom) as client:
            sign_in(client)
            for path, name in (("/admin/opportunities", "list"), ("/admin/opportunities/1", "record"),
                               ("/admin/opportunities/1/edit", "form"), ("/admin/opportunities/new", "form")):
                page = client.get(path)
                assert page.status_code == 200 and f'<p id="ours">our {name} of opportunity</p>' in page.text, path
                assert 'name="_csrf"' in page.text or name != "form"  # the original page is still there
            for path in ("/admin/accounts", "/admin/accounts/1", "/admin/accounts/1/edit"):
                page = client.get(path)
                assert page.status_code == 200 and 'id="ours"' not in page.text, path
    finally:
        loom.close()


class Forecast:
    """A plugin adding a page, for managers only, and a page everyone may open."""

    def __init__(self, folder):
        self.folder = folder

    @hookimpl
    def loom_template_dirs(self):
        return [str(self.folder)]

    @hookimpl
    def loom_admin_pages(self, loom):
        def context(request, ctx):
            total = loom.records.list(loom.entity("opportunity"), ListQuery(limit=1, fields=["id"], count=True),
                                      ctx)["count"]
            return {"total": total, "shown": request.query_params.get("q", "")}

        return [AdminPage("forecast", {"en": "Forecast", "zh": "销售预测"}, "acme/forecast.html", context),
                AdminPage("reports/board", "Board report", "acme/forecast.html", context,
                          allowed=lambda ctx: False)]


def test_hook_loom_admin_pages(loom_factory, tmp_path):
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "forecast.html").write_text(
        '{% extends "admin/base.html" %}{% block main %}<h1>{{ title }}</h1>'
        '<p id="total">{{ total }} {{ t("records") }}</p><p id="q">{{ shown }}</p>{% endblock %}')
    loom = loom_factory(CRM, plugins=[Forecast(tmp_path)])
    Users(loom).create("zhang", PASSWORD)
    loom.records.create(loom.entity("opportunity"), {"name": "Deal"}, Context())
    with client_of(loom) as client:
        visitor = client.get("/admin/forecast", follow_redirects=False)
        assert visitor.status_code == 303 and "/admin/login" in visitor.headers["location"]
        login_page = client.get("/admin/login").text
        assert "Forecast" not in login_page and 'data-page="forecast"' not in login_page
        sign_in(client)
        home = client.get("/admin/").text
        side = home[home.index('<nav class="side"'):]
        assert side.index("Opportunities") < side.index('data-page="forecast"')  # after the entities
        assert '<a href="/admin/forecast" data-page="forecast">Forecast</a>' in side
        assert "Board report" not in side  # not allowed: no menu entry
        page = client.get("/admin/forecast?q=<script>alert(1)</script>")
        assert page.status_code == 200 and "<h1>Forecast</h1>" in page.text
        assert '<p id="total">1 records</p>' in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
        assert 'aria-current="page">Forecast</a>' in page.text
        assert_secured(page)
        refused = client.get("/admin/reports/board")
        assert refused.status_code == 403 and "You may not do this." in refused.text
        assert_secured(refused)
        choose(client, "zh", "/admin/forecast")
        assert "<h1>销售预测</h1>" in client.get("/admin/forecast").text


def test_a_plugin_page_cannot_take_an_entitys_or_the_apps_own_path(loom_factory):
    class Clash:
        def __init__(self, path):
            self.path = path

        @hookimpl
        def loom_admin_pages(self, loom):
            return [AdminPage(self.path, "Clash", "admin/home.html")]

    for path in ("opportunities", "login", "static/x", "../etc", ""):
        loom = loom_factory(CRM, plugins=[Clash(path)])
        with pytest.raises(ValueError, match="loom_admin_pages"):
            loom.asgi()


def test_an_override_extends_the_built_in_page_of_its_own_name(tmp_path):
    from loomcrm.engine.plugins import make_plugin_manager
    from loomcrm.engine.testing import compile_files, project_files
    from loomcrm.generators.templates import template_environment

    (tmp_path / "templates" / "admin").mkdir(parents=True)
    (tmp_path / "templates" / "admin" / "error.html").write_text(
        '{% extends "loom/admin/error.html" %}{% block title %}Custom {{ super() }}{% endblock %}')
    manifest = compile_files(project_files("entities:\n  account:\n    fields:\n      name: {type: string}\n"))
    env = template_environment(manifest, make_plugin_manager(), [tmp_path])
    page = env.get_template("admin/error.html").render(
        t=lambda key: key, locale="en", locales=["en"], language_names={}, prefix="/admin", url=lambda *a, **k: "",
        csrf="", user="", signed_in=False, nav=[], menu=[], entity=None, request_path="/admin/x",
        entity_label=str, message="Gone", detail="", errors=[])
    assert "<title>Custom " in page and "Gone" in page


def test_no_such_admin_path_or_method_is_an_html_page_with_the_headers_and_the_api_stays_json(tmp_path):
    from loomcrm.engine.testing import make_loom, project_files

    loom = make_loom(project_files("entities:\n  account:\n    fields:\n      name: {type: string}\n"),
                     f"sqlite:///{tmp_path}/x.db")
    try:
        with TestClient(loom.asgi()) as client:
            page = client.get("/admin/accounts/1/nothing/here")
            assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            wrong = client.delete("/admin/login")
            assert wrong.status_code == 405 and wrong.headers["content-type"].startswith("text/html")
            api = client.get("/api/nothing")
            assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"
    finally:
        loom.close()
