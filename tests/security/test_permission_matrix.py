"""The example's permission matrix, generated from its roles: every role × entity × operation ×
field, through the REST API, on SQLite and PostgreSQL.

The oracle is independent of the enforcement code: scopes are checked here in plain Python and
row rules are evaluated by the Rust CEL library (``cel.evaluate``), not by the SQL Loom generates.
Every mismatch is collected, so one run lists the whole difference.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import cel
import pytest
from litestar.testing import TestClient

from loomcrm.engine.app import Loom
from loomcrm.engine.cli import main as loom_cli
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token

SALES = Path(__file__).resolve().parents[2] / "examples" / "sales"
BUSINESS = ("account", "contact", "activity")


def sample(entity: str, n: int, refs: dict[str, int]) -> dict:
    """A record of ``entity`` with every field filled (distinctive values, so leaks are visible)."""
    tag = uuid.uuid4().hex[:8]
    if entity == "account":
        return {"name": f"Acct {tag}", "industry": "technology", "type": "customer", "website": f"https://{tag}.example.com",
                "phone": "+86 21 5555 0101", "email": f"info@{tag}.example.com", "city": "Shanghai",
                "region": ["east", "west"][n % 2], "annual_revenue": "987654321.00", "employees": 42,
                "rating": "hot", "description": f"secret-description-{tag}"}
    if entity == "contact":
        return {"first_name": "Wei", "last_name": f"Wang{tag}", "account": refs["account"], "title": "CTO",
                "email": f"wei.{tag}@example.com", "phone": "+86 21 5555 0199", "mobile": "+86 139 1234 5678",
                "city": "Shanghai", "preferred_language": "zh", "do_not_call": False, "birthday": "1980-02-03"}
    return {"subject": f"Call {tag}", "kind": "call", "account": refs["account"], "contact": refs["contact"],
            "due_at": "2026-11-20T09:00:00Z", "done": False, "notes": f"secret-notes-{tag}", "duration_minutes": 15}


@pytest.fixture
def world(db_url):
    """One user per role (region east, team 'blue'), a teammate, a stranger (team 'red', region west),
    and for each business entity records owned by each of them in both regions."""
    assert loom_cli(["-p", str(SALES), "migrate", "--database", db_url]) == 0
    loom = Loom.from_project(SALES, database_url=db_url)
    users = __import__("loomcrm.engine.identity", fromlist=["Users"]).Users(loom)
    users.create_team("blue")
    users.create_team("red")
    people = {}
    for role in loom.manifest.roles:
        people[role] = users.create(f"u_{role}", None, roles=[role], region="east")["id"]
        users.add_member("blue", f"u_{role}")
    people["teammate"] = users.create("teammate", None, roles=["sales_rep"], region="east")["id"]
    users.add_member("blue", "teammate")
    people["stranger"] = users.create("stranger", None, roles=["sales_rep"], region="west")["id"]
    users.add_member("red", "stranger")
    for owner in people.values():
        for n in range(2):
            refs = {}
            for entity in BUSINESS:
                record = loom.records.create(loom.entity(entity), sample(entity, n, refs), Context(actor=owner))
                refs[entity] = record["id"]
    with TestClient(loom.asgi()) as client:
        yield loom, client, people
    loom.close()


def everything(loom, entity: str) -> list[dict]:
    """Every record of ``entity``, unrestricted (the Python API as Loom's own code)."""
    from loomcrm.engine.runtime.query import parse_list_params

    query = parse_list_params(loom.entity(entity), [("limit", "500")])
    return loom.records.list(loom.entity(entity), query, Context())["data"]


def oracle(loom, people, role: str):
    """``reaches(entity, operation, record)`` for the user holding ``role``, computed independently."""
    me = people[role]
    user = next(u for u in everything(loom, "user") if u["id"] == me)
    teams = set(user["teams"])
    team_owners = {u["id"] for u in everything(loom, "user") if teams & set(u["teams"])} | {me}
    policy = loom.manifest.roles[role]
    cel_user = {**{k: v for k, v in user.items() if v is not None}, "roles": user["roles"], "teams": user["teams"]}

    def reaches(entity: str, operation: str, record: dict) -> bool:
        for reach in policy.reach(entity, operation):
            owner = record.get("owner")
            ok = (reach.scope == "all" or reach.scope == "own" and owner == me
                  or reach.scope == "team" and owner in team_owners)
            if ok and reach.rule is not None:
                ok = cel.evaluate(reach.rule.text, {"record": {k: v for k, v in record.items() if v is not None},
                                                    "user": cel_user}) is True
            if ok:
                return True
        return False

    return reaches


def test_every_role_entity_operation_and_field_is_enforced_as_declared(world):
    loom, client, people = world
    problems: list[str] = []

    def expect(condition: bool, what: str) -> None:
        if not condition:
            problems.append(what)

    for role, policy in loom.manifest.roles.items():
        client.headers["Authorization"] = f"Bearer {api_token(loom, f'u_{role}')}"
        reaches = oracle(loom, people, role)
        for entity_name in (*BUSINESS, "user", "team"):
            entity = loom.entity(entity_name)
            grant = policy.grant(entity_name)
            levels = {f: policy.level(entity_name, f) for f in entity.fields}
            readable = {f for f, level in levels.items() if level != "hidden"}
            hidden = [f for f, level in levels.items() if level == "hidden"]
            at = f"{role} {entity_name}"
            records = everything(loom, entity_name)
            visible = {r["id"] for r in records if reaches(entity_name, "read", r)}
            # --- read: list, count, get -------------------------------------------------------------
            page = client.get(f"/api/{entity.plural}?limit=500&count=true")
            if grant.read == "none":
                expect(page.status_code == 403, f"{at}: list answered {page.status_code}, not 403")
            else:
                body = page.json()
                got = {r["id"] for r in body["data"]}
                expect(got == visible, f"{at}: list returned {sorted(got - visible)} too many, "
                                       f"{sorted(visible - got)} missing")
                expect(body["count"] == len(visible), f"{at}: count {body['count']} != {len(visible)}")
                for r in body["data"]:
                    expect(set(r) == readable, f"{at}: list record {r['id']} has fields "
                                               f"{sorted(set(r) ^ readable)} wrong")
                leaks = {str(v) for r in records for f, v in r.items() if f in hidden and isinstance(v, str)
                         and len(v) >= 6}
                text = page.text + json.dumps(dict(page.headers))
                expect(not [v for v in leaks if v in text], f"{at}: hidden values in the list response")
            for r in records:
                one = client.get(f"/api/{entity.plural}/{r['id']}")
                wanted = 403 if grant.read == "none" else 200 if r["id"] in visible else 404
                expect(one.status_code == wanted, f"{at} {r['id']}: get answered {one.status_code}, not {wanted}")
                if one.status_code == 200:
                    expect(set(one.json()) == readable, f"{at} {r['id']}: get fields wrong")
            # --- hidden fields cannot be used in queries -------------------------------------------------
            if grant.read != "none":
                for f in hidden:
                    for param in (f"filter[{f}][isnull]=false", f"sort={f}", f"fields={f}", f"expand={f}"):
                        answer = client.get(f"/api/{entity.plural}?{param}")
                        if param.startswith(("sort", "expand")) and answer.status_code == 400:
                            continue  # not sortable / not a ref anyway
                        expect(answer.status_code == 403, f"{at}: {param} answered {answer.status_code}, not 403")
            # --- update: scope, then field levels; nothing written when refused ---------------------------
            refused_fields = [f for f, level in levels.items() if level != "write" and not entity.fields[f].system
                              and not entity.fields[f].read_only and entity.fields[f].type == "string"]
            for r in records:
                if entity_name not in BUSINESS and r["id"] not in (people[role], people["stranger"]):
                    continue
                path = f"/api/{entity.plural}/{r['id']}"
                wanted = (403 if grant.update == "none" else 200 if reaches(entity_name, "update", r)
                          else 403 if r["id"] in visible else 404)
                answer = client.patch(path, json={})  # permission checks run; no change, no new version
                expect(answer.status_code == wanted, f"{at} {r['id']}: patch answered {answer.status_code}, "
                                                     f"not {wanted}")
                for f in refused_fields:
                    answer = client.patch(path, json={f: "changed by a forged request"})
                    expect(answer.status_code in (403, 404), f"{at} {r['id']}: writing {f} answered "
                                                             f"{answer.status_code}")
                    if reaches(entity_name, "update", r):
                        expect(answer.status_code == 403 and f in answer.text, f"{at}: 403 does not name {f}")
                # delete: allowed ones meet a stale version (409) instead of being deleted
                wanted = (403 if grant.delete == "none" else 409 if reaches(entity_name, "delete", r)
                          else 403 if r["id"] in visible else 404)
                answer = client.delete(f"{path}?version=999")
                expect(answer.status_code == wanted, f"{at} {r['id']}: delete answered {answer.status_code}, "
                                                     f"not {wanted}")
            after = {r["id"]: r for r in everything(loom, entity_name)}
            expect(all(after[r["id"]]["version"] == r["version"] for r in records),
                   f"{at}: a refused or no-op write changed a record")
            # --- create -----------------------------------------------------------------------------------
            if entity_name in BUSINESS:
                refs = {"account": records[0].get("account") or records[0]["id"],
                        "contact": records[0].get("contact")}
                data = {k: v for k, v in sample(entity_name, 0, refs).items() if levels.get(k) == "write"}
                answer = client.post(f"/api/{entity.plural}", json=data)
                required = [f.name for f in entity.user_fields if f.required and f.default is None]
                wanted = 403 if not grant.create else 201 if all(levels[f] == "write" for f in required) else 422
                expect(answer.status_code == wanted, f"{at}: create answered {answer.status_code}, not {wanted}")
                if answer.status_code == 201:
                    expect(set(answer.json()) <= readable, f"{at}: create answer shows hidden fields")
                if grant.create and hidden:
                    forged = client.post(f"/api/{entity.plural}", json={**data, hidden[0]: None})
                    expect(forged.status_code == 403 and hidden[0] in forged.text,
                           f"{at}: creating with hidden {hidden[0]} answered {forged.status_code}")
    assert not problems, "\n".join(problems)
