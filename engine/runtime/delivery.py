"""Delivering the outbox: claim due events, POST them, record each attempt, retry with backoff.

Several worker processes may run at once: a worker *claims* a due row with a conditional UPDATE
(``claimed_until`` empty or past; the row counts tell who won) before sending it, so no event is sent by
two workers at a time. Sending happens outside any transaction. The outcome is recorded only while the
claim is still the worker's own (``claimed_until`` unchanged): a worker whose claim ran out mid-send,
or whose event was deleted meanwhile (with its subscription), records nothing. Delivery is at least
once: a worker that dies after the receiver answered but before recording it sends the event again
once its claim runs out, with the same ``X-Loom-Delivery`` key, so receivers can drop duplicates.

A row goes to the URL, with the secret and retry settings, that its subscription has when it is sent,
so a corrected ``url:`` reaches the events already queued. Delivered events and their log are purged
after :data:`KEEP_DELIVERED_DAYS`, given-up ones after :data:`KEEP_DEAD_DAYS` (:func:`purge_outbox`).

Each request is signed when the subscription has a secret::

    X-Loom-Signature: sha256=<hex HMAC-SHA256 of "<X-Loom-Timestamp>.<body>" with the secret>
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from ..webhooks import DEFAULTS, check_address, private_allowed
from .context import Context, utcnow
from .outbox import api_subscription_id

__all__ = ["deliver_due", "purge_outbox", "sign", "Target", "MAX_DELAY_SECONDS", "KEEP_DELIVERED_DAYS",
           "KEEP_DEAD_DAYS"]

#: Retries wait ``backoff_seconds * 2 ** (attempts - 1)``, but never longer than this (one day).
MAX_DELAY_SECONDS = 24 * 3600.0
#: A claim lasts the timeouts of the events before it in the batch, plus this margin.
CLAIM_MARGIN_SECONDS = 30.0
#: At most this much of a failing receiver's answer is kept in the delivery log.
ERROR_TEXT = 300
USER_AGENT = "Loom-Webhooks/1"
#: Days delivered events (and their log) are kept, and events given up on (counted from when queued).
KEEP_DELIVERED_DAYS = 30
KEEP_DEAD_DAYS = 90

Log = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where and how one outbox row is sent; ``problem`` says why it cannot be (now, or ever:
    ``final``). ``public_only``: the URL must lead to a public address (an API subscription's, unless
    the operator allows private ones)."""

    url: str = ""
    public_only: bool = False
    secret: str | None = None
    max_attempts: int = DEFAULTS["max_attempts"]
    backoff_seconds: float = DEFAULTS["backoff_seconds"]
    timeout_seconds: float = DEFAULTS["timeout_seconds"]
    problem: str | None = None
    final: bool = False


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Loom-Signature`` value of a request."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def deliver_due(loom, *, now: dt.datetime | None = None, limit: int = 50, log: Log | None = None) -> dict[str, int]:
    """Send up to ``limit`` due events; returns how many were ``delivered``, are ``retrying`` and
    were given up (``dead``). ``now`` moves the clock (tests); ``log`` gets a line per failure."""
    start, base = time.monotonic(), now or utcnow()

    def clock() -> dt.datetime:
        return base + dt.timedelta(seconds=time.monotonic() - start)

    counts = {"delivered": 0, "retrying": 0, "dead": 0}
    for row, target, until in _claim(loom, base, limit):
        outcome = _deliver(loom, row, target, until, clock, log)
        if outcome is not None:
            counts[outcome] += 1
    return counts


# --- claiming ----------------------------------------------------------------------------------------
def _claim(loom, now: dt.datetime, limit: int) -> list[tuple]:
    """Due rows this worker now holds, each with its :class:`Target` and the end of its claim, oldest
    first."""
    outbox = loom.metadata.tables["loom_outbox"]
    due = sa.and_(outbox.c.status == "pending", outbox.c.next_attempt_at <= now,
                  sa.or_(outbox.c.claimed_until.is_(None), outbox.c.claimed_until < now))
    with loom.records.writing(Context(channel="python")) as conn:
        find = sa.select(outbox).where(due).order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit)
        if conn.dialect.name == "postgresql":  # leave rows another worker is claiming to it
            find = find.with_for_update(skip_locked=True)
        claimed, lease = [], CLAIM_MARGIN_SECONDS
        for row in conn.execute(find).all():
            target = _target(loom, conn, row)
            lease += target.timeout_seconds
            until = now + dt.timedelta(seconds=lease)
            if conn.execute(outbox.update().where(outbox.c.id == row.id, due).values(claimed_until=until)).rowcount:
                claimed.append((row, target, until))
    return claimed


def _target(loom, conn, row) -> Target:
    """The URL, secret and retry settings of a row's subscription, as they are now."""
    name = row.subscription
    subscription_id = api_subscription_id(name)
    if subscription_id is not None:
        subscriptions = loom.metadata.tables["loom_webhook"]
        found = conn.execute(sa.select(subscriptions.c.url, subscriptions.c.secret, subscriptions.c.active)
                             .where(subscriptions.c.id == subscription_id)).first()
        if found is None or not found.active:
            return Target(url=row.url, problem="the subscription was deleted", final=True)
        return Target(url=found.url, secret=found.secret, public_only=not private_allowed())
    webhook = loom.manifest.webhooks.get(name)
    if webhook is None:
        return Target(url=row.url, problem=f"webhook '{name}' is no longer in the config", final=True)
    settings = {"url": webhook.url, "max_attempts": webhook.max_attempts, "backoff_seconds": webhook.backoff_seconds,
                "timeout_seconds": webhook.timeout_seconds}
    if webhook.secret_env is None:
        return Target(**settings)
    secret = os.environ.get(webhook.secret_env)
    if not secret:  # never send unsigned what the config says to sign
        return Target(**settings, problem=f"environment variable {webhook.secret_env} is not set (the secret "
                      f"of webhook '{name}'); set it where 'loom worker' runs")
    return Target(**settings, secret=secret)


# --- sending -------------------------------------------------------------------------------------------
def _deliver(loom, row, target: Target, until: dt.datetime, clock: Callable[[], dt.datetime],
             log: Log | None) -> str | None:
    """Send one claimed row and record the attempt; returns ``delivered``, ``retrying`` or ``dead``, or
    None when the claim was lost meanwhile (the outcome is then not recorded)."""
    started = time.monotonic()
    status, error = None, target.problem
    if error is None and target.public_only:
        error = check_address(target.url)
    if error is None:
        body = json.dumps(row.payload, ensure_ascii=False, separators=(",", ":")).encode()
        status, error = post(target.url, body, _headers(row, target, body), target.timeout_seconds)
    duration_ms = int((time.monotonic() - started) * 1000)
    attempts = row.attempts + 1  # the claim held: nobody has recorded an attempt since the row was read
    at = clock()
    if error is None:
        outcome, changes = "delivered", {"status": "delivered", "delivered_at": at, "last_error": None}
    elif target.final or attempts >= target.max_attempts:
        outcome, changes = "dead", {"status": "dead", "last_error": error}
    else:
        delay = min(target.backoff_seconds * 2 ** (attempts - 1), MAX_DELAY_SECONDS)
        outcome, changes = "retrying", {"next_attempt_at": at + dt.timedelta(seconds=delay), "last_error": error}
    tables = loom.metadata.tables
    outbox, deliveries = tables["loom_outbox"], tables["loom_webhook_delivery"]
    with loom.records.writing(Context(channel="python")) as conn:
        still_mine = outbox.update().where(outbox.c.id == row.id, outbox.c.status == "pending",
                                           outbox.c.claimed_until == until)
        if conn.execute(still_mine.values(attempts=outbox.c.attempts + 1, claimed_until=None,
                                          **changes)).rowcount != 1:
            outcome = None
        else:
            conn.execute(deliveries.insert().values(outbox_id=row.id, attempt=attempts, at=at, status_code=status,
                                                    error=error, duration_ms=duration_ms))
    if log is not None and outcome is None:
        log(f"webhook {row.subscription}: {row.event} {row.record_id}: not recorded, the event was deleted or "
            "claimed by another worker while it was sent")
    elif log is not None and error is not None:
        then = "given up" if outcome == "dead" else f"retry {attempts + 1} of {target.max_attempts} at " \
            f"{changes['next_attempt_at'].isoformat(timespec='seconds')}"
        log(f"webhook {row.subscription}: {row.event} {row.record_id} to {target.url} failed ({error}); {then}")
    return outcome


def purge_outbox(loom, *, now: dt.datetime | None = None, delivered_days: float = KEEP_DELIVERED_DAYS,
                 dead_days: float = KEEP_DEAD_DAYS) -> int:
    """Delete events delivered more than ``delivered_days`` ago and those given up on that were queued
    more than ``dead_days`` ago, with their delivery log; returns how many events went."""
    now = now or utcnow()
    tables = loom.metadata.tables
    outbox, deliveries = tables["loom_outbox"], tables["loom_webhook_delivery"]
    old = sa.or_(sa.and_(outbox.c.status == "delivered",
                         outbox.c.delivered_at < now - dt.timedelta(days=delivered_days)),
                 sa.and_(outbox.c.status == "dead", outbox.c.created_at < now - dt.timedelta(days=dead_days)))
    with loom.records.writing(Context(channel="python")) as conn:
        conn.execute(deliveries.delete().where(deliveries.c.outbox_id.in_(sa.select(outbox.c.id).where(old))))
        return conn.execute(outbox.delete().where(old)).rowcount


def _headers(row, target: Target, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))  # the real time: receivers compare it with their clock
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Loom-Event": row.event,
               "X-Loom-Delivery": row.key, "X-Loom-Timestamp": timestamp}
    if target.secret:
        headers["X-Loom-Signature"] = sign(target.secret, timestamp, body)
    return headers


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: following it would resend the event (as GET, or elsewhere)."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """POST ``body``; returns the status code (None without an answer) and the error (None for 2xx)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(64 * 1024)
            return response.status, None
    except urllib.error.HTTPError as exc:
        text = _text(exc)
        where = f" to {exc.headers.get('Location')}" if 300 <= exc.code < 400 else ""
        return exc.code, f"HTTP {exc.code}{where}" + (f": {text}" if text else "")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return None, f"no answer within {timeout:g} seconds"
        return None, f"could not connect: {exc.reason}"
    except TimeoutError:
        return None, f"no answer within {timeout:g} seconds"
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _text(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read(ERROR_TEXT).decode("utf-8", "replace").strip()
    except Exception:
        return ""
