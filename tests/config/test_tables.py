"""Tables built from a Manifest, checked as the DDL SQLite and PostgreSQL would receive."""

from __future__ import annotations

import textwrap

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

from loomcrm.engine.compiler import compile_manifest
from loomcrm.engine.loader import load_config_text
from loomcrm.engine.manifest import SYSTEM_TABLES
from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import project_files
from loomcrm.generators.tables import MIGRATIONS_TABLE, build_metadata

CRM = """\
    entities:
      account:
        fields:
          name: {type: string, required: true, max_length: 200}
          code: {type: string, unique: true, max_length: 20}
          city: {type: string, indexed: true}
          revenue: {type: money, precision: 12, scale: 2}
          tags: {type: multi_enum, options: [key, partner]}
          extra: {type: json}
          founded: {type: date}
          active: {type: boolean}
        unique_together:
          - [name, city]
        indexes:
          - fields: [founded, active]
          - {fields: [revenue], name: account_by_revenue}
          - fields: [city]  # city is indexed already
      contact:
        fields:
          account: {type: ref, to: account, on_delete: cascade, required: true}
          employer: {type: ref, to: account, on_delete: set_null, related_name: employees}
          referrer: {type: ref, to: contact, related_name: referrals}
          watched: {type: refs, to: account, related_name: watchers}
    """

DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}


@pytest.fixture(scope="module")
def metadata() -> sa.MetaData:
    loaded = load_config_text(project_files(CRM))
    return build_metadata(compile_manifest(loaded, make_plugin_manager(loaded.project.plugins)))


def create_table(metadata: sa.MetaData, name: str, dialect: str) -> str:
    text = str(CreateTable(metadata.tables[name]).compile(dialect=DIALECTS[dialect]))
    return "\n".join(line.strip() for line in text.strip().splitlines())


def create_indexes(metadata: sa.MetaData, name: str, dialect: str) -> list[str]:
    indexes = sorted(metadata.tables[name].indexes, key=lambda i: i.name)
    return [str(CreateIndex(i).compile(dialect=DIALECTS[dialect])) for i in indexes]


def golden(text: str) -> str:
    return textwrap.dedent(text).strip()


def test_entity_table_on_sqlite(metadata):
    assert create_table(metadata, "account", "sqlite") == golden("""
        CREATE TABLE account (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        name VARCHAR(200) NOT NULL,
        code VARCHAR(20),
        city VARCHAR(255),
        revenue NUMERIC(12, 2),
        tags JSON,
        extra JSON,
        founded DATE,
        active BOOLEAN,
        created_at DATETIME NOT NULL,
        updated_at DATETIME NOT NULL,
        created_by INTEGER,
        updated_by INTEGER,
        owner INTEGER,
        version INTEGER DEFAULT 1 NOT NULL,
        CONSTRAINT uq_account_code UNIQUE (code),
        CONSTRAINT uq_account_name_city UNIQUE (name, city)
        )
        """)


def test_entity_table_on_postgresql_has_bigint_ids_jsonb_and_timezones(metadata):
    assert create_table(metadata, "account", "postgresql") == golden("""
        CREATE TABLE account (
        id BIGSERIAL NOT NULL,
        name VARCHAR(200) NOT NULL,
        code VARCHAR(20),
        city VARCHAR(255),
        revenue NUMERIC(12, 2),
        tags JSONB,
        extra JSONB,
        founded DATE,
        active BOOLEAN,
        created_at TIMESTAMP WITH TIME ZONE NOT NULL,
        updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
        created_by BIGINT,
        updated_by BIGINT,
        owner BIGINT,
        version INTEGER DEFAULT 1 NOT NULL,
        CONSTRAINT pk_account PRIMARY KEY (id),
        CONSTRAINT uq_account_code UNIQUE (code),
        CONSTRAINT uq_account_name_city UNIQUE (name, city)
        )
        """)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_indexes_follow_the_naming_convention_unless_named(metadata, dialect):
    assert create_indexes(metadata, "account", dialect) == [
        "CREATE INDEX account_by_revenue ON account (revenue)",
        "CREATE INDEX ix_account_city ON account (city)",
        "CREATE INDEX ix_account_founded_active ON account (founded, active)",
        "CREATE INDEX ix_account_owner ON account (owner)",
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_refs_become_named_foreign_keys_with_their_on_delete_action(metadata, dialect):
    ddl = create_table(metadata, "contact", dialect)
    id_type = "BIGINT" if dialect == "postgresql" else "INTEGER"
    assert f"account_id {id_type} NOT NULL," in ddl
    assert f"employer_id {id_type}," in ddl
    assert ddl.splitlines()[-4:] == [
        "CONSTRAINT fk_contact_account_id_account FOREIGN KEY(account_id) REFERENCES account (id) ON DELETE CASCADE,",
        "CONSTRAINT fk_contact_employer_id_account FOREIGN KEY(employer_id) REFERENCES account (id) ON DELETE SET NULL,",
        "CONSTRAINT fk_contact_referrer_id_contact FOREIGN KEY(referrer_id) REFERENCES contact (id) ON DELETE RESTRICT",
        ")",
    ]
    assert create_indexes(metadata, "contact", dialect) == [
        "CREATE INDEX ix_contact_account_id ON contact (account_id)",
        "CREATE INDEX ix_contact_employer_id ON contact (employer_id)",
        "CREATE INDEX ix_contact_owner ON contact (owner)",
        "CREATE INDEX ix_contact_referrer_id ON contact (referrer_id)",
    ]


@pytest.mark.parametrize(("dialect", "id_type"), [("sqlite", "INTEGER"), ("postgresql", "BIGINT")])
def test_many_to_many_join_table_has_a_composite_key_and_cascades(metadata, dialect, id_type):
    assert "watched" not in metadata.tables["contact"].c
    assert create_table(metadata, "contact__watched", dialect) == golden(f"""
        CREATE TABLE contact__watched (
        contact_id {id_type} NOT NULL,
        account_id {id_type} NOT NULL,
        CONSTRAINT pk_contact__watched PRIMARY KEY (contact_id, account_id),
        CONSTRAINT fk_contact__watched_contact_id_contact FOREIGN KEY(contact_id) REFERENCES contact (id) ON DELETE CASCADE,
        CONSTRAINT fk_contact__watched_account_id_account FOREIGN KEY(account_id) REFERENCES account (id) ON DELETE CASCADE
        )
        """)
    assert create_indexes(metadata, "contact__watched", dialect) == [
        "CREATE INDEX ix_contact__watched_account_id ON contact__watched (account_id)"]


def test_self_referencing_many_to_many_names_its_columns_by_role():
    loaded = load_config_text(project_files("entities:\n  account:\n    fields: {partners: {type: refs, to: account}}\n"))
    metadata = build_metadata(compile_manifest(loaded, make_plugin_manager(loaded.project.plugins)))
    table = metadata.tables["account__partners"]
    assert [c.name for c in table.primary_key.columns] == ["source_id", "target_id"]
    assert table.info["join"] == ("source_id", "target_id")


def test_every_column_names_the_field_it_stores(metadata):
    table = metadata.tables["contact"]
    assert {c.name: c.info["loom"] for c in table.columns} == {
        "id": "contact.id", "account_id": "contact.account", "employer_id": "contact.employer",
        "referrer_id": "contact.referrer", "created_at": "contact.created_at", "updated_at": "contact.updated_at",
        "created_by": "contact.created_by", "updated_by": "contact.updated_by", "owner": "contact.owner",
        "version": "contact.version",
    }
    assert table.c.account_id.info["source"] == "entities.yaml:20:7"


def test_metadata_holds_the_entities_join_tables_and_loom_tables(metadata):
    assert sorted(metadata.tables) == sorted(["account", "contact", "contact__watched", MIGRATIONS_TABLE,
                                              *SYSTEM_TABLES, "user", "team", "user__teams"])


def test_tables_are_created_without_name_clashes_when_an_index_is_declared_twice(metadata, db_url):
    engine = sa.create_engine(db_url)
    try:
        metadata.create_all(engine)
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == set(metadata.tables)
        names = {i["name"] for i in inspector.get_indexes("account")}  # PostgreSQL lists uq_ ones too
        assert names - {"uq_account_code", "uq_account_name_city"} == {
            "account_by_revenue", "ix_account_city", "ix_account_founded_active", "ix_account_owner"}
    finally:
        engine.dispose()
