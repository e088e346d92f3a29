"""``/api/webhooks``: webhook subscriptions made through the API, and their delivery log.

Thin handlers over :class:`~loomcrm.engine.runtime.subscriptions.Subscriptions`, which checks the
input (one 422 naming every problem) and the caller's right to subscribe (403).
"""

from collections.abc import Callable
from typing import Any

from litestar import Request, Response, Router, delete, get, post
from litestar.params import FromPath, JSONBody, SkipValidation
from pydantic import BaseModel, Field

from loomcrm.engine.runtime.context import Context
from loomcrm.engine.runtime.query import parse_page_params
from loomcrm.engine.runtime.subscriptions import Subscriptions

from .routes import ListParams, _problems, _typed, checked_id

__all__ = ["webhook_router"]

SUBSCRIPTION = "webhook subscription"

SIGNATURE_HELP = ("Each event is POSTed as JSON with the headers X-Loom-Event, X-Loom-Delivery (an idempotency "
                  "key, the same on every retry), X-Loom-Timestamp and X-Loom-Signature: sha256=<hex HMAC-SHA256 "
                  "of '<timestamp>.<body>' keyed with the secret>. Any answer but 2xx is retried with backoff.")


class WebhookCreate(BaseModel):
    url: str = Field(description="Where events are POSTed (http or https).")
    events: list[str] = Field(description="`<entity>.created`, `.updated`, `.deleted`, `.transitioned`, an event "
                              "a webhook action emits, or `<entity>.*`.")


class WebhookSubscription(BaseModel):
    id: int
    url: str
    events: list[str]
    active: bool
    created_at: str


class WebhookCreated(WebhookSubscription):
    secret: str = Field(description="The signing secret. Shown only in this answer: store it now.")


class WebhookList(BaseModel):
    data: list[WebhookSubscription]


class WebhookDelivery(BaseModel):
    id: int
    event: str
    record_id: int
    key: str = Field(description="The event's idempotency key (X-Loom-Delivery).")
    attempt: int
    at: str
    ok: bool
    status_code: int | None = Field(description="The receiver's HTTP status; null without an answer.")
    error: str | None
    duration_ms: int
    event_status: str = Field(description="Where the event stands now: pending, delivered or dead (given up).")


class WebhookDeliveryPage(BaseModel):
    data: list[WebhookDelivery]
    next_cursor: str | None


def webhook_router(subscriptions: Subscriptions, api_context: Callable[[Request], Context], *,
                   sync_to_thread: bool) -> Router:
    """``/api/webhooks``: create (the secret is shown once), list, delete; ``/{id}/deliveries``."""
    opts = {"sync_to_thread": sync_to_thread, "tags": ["Webhooks"]}

    def create(request: Request, data: Any) -> Any:
        created = subscriptions.create(api_context(request), data)
        return Response(created, status_code=201, headers={"Location": f"/api/webhooks/{created['id']}"})

    def list_all(request: Request) -> Any:
        return {"data": subscriptions.list(api_context(request))}

    def remove(request: Request, subscription_id: int) -> None:
        subscriptions.delete(api_context(request), checked_id(SUBSCRIPTION, subscription_id))

    def deliveries(request: Request, subscription_id: int, limit=None, cursor=None) -> Any:
        limit_, before = parse_page_params(request.query_params.multi_items())
        return subscriptions.delivery_log(api_context(request), checked_id(SUBSCRIPTION, subscription_id),
                                          limit=limit_, before=before)

    handlers = [
        post("/", summary="Subscribe to events (the answer shows the signing secret once)", description=SIGNATURE_HELP,
             status_code=201, responses=_problems(401, 403, 422), **opts)(
            _typed(create, {"request": Request, "data": SkipValidation[JSONBody[WebhookCreate]],
                            "return": Response[WebhookCreated]})),
        get("/", summary="Your webhook subscriptions (without their secrets)", responses=_problems(401), **opts)(
            _typed(list_all, {"request": Request, "return": WebhookList})),
        delete("/{subscription_id:int}", summary="Delete a subscription, its queued events and its log",
               responses=_problems(401, 404), **opts)(
            _typed(remove, {"request": Request, "subscription_id": FromPath[int], "return": None})),
        get("/{subscription_id:int}/deliveries", summary="Delivery attempts of a subscription, newest first",
            responses=_problems(400, 401, 404), **opts)(
            _typed(deliveries, {"request": Request, "subscription_id": FromPath[int], "limit": ListParams["limit"],
                                "cursor": ListParams["cursor"], "return": WebhookDeliveryPage})),
    ]
    return Router(path="/api/webhooks", route_handlers=handlers)
