"""The config contract: pydantic models that mirror Loom's YAML files exactly.

Every file Loom reads (the project file ``loom.yaml`` and the files it includes) validates against
:class:`ConfigFileSpec`. The JSON Schema generated from these models is committed as
``schemas/loom.schema.json`` so editors can autocomplete YAML.
"""

from .entity import (
    EntitySpec,
    FieldSpec,
    IndexSpec,
    Label,
    OptionSpec,
)
from .project import AppSpec, ConfigFileSpec, DatabaseSpec

__all__ = [
    "AppSpec",
    "ConfigFileSpec",
    "DatabaseSpec",
    "EntitySpec",
    "FieldSpec",
    "IndexSpec",
    "Label",
    "OptionSpec",
]


SCHEMA_FILE = "loom.schema.json"


def config_json_schema() -> dict:
    """The JSON Schema of every Loom config file, as committed in ``schemas/loom.schema.json``."""
    schema = ConfigFileSpec.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://loomcrm.dev/schemas/loom.schema.json"
    schema["title"] = "Loom config file"
    return schema


def config_json_schema_text() -> str:
    import json

    return json.dumps(config_json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


__all__ += ["SCHEMA_FILE", "config_json_schema", "config_json_schema_text"]
