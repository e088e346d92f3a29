"""litestar route handlers generated per entity: ``/api/<plural>`` list, create, get, patch, delete,
and ``/api/<plural>/{id}/<relation>`` for every related list.

Handlers are thin: they turn HTTP into calls on :class:`~loomcrm.engine.runtime.pipeline.Records`.
Their annotations are the generated I/O models, so litestar's OpenAPI document is per entity; request
bodies are marked ``SkipValidation`` because the pipeline validates them (one validator for every
channel, with Loom's own error codes).
"""

from collections.abc import Callable
from typing import Annotated, Any

from litestar import Request, Response, Router, delete, get, patch, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter, SkipValidation
from pydantic import BaseModel, create_model

from loomcrm.engine.errors import Problem
from loomcrm.engine.manifest import Entity, text_for
from loomcrm.engine.runtime.auth import SESSION_COOKIE
from loomcrm.engine.runtime.context import Context, utcnow
from loomcrm.engine.runtime.pipeline import Records
from loomcrm.engine.runtime.query import DEFAULT_LIMIT, MAX_LIMIT, parse_list_params, parse_page_params

from .models import EntityModels

__all__ = ["entity_router", "auth_router", "admin_router"]

FILTER_HELP = (
    "Filters: `filter[<field>][<op>]=<value>` (op: eq, ne, lt, lte, gt, gte, in, contains, startswith, "
    "isnull; default eq), combined with AND. `in` takes comma-separated values."
)
ListParams = {
    "sort": Annotated[str | None, Parameter(description="Comma-separated fields, `-` for descending: "
                                                        "`-created_at,name`.")],
    # typed as text so that Loom's own parser reports every bad parameter at once; documented as integer
    "limit": Annotated[str | None, Parameter(description=f"Page size (default {DEFAULT_LIMIT}).", schema_extra={
        "type": "integer", "minimum": 1, "maximum": MAX_LIMIT})],
    "cursor": Annotated[str | None, Parameter(description="`next_cursor` of the previous page.")],
    "fields": Annotated[str | None, Parameter(description="Comma-separated fields to return (id always).")],
    "expand": Annotated[str | None, Parameter(description="Comma-separated ref fields to return as records.")],
    "count": Annotated[str | None, Parameter(description="Also return the total number of matches.",
                                             schema_extra={"type": "boolean"})],
}
IfMatch = Annotated[str | None, HeaderParameter(name="If-Match", description="The record's version, as in its ETag.")]


class ProblemField(BaseModel):
    field: str
    code: str
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every Loom error is answered."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[ProblemField] | None = None


def _problems(*statuses: int) -> dict[int, ResponseSpec]:
    text = {400: "Invalid query parameters or headers", 401: "Not signed in, or the credentials are invalid",
            404: "No such record", 409: "Version conflict, or the record is still referenced",
            403: "Your roles do not allow this (the fields or records concerned are named)",
            422: "Invalid field values (each named in errors)", 429: "Too many failed sign-ins; see Retry-After"}
    return {s: ResponseSpec(ProblemDetails, description=text[s], media_type="application/problem+json",
                            generate_examples=False) for s in statuses}


def parse_if_match(value: str | None) -> int | None:
    if value is None:
        return None
    return parse_version(value.strip().removeprefix("W/").strip('"'), "If-Match")


def parse_version(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 2**31 - 1:
        raise Problem(400, f"Invalid {where}", errors=[
            {"field": where, "code": "type", "message": f'{where} must hold the record version, e.g. "3"'}])
    return int(text)


def checked_id(what: Entity | str, record_id: int) -> int:
    """Ids beyond 64 bits cannot exist: answer 404 instead of letting the database overflow.
    ``what`` is the entity, or the name of the thing (``webhook subscription``) the 404 speaks of."""
    if not 1 <= record_id <= 2**63 - 1:
        raise Problem(404, "Not found", detail=f"no {what if isinstance(what, str) else what.name} with id {record_id}")
    return record_id


def _typed(fn, annotations: dict[str, Any]):
    """Give a generated handler its real annotations (litestar builds the OpenAPI document from them)."""
    fn.__annotations__ = annotations
    return fn


def entity_router(records: Records, entity: Entity, all_models: dict[str, EntityModels], *,
                  sync_to_thread: bool, api_context: Callable[[Request], Context]) -> Router:
    plural = entity.plural
    models = all_models[entity.name]
    tag = text_for(entity.plural_label)
    opts = {"sync_to_thread": sync_to_thread, "tags": [tag]}

    def list_records(request: Request, sort=None, limit=None, cursor=None, fields=None, expand=None,
                     count=None) -> Any:
        query = parse_list_params(entity, request.query_params.multi_items())
        return records.list(entity, query, api_context(request))

    def create_record(request: Request, data: Any) -> Any:
        record = records.create(entity, data, api_context(request))
        return Response(record, status_code=201,
                        headers={"Location": f"/api/{plural}/{record['id']}", "ETag": f'"{record["version"]}"'})

    def get_record(request: Request, record_id: int, fields=None, expand=None) -> Any:
        fields, expand = None, []
        if request.scope["query_string"]:
            params = parse_list_params(entity, [(k, v) for k, v in request.query_params.multi_items()
                                                if k in ("fields", "expand")])
            fields, expand = params.fields, params.expand
        record = records.get(entity, checked_id(entity, record_id), api_context(request), fields=fields,
                             expand=expand)
        return Response(record, headers={"ETag": f'"{record["version"]}"'} if "version" in record else {})

    def patch_record(request: Request, record_id: int, data: Any, if_match: Any = None) -> Any:
        changes = dict(data) if isinstance(data, dict) else data
        version = changes.pop("version", None) if isinstance(changes, dict) else None
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise Problem(422, "Validation failed", errors=[
                {"field": "version", "code": "type", "message": "version must be a positive whole number"}])
        header_version = parse_if_match(if_match)
        if version is not None and header_version is not None and version != header_version:
            raise Problem(400, "Conflicting versions", detail="version in the body and If-Match differ")
        record = records.update(entity, checked_id(entity, record_id), changes, api_context(request),
                                version=version if version is not None else header_version)
        return Response(record, headers={"ETag": f'"{record["version"]}"'})

    def delete_record(request: Request, record_id: int, version: Any = None, if_match: Any = None) -> None:
        query_version = parse_version(version, "version")
        header_version = parse_if_match(if_match)
        records.delete(entity, checked_id(entity, record_id), api_context(request),
                       version=query_version if query_version is not None else header_version)

    Version = Annotated[str | None, Parameter(description="The version you read; stale gets 409.",
                                              schema_extra={"type": "integer", "minimum": 1})]
    handlers = [
        get("/", summary=f"List {tag}", description=FILTER_HELP, responses=_problems(400, 401, 403), **opts)(
            _typed(list_records, {"request": Request, **ListParams, "return": models.page})),
        post("/", summary=f"Create a {text_for(entity.label)}", status_code=201, responses=_problems(400, 401, 403, 422),
             **opts)(
            _typed(create_record, {"request": Request, "data": SkipValidation[JSONBody[models.create]], "return": Response[models.record]})),
        get("/{record_id:int}", summary=f"Get a {text_for(entity.label)}", responses=_problems(400, 401, 403, 404), **opts)(
            _typed(get_record, {"request": Request, "record_id": FromPath[int], "fields": ListParams["fields"],
                                "expand": ListParams["expand"], "return": Response[models.record]})),
        patch("/{record_id:int}", summary=f"Change a {text_for(entity.label)}",
              responses=_problems(400, 401, 403, 404, 409, 422), **opts)(
            _typed(patch_record, {"request": Request, "record_id": FromPath[int], "data": SkipValidation[JSONBody[models.update]],
                                  "if_match": IfMatch, "return": Response[models.record]})),
        delete("/{record_id:int}", summary=f"Delete a {text_for(entity.label)}", responses=_problems(400, 401, 403, 404, 409),
               **opts)(
            _typed(delete_record, {"request": Request, "record_id": FromPath[int], "version": Version,
                                   "if_match": IfMatch, "return": None})),
    ]
    handlers.append(_history_handler(records, entity, opts, api_context))
    if records.transitions.of(entity):
        handlers += _transition_handlers(records, entity, models, opts, api_context)
    for relation in entity.relations.values():
        handlers.append(_related_handler(records, entity, relation, all_models[relation.entity].page, opts,
                                         api_context))
    return Router(path=f"/api/{plural}", route_handlers=handlers)


class TransitionBody(BaseModel):
    version: int | None = None
    fields: dict[str, Any] | None = None


#: One transition of a record (``from`` is a Python keyword, hence the functional form).
TransitionOption = create_model("TransitionOption", name=(str, ...), workflow=(str, ...), label=(str, ...),
                                **{"from": (list[str], ...)}, to=(str, ...), allowed=(bool, ...),
                                reasons=(list[str], ...), needs=(list[str], ...))


class TransitionList(BaseModel):
    id: int
    version: int
    states: dict[str, str | None]
    data: list[TransitionOption]


def _transition_handlers(records: Records, entity: Entity, models, opts, api_context) -> list:
    """``GET /{id}/transitions`` (which the caller may fire now, and why not the others) and
    ``POST /{id}/transitions/{name}`` (fire one; version for optimistic locking; fields given with it)."""
    names = ", ".join(records.transitions.of(entity))

    def list_transitions(request: Request, record_id: int) -> Any:
        return records.transitions.available(entity, checked_id(entity, record_id), api_context(request))

    def fire(request: Request, record_id: int, name: str, data: Any = None, if_match: Any = None) -> Any:
        body = data if data is not None else {}
        errors = [] if isinstance(body, dict) else [{"field": "", "code": "type", "message": "the body must be a "
                                                      "JSON object: {version, fields}"}]
        body = body if isinstance(body, dict) else {}
        errors += [{"field": k, "code": "unknown_field", "message": "the body takes version and fields"}
                   for k in body if k not in ("version", "fields")]
        version = body.get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            errors.append({"field": "version", "code": "type", "message": "version must be a positive whole number"})
        fields = body.get("fields")
        if fields is not None and not isinstance(fields, dict):
            errors.append({"field": "fields", "code": "type", "message": "fields must be an object of field values"})
        if errors:
            raise Problem(422, "Validation failed", errors=errors)
        header_version = parse_if_match(if_match)
        if version is not None and header_version is not None and version != header_version:
            raise Problem(400, "Conflicting versions", detail="version in the body and If-Match differ")
        record = records.transitions.fire(entity, checked_id(entity, record_id), name, api_context(request),
                                          version=version if version is not None else header_version, data=fields)
        return Response(record, headers={"ETag": f'"{record["version"]}"'} if "version" in record else {})

    label = text_for(entity.label)
    return [
        get("/{record_id:int}/transitions", summary=f"Transitions of a {label}", name=f"{entity.name}.transitions",
            description="Every workflow transition of the record: `allowed` when you may fire it now, else "
            "`reasons`; `needs` lists fields its target state requires that the record lacks (give them in "
            "`fields` when firing).", responses=_problems(401, 403, 404), **opts)(
            _typed(list_transitions, {"request": Request, "record_id": FromPath[int], "return": TransitionList})),
        post("/{record_id:int}/transitions/{name:str}", summary=f"Fire a transition of a {label}",
             name=f"{entity.name}.fire", status_code=200,
             description=f"Moves the record to the transition's target state ({names}) and stores `fields` given "
             "with it, in one write that also runs the transition's actions. Send the `version` you read (or "
             "If-Match): a stale one is 409. Wrong state: 409; a role that may not fire it: 403; a guard "
             "that does not hold: 422.", responses=_problems(400, 401, 403, 404, 409, 422), **opts)(
            _typed(fire, {"request": Request, "record_id": FromPath[int], "name": FromPath[str],
                          "data": SkipValidation[JSONBody[TransitionBody | None]], "if_match": IfMatch,
                          "return": Response[models.record]})),
    ]


class TransitionRef(BaseModel):
    workflow: str
    name: str


class HistoryEntry(BaseModel):
    id: int
    at: str
    actor: int | None
    channel: str
    action: str
    version: int | None
    changes: dict[str, list[Any]]
    transition: TransitionRef | None = None


class HistoryPage(BaseModel):
    data: list[HistoryEntry]
    next_cursor: str | None


def _history_handler(records: Records, entity: Entity, opts, api_context):
    def history(request: Request, record_id: int, limit=None, cursor=None) -> Any:
        limit_, before = parse_page_params(request.query_params.multi_items())
        return records.history(entity, checked_id(entity, record_id), api_context(request), limit=limit_,
                               before=before)

    return get("/{record_id:int}/history", summary=f"History of a {text_for(entity.label)}",
               description="Every change to the record, newest first: when, who, through which channel, and "
               "each changed field as [old, new]; fields hidden from you show \"redacted\".", name=f"{entity.name}.history",
               responses=_problems(400, 401, 403, 404),
               **opts)(_typed(history, {"request": Request, "record_id": FromPath[int], "limit": ListParams["limit"],
                                        "cursor": ListParams["cursor"], "return": HistoryPage}))


def _related_handler(records: Records, entity: Entity, relation, page, opts, api_context):
    child = records.manifest.entities[relation.entity]

    def list_related(request: Request, record_id: int, sort=None, limit=None, cursor=None, fields=None,
                     expand=None, count=None) -> Any:
        query = parse_list_params(child, request.query_params.multi_items())
        return records.related(entity, checked_id(entity, record_id), relation.name, query, api_context(request))

    return get(f"/{{record_id:int}}/{relation.name}", summary=f"{text_for(child.plural_label)} of a "
               f"{text_for(entity.label)}", description=FILTER_HELP, name=f"{entity.name}.{relation.name}",
               responses=_problems(400, 401, 403, 404), **opts)(
        _typed(list_related, {"request": Request, "record_id": FromPath[int], **ListParams, "return": page}))


# --- signing in -------------------------------------------------------------------------------------


class LoginBody(BaseModel):
    username: str
    password: str


class TokenBody(BaseModel):
    name: str
    days: int | None = None


def auth_router(auth, api_context: Callable[[Request], Context], *, sync_to_thread: bool) -> Router:
    """``/api/auth``: sign in and out (session cookie), who am I, personal API tokens."""
    opts = {"sync_to_thread": sync_to_thread, "tags": ["Sign-in"]}

    def signed_in(request: Request) -> Context:
        """The caller's context; 401 for anonymous callers, even where sign-in is optional."""
        ctx = api_context(request)
        if ctx.actor is None:
            raise Problem(401, "Unauthorized", detail="not signed in")
        return ctx

    def login(request: Request, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("username"), str) \
                or not isinstance(data.get("password"), str):
            raise Problem(422, "Validation failed", errors=[{"field": "username", "code": "required",
                                                               "message": "send username and password as text"}])
        address = request.client.host if request.client else "unknown"
        user, session = auth.login(data["username"], data["password"], address)
        response = Response({"user": user, "expires_at": session.expires_at.isoformat().replace("+00:00", "Z")})
        response.set_cookie(SESSION_COOKIE, session.secret, httponly=True, samesite="lax", path="/",
                            secure=request.url.scheme == "https",
                            max_age=int((session.expires_at - utcnow()).total_seconds()))
        return response

    def logout(request: Request, everywhere: Any = None) -> Any:
        ctx = api_context(request)
        auth.logout(request.cookies.get(SESSION_COOKIE),
                    everywhere_for=ctx.actor if everywhere in ("true", "1") else None)
        response = Response(None, status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def me(request: Request) -> Any:
        ctx = signed_in(request)  # your own record, whatever your roles let you see of other users
        return auth.loom.records.get(auth.loom.entity("user"), ctx.actor, Context(actor=ctx.actor, channel="api"))

    def create_token(request: Request, data: Any) -> Any:
        ctx = signed_in(request)
        body = data if isinstance(data, dict) else {}
        name, days = body.get("name"), body.get("days")
        if not isinstance(name, str) or (days is not None and (not isinstance(days, int) or isinstance(days, bool))):
            raise Problem(422, "Validation failed", errors=[{"field": "name", "code": "type",
                                                               "message": "name must be text and days a number"}])
        token = auth.create_token(ctx.actor, name, days)
        return Response({"id": token.id, "name": name, "token": token.secret,
                         "expires_at": None if token.expires_at is None else
                         token.expires_at.isoformat().replace("+00:00", "Z")}, status_code=201)

    def list_tokens(request: Request) -> Any:
        ctx = signed_in(request)
        return {"data": auth.list_tokens(ctx.actor)}

    def revoke_token(request: Request, token_id: int) -> None:
        ctx = signed_in(request)
        auth.revoke_token(ctx.actor, token_id)

    handlers = [
        post("/login", summary="Sign in (sets the session cookie)", status_code=200,
             responses=_problems(401, 422, 429), **opts)(
            _typed(login, {"request": Request, "data": SkipValidation[JSONBody[LoginBody]], "return": Any})),
        post("/logout", summary="Sign out (everywhere=true: all sessions)", status_code=204,
             responses=_problems(401), **opts)(
            _typed(logout, {"request": Request, "everywhere": Annotated[str | None, Parameter()], "return": None})),
        get("/me", summary="The signed-in user", responses=_problems(401), **opts)(
            _typed(me, {"request": Request, "return": Any})),
        post("/tokens", summary="Create a personal API token (shown once)", responses=_problems(401, 422),
             **opts)(_typed(create_token, {"request": Request, "data": SkipValidation[JSONBody[TokenBody]],
                                           "return": Any})),
        get("/tokens", summary="Your API tokens (without their secrets)", responses=_problems(401), **opts)(
            _typed(list_tokens, {"request": Request, "return": Any})),
        delete("/tokens/{token_id:int}", summary="Revoke one of your API tokens", responses=_problems(401, 404),
               **opts)(_typed(revoke_token, {"request": Request, "token_id": FromPath[int], "return": None})),
    ]
    return Router(path="/api/auth", route_handlers=handlers)


# --- administration ---------------------------------------------------------------------------------


class ReassignBody(BaseModel):
    from_user: int
    to_user: int
    entities: list[str] | None = None


class ReassignResult(BaseModel):
    moved: dict[str, int]


def admin_router(records: Records, api_context: Callable[[Request], Context], *, sync_to_thread: bool) -> Router:
    """``/api/reassign``: staff turnover, for callers who may change every record involved."""

    def reassign(request: Request, data: Any) -> Any:
        body = data if isinstance(data, dict) else {}
        errors = [{"field": key, "code": "type", "message": f"{key} must be a user id"}
                  for key in ("from_user", "to_user")
                  if not isinstance(body.get(key), int) or isinstance(body.get(key), bool)]
        names = body.get("entities")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            errors.append({"field": "entities", "code": "type", "message": "entities must be a list of names"})
        elif names:
            errors += [{"field": "entities", "code": "unknown_entity", "message": f"no entity '{n}'"}
                       for n in names if n not in records.manifest.entities]
        if errors:
            raise Problem(422, "Validation failed", errors=errors)
        entities = [records.manifest.entities[n] for n in names] if names else None
        moved = records.reassign(body["from_user"], body["to_user"], api_context(request), entities)
        return {"moved": moved}

    handler = post("/reassign", summary="Reassign every record one user owns to another (staff turnover)",
                   description="One transaction; each record gets a 'reassign' history entry. Needs the right "
                   "to change every record of each entity involved.", status_code=200, tags=["Administration"],
                   responses=_problems(401, 403, 422), sync_to_thread=sync_to_thread)(
        _typed(reassign, {"request": Request, "data": SkipValidation[JSONBody[ReassignBody]],
                          "return": ReassignResult}))
    return Router(path="/api", route_handlers=[handler])
