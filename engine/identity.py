"""Users, teams and passwords: the Python API behind ``loom user`` and ``loom team``.

Users and teams are records of Loom's own ``user`` and ``team`` entities, so every change goes
through the same pipeline (validation, hooks, audit trail). Passwords are argon2 hashes in a table
of their own that no API exposes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import argon2
import sqlalchemy as sa

from .app import Loom
from .errors import Problem
from .runtime.context import Context
from .runtime.query import parse_list_params

__all__ = ["Users", "PasswordRejected", "hash_password", "verify_password", "MIN_PASSWORD_LENGTH"]

MIN_PASSWORD_LENGTH = 10
_HASHER = argon2.PasswordHasher()
#: Verified when the user does not exist, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("loom: not a password of anyone")


class PasswordRejected(ValueError):
    """A password that does not meet the rules; the message says which."""


def check_password(username: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordRejected(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if username.lower() in password.lower():
        raise PasswordRejected("a password must not contain the username")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time verification; False for a missing hash (after the same amount of work)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


class Users:
    """Manage users and teams of one Loom app. ``channel`` is what the audit trail records."""

    def __init__(self, loom: Loom, *, actor: int | None = None, channel: str = "cli"):
        self.loom = loom
        self.user = loom.entity("user")
        self.team = loom.entity("team")
        self.credentials = loom.metadata.tables["loom_credential"]
        self.actor, self.channel = actor, channel

    def _ctx(self) -> Context:
        return Context(actor=self.actor, channel=self.channel)

    def _find(self, entity, field: str, value: str) -> dict[str, Any]:
        query = parse_list_params(entity, [(f"filter[{field}]", value), ("limit", "2")])
        found = self.loom.records.list(entity, query, self._ctx())["data"]
        if not found:
            raise Problem(404, "Not found", detail=f"no {entity.name} '{value}'")
        return found[0]

    def find(self, username: str) -> dict[str, Any]:
        return self._find(self.user, "username", username)

    def find_team(self, name: str) -> dict[str, Any]:
        return self._find(self.team, "name", name)

    # --- users ---------------------------------------------------------------------------------
    def create(self, username: str, password: str | None = None, **fields: Any) -> dict[str, Any]:
        """Create a user; with ``password``, also its credential (checked against the rules first)."""
        if password is not None:
            check_password(username, password)
        user = self.loom.records.create(self.user, {"username": username, **fields}, self._ctx())
        if password is not None:
            self._store_password(user["id"], password)
        return user

    def set_password(self, username: str, password: str) -> None:
        check_password(username, password)
        self._store_password(self.find(username)["id"], password)

    def _store_password(self, user_id: int, password: str) -> None:
        table = self.credentials
        values = {"password_hash": hash_password(password), "changed_at": dt.datetime.now(dt.UTC)}
        with self.loom.records.writing(self._ctx()) as conn:
            if conn.execute(table.update().where(table.c.user_id == user_id).values(values)).rowcount == 0:
                conn.execute(table.insert().values(user_id=user_id, **values))

    def set_active(self, username: str, active: bool) -> dict[str, Any]:
        user = self.find(username)
        return self.loom.records.update(self.user, user["id"], {"active": active}, self._ctx())

    def list(self) -> list[dict[str, Any]]:
        query = parse_list_params(self.user, [("sort", "username"), ("limit", "500")])
        return self.loom.records.list(self.user, query, self._ctx())["data"]

    def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The active user with these credentials, or None. Takes as long whether or not the user exists."""
        user_table = self.loom.metadata.tables[self.user.table]
        with self.loom.engine.connect() as conn:
            row = conn.execute(
                sa.select(user_table.c.id, user_table.c.active, self.credentials.c.password_hash)
                .select_from(user_table.outerjoin(self.credentials, self.credentials.c.user_id == user_table.c.id))
                .where(user_table.c.username == username)).first()
        ok = verify_password(row.password_hash if row else None, password)
        if not (ok and row.active):
            return None
        return self.loom.records.get(self.user, row.id, self._ctx())

    # --- teams ---------------------------------------------------------------------------------
    def create_team(self, name: str, manager: str | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"name": name}
        if manager:
            data["manager"] = self.find(manager)["id"]
        return self.loom.records.create(self.team, data, self._ctx())

    def add_member(self, team: str, username: str) -> dict[str, Any]:
        team_id, user = self.find_team(team)["id"], self.find(username)
        teams = [*user["teams"], team_id] if team_id not in user["teams"] else user["teams"]
        return self.loom.records.update(self.user, user["id"], {"teams": teams}, self._ctx())

    def remove_member(self, team: str, username: str) -> dict[str, Any]:
        team_id, user = self.find_team(team)["id"], self.find(username)
        teams = [t for t in user["teams"] if t != team_id]
        return self.loom.records.update(self.user, user["id"], {"teams": teams}, self._ctx())

    def teams(self) -> list[dict[str, Any]]:
        query = parse_list_params(self.team, [("sort", "name"), ("limit", "500")])
        return self.loom.records.list(self.team, query, self._ctx())["data"]
