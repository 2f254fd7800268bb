"""Open311 GeoReport v2 at /open311/v2, so existing 311 apps can file and follow cases.

Follows the spec at wiki.open311.org/GeoReport_v2: every resource ends in `.json` or
`.xml`, POST bodies are form-encoded, errors are a list of `{code, description}`
(`<errors><error>…` in XML). Choices the spec leaves to the server:

- **Services** are the category subclasses (service_code = subclass code); `group` is
  the class name. No service has extra attributes, so `metadata` is false and each
  service definition carries an empty attribute list.
- **Writes** need an `api_key` listed in `WANGGE_OPEN311_API_KEYS` (403 otherwise).
  Requests need `lat` and `long`: the server does not geocode `address_string`.
  Cases are created synchronously, so POST answers a `service_request_id` at once
  and the token of `tokens/{token}` is the case code itself.
- **Status.** open = reported, dispatched, accepted, in_progress, returned, escalated;
  closed = resolved, evaluated, closed, duplicate, rejected (`gis.cases`: a resolved
  case needs no more work, it only waits for the resident's rating). `status_notes`
  names the internal status and, for a rejected case, the reason given.
- **Privacy.** Reporter names, phones and e-mails are stored for the staff and never
  appear in any answer here; `address` is the grid chain, not a street address.
- **GET requests** defaults to the last 90 days and answers at most 1000 requests,
  newest first; a start/end span over 90 days is refused.

These routes answer errors in the spec's shape themselves (`Open311Route`), so the
/api/v1 error body never reaches an Open311 client.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api import open311_xml
from api.deps import SessionDep, SettingsDep
from api.settings import Settings
from gis import cases as workflow
from gis.cases import Actor
from gis.db import cases_repo, repo
from gis.errors import Forbidden, InvalidInput, NotFound, WanggeError

log = logging.getLogger("wangge.open311")

PREFIX = "/open311/v2"
SPEC_URL = "http://wiki.open311.org/GeoReport_v2"
#: When this endpoint's behaviour last changed (discovery's `changeset`).
CHANGESET = "2026-11-22T00:00:00Z"
#: Format extension -> Content-Type of the answer.
MEDIA_TYPES = {"json": "application/json", "xml": "application/xml; charset=utf-8"}
#: What discovery advertises: the spec's own strings for the two formats.
DISCOVERY_FORMATS = ["text/xml", "application/json"]
WINDOW = timedelta(days=90)
MAX_REQUESTS = 1000
MEDIA_URL_MAX = 500
ACTOR_MAX = 90  # the history's actor column holds 100, with the role
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

STATUS_NOTES = {
    "reported": "reported (已上报), waiting to be dispatched to a grid worker",
    "dispatched": "dispatched (已派遣) to the grid worker",
    "accepted": "accepted (已受理) by the grid worker",
    "in_progress": "in progress (处置中)",
    "returned": "returned (已退回) by the worker, waiting to be dispatched again",
    "escalated": "escalated (已上报上级)",
    "resolved": "resolved (已办结), waiting for the reporter's rating",
    "evaluated": "resolved and rated (已评价)",
    "closed": "closed (已结案)",
    "duplicate": "closed as a duplicate (重复案件)",
    "rejected": "rejected (不予受理)",
}


class Open311Error(Exception):
    """An answer in the spec's error shape: HTTP status and a description."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


# ----------------------------------------------------------------- rendering


def _respond(fmt: str, data: Any, root: str, item: str | None, status: int = 200) -> Response:
    """`data` as JSON, or as XML under `root` (list items named `item`)."""
    if fmt == "xml":
        body = open311_xml.render(root, data, item)
        return Response(body, status_code=status, media_type=MEDIA_TYPES["xml"])
    return JSONResponse(data, status_code=status, media_type=MEDIA_TYPES["json"])


def _error_response(fmt: str | None, status: int, description: str) -> Response:
    errors = [{"code": status, "description": description}]
    # An unknown or missing extension gets JSON: there is no way to know what was wanted.
    return _respond("xml" if fmt == "xml" else "json", errors, "errors", "error", status)


def _check_format(fmt: str) -> str:
    if fmt not in MEDIA_TYPES:
        raise Open311Error(404, f"unknown format .{fmt}; use .json or .xml")
    return fmt


class Open311Route(APIRoute):
    """A route whose every failure answers the spec's `[{code, description}]` list."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            # The catch-all route has no {fmt}: answer XML when the path asked for it.
            fmt = request.path_params.get("fmt") or request.url.path.rsplit(".", 1)[-1]
            try:
                return await handler(request)
            except Open311Error as exc:
                return _error_response(fmt, exc.status, exc.description)
            except NotFound as exc:
                return _error_response(fmt, 404, exc.message)
            except Forbidden as exc:
                return _error_response(fmt, 403, exc.message)
            except InvalidInput as exc:
                return _error_response(fmt, 400, exc.message)
            except WanggeError as exc:  # a conflict or an infeasible request: the client's
                return _error_response(fmt, 400, exc.message)
            except StarletteHTTPException as exc:  # e.g. a malformed multipart body
                return _error_response(fmt, exc.status_code, str(exc.detail))
            except Exception:
                # The traceback goes to the log, never to the client.
                log.exception("Open311 request failed: %s %s", request.method, request.url.path)
                return _error_response(fmt, 500, "internal server error; see the server log")

        return route


router = APIRouter(prefix=PREFIX, tags=["open311"], route_class=Open311Route)


# ------------------------------------------------------------------ helpers


def _w3(value: datetime | str | None) -> str | None:
    """A W3C datetime in UTC with the `Z` suffix (naive values are UTC already)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_w3(name: str, text: str) -> datetime:
    """A W3C datetime (`2010-01-01T00:00:00Z`, an offset, or a plain date) in UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Open311Error(
            400, f"{name} must be a W3C datetime such as 2010-01-01T00:00:00Z (got {text!r})"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _comma_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _subclasses(session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
    """(subclass code -> Category, class code -> Category) from the stored tree."""
    rows = repo.categories(session)
    classes = {c.code: c for c in rows if c.level == "class"}
    subs = {c.code: c for c in rows if c.level == "subclass"}
    return subs, classes


def _notice(category: Any) -> str | None:
    """What the resident can expect, from the category's deadline and department."""
    if category is None:
        return None
    parts = []
    if category.deadline_h is not None:
        hours = f"{category.deadline_h:g}"
        parts.append(f"限时 {hours} 小时办结 (to be resolved within {hours} hours)")
    if category.department:
        parts.append(f"responsible department: {category.department}")
    return "; ".join(parts) or None


def _service(category: Any, group: Any) -> dict[str, Any]:
    keywords = [category.name, category.name_en, group.name if group else None]
    description = category.name_en or category.name
    if category.department:
        description += f" — handled by {category.department} when the grid cannot"
    return {
        "service_code": category.code,
        "service_name": category.name,
        "description": description,
        "metadata": False,
        "type": "realtime",
        "keywords": ", ".join(k for k in keywords if k),
        "group": group.name if group else None,
    }


# ------------------------------------------------------------- discovery


@router.get("/discovery.{fmt}", summary="Open311 service discovery")
def read_discovery(fmt: str, request: Request, settings: SettingsDep) -> Response:
    """Where the GeoReport v2 endpoint is, which formats it speaks and how to get a key."""
    _check_format(fmt)
    url = str(request.base_url).rstrip("/") + PREFIX
    body = {
        "changeset": CHANGESET,
        "contact": "the operator of this wangge service; API documentation at /docs",
        "key_service": "api_key values for POST requests are issued by the operator "
        "(setting WANGGE_OPEN311_API_KEYS)",
        "endpoints": [
            {
                "specification": SPEC_URL,
                "url": url,
                "changeset": CHANGESET,
                "type": "production" if settings.environment == "production" else "test",
                "formats": DISCOVERY_FORMATS,
            }
        ],
    }
    return _respond(fmt, body, "discovery", None)


# --------------------------------------------------------------- services


@router.get("/services.{fmt}", summary="Open311 service list (one per category subclass)")
def list_services(fmt: str, session: SessionDep) -> Response:
    """Every category subclass as a service, grouped by its class."""
    _check_format(fmt)
    subs, classes = _subclasses(session)
    services = [_service(c, classes.get(c.parent_code)) for c in subs.values()]
    return _respond(fmt, services, "services", "service")


@router.get("/services/{service_code}.{fmt}", summary="Open311 service definition")
def read_service_definition(service_code: str, fmt: str, session: SessionDep) -> Response:
    """The attributes a service asks for: none here, so an empty list."""
    _check_format(fmt)
    subs, _ = _subclasses(session)
    if service_code not in subs:
        raise Open311Error(404, f"no service with service_code {service_code!r}")
    body = {"service_code": service_code, "attributes": []}
    return _respond(fmt, body, "service_definition", None)


# --------------------------------------------------------------- requests


def _api_key_ok(settings: Settings, key: str) -> bool:
    keys = [k.strip() for k in settings.open311_api_keys.split(",") if k.strip()]
    # Compare every key in constant time, so timing does not hint at a valid prefix.
    return any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def _stored_key_ok(sessions, key: str) -> bool:
    """An active API key issued with `wangge apikey add` also opens Open311 intake."""
    from api.auth import note_key_use
    from gis.db import users_repo

    with sessions() as session:
        principal = users_repo.find_api_key(session, key)
    if principal is None or not principal.active:
        return False
    note_key_use(sessions, key)
    return True


def _coordinate(fields: dict[str, str], name: str, bound: float) -> float:
    text = fields.get(name, "").strip()
    try:
        value = float(text)
    except ValueError:
        raise Open311Error(400, f"{name} must be a number (got {text!r})") from None
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise Open311Error(400, f"{name} must lie within -{bound:g}..{bound:g} (got {text})")
    return value


def _intake(fields: dict[str, str], subs: dict[str, Any]) -> dict[str, Any]:
    """Check a POST body and turn it into `create_case` keywords (400 naming the field)."""
    code = fields.get("service_code", "").strip()
    if not code:
        raise Open311Error(400, "service_code is required; see services.json")
    if code not in subs:
        raise Open311Error(400, f"service_code {code!r} is not a known service; see services.json")
    has_lat, has_long = bool(fields.get("lat", "").strip()), bool(fields.get("long", "").strip())
    if not (has_lat and has_long):
        if fields.get("address_string", "").strip() or fields.get("address_id", "").strip():
            raise Open311Error(
                400,
                "lat and long are required: this server does not geocode address_string or "
                "address_id; send the location as lat and long (WGS84 degrees)",
            )
        missing = "lat" if not has_lat else "long"
        raise Open311Error(400, f"{missing} is required (with lat and long in WGS84 degrees)")
    lat = _coordinate(fields, "lat", 90)
    lon = _coordinate(fields, "long", 180)
    description = fields.get("description", "").strip()
    if len(description) > workflow.DESCRIPTION_MAX:
        raise Open311Error(
            400, f"description must be at most {workflow.DESCRIPTION_MAX} characters"
        )
    media_url = fields.get("media_url", "").strip() or None
    if media_url and (
        not media_url.lower().startswith(("http://", "https://")) or len(media_url) > MEDIA_URL_MAX
    ):
        raise Open311Error(
            400, f"media_url must be an http(s) URL of at most {MEDIA_URL_MAX} characters"
        )
    name = " ".join(
        part
        for part in (fields.get("first_name", "").strip(), fields.get("last_name", "").strip())
        if part
    )
    who = fields.get("account_id", "").strip() or fields.get("device_id", "").strip()
    return {
        "category_code": code,
        "lon": lon,
        "lat": lat,
        "description": description or None,
        "source": "resident",
        "reporter_name": name or None,
        "reporter_phone": fields.get("phone", "").strip() or None,
        "reporter_email": fields.get("email", "").strip() or None,
        "photo_url": media_url,
        # The actor recorded in the case history: the app's account or device, if given.
        "actor": Actor("resident", f"open311 {who}"[:ACTOR_MAX] if who else "open311"),
    }


@router.post("/requests.{fmt}", summary="Open311: file a service request (form-encoded)")
async def create_request(fmt: str, request: Request, settings: SettingsDep) -> Response:
    """File a case from a form-encoded body: api_key, service_code, lat, long, description,
    media_url and optional contact details (kept for the staff, never published)."""
    _check_format(fmt)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in FORM_TYPES:
        raise Open311Error(400, "send the request form-encoded (application/x-www-form-urlencoded)")
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    key = fields.get("api_key") or request.query_params.get("api_key") or ""
    if not key:
        raise Open311Error(403, "api_key is required to create a service request")
    sessions = request.app.state.sessions
    if not _api_key_ok(settings, key) and not await run_in_threadpool(
        _stored_key_ok, sessions, key
    ):
        raise Open311Error(403, "invalid api_key; can't proceed with create_request")

    def write() -> tuple[dict[str, Any], Any]:
        with sessions() as session, session.begin():
            subs, _ = _subclasses(session)
            case = cases_repo.create_case(session, **_intake(fields, subs))
            return case, subs.get(case["category_code"])

    case, category = await run_in_threadpool(write)
    body = [
        {
            "service_request_id": case["code"],
            "service_notice": _notice(category),
            "account_id": None,
        }
    ]
    return _respond(fmt, body, "service_requests", "request", status=201)


def _status_notes(case: dict[str, Any]) -> str:
    """The internal status in words; a rejection's reason and a duplicate's original.

    Other staff notes stay internal: they are written for colleagues, not the public.
    """
    status = case["status"]
    notes = STATUS_NOTES.get(status, status)
    if status == "escalated":
        level = case.get("escalation_level") or 0
        if 0 <= level < len(workflow.ESCALATION_LEVELS):
            notes += f" to the {workflow.ESCALATION_LEVELS[level]} level"
    elif status == "duplicate" and case.get("duplicate_of"):
        notes += f" of {case['duplicate_of']}"
    elif status == "rejected" and case.get("status_note"):
        notes += f": {case['status_note']}"
    return f"{notes} [internal status: {status}]"


def _addresses(session: Session, cases: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Area code -> name in the active generation, for the street/community/grid chain."""
    codes = {
        c[key] for c in cases for key in ("street_code", "community_code", "grid_code") if c[key]
    }
    gen = repo.active_generation(session)
    if not codes or gen is None:
        return {}
    areas, _ = repo.areas_gdf(session, gen.id, codes=sorted(codes))
    return dict(zip(areas["code"], areas["name"], strict=True))


def _service_request(
    session: Session, case: dict[str, Any], subs: dict[str, Any], names: dict[str, str]
) -> dict[str, Any]:
    """A case as a GeoReport request: public fields only, never the reporter's."""
    category = subs.get(case["category_code"])
    chain = [case.get(k) for k in ("street_code", "community_code", "grid_code")]
    address = " ".join(names.get(code, code) for code in chain if code) or None
    return {
        "service_request_id": case["code"],
        "status": "closed" if case["status"] in workflow.CLOSED_STATUSES else "open",
        "status_notes": _status_notes(case),
        "service_name": case.get("category_name") or (category.name if category else None),
        "service_code": case["category_code"],
        "description": case.get("description"),
        "agency_responsible": case.get("department"),
        "service_notice": _notice(category),
        "requested_datetime": _w3(case.get("reported_at")),
        "updated_datetime": _w3(case.get("updated_at")),
        "expected_datetime": _w3(case.get("deadline_at")),
        "address": address,
        "address_id": None,
        "zipcode": None,
        "lat": case.get("lat"),
        "long": case.get("lon"),
        "media_url": case.get("photo_url"),
    }


def _render_requests(fmt: str, session: Session, cases: list[dict[str, Any]]) -> Response:
    subs, _ = _subclasses(session)
    names = _addresses(session, cases)
    body = [_service_request(session, c, subs, names) for c in cases]
    return _respond(fmt, body, "service_requests", "request")


def _window(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The requested_datetime range: given, or 90 days back (or on) from what is given."""
    since = _parse_w3("start_date", start) if start else None
    until = _parse_w3("end_date", end) if end else None
    if since is None and until is None:
        return now - WINDOW, now
    if since is None:
        return until - WINDOW, until
    if until is None:
        return since, since + WINDOW
    if until < since:
        raise Open311Error(400, "end_date must not be before start_date")
    if until - since > WINDOW:
        raise Open311Error(400, "start_date to end_date may not span more than 90 days")
    return since, until


@router.get("/requests.{fmt}", summary="Open311: query service requests")
def list_requests(fmt: str, request: Request, session: SessionDep) -> Response:
    """Requests filtered as the spec says: service_request_id (comma list; overrides the
    rest), service_code (comma list), start_date/end_date (W3C datetimes, at most 90 days
    apart; default the last 90 days) and status (open, closed); at most 1000, newest first."""
    _check_format(fmt)
    params = request.query_params
    ids = _comma_list(params.get("service_request_id"))
    if len(ids) > MAX_REQUESTS:
        raise Open311Error(400, f"service_request_id may list at most {MAX_REQUESTS} ids")
    if ids:
        cases, _ = cases_repo.list_cases(session, codes=ids, limit=MAX_REQUESTS)
        return _render_requests(fmt, session, _newest_first(cases))
    subs, _ = _subclasses(session)
    service_codes = _comma_list(params.get("service_code"))
    unknown = [c for c in service_codes if c not in subs]
    if unknown:
        raise Open311Error(400, f"service_code {unknown[0]!r} is not a known service")
    wanted = set(_comma_list(params.get("status")))
    if wanted - {"open", "closed"}:
        raise Open311Error(400, "status must be open, closed or both (comma-separated)")
    statuses = None
    if wanted == {"open"}:
        statuses = list(workflow.OPEN_STATUSES)
    elif wanted == {"closed"}:
        statuses = list(workflow.CLOSED_STATUSES)
    since, until = _window(params.get("start_date"), params.get("end_date"), datetime.now(UTC))
    cases = []
    # list_cases takes one category; a comma list of service codes is one query per code.
    for code in service_codes or [None]:
        found, _ = cases_repo.list_cases(
            session,
            category_code=code,
            statuses=statuses,
            since=since,
            until=until,
            limit=MAX_REQUESTS,
        )
        cases.extend(found)
    return _render_requests(fmt, session, _newest_first(cases)[:MAX_REQUESTS])


def _newest_first(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cases, key=lambda c: (_w3(c.get("reported_at")) or "", c["code"]), reverse=True)


@router.get("/requests/{service_request_id}.{fmt}", summary="Open311: one service request")
def read_request(fmt: str, service_request_id: str, session: SessionDep) -> Response:
    """One request by its service_request_id (the case code), as a list of one."""
    _check_format(fmt)
    case = _get_case(session, service_request_id)
    return _render_requests(fmt, session, [case])


def _get_case(session: Session, ref: str) -> dict[str, Any]:
    try:
        return cases_repo.get_case(session, ref)
    except NotFound:
        raise Open311Error(404, f"no service request {ref!r}") from None


@router.get("/tokens/{token}.{fmt}", summary="Open311: the request a token stands for")
def read_token(fmt: str, token: str, session: SessionDep) -> Response:
    """Requests are created synchronously here, so a token is the case code itself."""
    _check_format(fmt)
    case = _get_case(session, token)
    body = [{"service_request_id": case["code"], "token": token}]
    return _respond(fmt, body, "service_requests", "request")


# ------------------------------------------------------------ anything else


@router.api_route(
    "/{rest:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
def unknown_resource(rest: str, request: Request) -> Response:
    """Unknown paths and methods under /open311/v2 still answer in the spec's shape."""
    for route in router.routes:
        if route.path == f"{PREFIX}/{{rest:path}}":
            continue
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] == Match.PARTIAL:
            raise Open311Error(405, f"{request.method} is not allowed on {request.url.path}")
    raise Open311Error(
        404,
        f"no Open311 resource {request.url.path}; resources end in .json or .xml, "
        f"see {PREFIX}/discovery.json",
    )
