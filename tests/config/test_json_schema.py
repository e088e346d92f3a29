"""The committed JSON Schema of the config language: up to date, and true to the examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from loomcrm.engine.loader import parse_yaml
from loomcrm.schemas import SCHEMA_FILE, config_json_schema_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / SCHEMA_FILE
EXAMPLE_FILES = sorted((ROOT / "examples").glob("**/*.yaml"))
SCHEMA_COMMENT = re.compile(r"^# yaml-language-server: \$schema=(\S+)", re.MULTILINE)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def yaml_data(path: Path):
    errors: list = []
    source = parse_yaml(path.name, path.read_text(encoding="utf-8"), errors)
    assert not errors, "\n".join(map(str, errors))
    return source.data


def test_committed_schema_matches_the_spec_models():
    committed = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
    assert committed == config_json_schema_text(), (
        f"schemas/{SCHEMA_FILE} is stale: the spec models in schemas/ changed. "
        "Run `make schema` and commit the result."
    )


def test_examples_exist_to_be_validated():
    assert any(p.name == "loom.yaml" for p in EXAMPLE_FILES)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_file_validates_against_the_schema(validator, path):
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml_data(path))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_file_points_editors_at_the_schema(path):
    match = SCHEMA_COMMENT.search(path.read_text(encoding="utf-8"))
    assert match, f"{path.name} should start with '# yaml-language-server: $schema=<path to {SCHEMA_FILE}>'"
    assert (path.parent / match.group(1)).resolve() == SCHEMA_PATH


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"entities": {"account": {"fields": {"name": {"type": "string", "requird": True}}}}}, "requird"),
        ({"entities": {"account": {"fields": {"name": {"label": "Name"}}}}}, "'type' is a required property"),
        ({"entities": {"account": {"label": ["Account"]}}}, "['Account']"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(validator, data, complaint):
    messages = [e.message for e in validator.iter_errors(data)]
    assert any(complaint in m for m in messages), messages
