"""Acme's own behaviour, loaded from the project's plugins/ folder (no listing needed).

- ``iban``: a field type (used by ``account.iban``): checks the IBAN's check digits, stores it without
  spaces in upper case, documents its pattern in the OpenAPI document.
- deal scoring: every save computes ``deal.score`` (a read-only field) from amount and stage.
- won deals cannot be deleted (a permission veto: 403 with the reason, whatever the caller's roles).
- ``loom -p examples/acme rescore``: recompute every deal's score (after the formula changed).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import Field as PydanticField

from loomcrm.engine.fieldtypes import FieldType, FieldValueError
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.plugins import PluginCommand
from loomcrm.engine.runtime.context import Context

IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}")


class IbanType(FieldType):
    """An international bank account number, e.g. ``DE89 3704 0044 0532 0130 00``."""

    name = "iban"
    filter_ops = frozenset({"eq", "ne", "in", "isnull"})

    def column_type(self, field):
        return sa.String(34)

    def python_type(self, field) -> Any:
        return Annotated[str, PydanticField(pattern=IBAN.pattern, description="IBAN without spaces")]

    def parse(self, field, value):
        text = str(value).replace(" ", "").upper()
        if not IBAN.fullmatch(text):
            raise FieldValueError("iban", "is not an IBAN (two letters, two check digits, the account number)")
        digits = "".join(str(int(c, 36)) for c in text[4:] + text[:4])
        if int(digits) % 97 != 1:
            raise FieldValueError("iban", "has wrong check digits")
        return text


@hookimpl
def loom_field_types():
    return [IbanType()]


def score(amount: Decimal | None, stage: str) -> int:
    """0 for lost deals, 100 for won ones; open deals score by size (50 at 1 million)."""
    if stage in ("won", "lost"):
        return 100 if stage == "won" else 0
    size = float(amount or 0)
    return min(99, round(50 * size / 1_000_000)) if size < 2_000_000 else 99


@hookimpl
def loom_before_create(entity, data):
    if entity.name == "deal":
        data["score"] = score(data.get("amount"), data.get("stage") or "open")


@hookimpl
def loom_before_update(entity, old, changes):
    if entity.name == "deal" and ({"amount", "stage"} & set(changes)):
        merged = {**old, **changes}
        changes["score"] = score(merged.get("amount"), merged["stage"])


@hookimpl
def loom_permission_veto(entity, operation, record):
    if entity.name == "deal" and operation == "delete" and record.get("stage") == "won":
        return "won deals cannot be deleted (Acme keeps them for the books); mark a mistake as lost instead"
    return None


def rescore(args, loom) -> int:
    """Recompute every deal's score through the write pipeline (audited, channel cli)."""
    from loomcrm.engine.runtime.query import parse_list_params

    deal, changed, cursor = loom.entity("deal"), 0, None
    while True:
        params = [("limit", "500"), *([("cursor", cursor)] if cursor else [])]
        page = loom.records.list(deal, parse_list_params(deal, params), Context(channel="cli"))
        for record in page["data"]:
            amount = Decimal(record["amount"]) if record["amount"] is not None else None
            if score(amount, record["stage"]) != record["score"]:
                loom.records.update(deal, record["id"], {"score": score(amount, record["stage"])},
                                    Context(channel="cli"), trusted=True)
                changed += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    print(f"rescored {changed} deals")
    return 0


@hookimpl
def loom_commands():
    return [PluginCommand("rescore", "recompute every deal's score", rescore)]
