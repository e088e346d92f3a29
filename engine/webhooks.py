"""Webhook subscriptions: compiled from ``webhooks:``; delivered from the outbox by ``loom worker``.

An event is named ``<entity>.<word>``: ``created``, ``updated``, ``deleted`` and ``transitioned`` are
Loom's own; a ``webhook`` action may emit any other word (``opportunity.won``). A subscription names
the events it wants, or ``<entity>.*`` for every event of an entity.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loomcrm.schemas.automation import WebhookSpec

from .errors import ConfigError, did_you_mean
from .expressions import Expression, ExpressionError, compile_expression
from .manifest import Entity
from .names import check_identifier

__all__ = ["Webhook", "compile_webhooks", "check_event", "check_url", "check_address", "event_entity",
           "emitted_events", "private_allowed", "RECORD_EVENTS", "DEFAULTS", "ALLOW_PRIVATE_ENV"]

#: The events every entity has, emitted by the write pipeline.
RECORD_EVENTS = ("created", "updated", "deleted", "transitioned")
EVENT = re.compile(r"^([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*|\*)$")
#: How alike a word must be to a known one to be taken for its typo: 'crated' is, 'closed' is not.
TYPO = 0.8
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Retry settings of subscriptions made through the API (those of ``webhooks:`` default the same).
DEFAULTS = {key: WebhookSpec.model_fields[key].default for key in ("max_attempts", "backoff_seconds",
                                                                     "timeout_seconds")}
#: Set to 1 to let subscriptions made through the API send to private addresses (see :func:`check_address`).
ALLOW_PRIVATE_ENV = "LOOM_WEBHOOKS_ALLOW_PRIVATE"


@dataclass(frozen=True)
class Webhook:
    """Whoever wants events: one ``webhooks:`` entry, checked, or a subscription made through the API
    (named ``api:<id>``, with ``run_as_id`` and the defaults).

    :ivar events: event names, ``<entity>.*`` for all of an entity's.
    :ivar where: CEL over ``record`` (and ``old``, ``now``, ``today``); None: every record.
    :ivar secret_env: environment variable holding the signing secret, read by the worker at delivery.
    :ivar run_as: username whose field and row security shapes (or withholds) each payload.
    :ivar run_as_id: the same by user id: the creator of an API subscription.
    :ivar source: ``file:line:col`` of the entry.
    """

    name: str
    url: str
    events: tuple[str, ...]
    where: Expression | None = None
    secret_env: str | None = None
    run_as: str | None = None
    max_attempts: int = DEFAULTS["max_attempts"]
    backoff_seconds: float = DEFAULTS["backoff_seconds"]
    timeout_seconds: float = DEFAULTS["timeout_seconds"]
    source: str = ""
    run_as_id: int | None = None

    def wants(self, event: str, entity: str) -> bool:
        return event in self.events or f"{entity}.*" in self.events


def event_entity(event: str) -> str:
    """``account`` of ``account.created``."""
    return event.partition(".")[0]


def check_url(url: Any) -> str | None:
    """Why ``url`` cannot receive webhooks, or None when it can."""
    if not isinstance(url, str):
        return "the url must be text"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # a port out of range or not a number raises ValueError
    except ValueError as exc:
        return f"'{url}' is not a URL Loom can send to: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"'{url}' is not an http(s) URL with a host"
    if port == 0:
        return f"'{url}' is not a URL Loom can send to: port 0"
    return None


def private_allowed() -> bool:
    """Whether the operator lets API subscriptions send to private addresses (``LOOM_WEBHOOKS_ALLOW_PRIVATE=1``)."""
    return os.environ.get(ALLOW_PRIVATE_ENV) == "1"


def check_address(url: str) -> str | None:
    """Why ``url`` (checked by :func:`check_url`) may not receive what an API subscription sends, else None.

    Anyone with an API token may subscribe, so the server must not become their way into its own
    network: loopback, private, link-local, multicast, reserved and unspecified addresses are refused,
    whether written as such or what the host name resolves to now. A name that does not resolve passes
    (sending to it fails anyway).
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:  # a name
        literal = None
    if literal is not None:
        return None if _public(literal) else f"address not allowed: {host} is not a public address"
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = {info[4][0] for info in found}
    refused = sorted(a for a in addresses if not _public(ipaddress.ip_address(a.partition("%")[0])))  # fe80::1%eth0
    if refused:
        return f"address not allowed: {host} resolves to {', '.join(refused)}, not a public address"
    return None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
                or address.is_reserved or address.is_unspecified)


def check_event(event: Any, entities: Mapping[str, Entity], custom: Iterable[str] = ()) -> tuple[str, str] | None:
    """``(message, hint)`` when ``event`` names no event Loom can send, else None.

    The word after the entity is free (a ``webhook`` action may emit any), except that a near miss of
    a known word (``account.crated``) is taken for the typo it almost certainly is.
    """
    if not isinstance(event, str) or not EVENT.match(event):
        return (f"'{event}' is not an event name",
                "write <entity>.<event>, e.g. account.created, opportunity.won or account.*")
    entity, _, word = event.partition(".")
    if entity not in entities:
        return (f"event '{event}' names entity '{entity}', which does not exist",
                did_you_mean(entity, entities) or f"entities: {', '.join(sorted(entities))}")
    known = {*RECORD_EVENTS, *(e.partition(".")[2] for e in custom if event_entity(e) == entity)}
    near = _typo_of(word, sorted(known)) if word not in known and word != "*" else None
    if near:
        return (f"event '{event}' is neither one of Loom's ({', '.join(RECORD_EVENTS)}) nor emitted by a "
                "webhook action", f"did you mean '{entity}.{near}'?")
    return None


def _typo_of(word: str, known: list[str]) -> str | None:
    """The known word ``word`` is a slip of the keyboard for (letters swapped, or a close spelling)."""
    for candidate in known:
        if len(candidate) == len(word):
            differ = [i for i, (a, b) in enumerate(zip(candidate, word, strict=True)) if a != b]
            if len(differ) == 2 and differ[1] == differ[0] + 1 and candidate[differ[0]] == word[differ[1]] \
                    and candidate[differ[1]] == word[differ[0]]:
                return candidate
    near = difflib.get_close_matches(word, known, n=1, cutoff=TYPO)
    return near[0] if near else None


def compile_webhooks(loaded, entities: dict[str, Entity], errors: list[ConfigError]) -> dict[str, Webhook]:
    """``webhooks:`` as :class:`Webhook` objects by name; every problem is added to ``errors`` (E140,
    E135 for the ``where`` expression) with the place it was written."""
    custom = emitted_events(loaded.tree)
    result = {}
    for name, spec in loaded.named["webhooks"].items():
        webhook = _compile_one(loaded, name, spec, entities, custom, errors)
        if webhook is not None:
            result[name] = webhook
    return result


def _compile_one(loaded, name: str, spec: WebhookSpec, entities, custom, errors) -> Webhook | None:
    count = len(errors)

    def error(path: tuple, message: str, hint: str | None = None, code: str = "E140") -> None:
        errors.append(ConfigError(loaded.locate(("webhooks", name, *path)), code, f"webhook '{name}': {message}",
                                  hint))

    bad_name = check_identifier(name, "webhook", frozenset())
    if bad_name:  # the name is kept in the outbox, and 'api:<id>' belongs to API subscriptions
        errors.append(ConfigError(loaded.locate(("webhooks", name), key=True), *bad_name))
    problem = check_url(spec.url)
    if problem:
        error(("url",), problem, "e.g. https://hooks.example.com/loom")
    for i, event in enumerate(spec.events):
        found = check_event(event, entities, custom)
        if found:
            error(("events", i), *found)
    if spec.secret_env is not None and not ENV_NAME.match(spec.secret_env):
        error(("secret_env",), f"'{spec.secret_env}' is not an environment variable name",
              "name the variable, e.g. secret_env: CRM_WEBHOOK_SECRET (never the secret itself)")
    where = _where(spec, entities, error) if len(errors) == count else None
    if len(errors) > count:
        return None
    return Webhook(name=name, url=spec.url, events=tuple(dict.fromkeys(spec.events)), where=where,
                   secret_env=spec.secret_env, run_as=spec.run_as, max_attempts=spec.max_attempts,
                   backoff_seconds=spec.backoff_seconds, timeout_seconds=spec.timeout_seconds,
                   source=str(loaded.locate(("webhooks", name), key=True)))


def _where(spec: WebhookSpec, entities, error) -> Expression | None:
    """The compiled ``where``: it reads one entity's records, so all events must be of that entity."""
    if spec.where is None:
        return None
    names = sorted({event_entity(e) for e in spec.events})
    if len(names) != 1:
        error(("where",), f"'where' reads the records of one entity, but the events are of {', '.join(names)}",
              "split the webhook in one per entity, each with its own 'where'")
        return None
    try:
        expression = compile_expression(spec.where, entities[names[0]], entities["user"])
    except ExpressionError as exc:
        error(("where",), exc.message, exc.hint, code="E135")
        return None
    if "user" in expression.reads:
        error(("where",), "'where' cannot read 'user': events are not sent on behalf of a user",
              "test the record: record.<field>, old.<field>, now and today", code="E135")
        return None
    return expression


def emitted_events(tree: Any) -> set[str]:
    """Events the ``webhook`` actions of the merged config (every file) emit: ``- webhook: {event:
    opportunity.won}`` or ``- webhook: opportunity.won``."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            action = node.get("webhook")
            event = action.get("event") if isinstance(action, dict) else action
            if isinstance(event, str):
                found.add(event)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    if isinstance(tree, dict):
        for key in ("workflows", "automations", "schedules"):
            walk(tree.get(key))
    return found
