"""The browser login form: /login and /logout (see api/login.py for the cookie rules).

The form posts to the same credential check as `POST /api/v1/auth/token`
(`api.routers.auth.verify_credentials`) and keeps the token it issues in a cookie.
The page is self-contained (no script, no outside file), in Simplified Chinese or,
with `lang=en`, English, like the maps.
"""

from __future__ import annotations

from html import escape
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from api.auth import issue_token
from api.deps import SettingsDep
from api.login import (
    LOGIN_PATH,
    cleared_token_cookie,
    safe_next,
    secure_cookie,
    token_cookie,
)
from api.routers.auth import verify_credentials
from gis.errors import InvalidInput

router = APIRouter(tags=["auth"])

Lang = Literal["zh", "en"]

_LABELS: dict[str, tuple[str, str]] = {
    "title": ("登录 · 网格化治理", "Log in · wangge"),
    "heading": ("网格化治理 登录", "Log in to wangge"),
    "username": ("用户名", "Username"),
    "password": ("密码", "Password"),
    "submit": ("登录", "Log in"),
    "then": ("登录后前往：", "After logging in: "),
    "other_lang": ("English", "中文"),
    "wrong": (
        "用户名或密码错误，或该用户已停用。",
        "Wrong username or password, or the user is disabled.",
    ),
    "missing": ("请填写用户名和密码。", "Enter a username and a password."),
    "foreign": (
        "登录请求来自其他网站，已拒绝。请在本页登录。",
        "The login came from another site and was refused. Log in on this page.",
    ),
}

_STYLE = """
body{font:16px/1.5 system-ui,"PingFang SC","Microsoft YaHei",sans-serif;background:#f3f5f7;
margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
main{background:#fff;padding:2rem 2.25rem;border-radius:8px;box-shadow:0 2px 12px #0002;
width:20rem}
h1{font-size:1.3rem;margin:0 0 1.25rem}
label{display:block;margin:.75rem 0 .25rem}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.5rem;
font-size:1rem;border:1px solid #bbb;border-radius:4px}
button{margin-top:1.25rem;width:100%;padding:.6rem;font-size:1rem;border:0;border-radius:4px;
background:#c62828;color:#fff;cursor:pointer}
.error{background:#fdecea;color:#8a1c1c;padding:.5rem .75rem;border-radius:4px}
.note{color:#666;font-size:.85rem;margin-top:1rem;word-break:break-all}
.lang{float:right;font-size:.85rem}
"""

#: Nothing on the page may load from anywhere or be framed; the form posts here only.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}


def _label(key: str, lang: str) -> str:
    return _LABELS[key][1 if lang == "en" else 0]


def render_login_page(
    next_path: str, lang: str = "zh", *, error: str | None = None, username: str = ""
) -> str:
    """The login form; `error` is a label key shown above it."""
    e = escape
    other = "zh" if lang == "en" else "en"
    switch = f"{LOGIN_PATH}?{urlencode({'next': next_path, 'lang': other})}"
    message = f'<p class="error" role="alert">{e(_label(error, lang))}</p>' if error else ""
    note = (
        f'<p class="note">{e(_label("then", lang))}{e(next_path)}</p>' if next_path != "/" else ""
    )
    return f"""<!DOCTYPE html>
<html lang="{"en" if lang == "en" else "zh-CN"}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(_label("title", lang))}</title><style>{_STYLE}</style></head>
<body><main>
<a class="lang" href="{e(switch)}">{e(_label("other_lang", lang))}</a>
<h1>{e(_label("heading", lang))}</h1>
{message}
<form method="post" action="{LOGIN_PATH}">
<input type="hidden" name="next" value="{e(next_path)}">
<input type="hidden" name="lang" value="{e(lang)}">
<label for="username">{e(_label("username", lang))}</label>
<input type="text" id="username" name="username" value="{e(username)}" maxlength="64"
 autocomplete="username" autocapitalize="none" required{"" if username else " autofocus"}>
<label for="password">{e(_label("password", lang))}</label>
<input type="password" id="password" name="password" maxlength="1024"
 autocomplete="current-password" required{" autofocus" if username else ""}>
<button type="submit">{e(_label("submit", lang))}</button>
</form>
{note}
</main></body></html>
"""


def _page(next_path: str, lang: str, status: int = 200, **kwargs) -> HTMLResponse:
    headers = dict(_HEADERS)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return HTMLResponse(
        render_login_page(next_path, lang, **kwargs), status_code=status, headers=headers
    )


def _same_origin(request: Request) -> bool:
    """No Origin header (not a browser, or an old one), or this very host. Refusing a
    cross-site post keeps another site from logging a browser in as someone else."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


@router.get(LOGIN_PATH, response_class=HTMLResponse, include_in_schema=False)
def login_page(
    next: Annotated[str | None, Query(description="where to go after logging in")] = None,
    lang: Annotated[Lang, Query(description="labels: zh (default) or en")] = "zh",
) -> HTMLResponse:
    """The login form for a person in a browser."""
    return _page(safe_next(next), lang)


@router.post(LOGIN_PATH, include_in_schema=False)
async def submit_login(request: Request, settings: SettingsDep) -> Response:
    """Check the form's username and password as the token route does; on success put
    the token in the cookie and go to `next` (a path on this site only)."""
    raw = await request.body()  # kept by the request: verify_credentials reads it again
    fields = parse_qs(raw.decode("utf-8", errors="replace"))
    lang = "en" if fields.get("lang", [""])[0] == "en" else "zh"
    next_path = safe_next(fields.get("next", [""])[0])
    username = fields.get("username", [""])[0][:64]
    if not _same_origin(request):
        return _page(next_path, lang, 403, error="foreign")
    try:
        principal = await verify_credentials(request)
    except InvalidInput:
        return _page(next_path, lang, 400, error="missing", username=username)
    except HTTPException as exc:
        if exc.status_code != 401:
            raise
        return _page(next_path, lang, 401, error="wrong", username=username)
    token = issue_token(settings, principal.name)
    response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
    response.headers.append(
        "set-cookie",
        token_cookie(
            token["access_token"],
            max_age=int(settings.token_expiry_s),
            secure=secure_cookie(request, settings),
        ),
    )
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request) -> Response:
    """Drop the cookie and show the login form. (The token itself stays valid until it
    expires: tokens are not stored, so there is nothing to revoke.)"""
    response = RedirectResponse(LOGIN_PATH, status_code=303, headers={"Cache-Control": "no-store"})
    response.headers.append("set-cookie", cleared_token_cookie(request))
    return response
