"""Who may call what: one rule per route of the app, enforced by one app-level dependency.

`RULES` maps (method, path template) to the roles that may call the route and, where
the route names an object, the scope check made before the handler runs. Routes whose
data is filtered by the repositories (cases, buildings, workers, generations) say
`check="repo"`: the handler passes the actor down and the SQL keeps only what the
caller may reach (a case out of reach is a 404, as if it did not exist).

A route with no rule is refused (500 in the log, 403 to the caller) rather than served
unguarded, and `tests/test_access.py` fails on it, so a new endpoint needs a rule here.

No credentials → anonymous; a role not listed → 401 for anonymous callers (log in),
403 for everyone else. A browser opening a map page anonymously (GET, Accept: text/html)
is sent to the login form instead of the 401 (`api.login.LoginRequired`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import unauthorized
from api.deps import get_actor
from api.login import LoginRequired, wants_login_page
from gis.cases import Actor, scope_kind
from gis.db import plans_repo, repo
from gis.db.models import Area
from gis.errors import Forbidden

log = logging.getLogger("wangge.api")

EVERYONE = frozenset(
    {"anonymous", "resident", "worker", "dispatcher", "department", "planner", "admin"}
)
SIGNED_IN = EVERYONE - {"anonymous"}
STAFF = frozenset({"worker", "dispatcher", "department", "planner", "admin"})
CASE_READERS = STAFF | {"resident"}
AREA_STAFF = frozenset({"worker", "dispatcher", "planner", "admin"})
PLANNING = frozenset({"planner", "admin"})
DISTRICT_STAFF = frozenset({"dispatcher", "planner", "admin"})
ADMIN = frozenset({"admin"})

#: Scope checks made here, before the handler:
#:  grid      - the path parameter `param` is a grid the caller reaches (a worker's own)
#:  area      - the query or JSON body field `param` is an area within the caller's
#:              area; when it is absent the caller must reach the whole district
#:  district  - the caller reaches a whole district (admin, or a district-level scope)
#:  plan      - every community of the plan `param` lies within the caller's area
#:  repo      - the repository filters by the actor (nothing to do here)
CHECKS = ("grid", "area", "district", "plan", "repo")


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    check: str | None = None
    param: str | None = None
    note: str = ""


API = "/api/v1"
O311 = "/open311/v2"

RULES: dict[tuple[str, str], Rule] = {
    # service, documentation
    ("GET", "/"): Rule(EVERYONE),
    ("GET", "/healthz"): Rule(EVERYONE),
    ("GET", "/readyz"): Rule(EVERYONE),
    ("GET", "/openapi.json"): Rule(EVERYONE),
    ("GET", "/docs"): Rule(EVERYONE),
    ("GET", "/docs/oauth2-redirect"): Rule(EVERYONE),
    ("GET", API): Rule(EVERYONE),
    # identities and the audit log
    ("POST", f"{API}/auth/token"): Rule(EVERYONE, note="login"),
    ("GET", f"{API}/auth/me"): Rule(EVERYONE),
    ("GET", "/login"): Rule(EVERYONE, note="the browser login form"),
    ("POST", "/login"): Rule(EVERYONE, note="login; sets the token cookie"),
    ("POST", "/logout"): Rule(EVERYONE, note="clears the token cookie"),
    ("GET", f"{API}/users"): Rule(ADMIN),
    ("POST", f"{API}/users"): Rule(ADMIN),
    ("POST", f"{API}/users/{{username}}/disable"): Rule(ADMIN),
    ("GET", f"{API}/apikeys"): Rule(ADMIN),
    ("POST", f"{API}/apikeys"): Rule(ADMIN),
    ("POST", f"{API}/apikeys/{{name}}/disable"): Rule(ADMIN),
    ("GET", f"{API}/audit"): Rule(ADMIN),
    # public facts: boundaries, stations, categories, lookups
    ("GET", f"{API}/generations"): Rule(EVERYONE),
    ("GET", f"{API}/generations/{{name_or_id}}"): Rule(EVERYONE),
    ("POST", f"{API}/generations/{{name_or_id}}/activate"): Rule(PLANNING, "repo"),
    ("GET", f"{API}/areas"): Rule(EVERYONE, note="published boundaries"),
    ("GET", f"{API}/areas/{{code}}"): Rule(EVERYONE),
    ("GET", f"{API}/stations"): Rule(EVERYONE),
    ("GET", f"{API}/stations/nearest"): Rule(EVERYONE),
    ("GET", f"{API}/categories"): Rule(EVERYONE),
    ("GET", f"{API}/locate"): Rule(EVERYONE),
    # staff data, filtered by the repositories
    ("GET", f"{API}/buildings"): Rule(AREA_STAFF, "repo"),
    ("GET", f"{API}/workers"): Rule(AREA_STAFF, "repo"),
    ("POST", f"{API}/imports/{{layer}}"): Rule(PLANNING, "district"),
    # stations planning (district-wide answers)
    ("GET", f"{API}/coverage"): Rule(PLANNING, "district"),
    ("POST", f"{API}/stations/siting"): Rule(PLANNING, "district"),
    # cases: anyone may report; reading and steps are filtered by the repository
    ("POST", f"{API}/cases"): Rule(EVERYONE, note="public write; the public view back"),
    ("GET", f"{API}/cases"): Rule(CASE_READERS, "repo"),
    ("GET", f"{API}/cases/stats"): Rule(STAFF, "repo"),
    ("GET", f"{API}/cases/{{ref}}"): Rule(CASE_READERS, "repo"),
    ("POST", f"{API}/cases/{{ref}}/{{action}}"): Rule(CASE_READERS, "repo"),
    # workload and plans (api/routers/workload.py, plans.py)
    ("GET", f"{API}/workload"): Rule(DISTRICT_STAFF, "area", "parent"),
    ("POST", f"{API}/plans"): Rule(PLANNING, "area", "parent"),
    ("GET", f"{API}/plans"): Rule(PLANNING, "repo"),
    ("POST", f"{API}/plans/upload"): Rule(PLANNING, "district"),
    ("POST", f"{API}/plans/upload/file"): Rule(PLANNING, "district"),
    ("GET", f"{API}/plans/{{plan_id}}"): Rule(PLANNING, "plan", "plan_id"),
    ("GET", f"{API}/plans/{{plan_id}}/grids"): Rule(PLANNING, "plan", "plan_id"),
    ("GET", f"{API}/plans/{{plan_id}}/compare"): Rule(PLANNING, "plan", "plan_id"),
    ("GET", f"{API}/plans/{{plan_id}}/handover"): Rule(PLANNING, "plan", "plan_id"),
    ("POST", f"{API}/plans/{{plan_id}}/apply"): Rule(PLANNING, "plan", "plan_id"),
    # Open311: public by the standard; no personal fields in its answers
    ("GET", f"{O311}/discovery.{{fmt}}"): Rule(EVERYONE),
    ("GET", f"{O311}/services.{{fmt}}"): Rule(EVERYONE),
    ("GET", f"{O311}/services/{{service_code}}.{{fmt}}"): Rule(EVERYONE),
    ("POST", f"{O311}/requests.{{fmt}}"): Rule(EVERYONE, note="api_key field checked"),
    ("GET", f"{O311}/requests.{{fmt}}"): Rule(EVERYONE),
    ("GET", f"{O311}/requests/{{service_request_id}}.{{fmt}}"): Rule(EVERYONE),
    ("GET", f"{O311}/tokens/{{token}}.{{fmt}}"): Rule(EVERYONE),
    # Open311's own 404/405 for anything else under its prefix
    **{(m, f"{O311}/{{rest}}"): Rule(EVERYONE) for m in ("GET", "POST", "PUT", "PATCH", "DELETE")},
    # HTML maps (api/routers/maps.py)
    ("GET", "/maps/coverage"): Rule(DISTRICT_STAFF, "district"),
    ("GET", "/maps/grids/{code}"): Rule(AREA_STAFF, "grid", "code"),
    ("GET", "/maps/nearest"): Rule(EVERYONE, note="the resident map"),
    ("GET", "/maps/cases"): Rule(DISTRICT_STAFF, "district"),
    ("GET", "/maps/static/{path}"): Rule(EVERYONE),
}


def rule_for(method: str, template: str) -> Rule | None:
    method = "GET" if method == "HEAD" else method
    return RULES.get((method, _plain_template(template)))


def _plain_template(template: str) -> str:
    # Starlette writes a converter into the template ({path:path}); the table does not.
    out, depth, skipping = [], 0, False
    for ch in template:
        if ch == "{":
            depth, skipping = depth + 1, False
        elif ch == "}":
            depth, skipping = depth - 1, False
        elif ch == ":" and depth:
            skipping = True
            continue
        if not skipping:
            out.append(ch)
    return "".join(out)


def route_template(request: Request) -> str | None:
    """The matched route's full path template (with the prefixes it was included under)."""
    # FastAPI keeps the route as included (prefixes and all) under scope["fastapi"];
    # scope["route"] is the route as its router declared it, without the prefixes.
    context = (request.scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path_format", None)
    if template:
        return template
    route = request.scope.get("route")
    return getattr(route, "path_format", None) or getattr(route, "path", None)


# ------------------------------------------------------------------ checks


def reaches_district(session: Session, actor: Actor) -> bool:
    """Admins, unscoped development callers, or an area scope that is a top-level area."""
    kind = scope_kind(actor)
    if kind == "all":
        return True
    if kind != "area":
        return False
    parent = session.execute(
        sa.select(Area.parent_code).where(Area.code == actor.scope).limit(1)
    ).first()
    return parent is not None and parent.parent_code is None


def _check(session: Session, actor: Actor, rule: Rule, value: Any) -> None:
    """Raise Forbidden when the object the rule names is outside the actor's reach."""
    if rule.check == "district":
        if not reaches_district(session, actor):
            raise Forbidden(
                "this answers for the whole district; your scope "
                f"{actor.scope!r} covers only part of it",
                scope=actor.scope,
            )
    elif rule.check == "grid":
        if not repo.actor_reaches_area(session, actor, str(value)):
            raise Forbidden(f"grid {value!r} is outside your scope", code=str(value))
    elif rule.check == "area":
        if value in (None, ""):
            if not reaches_district(session, actor):
                raise Forbidden(
                    f"{rule.param} is required: an area within your scope {actor.scope!r}",
                    field=rule.param,
                )
        elif not repo.actor_reaches_area(session, actor, str(value)):
            raise Forbidden(f"{rule.param} {value!r} is outside your scope", field=rule.param)
    elif rule.check == "plan":
        if scope_kind(actor) == "all":
            return
        try:
            plan_id = int(value)
        except (TypeError, ValueError):
            return  # the handler answers 400 for a malformed id
        communities = plans_repo.plan_communities(session, plan_id)
        if communities is None:
            return  # the handler answers 404
        outside = [c for c in communities if not repo.actor_reaches_area(session, actor, c)]
        if outside or not communities:
            raise Forbidden(
                f"plan {plan_id} touches communities outside your scope: "
                + ", ".join(outside[:10] or ["(none recorded)"]),
                plan=plan_id,
            )


async def _param(request: Request, name: str) -> Any:
    """A path or query parameter, else a field of a JSON body."""
    if name in request.path_params:
        return request.path_params[name]
    if name in request.query_params:
        return request.query_params[name]
    if request.method == "POST" and "json" in request.headers.get("content-type", ""):
        try:
            body = await request.json()
        except ValueError:
            return None  # the handler refuses the body with 400
        if isinstance(body, dict):
            return body.get(name)
    return None


async def enforce(request: Request, actor: Annotated[Actor, Depends(get_actor)]) -> None:
    """The app-level dependency: the route's rule, then its scope check."""
    template = route_template(request)
    rule = rule_for(request.method, template or "")
    if rule is None:
        log.error("no access rule for %s %s: refused", request.method, template)
        raise Forbidden(f"no access rule for {request.method} {template}; refused")
    if actor.role not in rule.roles:
        if actor.role == "anonymous":
            if wants_login_page(request):  # a person opening a map: the login form
                raise LoginRequired(request)
            raise unauthorized("log in: this needs a token (POST /api/v1/auth/token) or API key")
        raise Forbidden(
            f"a {actor.role} may not {request.method} {template}",
            role=actor.role,
            allowed=sorted(rule.roles),
        )
    if rule.check in (None, "repo"):
        return
    value = await _param(request, rule.param) if rule.param else None

    def run() -> None:
        with request.app.state.sessions() as session:
            _check(session, actor, rule, value)

    await run_in_threadpool(run)
