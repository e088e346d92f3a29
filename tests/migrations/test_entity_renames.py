"""Entity renames (``renamed_from:`` on an entity): the table, its join tables, and every index and
constraint named after it (refs pointing at it included) get the new name; every row, id and link
stays; the history shows entries written under older entity and field names under today's names."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from loomcrm.engine import commands
from loomcrm.engine.commands import MigrationRefused, migrate_manifest, plan_manifest
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.runtime.audit import FormerName, name_history
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, config_errors, make_loom, project_files, table_names
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import sql_rows as rows
from loomcrm.generators.migrations import plan_migration, render_sql

TEMPLATE = """
entities:
  ENTITY:RENAMED
    fields:
      name: {type: string, required: true}
      email: {type: email, unique: true}
      FIELD: {type: enum, options: [hot, warm, cold], indexed: true FIELD_FROM}
      stage: {type: enum, options: [new, active]}
      parent: {type: ref, to: ENTITY, on_delete: set_null, related_name: children}
      tags: {type: refs, to: tag}
  tag:
    fields:
      name: {type: string}
  contact:
    fields:
      name: {type: string}
      account: {type: ref, to: ENTITY, on_delete: cascade}
      accounts: {type: refs, to: ENTITY, related_name: linked_contacts}
workflows:
  lifecycle:
    entity: ENTITY
    field: stage
    transitions:
      activate: {from: new, to: active}
"""


def version(entity: str, field: str, entity_from: str | None = None, field_from: str | None = None) -> str:
    return (TEMPLATE.replace("RENAMED", f"\n    renamed_from: {entity_from}" if entity_from else "")
            .replace("ENTITY", entity).replace(" FIELD_FROM", f", renamed_from: {field_from}" if field_from else "")
            .replace("FIELD", field))


ACCOUNT = version("account", "rating")
CUSTOMER = version("customer", "rating", "account")
#: Two entity renames and two field renames, one migration each.
CLIENT_GRADE = version("client", "grade", "account", "rating")
CUSTOMER_TIER = version("customer", "tier", "client", "grade")
DATA = {  # table -> columns, every row compared before and after
    "account": "id, name, email, rating, stage, parent_id, created_at, updated_at, created_by, owner, version",
    "account__tags": "account_id, tag_id",
    "contact": "id, name, account_id, version",
    "contact__accounts": "contact_id, account_id",
}


def renamed_data(sql: str) -> str:
    return sql.replace("account__tags", "customer__tags").replace("FROM account ", "FROM customer ") \
        .replace("account_id, tag_id", "customer_id, tag_id").replace("contact_id, account_id", "contact_id, customer_id")


def select(table: str, columns: str) -> str:
    return f"SELECT {columns} FROM {table} ORDER BY {columns.split(', ')[0]}, {columns.split(', ')[1]}"


def schema_names(url: str) -> dict[str, set[str]]:
    """Per table (Loom's own left out): its index, unique constraint and foreign key names."""
    engine = create_db_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {t: {i["name"] for i in inspector.get_indexes(t)} | {u["name"] for u in inspector.get_unique_constraints(t)}
                | {f["name"] for f in inspector.get_foreign_keys(t)}
                for t in inspector.get_table_names() if not t.startswith(("loom_", "sqlite_"))}
    finally:
        engine.dispose()


def everything(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, in a stable order."""
    return {t: sorted(rows(url, f'SELECT * FROM "{t}"'), key=repr) for t in sorted(table_names(url))}


@pytest.fixture
def populated(db_url):
    """ACCOUNT with 30 accounts (every other one with a parent), 4 tags linked, 20 contacts each pointing
    at an account and linked to two."""
    loom = make_loom(project_files(ACCOUNT), db_url)
    try:
        ctx = Context(actor=1)
        tags = [loom.records.create(loom.entity("tag"), {"name": f"t{i}"}, ctx)["id"] for i in range(4)]
        ids: list[int] = []
        for i in range(30):
            ids.append(loom.records.create(loom.entity("account"), {
                "name": f"Account {i}", "email": f"a{i}@example.com" if i % 3 else None,
                "rating": ("hot", "warm", "cold", None)[i % 4], "parent": ids[i // 2] if i % 2 else None,
                "tags": tags[: i % 5]}, ctx)["id"])
        for i in range(20):
            loom.records.create(loom.entity("contact"), {"name": f"Contact {i}", "account": ids[i],
                                                         "accounts": [ids[i], ids[(i + 7) % 30]]}, ctx)
    finally:
        loom.close()
    return db_url, ids


def test_the_plan_renames_every_table_index_and_constraint_named_after_the_entity():
    plan = plan_migration(manifest_of(ACCOUNT).to_json(), manifest_of(CUSTOMER))
    assert not plan.refused, plan.render()
    lines = plan.render().splitlines()
    assert lines[:4] == [
        "  + rename table account -> customer (entity 'customer', renamed from 'account'; data kept)",
        "  + rename table account__tags -> customer__tags (links of customer.tags; data kept)",
        "  + rename column customer__tags.account_id -> customer__tags.customer_id (data kept)",
        "  + rename column contact__accounts.account_id -> contact__accounts.customer_id (data kept)",
    ]
    assert set(lines[4:]) == {
        "  + rename foreign key fk_account_parent_id_account -> fk_customer_parent_id_customer on customer",
        "  + rename primary key pk_account -> pk_customer on customer",
        "  + rename unique constraint uq_account_email -> uq_customer_email on customer",
        "  + rename index ix_account_owner -> ix_customer_owner on customer",
        "  + rename index ix_account_parent_id -> ix_customer_parent_id on customer",
        "  + rename index ix_account_rating -> ix_customer_rating on customer",
        "  + rename foreign key fk_contact_account_id_account -> fk_contact_account_id_customer on contact",
        "  + rename foreign key fk_account__tags_account_id_account -> fk_customer__tags_customer_id_customer "
        "on customer__tags",
        "  + rename foreign key fk_account__tags_tag_id_tag -> fk_customer__tags_tag_id_tag on customer__tags",
        "  + rename primary key pk_account__tags -> pk_customer__tags on customer__tags",
        "  + rename index ix_account__tags_tag_id -> ix_customer__tags_tag_id on customer__tags",
        "  + rename foreign key fk_contact__accounts_account_id_account -> fk_contact__accounts_customer_id_customer "
        "on contact__accounts",
        "  + rename index ix_contact__accounts_account_id -> ix_contact__accounts_customer_id on contact__accounts",
        "  + rename the events of webhook subscriptions made through the API (account.* -> customer.*)",
    }
    assert not any("ref" in line and "changed" in line for line in lines)  # `to: customer` is no new target
    pg, lite = render_sql(plan.steps, "postgresql"), render_sql(plan.steps, "sqlite")
    assert "ALTER TABLE account RENAME TO customer;" in pg
    assert "ALTER SEQUENCE IF EXISTS account_id_seq RENAME TO customer_id_seq;" in pg
    assert "ALTER TABLE customer RENAME CONSTRAINT uq_account_email TO uq_customer_email;" in pg
    assert "ALTER INDEX ix_account_rating RENAME TO ix_customer_rating;" in pg
    assert "ALTER TABLE account RENAME TO customer;" in lite and "ALTER SEQUENCE" not in lite
    assert "-- copy table contact (SQLite batch mode) to: rename foreign key fk_contact_account_id_account" in lite
    assert "CREATE INDEX ix_customer_rating ON customer (rating);" in lite


def test_a_renamed_entity_keeps_every_row_id_ref_and_link(populated):
    url, ids = populated
    before = {table: rows(url, select(table, columns)) for table, columns in DATA.items()}
    assert len(before["account"]) == 30 and len(before["contact__accounts"]) == 40
    assert sum(1 for r in before["account"] if r[5] is not None) == 15 and len(before["account__tags"]) == 60
    plan = migrate_manifest(manifest_of(CUSTOMER), database_url=url)
    assert "rename table account -> customer (entity 'customer', renamed from 'account'; data kept)" in plan.render()
    for table, columns in DATA.items():
        assert rows(url, renamed_data(select(table, columns))) == before[table], table
    names = schema_names(url)
    assert set(names) == {"user", "team", "user__teams", "tag", "customer", "customer__tags", "contact",
                          "contact__accounts"}
    assert names["customer"] >= {"ix_customer_owner", "ix_customer_parent_id", "ix_customer_rating",
                                 "uq_customer_email", "fk_customer_parent_id_customer"}
    assert "fk_contact_account_id_customer" in names["contact"]
    assert names["customer__tags"] >= {"ix_customer__tags_tag_id", "fk_customer__tags_customer_id_customer",
                                       "fk_customer__tags_tag_id_tag"}
    assert names["contact__accounts"] >= {"ix_contact__accounts_customer_id", "fk_contact__accounts_customer_id_customer"}
    stale = {n for table in names.values() for n in table
             if re.search(r"(?<![a-z])account(?!s)", n.replace("contact_account_id", ""))}
    assert stale == set(), stale
    if url.startswith("postgresql"):
        assert rows(url, "SELECT conname FROM pg_constraint WHERE conname LIKE 'pk_account%%'") == []
        assert rows(url, "SELECT relname FROM pg_class WHERE relname LIKE 'account%%'") == []
    else:  # foreign keys elsewhere follow the table; AUTOINCREMENT's counter too
        assert rows(url, "SELECT count(*) FROM sqlite_master WHERE sql LIKE '%REFERENCES account %'") == [(0,)]
        assert rows(url, "SELECT name FROM sqlite_sequence WHERE name LIKE 'account%'") == []
    assert plan_manifest(manifest_of(CUSTOMER), database_url=url).plan.empty
    assert migrate_manifest(manifest_of(CUSTOMER), database_url=url).empty  # renamed_from left in: harmless
    loom = make_loom(project_files(CUSTOMER), url, migrate=False)
    try:
        new = loom.records.create(loom.entity("customer"), {"name": "New", "parent": ids[0]}, Context(actor=1))
        assert new["id"] == ids[-1] + 1  # ids go on where they were
    finally:
        loom.close()


def test_the_api_answers_under_the_new_plural_only(populated):
    url, ids = populated
    migrate_manifest(manifest_of(CUSTOMER), database_url=url)
    loom = make_loom(project_files(CUSTOMER), url, migrate=False)
    try:
        with TestClient(loom.asgi()) as client:
            client.headers["Authorization"] = f"Bearer {api_token(loom)}"
            assert client.get("/api/accounts").status_code == 404
            listed = client.get("/api/customers", params={"limit": 100}).json()["data"]
            assert sorted(r["id"] for r in listed) == ids
            first = client.get(f"/api/customers/{ids[5]}").json()
            assert (first["name"], first["email"], first["rating"], first["parent"]) == \
                ("Account 5", "a5@example.com", "warm", ids[2])
            children = client.get(f"/api/customers/{ids[2]}/children").json()["data"]
            assert sorted(c["id"] for c in children) == [ids[5]]
            linked = client.get(f"/api/customers/{ids[7]}/linked_contacts").json()["data"]
            assert sorted(c["name"] for c in linked) == ["Contact 0", "Contact 7"]
            contact = client.get("/api/contacts", params={"filter[account]": ids[5]}).json()["data"]
            assert [(c["name"], c["account"]) for c in contact] == [("Contact 5", ids[5])]
            duplicate = client.post("/api/customers", json={"name": "Dup", "email": "a1@example.com"})
            assert duplicate.status_code == 422 and duplicate.json()["errors"][0]["field"] == "email"
            dangling = client.post("/api/contacts", json={"name": "X", "account": 999999})
            assert dangling.status_code == 422 and dangling.json()["errors"][0]["field"] == "account"
            deleted = client.delete(f"/api/customers/{ids[29]}")  # cascades to its contacts' links
            assert deleted.status_code in (200, 204), deleted.text
    finally:
        loom.close()
    assert rows(url, f"SELECT count(*) FROM contact__accounts WHERE customer_id = {ids[29]}") == [(0,)]


def test_history_follows_two_entity_renames_and_two_field_renames(db_url):
    loom = make_loom(project_files(ACCOUNT), db_url)
    try:
        record = loom.records.create(loom.entity("account"), {"name": "Acme", "rating": "hot"}, Context(actor=1))
        rid = record["id"]
        loom.records.update(loom.entity("account"), rid, {"rating": "warm"}, Context(actor=1))
        loom.records.transitions.fire(loom.entity("account"), rid, "activate", Context(actor=1), version=2)
    finally:
        loom.close()
    for config, entity, field, value in [(CLIENT_GRADE, "client", "grade", "cold"),
                                         (CUSTOMER_TIER, "customer", "tier", "hot")]:
        loom = make_loom(project_files(config), db_url)
        try:
            loom.records.update(loom.entity(entity), rid, {field: value}, Context(actor=2))
        finally:
            loom.close()
    loom = make_loom(project_files(CUSTOMER_TIER), db_url, migrate=False)
    try:
        with TestClient(loom.asgi()) as client:
            client.headers["Authorization"] = f"Bearer {api_token(loom)}"
            history = client.get(f"/api/customers/{rid}/history").json()["data"]
    finally:
        loom.close()
    assert [(e["action"], e["changes"]) for e in history] == [
        ("update", {"tier": ["cold", "hot"]}),  # written as customer.tier
        ("update", {"tier": ["warm", "cold"]}),  # as client.grade
        ("transition", {"stage": ["new", "active"]}),  # as account, with the workflow's name
        ("update", {"tier": ["hot", "warm"]}),  # as account.rating
        ("create", {"name": [None, "Acme"], "tier": [None, "hot"], "stage": [None, "new"]}),
    ]
    assert history[2]["transition"] == {"workflow": "lifecycle", "name": "activate"}
    written = rows(db_url, f"SELECT entity, changes FROM loom_audit WHERE record_id = {rid} "
                                 "AND entity <> 'user' ORDER BY id")
    assert [w[0] for w in written] == ["account", "account", "account", "client", "customer"]
    assert "rating" in str(written[1][1]) and "grade" in str(written[3][1])  # the rows stay as written


def test_an_old_entity_name_used_again_keeps_the_two_histories_apart(db_url):
    """A new entity may take a name a renamed one gave up: its records (same ids) have their own history."""
    loom = make_loom(project_files(ACCOUNT), db_url)
    try:
        rid = loom.records.create(loom.entity("account"), {"name": "Acme", "rating": "hot"}, Context(actor=1))["id"]
    finally:
        loom.close()
    migrate_manifest(manifest_of(CUSTOMER), database_url=db_url)
    again = version("customer", "rating").replace("workflows:", "  account:\n    fields:\n      title: {type: string}\nworkflows:")
    loom = make_loom(project_files(again), db_url)
    try:
        other = loom.records.create(loom.entity("account"), {"title": "Other"}, Context(actor=1))
        assert other["id"] == rid  # a new table: ids start again
        mine = loom.records.history(loom.entity("customer"), rid, Context(), limit=10, before=None)["data"]
        theirs = loom.records.history(loom.entity("account"), rid, Context(), limit=10, before=None)["data"]
    finally:
        loom.close()
    assert [e["changes"] for e in mine] == [{"name": [None, "Acme"], "rating": [None, "hot"], "stage": [None, "new"]}]
    assert [e["changes"] for e in theirs] == [{"title": [None, "Other"]}]


def test_name_history_maps_each_period_and_bounds_only_names_used_twice():
    t = [dt.datetime(2026, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3)]
    account = {"fields": {"rating": {}, "name": {}}}
    client = {"renamed_from": "account", "fields": {"grade": {"renamed_from": "rating"}, "name": {}}}
    names = name_history([(t[0], {"account": account}), (t[1], {"client": client}),
                          (t[2], {"client": client, "account": {"fields": {"title": {}}}})])
    assert names["client"] == [FormerName("account", {"rating": "grade", "name": "name"}, None, t[1]),
                               FormerName("client", {"grade": "grade", "name": "name"})]
    assert names["account"] == [FormerName("account", {"title": "title"}, t[2], None)]


def test_a_rename_with_a_new_field_and_a_field_rename_in_one_migration(populated):
    url, ids = populated
    before = rows(url, "SELECT id, name, rating FROM account ORDER BY id")
    both = CLIENT_GRADE.replace("      stage:", "      website: {type: url}\n      stage:")
    plan = migrate_manifest(manifest_of(both), database_url=url)
    assert not plan.refused
    assert rows(url, "SELECT id, name, grade FROM client ORDER BY id") == before
    assert rows(url, "SELECT count(*) FROM client WHERE website IS NULL") == [(30,)]
    assert "ix_client_grade" in schema_names(url)["client"]


@pytest.mark.parametrize("change, step", [
    (CUSTOMER.replace("      stage:", "      score: {type: integer, required: true}\n      stage:"),
     "set customer.score NOT NULL"),
    (CUSTOMER.replace("      tags: {type: refs, to: tag}\n", ""), "drop table customer__tags (links of customer.tags)"),
])
def test_a_rename_with_a_change_a_data_check_counts_first_is_refused_and_changes_nothing(populated, change, step):
    url, _ = populated
    data, schema = everything(url), schema_names(url)
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(change), database_url=url, allow_data_loss=True)
    assert [r for r in info.value.plan.refused if r.startswith(f"rename entity account -> customer also changes its "
                                                                f"data ({step}") and "rename first" in r], \
        info.value.plan.refused
    assert everything(url) == data and schema_names(url) == schema


def test_a_failure_half_way_through_a_rename_leaves_schema_and_data_unchanged(populated, monkeypatch):
    url, _ = populated
    data, schema = everything(url), schema_names(url)
    real = commands.apply_steps

    def apply_then_fail(conn, steps):
        real(conn, steps)
        assert "customer" in sa.inspect(conn).get_table_names()  # renamed, not committed
        raise RuntimeError("injected failure")

    monkeypatch.setattr(commands, "apply_steps", apply_then_fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        migrate_manifest(manifest_of(CUSTOMER), database_url=url)
    assert everything(url) == data and schema_names(url) == schema


def test_webhook_subscriptions_made_through_the_api_follow_the_rename(populated):
    url, _ = populated
    loom = make_loom(project_files(ACCOUNT), url, migrate=False)
    try:
        api_token(loom)
        with loom.engine.begin() as conn:
            user = conn.exec_driver_sql("SELECT id FROM \"user\" WHERE username = 'tester'").scalar_one()
            conn.execute(loom.metadata.tables["loom_webhook"].insert(), [
                {"url": "https://example.com/a", "events": ["account.created", "tag.*"], "secret": "s", "run_as": user,
                 "created_at": dt.datetime.now(dt.UTC), "active": True},
                {"url": "https://example.com/b", "events": ["account.*"], "secret": "s", "run_as": user,
                 "created_at": dt.datetime.now(dt.UTC), "active": True}])
    finally:
        loom.close()
    migrate_manifest(manifest_of(CUSTOMER), database_url=url)
    events = [json.loads(e) if isinstance(e, str) else e for (e,) in rows(url, "SELECT events FROM loom_webhook ORDER BY id")]
    assert events == [["customer.created", "tag.*"], ["customer.*"]]


def test_renamed_from_that_cannot_be_an_entity_rename_is_an_error_with_its_place():
    errors = config_errors(project_files("""
        entities:
          account:
            renamed_from: account
            fields: {name: {type: string}}
          contact:
            renamed_from: account
          lead:
            renamed_from: Old-Name
          deal:
            renamed_from: offer_old
          offer:
            renamed_from: offer_old
        """))
    assert errors.splitlines() == [
        "entities.yaml:4:19 E146 entity 'account' is renamed from itself",
        "    hint: remove 'renamed_from:', or write the entity's previous name",
        "entities.yaml:7:19 E146 entity 'contact' is renamed from 'account', which is still an entity",
        "    hint: remove entity 'account' (its table becomes 'contact'), or remove 'renamed_from:' to keep both",
        "entities.yaml:9:19 E146 renamed_from 'Old-Name' of entity 'lead' is not an entity name",
        "    hint: write the previous name exactly as it was: snake_case ASCII",
        "entities.yaml:13:19 E146 entities 'deal' and 'offer' are both renamed from 'offer_old'",
        "    hint: one table can get one new name: remove one 'renamed_from:'",
        "4 errors in the config.",
    ]
