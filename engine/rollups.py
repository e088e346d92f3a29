"""Rollup fields: summaries of child records, computed in SQL and kept current on every child write."""

from __future__ import annotations

__all__ = ["add_rollups"]


def add_rollups(loaded, entities, errors) -> dict:
    """Entities with their ``rollup:`` and ``default_expr:`` fields compiled (placeholder)."""
    return entities
