"""Spec models for entities and their fields (``entities:`` in any config file).

The models mirror the YAML and check only its *shape*. Meaning (does a ref target exist, is an
option valid for the field's type) is checked by the compiler, which sees the whole config.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EntitySpec", "FieldSpec", "IndexSpec", "Label", "OptionSpec", "RollupSpec", "RuleSpec"]

#: Text a person reads: either one string, or one string per locale (``{en: Account, zh: 客户}``).
Label = str | dict[str, str]


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionSpec(SpecModel):
    """One choice of an ``enum`` or ``multi_enum`` field, when it needs labels of its own."""

    value: str = Field(description="Stored value; any Unicode text (e.g. 在售).")
    label: Label | None = Field(None, description="Shown instead of the value; plain or per locale.")


class RollupSpec(SpecModel):
    """``rollup:`` of a field: e.g. an account's won amount is ``{of: opportunity.account, op: sum,
    field: amount, where: "record.stage == 'won'"}``."""

    of: str = Field(description="`<child entity>.<ref field>`: the records whose ref field points here.")
    op: Literal["count", "sum", "min", "max"] = "count"
    field: str | None = Field(None, description="The child field summed or compared (not needed for count).")
    where: str | None = Field(None, description="CEL over the child `record` (compiled to SQL, like a row "
                              "rule): only children it is true for.")


class FieldSpec(SpecModel):
    """One field of an entity. ``type`` decides which of the other options apply."""

    type: str = Field(
        description=(
            "Field type: string, text, integer, decimal, money, boolean, date, datetime, enum, "
            "multi_enum, email, phone, url, json, ref (many-to-one), refs (many-to-many), "
            "or a type a plugin registers."
        ),
        examples=["string", "ref", "enum"],
    )
    label: Label | None = Field(None, description="Shown in forms and API docs; plain or per locale.")
    help: Label | None = Field(None, description="Help text shown beside the input.")
    renamed_from: str | None = Field(
        None, description="The field's previous name: the migration renames the column and keeps its data, and "
        "the audit trail shows older entries under the new name. Harmless once applied; keep it for the history.")
    required: bool = Field(False, description="A value must be given (NOT NULL).")
    unique: bool = Field(False, description="No two records may share a value.")
    indexed: bool = Field(False, description="Create a database index on this field.")
    read_only: bool = Field(False, description="Set by defaults or plugins only; never by API input.")
    default: Any = Field(
        None, description="Literal value, or `now` (datetime), `today` (date), `current_user`."
    )
    min: float | int | str | None = Field(None, description="Smallest allowed value (numbers, dates).")
    max: float | int | str | None = Field(None, description="Largest allowed value (numbers, dates).")
    pattern: str | None = Field(None, description="Regular expression a text value must match.")
    max_length: int | None = Field(None, ge=1, le=10485760, description="string: most characters.")
    precision: int | None = Field(None, ge=1, le=38, description="decimal/money: total digits.")
    scale: int | None = Field(None, ge=0, le=38, description="decimal/money: digits after the point.")
    currency: str | None = Field(None, description="money: ISO 4217 code, e.g. EUR.")
    options: list[str | OptionSpec] | None = Field(None, description="enum/multi_enum: the choices.")
    map: dict[str, str | None] | None = Field(
        None, description="enum/multi_enum: what stored values of options taken out of `options` become, old "
        "value -> current option, or null to empty them (`{cold: warm, lukewarm: null}`); a value renamed is "
        "removed and added with `map: {old: new}`. When the field turns into an enum from text, what each text "
        "becomes (`{Banking: finance}`). Used by `loom migrate` only; harmless once applied.")
    to: str | None = Field(None, description="ref/refs: the target entity.")
    on_delete: Literal["restrict", "cascade", "set_null"] | None = Field(
        None, description="ref: what happens to this record when the target is deleted."
    )
    related_name: str | None = Field(
        None, description="ref/refs: name of the reverse list on the target (default: this entity's plural)."
    )
    compute: str | None = Field(
        None, description="CEL giving the value, recomputed on every save (the field is read-only, stored, "
        "filterable and sortable): `record.amount * record.probability / 100.0`.")
    default_expr: str | None = Field(
        None, description="CEL giving the value when a new record has none, e.g. `today` or "
        "`record.amount * 0.1`; unlike `compute`, people may change it afterwards.")
    backfill: str | None = Field(
        None, description="CEL over the existing `record` giving the value of rows that have none when the field "
        "becomes required (or is added as required): `record.type == 'customer' ? 'retail' : 'other'`. Used by "
        "`loom migrate` only; `default:` fills them when there is no backfill.")
    rollup: RollupSpec | None = Field(
        None, description="A summary of the records pointing at this one (count, sum, min, max), computed in "
        "SQL and kept current whenever they change; read-only, stored, filterable and sortable.")
    json_schema: dict[str, Any] | None = Field(
        None, description="json: a JSON Schema (draft 2020-12) every value must satisfy."
    )


class IndexSpec(SpecModel):
    """An index over one or more fields."""

    fields: list[str] = Field(min_length=1)
    unique: bool = False
    name: str | None = Field(None, description="Index name; generated from the naming convention if omitted.")


class RuleSpec(SpecModel):
    """A validation rule: a CEL condition every created or changed record must meet."""

    check: str = Field(description="CEL that must be true, e.g. `record.discount <= record.amount * 0.2`.")
    message: Label = Field(description="Shown when the check fails; plain or per locale.")
    when: str | None = Field(None, description="CEL: check only records for which this is true.")
    fields: list[str] = Field(default_factory=list, description="Fields the error is attached to (forms show "
                              "it beside them; the API names them).")


class SectionSpec(SpecModel):
    """A group of fields on the record page and in forms (``layout:``)."""

    label: Label | None = Field(None, description="The section's heading; plain or per locale.")
    fields: list[str] = Field(min_length=1, description="The fields it shows, in order.")


class EntitySpec(SpecModel):
    """One kind of record: a table, an API resource and (later) forms."""

    label: Label | None = Field(None, description="Singular name shown to people; plain or per locale.")
    plural: str | None = Field(
        None, description="snake_case plural used in URLs (`/api/<plural>`); default: English plural."
    )
    plural_label: Label | None = Field(None, description="Plural name shown to people.")
    renamed_from: str | None = Field(
        None, description="The entity's previous name: the migration renames its table (and join tables, indexes "
        "and constraints named after it) and keeps every record; the history shows older entries under the new "
        "name. Harmless once applied; keep it for the history.")
    title: str | None = Field(None, description="The field that names a record (in lists, pickers, links).")
    description: str | None = None
    fields: dict[str, FieldSpec] = Field(default_factory=dict)
    rules: dict[str, RuleSpec] = Field(default_factory=dict, description="Validation rules by name (CEL).")
    indexes: list[IndexSpec] = Field(default_factory=list)
    unique_together: list[Annotated[list[str], Field(min_length=1)]] = Field(
        default_factory=list, description="Groups of fields whose combined values must be unique."
    )
    columns: list[str] = Field(default_factory=list, alias="list", description="Admin app: the columns of the "
                               "entity's list, in order (default: the title and the next few fields).")
    layout: list[SectionSpec] = Field(default_factory=list, description="Admin app: the sections of the record page "
                                      "and forms; fields left out follow in a last section.")
    search: list[str] = Field(default_factory=list, description="Admin app: fields the global search looks in, "
                              "beside the title.")
