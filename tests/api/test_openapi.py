"""The generated OpenAPI document, and a schemathesis run against it on SQLite and PostgreSQL:
no 5xx, every response matches the documented schema, status code and content type."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loomcrm.engine.testing import api_token


def test_openapi_documents_every_entity_with_its_own_schemas(client):
    schema = client.get("/schema/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    paths = schema["paths"]
    assert {"/api/accounts", "/api/accounts/{record_id}", "/api/accounts/{record_id}/contacts",
            "/api/segments/{record_id}/accounts"} <= set(paths)
    components = schema["components"]["schemas"]
    assert {"Account", "AccountCreate", "AccountUpdate", "AccountPage", "ProblemDetails"} <= set(components)
    create = components["AccountCreate"]
    assert create["required"] == ["name"]
    assert create["properties"]["name"]["maxLength"] == 50
    assert set(components["AccountUpdate"]["properties"]) >= {"name", "version"}
    assert "422" in paths["/api/accounts"]["post"]["responses"]


def test_openapi_ui_is_served(client):
    response = client.get("/schema/swagger")
    assert response.status_code == 200 and "swagger" in response.text.lower()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(crm):
    checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
    with serving(crm.asgi()) as base_url:
        document = requests.get(f"{base_url}/schema/openapi.json", timeout=10).json()
        api = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in api.get_all_operations()]
        assert len(operations) >= 20
        failures = []
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {api_token(crm)}"
            for operation in operations:

                @given(case=operation.as_strategy())
                @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                def run(case):
                    response = case.call(base_url=base_url, session=session)
                    case.validate_response(response, checks=checks)

                try:
                    run()
                except Exception as exc:  # collect per operation, report all
                    failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)


@contextlib.contextmanager
def serving(app):
    """Serve ``app`` with uvicorn on a free loopback port for the duration of the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_optional_fields_keep_their_constraints_in_the_document(client):
    schemas = client.get("/schema/openapi.json").json()["components"]["schemas"]
    code = schemas["AccountCreate"]["properties"]["code"]
    assert code["pattern"] == "^[A-Z]{2}-[0-9]+$" and {"type": "null"} in code["oneOf"]
    assert schemas["AccountUpdate"]["properties"]["name"]["maxLength"] == 50
    assert schemas["Account"]["properties"]["revenue"]["pattern"] == r"^-?\d+(\.\d+)?$"
