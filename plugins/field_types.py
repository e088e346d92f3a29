"""The built-in field types, registered through the ``loom_field_types`` hook (trylast)."""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import re
import zoneinfo
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import jsonschema
import phonenumbers
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from pydantic import Field as PydanticField

from loomcrm.engine.fieldtypes import FieldType, FieldValueError
from loomcrm.engine.hookspecs import hookimpl
from loomcrm.engine.manifest import localized
from loomcrm.generators.tables import JSONValue, UTCDateTime, id_type

__all__ = ["BUILTIN_TYPES", "loom_field_types"]

INT64 = (-(2**63), 2**63 - 1)
TRUE_WORDS = {"true", "1", "yes", "y", "on"}
FALSE_WORDS = {"false", "0", "no", "n", "off"}


def _bad(code: str, message: str) -> FieldValueError:
    return FieldValueError(code, message)


def _check_range(field, value):
    if field.min is not None and value < field.min:
        raise _bad("min", f"must be at least {field.min}")
    if field.max is not None and value > field.max:
        raise _bad("max", f"must be at most {field.max}")
    return value


class StringType(FieldType):
    name = "string"
    options = frozenset({"max_length", "pattern"})
    filter_ops = frozenset({"eq", "ne", "in", "contains", "startswith", "lt", "lte", "gt", "gte", "isnull"})
    default_length = 255

    def params(self, spec, app):
        return {"max_length": spec.max_length or self.default_length}

    def check(self, spec, params):
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                return [("pattern", "E129", f"invalid regular expression: {exc}",
                         "write a Python regular expression in quotes, e.g. pattern: '^[A-Z]{2}[0-9]+$'")]
        return []

    def column_type(self, field):
        return sa.String(field.params["max_length"])

    def python_type(self, field):
        return Annotated[str, PydanticField(max_length=field.params.get("max_length"), pattern=field.pattern)]

    def parse(self, field, value):
        if not isinstance(value, str):
            raise _bad("type", "must be text")
        if "\x00" in value:  # no database stores it the same way (PostgreSQL refuses it)
            raise _bad("type", "must not contain NUL characters (\\u0000)")
        limit = field.params.get("max_length")
        if limit and len(value) > limit:
            raise _bad("max_length", f"must be at most {limit} characters (got {len(value)})")
        if field.pattern and not re.search(field.pattern, value):
            raise _bad("pattern", f"must match the pattern {field.pattern}")
        return value


class TextType(StringType):
    name = "text"
    sortable = False

    def params(self, spec, app):
        return {"max_length": spec.max_length} if spec.max_length else {}

    def column_type(self, field):
        return sa.Text()


class IntegerType(FieldType):
    name = "integer"
    options = frozenset({"min", "max"})
    filter_ops = frozenset({"eq", "ne", "in", "lt", "lte", "gt", "gte", "isnull"})

    def bound(self, raw):
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(raw)
        return int(raw)

    def check(self, spec, params):
        return _check_min_max(self, spec)

    def column_type(self, field):
        return sa.BigInteger()

    def python_type(self, field):
        lo = field.min if field.min is not None else INT64[0]
        hi = field.max if field.max is not None else INT64[1]
        return Annotated[int, PydanticField(ge=lo, le=hi)]

    def parse(self, field, value):
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,19}\s*", value):
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad("type", "must be a whole number")
        if not INT64[0] <= value <= INT64[1]:
            raise _bad("max", "is out of the 64-bit range")
        return _check_range(field, value)


class DecimalType(FieldType):
    name = "decimal"
    options = frozenset({"min", "max", "precision", "scale"})
    filter_ops = IntegerType.filter_ops
    default_precision, default_scale = 18, 2

    def params(self, spec, app):
        return {
            "precision": spec.precision or self.default_precision,
            "scale": spec.scale if spec.scale is not None else self.default_scale,
        }

    def check(self, spec, params):
        if params["scale"] > params["precision"]:
            return [("scale", "E129", f"scale {params['scale']} cannot exceed precision {params['precision']}",
                     "lower 'scale' or raise 'precision' (the total number of digits)")]
        return _check_min_max(self, spec)

    def bound(self, raw):
        return decimal.Decimal(str(raw))

    def column_type(self, field):
        return sa.Numeric(field.params["precision"], field.params["scale"], asdecimal=True)

    def python_type(self, field):
        return Annotated[str, PydanticField(pattern=r"^-?\d+(\.\d+)?$", examples=["1250.00"])]

    def parse(self, field, value):
        scale, precision = field.params["scale"], field.params["precision"]
        if type(value) is float and -_EXACT.get(scale, 0.0) < value < _EXACT.get(scale, 0.0):
            text = f"{value:.{scale}f}"  # a double's digits to the scale (this runs for every decimal of every write)
            if float(text) == value:
                return self._bounded(field, decimal.Decimal(text), precision, scale)
        if isinstance(value, bool):
            raise _bad("type", "must be a number")
        try:
            number = decimal.Decimal(str(value).strip()) if isinstance(value, str | int | float) else value
        except decimal.InvalidOperation:
            raise _bad("type", "must be a number, e.g. 1250.00") from None
        if not isinstance(number, decimal.Decimal) or not number.is_finite():
            raise _bad("type", "must be a finite number")
        step, exact = _quantum(precision, scale)
        rounded = number.quantize(step, context=exact) if number.adjusted() < precision - scale else number
        if rounded != number:
            raise _bad("scale", f"must have at most {scale} decimal places")
        return self._bounded(field, rounded, precision, scale)

    @staticmethod
    def _bounded(field, number: decimal.Decimal, precision: int, scale: int) -> decimal.Decimal:
        if number.adjusted() >= precision - scale:
            raise _bad("precision", f"must have at most {precision - scale} digits before the decimal point")
        return number if field.min is None and field.max is None else _check_range(field, number)

    def dump(self, field, value):
        return None if value is None else str(value)


#: Per scale, the doubles below which ``f"{value:.<scale>f}"`` writes the same number as ``repr`` rounded to the
#: scale: at most 15 significant digits, which a double always gives back as they were.
_EXACT = {scale: 10.0 ** (15 - scale) for scale in range(16)}


@functools.cache
def _quantum(precision: int, scale: int) -> tuple[decimal.Decimal, decimal.Context]:
    """The step of a decimal field's last digit, and a context exact enough to round to it."""
    return decimal.Decimal(1).scaleb(-scale), decimal.Context(prec=precision + 2)


class MoneyType(DecimalType):
    name = "money"
    options = DecimalType.options | {"currency"}

    def params(self, spec, app):
        return {**super().params(spec, app), "currency": (spec.currency or "").upper() or None}

    def check(self, spec, params):
        problems = super().check(spec, params)
        if spec.currency is not None and not re.fullmatch(r"[A-Za-z]{3}", spec.currency):
            problems.append(("currency", "E129", f"'{spec.currency}' is not an ISO 4217 code", "e.g. EUR, USD, CNY"))
        return problems


class BooleanType(FieldType):
    name = "boolean"
    filter_ops = frozenset({"eq", "ne", "isnull"})

    def column_type(self, field):
        return sa.Boolean()

    def python_type(self, field):
        return bool

    def parse(self, field, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise _bad("type", "must be true or false")


class DateType(FieldType):
    name = "date"
    options = frozenset({"min", "max"})
    filter_ops = IntegerType.filter_ops

    def check(self, spec, params):
        return _check_min_max(self, spec)

    def bound(self, raw):
        return self.parse_plain(raw)

    def column_type(self, field):
        return sa.Date()

    def python_type(self, field):
        return dt.date

    def parse_plain(self, value, zone: dt.tzinfo = dt.UTC):
        if isinstance(value, dt.datetime):
            raise _bad("type", "must be a date without time, e.g. 2024-01-05")
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise _bad("type", "must be a date in ISO form, e.g. 2024-01-05")

    def parse(self, field, value):
        return _check_range(field, self.parse_plain(value, _zone(field.params.get("timezone"))))

    def dump(self, field, value):
        return None if value is None else value.isoformat()


class DateTimeType(DateType):
    """A moment in time, stored in UTC. Input without an offset is read in the app's time zone."""

    name = "datetime"

    def params(self, spec, app):
        return {"timezone": app.timezone}

    def column_type(self, field):
        return UTCDateTime()

    def python_type(self, field):
        return dt.datetime

    def parse_plain(self, value, zone: dt.tzinfo = dt.UTC):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            except ValueError:
                raise _bad("type", "must be a date and time in ISO form, e.g. 2024-01-05T09:30:00+08:00") from None
        if not isinstance(value, dt.datetime):
            raise _bad("type", "must be a date and time in ISO form, e.g. 2024-01-05T09:30:00+08:00")
        if value.tzinfo is None:
            value = value.replace(tzinfo=zone)  # wall-clock time where the CRM is used
        return value.astimezone(dt.UTC)

    def dump(self, field, value):
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat().replace("+00:00", "Z")


class EnumType(FieldType):
    name = "enum"
    options = frozenset({"options", "map"})
    filter_ops = frozenset({"eq", "ne", "in", "isnull"})

    def params(self, spec, app):
        result = []
        for opt in spec.options or []:
            value, label = (opt, None) if isinstance(opt, str) else (opt.value, opt.label)
            result.append({"value": value, "label": localized(label, app.locales, value)})
        return {"options": result}

    def check(self, spec, params):
        values = [o["value"] for o in params["options"]]
        if not values:
            return [("options", "E128", f"{self.name} needs at least one option", "e.g. options: [new, won, lost]")]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            return [("options", "E128", f"duplicate options: {', '.join(dupes)}", "list each option once")]
        if any(len(v) > 255 or not v.strip() for v in values):
            return [("options", "E128", "option values must be 1 to 255 characters", None)]
        return []

    def values(self, field):
        return [o["value"] for o in field.params["options"]]

    def column_type(self, field):
        return sa.String(255)

    def python_type(self, field):
        return Literal[tuple(self.values(field))]

    def parse(self, field, value):
        for option in field.params["options"]:  # no list built: this runs for every enum of every write
            if option["value"] == value:
                return value
        allowed = self.values(field)
        shown = ", ".join(allowed[:10]) + (", ..." if len(allowed) > 10 else "")
        raise _bad("option", f"'{value}' is not one of the options: {shown}")


class MultiEnumType(EnumType):
    name = "multi_enum"
    filter_ops = frozenset({"contains", "isnull"})
    sortable = False

    def column_type(self, field):
        return JSONValue()

    def python_type(self, field):
        return list[Literal[tuple(self.values(field))]]

    def parse(self, field, value):
        return _distinct_list(value, lambda item: super(MultiEnumType, self).parse(field, item), "options")


class EmailType(StringType):
    name = "email"
    options = frozenset()
    default_length = 254

    def python_type(self, field):
        return Annotated[str, PydanticField(max_length=254, examples=["ada@example.com"])]

    def params(self, spec, app):
        return {"max_length": 254}

    def parse(self, field, value):
        if not isinstance(value, str):
            raise _bad("type", "must be text")
        try:
            # the whole address is lower-cased: mail systems treat it so, and duplicates must match
            return validate_email(value.strip(), check_deliverability=False).normalized.lower()
        except EmailNotValidError as exc:
            raise _bad("email", f"is not a valid email address: {exc}") from None


class PhoneType(StringType):
    name = "phone"
    options = frozenset()

    def params(self, spec, app):
        return {"max_length": 32, "region": app.phone_region}

    def python_type(self, field):
        return Annotated[str, PydanticField(max_length=32, examples=["+8613812345678"])]

    def parse(self, field, value):
        if not isinstance(value, str):
            raise _bad("type", "must be text")
        region = field.params.get("region")
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            hint = "" if region else " (write it with its country code, e.g. +49 30 1234567)"
            raise _bad("phone", f"is not a phone number{hint}") from None
        if not phonenumbers.is_valid_number(number):
            raise _bad("phone", "is not a valid phone number for its country")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


class UrlType(StringType):
    name = "url"
    options = frozenset()

    def params(self, spec, app):
        return {"max_length": 2048}

    def python_type(self, field):
        return Annotated[str, PydanticField(max_length=2048, examples=["https://example.com"])]

    def parse(self, field, value):
        value = super().parse(field, value).strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or " " in value:
            raise _bad("url", "must be an http or https address, e.g. https://example.com")
        return value


class JSONType(FieldType):
    """Any JSON value; with ``json_schema:``, only values that satisfy that JSON Schema."""

    name = "json"
    options = frozenset({"json_schema"})
    filter_ops = frozenset({"isnull"})
    sortable = False

    def params(self, spec, app):
        return {"json_schema": spec.json_schema} if spec.json_schema is not None else {}

    def check(self, spec, params):
        if spec.json_schema is None:
            return []
        try:
            jsonschema.validators.validator_for(spec.json_schema).check_schema(spec.json_schema)
        except jsonschema.SchemaError as exc:
            return [("json_schema", "E129", f"json_schema is not a valid JSON Schema: {exc.message}",
                     "see https://json-schema.org/understanding-json-schema/")]
        return []

    def column_type(self, field):
        return JSONValue()

    def python_type(self, field):
        return Any

    def parse(self, field, value):
        if "\\u0000" in json.dumps(value):
            raise _bad("type", "must not contain NUL characters (\\u0000)")
        schema = field.params.get("json_schema")
        if schema is not None:
            error = jsonschema.exceptions.best_match(_json_validator(json.dumps(schema, sort_keys=True))
                                                     .iter_errors(value))
            if error is not None:
                where = "".join(f"[{p!r}]" for p in error.absolute_path)
                raise _bad("json_schema", f"{where + ': ' if where else ''}{error.message}")
        return value


@functools.lru_cache(maxsize=256)
def _json_validator(schema_text: str):
    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


class RefType(FieldType):
    """Many-to-one: a column ``<field>_id`` holding the id of a record of ``to``."""

    name = "ref"
    options = frozenset({"to", "on_delete", "related_name"})
    filter_ops = frozenset({"eq", "ne", "in", "isnull"})

    def params(self, spec, app):
        return {"to": spec.to, "on_delete": spec.on_delete or "restrict", "related_name": spec.related_name}

    def check(self, spec, params):
        if not spec.to:
            return [("type", "E111", "a ref field needs 'to: <entity>'", "name the entity it points at, e.g. to: account")]
        if params["on_delete"] == "set_null" and spec.required:
            return [("on_delete", "E129", "on_delete: set_null cannot be used on a required field",
                     "use restrict or cascade, or drop required")]
        return []

    def column_name(self, field):
        return f"{field.name}_id"

    def column_type(self, field):
        return id_type()

    def python_type(self, field):
        return Annotated[int, PydanticField(ge=1, le=INT64[1])]

    def parse(self, field, value):
        if isinstance(value, dict) and "id" in value:
            value = value["id"]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT64[1]:
            raise _bad("type", f"must be the id (a positive whole number) of a {field.params['to']}")
        return value


class RefsType(RefType):
    """Many-to-many: a generated join table; the API reads and writes a list of ids."""

    name = "refs"
    options = frozenset({"to", "related_name"})
    filter_ops = frozenset()
    sortable = False
    has_column = False

    def params(self, spec, app):
        return {"to": spec.to, "related_name": spec.related_name}

    def check(self, spec, params):
        problems = [] if spec.to else [
            ("type", "E111", "a refs field needs 'to: <entity>'", "name the entity it links to, e.g. to: account")
        ]
        if spec.unique:
            problems.append(("unique", "E126", "unique does not apply to a refs field",
                             "a record can link to each target once already; remove 'unique'"))
        return problems

    def column_name(self, field):
        return None

    def python_type(self, field):
        return list[Annotated[int, PydanticField(ge=1, le=INT64[1])]]

    def parse(self, field, value):
        return _distinct_list(value, lambda item: super(RefsType, self).parse(field, item),
                              f"{field.params['to']} ids")


BOUND_EXAMPLES = {"date": "2024-01-05", "datetime": "2024-01-05T09:30:00Z", "decimal": 9.99, "money": 9.99}


def _distinct_list(value, parse_item, what: str) -> list:
    """A list (or comma-separated text) of items, each parsed, duplicates dropped, order kept."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise _bad("type", f"must be a list of {what}")
    result = []
    for item in value:
        item = parse_item(item)
        if item not in result:
            result.append(item)
    return result


@functools.lru_cache(maxsize=64)
def _zone(name: str | None) -> dt.tzinfo:
    return zoneinfo.ZoneInfo(name) if name and name != "UTC" else dt.UTC


def _check_min_max(field_type, spec):
    problems, bounds = [], {}
    for key in ("min", "max"):
        raw = getattr(spec, key)
        if raw is None:
            continue
        try:
            bounds[key] = field_type.bound(raw)
        except (ValueError, TypeError, decimal.InvalidOperation):
            problems.append((key, "E112", f"{key} {raw!r} is not a valid {spec.type} value",
                             f"e.g. {key}: {BOUND_EXAMPLES.get(field_type.name, 0)}"))
    if len(bounds) == 2 and bounds["min"] > bounds["max"]:
        problems.append(("min", "E129", f"min {bounds['min']} is greater than max {bounds['max']}", "swap them"))
    return problems


BUILTIN_TYPES: tuple[FieldType, ...] = (
    StringType(), TextType(), IntegerType(), DecimalType(), MoneyType(), BooleanType(), DateType(),
    DateTimeType(), EnumType(), MultiEnumType(), EmailType(), PhoneType(), UrlType(), JSONType(),
    RefType(), RefsType(),
)


@hookimpl(trylast=True)
def loom_field_types():
    return list(BUILTIN_TYPES)
