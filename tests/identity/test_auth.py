"""Signing in: sessions, API tokens, revocation, expiry, rate limits, and the 401 every anonymous
API request gets."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient

from loomcrm.engine.identity import Users
from loomcrm.engine.runtime import auth as auth_module
from loomcrm.engine.runtime.auth import Auth

CRM = """
entities:
  account:
    fields:
      name: {type: string, required: true}
"""
PASSWORD = "correct horse battery"


@pytest.fixture
def loom(loom_factory, monkeypatch):
    monkeypatch.setattr(auth_module, "CACHE_SECONDS", 0.0)  # see every revocation at once
    loom = loom_factory(CRM)
    Users(loom).create("zhang", PASSWORD)
    return loom


@pytest.fixture
def client(loom):
    with TestClient(loom.asgi()) as test_client:
        yield test_client


def sign_in(client, username="zhang", password=PASSWORD):
    return client.post("/api/auth/login", json={"username": username, "password": password})


def test_anonymous_api_requests_get_401_problem_but_docs_and_health_are_public(client):
    response = client.get("/api/accounts")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/api/accounts", json={"name": "x"}).status_code == 401
    assert client.get("/api/accounts/1/history").status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/schema/openapi.json").status_code == 200


def test_sign_in_sets_a_safe_session_cookie_and_records_who_writes(client, loom):
    response = sign_in(client)
    assert response.status_code == 200 and response.json()["user"]["username"] == "zhang"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    record = client.post("/api/accounts", json={"name": "Mine"}).json()
    user_id = response.json()["user"]["id"]
    assert record["created_by"] == record["owner"] == record["updated_by"] == user_id
    history = client.get(f"/api/accounts/{record['id']}/history").json()["data"]
    assert history[0]["actor"] == user_id
    assert response.json()["user"]["last_login_at"] is not None
    assert client.get("/api/auth/me").json() == response.json()["user"]


def test_the_session_secret_is_stored_only_as_a_hash(client, loom):
    secret = sign_in(client).cookies["loom_session"]
    with loom.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT id FROM loom_session").scalars().all()
    assert secret not in stored and len(stored[0]) == 64


def test_logout_ends_the_session(client):
    sign_in(client)
    assert client.get("/api/accounts").status_code == 200
    assert client.post("/api/auth/logout").status_code == 204
    assert client.get("/api/accounts").status_code == 401


def test_logout_everywhere_ends_every_session_of_the_user(loom):
    with TestClient(loom.asgi()) as first, TestClient(loom.asgi()) as second:
        sign_in(first)
        sign_in(second)
        assert first.post("/api/auth/logout?everywhere=true").status_code == 204
        assert second.get("/api/accounts").status_code == 401


def test_wrong_password_and_unknown_user_get_the_same_answer(client):
    wrong, unknown = sign_in(client, password="not the password"), sign_in(client, username="nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    assert wrong.json() == unknown.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401,
                                              "detail": "wrong username or password"}


def test_repeated_failures_lock_the_account_for_a_while(client, loom):
    for _ in range(5):
        assert sign_in(client, password="not the password").status_code == 401
    locked = sign_in(client)  # even the right password is refused while locked
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    with loom.engine.begin() as conn:  # the window passes
        conn.execute(sa.text("UPDATE loom_login_failure SET window_start = :t"),
                     {"t": dt.datetime(2020, 1, 1)})
    assert sign_in(client).status_code == 200


def test_disabled_users_cannot_sign_in_nor_use_their_sessions(client, loom):
    sign_in(client)
    Users(loom).set_active("zhang", False)
    assert client.get("/api/accounts").status_code == 401
    assert sign_in(client).status_code == 401


def test_api_tokens_are_shown_once_listed_without_secret_and_revocable(client, loom):
    sign_in(client)
    created = client.post("/api/auth/tokens", json={"name": "ERP sync", "days": 30})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token.startswith("loom_") and created.json()["expires_at"]
    listed = client.get("/api/auth/tokens").json()["data"]
    assert [t["name"] for t in listed] == ["ERP sync"] and token not in str(listed)
    client.post("/api/auth/logout")
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/accounts", headers=bearer).status_code == 200
    assert client.delete(f"/api/auth/tokens/{created.json()['id']}", headers=bearer).status_code == 204
    assert client.get("/api/accounts", headers=bearer).status_code == 401
    with loom.engine.connect() as conn:
        assert token not in str(conn.exec_driver_sql("SELECT * FROM loom_token").all())


def test_expired_tokens_are_refused(loom):
    auth = Auth(loom)
    user_id = Users(loom).find("zhang")["id"]
    token = auth.create_token(user_id, "short", days=1)
    with loom.engine.begin() as conn:
        conn.execute(sa.text("UPDATE loom_token SET expires_at = :t"), {"t": dt.datetime(2020, 1, 1)})
    with TestClient(loom.asgi()) as client:
        assert client.get("/api/accounts", headers={"Authorization": f"Bearer {token.secret}"}).status_code == 401


def test_a_user_cannot_revoke_someone_elses_token(loom):
    users = Users(loom)
    other = users.create("li.na", PASSWORD)
    foreign = Auth(loom).create_token(other["id"], "theirs")
    with TestClient(loom.asgi()) as client:
        sign_in(client)
        assert client.delete(f"/api/auth/tokens/{foreign.id}").status_code == 404
    with TestClient(loom.asgi()) as client:
        assert client.get("/api/accounts", headers={"Authorization": f"Bearer {foreign.secret}"}).status_code == 200


def test_bad_token_requests_are_4xx(client):
    assert client.get("/api/accounts", headers={"Authorization": "Bearer nonsense"}).status_code == 401
    sign_in(client)
    assert client.post("/api/auth/tokens", json={"name": ""}).status_code == 422
    assert client.post("/api/auth/tokens", json={"name": "x", "days": 0}).status_code == 422
    assert client.post("/api/auth/login", json={"username": 5}).status_code == 422


def test_sign_in_can_be_made_optional_for_prototypes(tmp_path):
    from loomcrm.engine.testing import make_loom, project_files

    files = project_files(CRM, app="app: {name: Proto}\nauth: {required: false}")
    loom = make_loom(files, f"sqlite:///{tmp_path}/proto.db")
    try:
        with TestClient(loom.asgi()) as client:
            record = client.post("/api/accounts", json={"name": "anon"}).json()
            assert record["created_by"] is None
            assert client.get("/api/accounts", headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        loom.close()
