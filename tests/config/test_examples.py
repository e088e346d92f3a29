"""Every example project under examples/ compiles: the examples are part of the documentation."""

from __future__ import annotations

from pathlib import Path

import pytest

from loomcrm.engine.compiler import compile_project
from loomcrm.generators.tables import build_metadata

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = sorted(p.parent for p in (ROOT / "examples").glob("**/loom.yaml"))


def test_there_are_example_projects():
    assert PROJECTS


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_example_project_compiles_into_tables(project, monkeypatch):
    monkeypatch.delenv("LOOM_DATABASE_URL", raising=False)
    manifest, _ = compile_project(project)
    assert manifest.entities
    metadata = build_metadata(manifest)
    assert set(manifest.entities) <= set(metadata.tables)
