"""Browser logins: the token in a cookie, and the way back to the login page.

A browser that opens a map sends no Authorization header, so `POST /login`
(api/routers/login.py) puts the same signed token `POST /api/v1/auth/token` issues
into an HttpOnly, SameSite=Strict cookie. `api.deps.get_actor` reads it on GET and
HEAD only: a write never acts on a cookie, so there is nothing for a forged
cross-site form to ride on. A map page that would answer 401 to such a browser
redirects it to the login page instead (`LoginRequired`), and back afterwards.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request

from api.settings import Settings

TOKEN_COOKIE = "wangge_token"
LOGIN_PATH = "/login"
#: Pages that send an anonymous browser to the login page rather than answer 401.
LOGIN_PAGES_PREFIX = "/maps/"


def safe_next(target: str | None) -> str:
    """`target` if it is a path on this site, else "/": never a redirect elsewhere.

    "//host" and "/\\host" are read by browsers as another host, and browsers drop
    tabs and newlines from URLs ("/\\t/host" becomes "//host"), so any control
    character or backslash refuses the target too.
    """
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    if "\\" in target or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return "/"
    return target


def wants_login_page(request: Request) -> bool:
    """A browser opening a map page (GET or HEAD, asking for HTML), not a script
    fetching a layer or an API client: those keep the 401."""
    return (
        request.method in ("GET", "HEAD")
        and request.url.path.startswith(LOGIN_PAGES_PREFIX)
        and "text/html" in request.headers.get("accept", "")
    )


def secure_cookie(request: Request, settings: Settings) -> bool:
    """Mark the cookie Secure on https, and always in production (behind a proxy
    that ends TLS the request itself may arrive over plain http)."""
    return request.url.scheme == "https" or settings.environment == "production"


def token_cookie(value: str, *, max_age: int, secure: bool) -> str:
    """The Set-Cookie header value for the token cookie (max_age 0 clears it)."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[TOKEN_COOKIE] = value
    morsel = cookie[TOKEN_COOKIE]
    morsel["path"] = "/"
    morsel["max-age"] = max_age
    morsel["httponly"] = True
    morsel["samesite"] = "Strict"
    if secure:
        morsel["secure"] = True
    if max_age == 0:
        morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    return morsel.OutputString()


def cleared_token_cookie(request: Request) -> str:
    """The Set-Cookie header value that drops the token cookie from the browser."""
    settings: Settings = request.app.state.settings
    return token_cookie("", max_age=0, secure=secure_cookie(request, settings))


def login_url(next_path: str, lang: str | None = None) -> str:
    params = {"next": next_path}
    if lang == "en":  # Chinese is the page's default
        params["lang"] = lang
    return f"{LOGIN_PATH}?{urlencode(params)}"


class LoginRequired(HTTPException):
    """303 to the login page, which sends the browser back to this page afterwards.

    An HTTPException, so the app's one handler for those (api/errors.py) answers it
    with its Location header; `clear_cookie` also drops a cookie that no longer
    checks out (expired, its user disabled), so the browser stops sending it.
    """

    def __init__(self, request: Request, *, clear_cookie: bool = False) -> None:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = login_url(safe_next(here), request.query_params.get("lang"))
        headers = {"Location": target, "Cache-Control": "no-store"}
        if clear_cookie:
            headers["Set-Cookie"] = cleared_token_cookie(request)
        super().__init__(303, detail=f"log in to open this page: {target}", headers=headers)
