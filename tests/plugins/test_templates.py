"""Templates: the project's ``templates/`` > plugins' folders > Loom's own; plugins change the
jinja2 environment. The landing page at ``/`` is rendered through that chain."""

from __future__ import annotations

from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main
from loomcrm.engine.hookspecs import hookimpl

ENTITIES = "entities:\n  lead:\n    label: {en: Lead}\n    fields:\n      name: {type: string}\n"


def test_the_landing_page_lists_the_entities_and_their_api(loom_factory):
    loom = loom_factory(ENTITIES)
    with TestClient(loom.asgi()) as client:
        page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<code>/api/leads</code>" in page.text and "Test CRM" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_hook_loom_template_dirs(loom_factory, tmp_path):
    (tmp_path / "index.html").write_text("<p>{{ app_name }} by the plugin</p>")

    class Theme:
        @hookimpl
        def loom_template_dirs(self):
            return [str(tmp_path)]

    loom = loom_factory(ENTITIES, plugins=[Theme()])
    assert loom.templates.get_template("index.html").render(locale="en", entities=[]) == \
        "<p>Test CRM by the plugin</p>"


def test_hook_loom_jinja_environment(loom_factory):
    class Filters:
        @hookimpl
        def loom_jinja_environment(self, env, manifest):
            env.filters["shout"] = lambda text: f"{text.upper()}!"

    loom = loom_factory(ENTITIES, plugins=[Filters()])
    assert loom.templates.from_string("{{ app_name | shout }}").render() == "TEST CRM!"


def test_a_projects_own_template_wins_over_plugins_and_loom(tmp_path):
    (tmp_path / "loom.yaml").write_text("app: {name: Own}\ninclude: [e.yaml]\ndatabase: {url: sqlite:///own.db}\n")
    (tmp_path / "e.yaml").write_text(ENTITIES)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "index.html").write_text("<h1>{{ app_name }}, our way</h1>")
    assert main(["-p", str(tmp_path), "migrate"]) == 0
    loom = Loom.from_project(tmp_path)
    try:
        with TestClient(loom.asgi()) as client:
            assert client.get("/").text == "<h1>Own, our way</h1>"
    finally:
        loom.close()
