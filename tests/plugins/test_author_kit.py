"""The plugin author kit: the ``loom_app`` and ``loom_client`` fixtures test a plugin in ten lines."""

from __future__ import annotations

from loomcrm.engine.hookspecs import hookimpl


class Scoring:
    @hookimpl
    def loom_before_create(self, entity, data):
        if entity.name == "lead":
            data["score"] = len(data["name"]) * 10


def test_a_plugin_tested_through_the_api_in_ten_lines(loom_app, loom_client):
    loom = loom_app("""
        entities:
          lead:
            fields: {name: {type: string, required: true}, score: {type: integer}}
    """, plugins=[Scoring()])
    client = loom_client(loom)
    assert client.post("/api/leads", json={"name": "Ada"}).json()["score"] == 30


def test_the_client_signs_in_as_a_user_with_the_given_roles(loom_app, loom_client):
    loom = loom_app({
        "loom.yaml": "app: {name: K}\ninclude: [e.yaml]\nroles:\n  viewer:\n    entities:\n      lead: {read: all}\n",
        "e.yaml": "entities:\n  lead:\n    fields: {name: {type: string}}\n",
    })
    viewer = loom_client(loom, "vera", roles=["viewer"])
    assert viewer.get("/api/leads").status_code == 200
    assert viewer.post("/api/leads", json={"name": "x"}).status_code == 403
