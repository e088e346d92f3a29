"""Who is calling: web sessions (cookie) and personal API tokens (``Authorization: Bearer``).

Secrets are random, shown once, and stored only as SHA-256 hashes, so a leaked database holds no
usable credential and a lookup by hash compares no secret in Python. Sessions, tokens and failed
sign-ins live in the database: every worker process behind a load balancer sees the same state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..errors import Problem
from ..plugins import call_hook
from .access import Access, access_for
from .context import Context, utcnow

__all__ = ["Auth", "SESSION_COOKIE", "TOKEN_PREFIX"]

SESSION_COOKIE = "loom_session"
TOKEN_PREFIX = "loom_"
#: How long a worker trusts a token or session it has looked up; revocation reaches other workers
#: within this many seconds (at once in the worker that revoked it).
CACHE_SECONDS = 5.0


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewSecret:
    """A session or token just made: ``secret`` is shown to its owner once and never stored."""

    id: Any
    secret: str
    expires_at: dt.datetime | None


class Auth:
    """Sign-in, sign-out, tokens, and turning a request into a :class:`Context`."""

    def __init__(self, loom):
        from ..identity import Users

        self.loom = loom
        self.users = Users(loom, channel="api")
        tables = loom.metadata.tables
        self.sessions, self.tokens = tables["loom_session"], tables["loom_token"]
        self.failures, self.user_table = tables["loom_login_failure"], tables[loom.entity("user").table]
        self.settings = loom.manifest.auth
        self._cache: dict[str, tuple[float, int | None, Any]] = {}
        self._anonymous = access_for(loom.policies, loom.records.store, None, None)
        self._lock = threading.Lock()

    # --- requests --------------------------------------------------------------------------------
    def context(self, headers, cookies, *, channel: str = "api") -> Context:
        """The caller of a request; 401 when sign-in is required and the credentials are missing or bad."""
        if self.loom.pm.hook.loom_current_user.get_hookimpls():
            actor = call_hook(self.loom.pm, "loom_current_user", headers=headers, cookies=cookies)
            if actor:
                return self._plugin_user(int(actor[0]), channel)
        secret, kind = None, None
        authorization = headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            secret, kind = authorization[7:].strip(), "token"
        elif cookies.get(SESSION_COOKIE):
            secret, kind = cookies[SESSION_COOKIE], "session"
        actor, access = self._caller(kind, secret) if secret else (None, self._anonymous)
        if actor is None and (secret or self.settings["required"]):
            raise Problem(401, "Unauthorized", detail="sign in, or send 'Authorization: Bearer <token>' with a "
                          "valid API token" if not secret else "the session or token is invalid, expired or "
                          "revoked; sign in again", headers={"WWW-Authenticate": 'Bearer realm="loom"'})
        return Context(actor=actor, channel=channel, access=access, locale=self._locale(access, headers))

    def _locale(self, access: Access | None, headers) -> str | None:
        """The reader's language: the user's own (``user.locale``), else the first of the request's
        Accept-Language the app speaks, else None (the app's default)."""
        locales = self.loom.manifest.locales
        own = access.user.get("locale") if access is not None and access.user else None
        if own in locales:
            return own
        for part in headers.get("accept-language", "").split(","):
            tag = part.split(";")[0].strip().replace("_", "-")
            for candidate in (tag, tag.split("-")[0]):
                if candidate in locales:
                    return candidate
        return None

    def _plugin_user(self, actor: int, channel: str) -> Context:
        """A user a plugin identified: they must exist and be active."""
        users = self.user_table
        found, access = self._cached(f"plugin:{actor}", lambda conn: conn.execute(
            sa.select(users.c.id).where(users.c.id == actor, users.c.active.is_(True))).scalar())
        if found is None:
            raise Problem(401, "Unauthorized", detail="the signed-in user does not exist or is disabled")
        return Context(actor=found, channel=channel, access=access, locale=self._locale(access, {}))

    def _caller(self, kind: str, secret: str) -> tuple[int | None, Access | None]:
        """The user behind a secret and what they may do."""
        digest = _digest(secret)
        return self._cached(f"{kind}:{digest}", lambda conn: self._lookup(conn, kind, digest))

    def _cached(self, key: str, find) -> tuple[int | None, Access | None]:
        """``find(conn)`` -> the active user's id or None, and that user's Access, cached for
        :data:`CACHE_SECONDS` under ``key``."""
        hit = self._cache.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1], hit[2]
        with self.loom.engine.connect() as conn:
            actor = find(conn)
            access = access_for(self.loom.policies, self.loom.records.store, conn, actor) if actor else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + CACHE_SECONDS, actor, access)
        return actor, access

    def _lookup(self, conn: sa.Connection, kind: str, digest: str) -> int | None:
        users, now = self.user_table, utcnow()
        if kind == "token":
            t = self.tokens
            stmt = sa.select(t.c.user_id).where(t.c.secret_hash == digest, t.c.revoked_at.is_(None),
                                                sa.or_(t.c.expires_at.is_(None), t.c.expires_at > now))
            owner = t.c.user_id
        else:
            s = self.sessions
            stmt = sa.select(s.c.user_id).where(s.c.id == digest, s.c.expires_at > now)
            owner = s.c.user_id
        stmt = stmt.join(users, users.c.id == owner).where(users.c.active.is_(True))
        return conn.execute(stmt).scalar()

    def forget(self) -> None:
        """Drop cached look-ups (after a revocation or sign-out in this process)."""
        with self._lock:
            self._cache.clear()

    # --- sign-in -----------------------------------------------------------------------------------
    def login(self, username: str, password: str, address: str) -> tuple[dict, NewSecret]:
        """A new session for valid credentials. The same 401 for an unknown user and a wrong password;
        429 after too many failures for the account or the address."""
        keys = [f"user:{username.lower()}", f"addr:{address}"]
        self._refuse_if_locked(keys)
        user = self.users.authenticate(username, password)
        if user is None:
            self._count_failure(keys)
            raise Problem(401, "Unauthorized", detail="wrong username or password",
                          headers={"WWW-Authenticate": 'Bearer realm="loom"'})
        self._clear_failures(keys[:1])
        secret = secrets.token_urlsafe(32)
        expires = utcnow() + dt.timedelta(hours=self.settings["session_hours"])
        with self.loom.records.writing(Context(actor=user["id"])) as conn:
            conn.execute(self.sessions.insert().values(id=_digest(secret), user_id=user["id"], created_at=utcnow(),
                                                       expires_at=expires))
        user = self.loom.records.update(self.loom.entity("user"), user["id"], {"last_login_at": utcnow()},
                                        Context(actor=user["id"], channel="api"), trusted=True)
        return user, NewSecret(_digest(secret), secret, expires)

    def logout(self, session_secret: str | None, *, everywhere_for: int | None = None) -> None:
        with self.loom.records.writing(Context()) as conn:
            if everywhere_for is not None:
                conn.execute(self.sessions.delete().where(self.sessions.c.user_id == everywhere_for))
            elif session_secret:
                conn.execute(self.sessions.delete().where(self.sessions.c.id == _digest(session_secret)))
        self.forget()

    def _refuse_if_locked(self, keys: list[str]) -> None:
        window = dt.timedelta(minutes=self.settings["lockout_minutes"])
        f = self.failures
        with self.loom.engine.connect() as conn:
            rows = conn.execute(sa.select(f.c.count, f.c.window_start).where(f.c.key.in_(keys))).all()
        now = utcnow()
        for count, start in rows:
            if count >= self.settings["max_failures"] and start + window > now:
                retry = int((start + window - now).total_seconds()) + 1
                raise Problem(429, "Too many failed sign-ins", detail=f"try again in {retry} seconds",
                              headers={"Retry-After": str(retry)})

    def _count_failure(self, keys: list[str]) -> None:
        f, now = self.failures, utcnow()
        window = dt.timedelta(minutes=self.settings["lockout_minutes"])
        with self.loom.records.writing(Context()) as conn:
            for key in keys:
                row = conn.execute(sa.select(f.c.count, f.c.window_start).where(f.c.key == key)).first()
                if row is None:
                    conn.execute(f.insert().values(key=key, window_start=now, count=1))
                elif row.window_start + window <= now:
                    conn.execute(f.update().where(f.c.key == key).values(window_start=now, count=1))
                else:
                    conn.execute(f.update().where(f.c.key == key).values(count=f.c.count + 1))

    def _clear_failures(self, keys: list[str]) -> None:
        with self.loom.records.writing(Context()) as conn:
            conn.execute(self.failures.delete().where(self.failures.c.key.in_(keys)))

    # --- API tokens --------------------------------------------------------------------------------
    def create_token(self, user_id: int, name: str, days: int | None = None) -> NewSecret:
        if not name.strip() or len(name) > 100:
            raise Problem(422, "Validation failed", errors=[
                {"field": "name", "code": "required", "message": "a token needs a name of 1 to 100 characters"}])
        if days is not None and not 1 <= days <= 3650:
            raise Problem(422, "Validation failed", errors=[
                {"field": "days", "code": "range", "message": "days must be from 1 to 3650"}])
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = utcnow() + dt.timedelta(days=days) if days else None
        with self.loom.records.writing(Context(actor=user_id)) as conn:
            token_id = conn.execute(self.tokens.insert().values(
                user_id=user_id, name=name, secret_hash=_digest(secret), created_at=utcnow(), expires_at=expires,
            ).returning(self.tokens.c.id)).scalar_one()
        return NewSecret(token_id, secret, expires)

    def list_tokens(self, user_id: int) -> list[dict[str, Any]]:
        t = self.tokens
        with self.loom.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.id, t.c.name, t.c.created_at, t.c.expires_at, t.c.revoked_at)
                                .where(t.c.user_id == user_id).order_by(t.c.id)).all()
        return [{"id": r.id, "name": r.name, "created_at": _iso(r.created_at), "expires_at": _iso(r.expires_at),
                 "revoked": r.revoked_at is not None} for r in rows]

    def revoke_token(self, user_id: int | None, token_id: int) -> None:
        """Revoke a token of ``user_id`` (or any token, for ``user_id=None``: the command line)."""
        t = self.tokens
        condition = t.c.id == token_id if user_id is None else sa.and_(t.c.id == token_id, t.c.user_id == user_id)
        with self.loom.records.writing(Context(actor=user_id)) as conn:
            done = conn.execute(t.update().where(condition, t.c.revoked_at.is_(None)).values(revoked_at=utcnow()))
        if done.rowcount == 0:
            raise Problem(404, "Not found", detail=f"no active token {token_id}")
        self.forget()


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
