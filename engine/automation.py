"""Workflows, automations and schedules, compiled from ``workflows:``, ``automations:``, ``schedules:``."""

from __future__ import annotations

__all__ = ["compile_automation"]


def compile_automation(loaded, entities, roles, pm, errors) -> tuple[dict, dict, dict]:
    return {}, {}, {}
