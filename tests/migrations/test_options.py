"""Migrations: enum and multi_enum options taken out or renamed on a populated table. Rows holding a
removed option get what ``map:`` says; without a map, a data check refuses the plan when rows use it."""

from __future__ import annotations

import json

import pytest

from loomcrm.engine.app import Loom
from loomcrm.engine.commands import MigrationRefused, applied_manifest, migrate_manifest, plan
from loomcrm.engine.database import create_db_engine
from loomcrm.engine.errors import ConfigErrors
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import compile_entities as manifest_of
from loomcrm.engine.testing import migrated, project_files
from loomcrm.generators.migrations import plan_migration, render_sql

RATING = "rating: {type: enum, options: [hot, warm, cold, frozen]}"
TAGS = "tags: {type: multi_enum, options: [a, b, c, d]}"
BASE = f"""
entities:
  account:
    fields:
      name: {{type: string, required: true}}
      {RATING}
      {TAGS}
"""
RATINGS = ["hot", "warm", "cold", None]  # row i gets RATINGS[i % 4]: 'frozen' is never used
TAG_LISTS = [["a"], ["a", "c"], ["c", "b"], ["c"], None, ["b"]]  # row i gets TAG_LISTS[i % 6]: 'd' never used
SELECT = "SELECT id, name, rating, tags, version, updated_at FROM account ORDER BY id"


def changed(rating: str | None = None, tags: str | None = None) -> str:
    yaml = BASE
    if rating is not None:
        yaml = yaml.replace(RATING, f"rating: {rating}")
    if tags is not None:
        yaml = yaml.replace(TAGS, f"tags: {tags}")
    return yaml


def history_count(url: str) -> int:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM loom_migrations").scalar_one()
    finally:
        engine.dispose()


def rows(url: str) -> list[tuple]:
    """The accounts, tags as lists (SQLite hands JSON back as text)."""
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return [(*r[:3], json.loads(r[3]) if isinstance(r[3], str) else r[3], *r[4:])
                    for r in conn.exec_driver_sql(SELECT)]
    finally:
        engine.dispose()


def ids(predicate) -> list[int]:
    return [i for i in range(1, 25) if predicate(i)]


@pytest.fixture
def populated(db_url):
    """24 accounts with every rating but 'frozen' (and some without one) and tag lists without 'd'."""
    with migrated(manifest_of(BASE), db_url) as loom:
        for i in range(1, 25):
            loom.records.create(loom.entity("account"), {"name": f"A{i}", "rating": RATINGS[i % 4],
                                                         "tags": TAG_LISTS[i % 6]}, Context())
    return db_url


def next_plan(url: str, yaml: str):
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return plan_migration(applied_manifest(conn)[0], manifest_of(yaml))
    finally:
        engine.dispose()


def test_removing_unused_options_applies_and_changes_no_row(populated):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, warm, cold]}", "{type: multi_enum, options: [a, b, c]}")
    text = migrate_manifest(manifest_of(yaml), database_url=populated).render()
    assert "remove option 'frozen' of account.rating (data check: 0 rows hold it)" in text
    assert "remove option 'd' of account.tags (data check: 0 rows hold it)" in text
    assert rows(populated) == before
    assert history_count(populated) == 2
    assert next_plan(populated, yaml).empty


def test_removing_used_options_without_map_is_refused_with_counts_and_ids(populated, tmp_path):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, warm, frozen]}", "{type: multi_enum, options: [a, b, d]}")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    assert info.value.plan.refused == [
        "option 'cold' was removed from account.rating, but 6 rows hold it (ids 2, 6, 10, 14, 18 ...): "
        "add map: {cold: hot} (or {cold: null}) under the field, or put the option back",
        "option 'c' was removed from account.tags, but 12 rows hold it (ids 1, 2, 3, 7, 8 ...): "
        "add map: {c: a} (or {c: null}) under the field, or put the option back",
    ]
    assert rows(populated) == before
    assert history_count(populated) == 1

    for name, text in project_files(yaml).items():  # `loom plan` shows the same, with the checks' counts
        (tmp_path / name).write_text(text)
    planned = plan(tmp_path, database_url=populated)
    assert planned.plan.refused == info.value.plan.refused
    assert "remove option 'cold' of account.rating (data check: 6 rows hold it)" in planned.plan.render()


def test_required_field_refusal_does_not_suggest_null(populated):
    engine = create_db_engine(populated)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE account SET rating = 'hot' WHERE rating IS NULL")
    engine.dispose()
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(changed("{type: enum, options: [hot, warm], required: true}")),
                         database_url=populated)
    assert info.value.plan.refused == [
        "option 'cold' was removed from account.rating, but 6 rows hold it (ids 2, 6, 10, 14, 18 ...): "
        "add map: {cold: hot} under the field, or put the option back"]


def test_map_to_another_option_updates_only_the_rows_holding_it(populated):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, warm, frozen], map: {cold: warm}}",
                   "{type: multi_enum, options: [a, b, d], map: {c: a}}")
    text = migrate_manifest(manifest_of(yaml), database_url=populated).render()
    assert "map account.rating: 'cold' -> 'warm' (6 rows)" in text
    assert "map account.tags: 'c' -> 'a' (12 rows)" in text
    expected = [(i, name, "warm" if rating == "cold" else rating,
                 None if tags is None else list(dict.fromkeys("a" if t == "c" else t for t in tags)), *rest)
                for i, name, rating, tags, *rest in before]
    after = rows(populated)
    assert after == expected  # version and updated_at too: a migration is no edit
    assert [r[3] for r in after[:4]] == [["a"], ["a", "b"], ["a"], None]  # [a, c] -> [a]: once
    assert history_count(populated) == 2
    assert next_plan(populated, yaml).empty  # map: left in the config maps nothing any more


def test_map_to_null_empties_the_value_or_drops_the_item(populated):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, warm, frozen], map: {cold: null}}",
                   "{type: multi_enum, options: [a, b, d], map: {c: null}}")
    text = migrate_manifest(manifest_of(yaml), database_url=populated).render()
    assert "map account.rating: 'cold' -> null (6 rows)" in text
    assert "map account.tags: 'c' -> null (12 rows)" in text
    expected = [(i, name, None if rating == "cold" else rating,
                 None if tags is None else [t for t in tags if t != "c"], *rest)
                for i, name, rating, tags, *rest in before]
    assert rows(populated) == expected
    assert rows(populated)[2][3] == []  # ['c'] lost its only item


def test_rename_an_option_by_removing_it_adding_the_new_one_and_a_map(populated):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, warm, chilly, frozen], map: {cold: chilly}}",
                   "{type: multi_enum, options: [a, b, see, d], map: {c: see}}")
    the_plan = migrate_manifest(manifest_of(yaml), database_url=populated)
    assert "new options for account.rating: chilly" in the_plan.notes
    assert "map account.rating: 'cold' -> 'chilly' (6 rows)" in the_plan.render()
    expected = [(i, name, "chilly" if rating == "cold" else rating,
                 None if tags is None else ["see" if t == "c" else t for t in tags], *rest)
                for i, name, rating, tags, *rest in before]
    assert rows(populated) == expected
    assert next_plan(populated, yaml).empty

    loom = Loom.from_manifest(manifest_of(yaml), make_plugin_manager(), database_url=populated)
    try:  # the API reads the new values and takes the new option
        account = loom.entity("account")
        assert loom.records.get(account, 2, Context())["rating"] == "chilly"
        assert loom.records.create(account, {"name": "N", "tags": ["see"]}, Context())["tags"] == ["see"]
    finally:
        loom.close()


def test_mixed_mapped_and_unmapped_removal_is_refused_as_a_whole(populated):
    before = rows(populated)
    yaml = changed("{type: enum, options: [hot, frozen], map: {cold: hot}}")
    with pytest.raises(MigrationRefused) as info:
        migrate_manifest(manifest_of(yaml), database_url=populated)
    assert [r.split(",")[0] for r in info.value.plan.refused] == ["option 'warm' was removed from account.rating"]
    assert rows(populated) == before


def test_plan_without_a_database_lists_the_map_steps():
    old = manifest_of(BASE).to_json()
    the_plan = plan_migration(old, manifest_of(changed("{type: enum, options: [hot, warm, frozen], map: {cold: warm}}")))
    assert [s.description for s in the_plan.steps] == ["map account.rating: 'cold' -> 'warm'"]
    assert "-- map account.rating: 'cold' -> 'warm' (Python, run by loom migrate)" in render_sql(the_plan.steps,
                                                                                                  "postgresql")


def test_map_is_not_part_of_the_stored_manifest():
    with_map = manifest_of(changed("{type: enum, options: [hot, warm, frozen], map: {cold: warm}}"))
    without = manifest_of(changed("{type: enum, options: [hot, warm, frozen]}"))
    assert with_map.to_json() == without.to_json()
    assert with_map.entities["account"].fields["rating"].option_map == {"cold": "warm"}


def test_map_that_cannot_apply_is_a_config_error_with_its_place():
    yaml = """
entities:
  account:
    fields:
      rating:
        type: enum
        required: true
        options: [hot, warm, frozen]
        map: {hot: warm, cold: wram, ice: null}
      tags: {type: multi_enum, options: [a, b], map: {c: z}}
      name: {type: string, map: {x: y}}
"""
    with pytest.raises(ConfigErrors) as info:
        manifest_of(yaml)
    text = str(info.value)
    assert "entities.yaml:9:15 E147 map key 'hot' of 'account.rating' is still one of its options" in text
    assert "hint: a key is a value taken out of 'options': remove 'hot' from options, or remove it from map" in text
    assert ("entities.yaml:9:32 E147 map of 'account.rating' turns 'cold' into 'wram', which is not one of its "
            "options") in text
    assert "hint: did you mean 'warm'?" in text
    assert "entities.yaml:9:43 E147 map of 'account.rating' empties 'ice', but the field is required" in text
    assert "hint: map it to an option: hot, warm, frozen" in text
    assert ("entities.yaml:10:58 E147 map of 'account.tags' turns 'c' into 'z', which is not one of its options"
            in text)
    assert "hint: options: a, b" in text
    assert "E126 option 'map' does not apply to string field 'account.name'" in text
