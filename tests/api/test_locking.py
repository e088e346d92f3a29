"""Optimistic locking: a write based on a stale version gets 409 and changes nothing."""

from __future__ import annotations

from conftest import create


def test_patch_with_the_current_version_succeeds(client):
    account = create(client, "accounts", name="A")
    response = client.patch(f"/api/accounts/{account['id']}", json={"name": "B", "version": 1})
    assert response.status_code == 200 and response.json()["version"] == 2


def test_stale_version_in_body_is_409_and_changes_nothing(client):
    account = create(client, "accounts", name="A")
    client.patch(f"/api/accounts/{account['id']}", json={"name": "B", "version": 1})
    response = client.patch(f"/api/accounts/{account['id']}", json={"name": "C", "version": 1})
    assert response.status_code == 409
    assert response.json()["errors"][0] == {
        "field": "version", "code": "stale",
        "message": f"account {account['id']} was changed by someone else (now at version 2)"}
    assert client.get(f"/api/accounts/{account['id']}").json()["name"] == "B"


def test_if_match_header_is_honoured_for_patch_and_delete(client):
    account = create(client, "accounts", name="A")
    url = f"/api/accounts/{account['id']}"
    assert client.patch(url, json={"name": "B"}, headers={"If-Match": '"2"'}).status_code == 409
    etag = client.get(url).headers["etag"]
    assert client.patch(url, json={"name": "B"}, headers={"If-Match": etag}).status_code == 200
    assert client.delete(url, headers={"If-Match": etag}).status_code == 409  # version moved on to 2
    assert client.get(url).status_code == 200
    assert client.delete(url, headers={"If-Match": 'W/"2"'}).status_code == 204


def test_delete_with_stale_version_parameter_is_409(client):
    account = create(client, "accounts", name="A")
    client.patch(f"/api/accounts/{account['id']}", json={"name": "B"})
    assert client.delete(f"/api/accounts/{account['id']}?version=1").status_code == 409
    assert client.delete(f"/api/accounts/{account['id']}?version=2").status_code == 204


def test_malformed_versions_are_400(client):
    account = create(client, "accounts", name="A")
    url = f"/api/accounts/{account['id']}"
    assert client.patch(url, json={"name": "B"}, headers={"If-Match": "yesterday"}).status_code == 400
    assert client.delete(f"{url}?version=abc").status_code == 400
    assert client.patch(url, json={"name": "B", "version": 1}, headers={"If-Match": '"2"'}).status_code == 400


def test_concurrent_patches_with_the_same_version_let_exactly_one_win(crm):
    import threading

    from loomcrm.engine.errors import Problem
    from loomcrm.engine.runtime.context import Context

    entity = crm.entity("account")
    record = crm.records.create(entity, {"name": "Race", "employees": 0}, Context())
    outcomes: list[int] = []

    def writer(n: int) -> None:
        try:
            crm.records.update(entity, record["id"], {"employees": n}, Context(), version=1)
            outcomes.append(200)
        except Problem as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [200] + [409] * 7
    assert crm.records.get(entity, record["id"], Context())["version"] == 2
