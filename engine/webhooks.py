"""Webhook subscriptions: compiled from ``webhooks:``; delivered from the outbox by ``loom worker``."""

from __future__ import annotations

__all__ = ["compile_webhooks"]


def compile_webhooks(loaded, entities, errors) -> dict:
    """``webhooks:`` as :class:`Webhook` objects by name (placeholder: none yet)."""
    return {}
