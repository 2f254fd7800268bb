"""Logins, tokens, API keys, the production rules and the user commands, on both stores."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from api.auth import issue_token
from api.cli import app as cli
from api.settings import Settings
from gis.db import users_repo
from gis.db.engine import make_engine, make_sessionmaker
from gis.db.models import ApiKey, AuditEntry, User
from tests.server import serve
from tests.test_access import C1, PASSWORD, SECRET, seed_world

pytestmark = pytest.mark.real_auth


@pytest.fixture
def server(store_url, tmp_path):
    seed_world(store_url)
    settings = Settings(
        database_url=store_url,
        data_dir=tmp_path,
        secret_key=SECRET,
        auth_cache_s=0,  # every request reads the user again: no waiting in these tests
    )
    engine = make_engine(store_url)
    with serve(settings) as base:
        yield base, settings, make_sessionmaker(engine)
    engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_by_form_and_json_and_refusals(server):
    base, settings, _ = server
    form = httpx.post(f"{base}/api/v1/auth/token", data={"username": "w1", "password": PASSWORD})
    assert form.status_code == 200, form.text
    body = form.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    me = httpx.get(f"{base}/api/v1/auth/me", headers=bearer(body["access_token"])).json()
    assert me == {"role": "worker", "name": "w1", "scope": "W1", "grid_codes": [f"{C1}001"]}
    as_json = httpx.post(f"{base}/api/v1/auth/token", json={"username": "w1", "password": PASSWORD})
    assert as_json.status_code == 200
    claims = jwt.decode(as_json.json()["access_token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "w1" and claims["exp"] - claims["iat"] == 3600
    for creds in (
        {"username": "w1", "password": "wrong password"},
        {"username": "ghost", "password": PASSWORD},
    ):  # noqa: E501
        refused = httpx.post(f"{base}/api/v1/auth/token", data=creds)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "access_token" not in refused.text
    missing = httpx.post(f"{base}/api/v1/auth/token", json={"username": "w1"})
    assert missing.status_code == 400 and "password" in missing.json()["message"]
    # No credentials: anonymous, and the staff routes say to log in.
    assert httpx.get(f"{base}/api/v1/auth/me").json()["role"] == "anonymous"
    assert httpx.get(f"{base}/api/v1/buildings").status_code == 401


def test_expired_forged_and_malformed_tokens_are_refused(server):
    base, settings, _ = server
    old = issue_token(settings, "admin", now=datetime.now(UTC) - timedelta(hours=2))
    expired = httpx.get(f"{base}/api/v1/users", headers=bearer(old["access_token"]))
    assert expired.status_code == 401 and "expired" in expired.json()["message"]
    forged = jwt.encode(
        {"sub": "admin", "iat": datetime.now(UTC), "exp": datetime.now(UTC) + timedelta(hours=1),
         "typ": "access"},
        "another-secret-of-at-least-32-bytes!!",
        algorithm="HS256",
    )  # fmt: skip
    assert httpx.get(f"{base}/api/v1/users", headers=bearer(forged)).status_code == 401
    assert (
        httpx.get(f"{base}/api/v1/users", headers={"Authorization": "Basic eDp5"}).status_code
        == 401
    )
    assert httpx.get(f"{base}/api/v1/users", headers=bearer("not.a.token")).status_code == 401
    short = Settings(secret_key=SECRET, token_expiry_s=3)
    token = issue_token(short, "admin")["access_token"]
    assert httpx.get(f"{base}/api/v1/users", headers=bearer(token)).status_code == 200
    time.sleep(3.2)
    assert httpx.get(f"{base}/api/v1/users", headers=bearer(token)).status_code == 401


def test_dev_headers_are_ignored_unless_switched_on(server, store_url, tmp_path):
    base, _, _ = server
    claimed = {"X-Wangge-Role": "admin", "X-Wangge-User": "mallory"}
    assert httpx.get(f"{base}/api/v1/audit", headers=claimed).status_code == 401
    dev = Settings(database_url=store_url, data_dir=tmp_path, dev_role_headers=True)
    with serve(dev) as dev_base:
        assert httpx.get(f"{dev_base}/api/v1/audit", headers=claimed).status_code == 200


def test_a_disabled_users_token_stops_working(server):
    base, settings, sessions = server
    admin = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}
    )
    w1 = httpx.post(f"{base}/api/v1/auth/token", data={"username": "w1", "password": PASSWORD})
    token = w1.json()["access_token"]
    assert httpx.get(f"{base}/api/v1/cases", headers=bearer(token)).status_code == 200
    off = httpx.post(
        f"{base}/api/v1/users/w1/disable", headers=bearer(admin.json()["access_token"])
    )
    assert off.status_code == 200 and off.json()["active"] is False
    assert httpx.get(f"{base}/api/v1/cases", headers=bearer(token)).status_code == 401
    again = httpx.post(f"{base}/api/v1/auth/token", data={"username": "w1", "password": PASSWORD})
    assert again.status_code == 401
    # Disabled elsewhere (another process, the CLI): noticed on the next request here.
    r1 = httpx.post(f"{base}/api/v1/auth/token", data={"username": "r1", "password": PASSWORD})
    r1_token = r1.json()["access_token"]
    with sessions() as s, s.begin():
        users_repo.disable_user(s, "r1")
    assert httpx.get(f"{base}/api/v1/cases", headers=bearer(r1_token)).status_code == 401
    with sessions() as s:
        actions = s.scalars(sa.select(AuditEntry.action).where(AuditEntry.object_id == "w1"))
        assert "user.disable" in list(actions)


def test_api_keys_act_with_their_role_and_are_stored_hashed(server):
    base, _, sessions = server
    admin = httpx.post(
        f"{base}/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}
    )
    admin_h = bearer(admin.json()["access_token"])
    made = httpx.post(
        f"{base}/api/v1/apikeys",
        json={"name": "hotline", "role": "dispatcher", "scope": C1},
        headers=admin_h,
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    listed = httpx.get(f"{base}/api/v1/apikeys", headers=admin_h).json()
    assert [k["name"] for k in listed] == ["hotline"] and key not in str(listed)
    assert listed[0]["last_used_at"] is None  # not used yet
    with sessions() as s:
        stored = s.scalars(sa.select(ApiKey)).one()
        assert stored.key_sha256 == users_repo.key_digest(key) and key not in stored.key_sha256
    me = httpx.get(f"{base}/api/v1/auth/me", headers={"X-API-Key": key}).json()
    assert me["role"] == "dispatcher" and me["scope"] == C1
    assert httpx.get(f"{base}/api/v1/cases", headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(f"{base}/api/v1/users", headers={"X-API-Key": key}).status_code == 403
    assert httpx.get(f"{base}/api/v1/cases", headers={"X-API-Key": "wgk_nope"}).status_code == 401
    # The key's use is noted, to the minute: an operator sees which keys are alive.
    used = httpx.get(f"{base}/api/v1/apikeys", headers=admin_h).json()[0]["last_used_at"]
    assert used is not None
    assert abs(datetime.fromisoformat(used) - datetime.now(UTC)) < timedelta(minutes=1)
    with sessions() as s, s.begin():
        assert users_repo.mark_api_key_used(s, key) is False  # within the minute: no write
        later = datetime.now(UTC) + timedelta(minutes=2)
        assert users_repo.mark_api_key_used(s, key, now=later) is True
    bad_scope = httpx.post(
        f"{base}/api/v1/apikeys",
        json={"name": "x", "role": "dispatcher", "scope": "nowhere"},
        headers=admin_h,
    )
    assert bad_scope.status_code == 400 and bad_scope.json()["field"] == "scope"
    # A stored key also opens Open311 intake (its api_key form field), until disabled.
    form = {"api_key": key, "service_code": "0101", "lat": "39.91", "long": "116.405"}
    assert httpx.post(f"{base}/open311/v2/requests.json", data=form).status_code == 201
    httpx.post(f"{base}/api/v1/apikeys/hotline/disable", headers=admin_h)
    assert httpx.get(f"{base}/api/v1/cases", headers={"X-API-Key": key}).status_code == 401
    assert httpx.post(f"{base}/open311/v2/requests.json", data=form).status_code == 403


def test_passwords_are_argon2_hashes(server):
    _, _, sessions = server
    with sessions() as s:
        hashes = list(s.scalars(sa.select(User.password_hash)))
    assert hashes and all(h.startswith("$argon2id$") and PASSWORD not in h for h in hashes)


def test_production_needs_a_secret_and_no_dev_headers(tmp_path):
    keys = {"open311_api_keys": "k1"}
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings(data_dir=tmp_path, environment="production", **keys)
    with pytest.raises(ValueError, match="DEV_ROLE_HEADERS"):
        Settings(
            data_dir=tmp_path, environment="production", secret_key=SECRET,
            dev_role_headers=True, **keys,
        )  # fmt: skip
    ok = Settings(data_dir=tmp_path, environment="production", secret_key=SECRET, **keys)
    assert ok.dev_role_headers is False and ok.token_expiry_s == 3600


def _cli_environment(store_url, tmp_path, monkeypatch) -> None:
    """The command line as a user runs it on this store: only our WANGGE_ settings."""
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANGGE_DATABASE_URL", store_url)
    monkeypatch.setenv("WANGGE_DATA_DIR", str(tmp_path))


def test_cli_user_and_apikey_commands(store_url, tmp_path, monkeypatch):
    seed_world(store_url)
    _cli_environment(store_url, tmp_path, monkeypatch)
    runner = CliRunner()
    added = runner.invoke(
        cli, ["user", "add", "disp2", "--role", "dispatcher", "--scope", C1, "--password", PASSWORD]
    )
    assert added.exit_code == 0, added.output
    bad = runner.invoke(
        cli, ["user", "add", "planner2", "--role", "planner", "--scope", C1, "--password", PASSWORD]
    )
    assert bad.exit_code == 1 and "district or street" in bad.output
    listed = runner.invoke(cli, ["user", "list"])
    assert listed.exit_code == 0 and "disp2" in listed.output and "planner2" not in listed.output
    assert runner.invoke(cli, ["user", "disable", "disp2"]).exit_code == 0
    assert runner.invoke(cli, ["user", "disable", "ghost"]).exit_code == 1
    key = runner.invoke(cli, ["apikey", "add", "open311-app", "--role", "resident"])
    assert key.exit_code == 0 and key.output.strip().startswith("wgk_")
    assert "open311-app" in runner.invoke(cli, ["apikey", "list"]).output
    engine = make_engine(store_url)
    try:
        with make_sessionmaker(engine)() as s:
            user = s.scalars(sa.select(User).where(User.username == "disp2")).one()
            assert user.active is False and user.scope == C1
            audit = s.scalars(
                sa.select(AuditEntry.action).where(AuditEntry.actor == "admin:cli")
            ).all()
            assert sorted(audit) == ["apikey.add", "user.add", "user.disable"]
    finally:
        engine.dispose()


# ------------------------------------------------------------- browser login (cookie)

COOKIE = "wangge_token"


def cookie_header(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


def form_login(base: str, username: str, password: str = PASSWORD, **fields) -> httpx.Response:
    return httpx.post(f"{base}/login", data={"username": username, "password": password, **fields})


def set_cookie(response: httpx.Response) -> dict[str, str]:
    """The token cookie the response sets: its value and attributes (lower-case names)."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
    assert len(headers) == 1, response.headers
    first, *attrs = (part.strip() for part in headers[0].split(";"))
    out = {"value": first.split("=", 1)[1]}
    for attr in attrs:
        name, _, value = attr.partition("=")
        out[name.lower()] = value
    return out


def test_browser_login_sets_a_strict_httponly_cookie(server):
    base, settings, _ = server
    page = httpx.get(f"{base}/login", params={"next": f"/maps/grids/{C1}001"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "用户名" in page.text and "密码" in page.text
    assert f'name="next" value="/maps/grids/{C1}001"' in page.text
    assert "http://" not in page.text and "https://" not in page.text and "<script" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "Username" in httpx.get(f"{base}/login", params={"lang": "en"}).text

    done = form_login(base, "w1", next=f"/maps/grids/{C1}001?lang=en")
    assert done.status_code == 303 and done.headers["location"] == f"/maps/grids/{C1}001?lang=en"
    cookie = set_cookie(done)
    assert cookie["path"] == "/" and cookie["samesite"] == "Strict"
    assert "httponly" in cookie and "secure" not in cookie  # plain http in development
    assert int(cookie["max-age"]) == int(settings.token_expiry_s) == 3600
    claims = jwt.decode(cookie["value"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "w1" and claims["exp"] - claims["iat"] == 3600
    # Over https (a proxy saying so; uvicorn trusts it from 127.0.0.1) it is Secure.
    https = httpx.post(
        f"{base}/login",
        data={"username": "w1", "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert https.status_code == 303 and "secure" in set_cookie(https)

    wrong = form_login(base, "w1", "wrong password", next="/maps/coverage")
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert "用户名或密码错误" in wrong.text and 'value="w1"' in wrong.text
    assert 'name="next" value="/maps/coverage"' in wrong.text
    ghost = form_login(base, "ghost", lang="en")
    assert ghost.status_code == 401 and "Wrong username or password" in ghost.text
    missing = httpx.post(f"{base}/login", data={"username": "w1"})
    assert missing.status_code == 400 and "set-cookie" not in missing.headers
    # A login posted by another site's page (login CSRF) is refused.
    foreign = httpx.post(
        f"{base}/login",
        data={"username": "w1", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    same = httpx.post(
        f"{base}/login",
        data={"username": "w1", "password": PASSWORD},
        headers={"Origin": base},
    )
    assert same.status_code == 303


def test_login_redirects_only_to_a_path_on_this_site(server):
    base, _, _ = server
    for target in (
        "//evil.example",
        "//evil.example/maps/coverage",
        "/\\evil.example",
        "/\t/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "maps/coverage",
        "",
    ):
        done = form_login(base, "w1", next=target)
        assert done.status_code == 303 and done.headers["location"] == "/", target
        page = httpx.get(f"{base}/login", params={"next": target})
        assert 'name="next" value="/"' in page.text, target
    assert form_login(base, "w1").headers["location"] == "/"


def test_the_cookie_opens_staff_pages_on_get_only(server):
    base, _, _ = server
    token = set_cookie(form_login(base, "w1"))["value"]
    me = httpx.get(f"{base}/api/v1/auth/me", headers=cookie_header(token)).json()
    assert me["role"] == "worker" and me["name"] == "w1"
    cases = httpx.get(f"{base}/api/v1/cases", headers=cookie_header(token))
    assert cases.status_code == 200, cases.text
    (case,) = cases.json()["cases"]
    own_map = httpx.get(
        f"{base}/maps/grids/{C1}001", headers=cookie_header(token) | {"Accept": "text/html"}
    )
    assert own_map.status_code == 200 and "text/html" in own_map.headers["content-type"]
    # Not the worker's grid: refused as for a bearer token (403), not sent to log in.
    other = httpx.get(
        f"{base}/maps/grids/G-EAST-1", headers=cookie_header(token) | {"Accept": "text/html"}
    )
    assert other.status_code == 403
    # A write never acts on the cookie: the same step is anonymous (401) with it and
    # reaches the workflow (409: a reported case cannot be closed) with the token.
    step = f"{base}/api/v1/cases/{case['code']}/close"
    assert httpx.post(step, headers=cookie_header(token)).status_code == 401
    assert httpx.post(step, headers=bearer(token)).status_code == 409
    # A header credential wins over the cookie.
    assert (
        httpx.get(
            f"{base}/api/v1/auth/me", headers=cookie_header(token) | {"X-API-Key": "wgk_nope"}
        ).status_code
        == 401
    )

    out = httpx.post(f"{base}/logout", headers=cookie_header(token))
    assert out.status_code == 303 and out.headers["location"] == "/login"
    cleared = set_cookie(out)
    assert cleared["value"] in ("", '""') and cleared["max-age"] == "0"
    assert cleared["path"] == "/" and "httponly" in cleared


def test_a_map_sends_an_anonymous_browser_to_log_in(server):
    base, settings, _ = server
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = httpx.get(f"{base}/maps/grids/{C1}001?lang=en", headers=html)
    assert page.status_code == 303
    assert page.headers["location"] == (
        f"/login?next=%2Fmaps%2Fgrids%2F{C1}001%3Flang%3Den&lang=en"
    )
    assert "set-cookie" not in page.headers
    assert httpx.get(f"{base}/maps/coverage", headers=html).headers["location"] == (
        "/login?next=%2Fmaps%2Fcoverage"
    )
    # API clients and the page's own layer fetches keep the 401.
    assert httpx.get(f"{base}/maps/grids/{C1}001").status_code == 401
    layer = httpx.get(
        f"{base}/maps/coverage?layer=uncovered", headers={"Accept": "application/geo+json"}
    )
    assert layer.status_code == 401 and layer.json()["error"] == "Unauthorized"
    assert httpx.get(f"{base}/api/v1/cases", headers=html).status_code == 401
    # The resident map needs no login.
    assert httpx.get(f"{base}/maps/nearest?lon=116.405&lat=39.91", headers=html).status_code != 303

    # An expired cookie: a map page sends the browser to log in and drops the cookie;
    # the API answers as for an expired token; the login form still opens.
    old = issue_token(settings, "w1", now=datetime.now(UTC) - timedelta(hours=2))["access_token"]
    stale = httpx.get(f"{base}/maps/grids/{C1}001", headers=html | cookie_header(old))
    assert stale.status_code == 303 and stale.headers["location"].startswith("/login?next=")
    assert set_cookie(stale)["max-age"] == "0"
    api = httpx.get(f"{base}/api/v1/cases", headers=cookie_header(old))
    assert api.status_code == 401 and "expired" in api.json()["message"]
    assert httpx.get(f"{base}/login", headers=html | cookie_header(old)).status_code == 200
    assert httpx.get(f"{base}/login", headers=cookie_header("forged")).status_code == 200


def test_a_disabled_users_cookie_stops_working(store_url, tmp_path):
    """Disabled elsewhere (another process, the CLI): this process trusts what it looked
    up for auth_cache_s, and refuses the cookie once that has passed."""
    seed_world(store_url)
    cache_s = 1.0
    settings = Settings(
        database_url=store_url, data_dir=tmp_path, secret_key=SECRET, auth_cache_s=cache_s
    )
    engine = make_engine(store_url)
    html = {"Accept": "text/html"}
    try:
        with serve(settings) as base:
            token = set_cookie(form_login(base, "w1"))["value"]
            grid_map = f"{base}/maps/grids/{C1}001"
            assert httpx.get(grid_map, headers=html | cookie_header(token)).status_code == 200
            with make_sessionmaker(engine)() as s, s.begin():
                users_repo.disable_user(s, "w1")
            disabled_at = time.monotonic()
            while True:
                page = httpx.get(grid_map, headers=html | cookie_header(token))
                if page.status_code != 200:
                    break
                assert time.monotonic() - disabled_at < cache_s + 1.0, "still served"
                time.sleep(0.1)
            assert page.status_code == 303 and page.headers["location"].startswith("/login")
            api = httpx.get(f"{base}/api/v1/cases", headers=cookie_header(token))
            assert api.status_code == 401
            assert form_login(base, "w1").status_code == 401
    finally:
        engine.dispose()


def test_demo_creates_one_login_per_staff_role(store_url, tmp_path, monkeypatch):
    """`wangge demo` on an empty store: the staff maps need someone to log in, so it adds
    a login per role with random passwords, kept in the data directory for its owner only."""
    _cli_environment(store_url, tmp_path, monkeypatch)
    runner = CliRunner()
    built = runner.invoke(cli, ["demo", "--size", "tiny", "--no-serve"])
    assert built.exit_code == 0, built.output
    path = tmp_path / "demo-logins.txt"
    assert path.stat().st_mode & 0o777 == 0o600
    rows = [line.split() for line in path.read_text().splitlines()[1:]]
    assert [(r[0], r[2]) for r in rows] == [
        ("demo-admin", "admin"),
        ("demo-planner", "planner"),
        ("demo-dispatcher", "dispatcher"),
        ("demo-worker", "worker"),
    ]
    assert "demo-worker" in built.output  # shown to whoever started it
    engine = make_engine(store_url)
    try:
        with make_sessionmaker(engine)() as s:
            for username, password, role, scope in rows:
                principal = users_repo.authenticate(s, username, password)
                assert principal is not None and principal.role == role, username
                assert (principal.scope or "(everything)") == scope
                assert users_repo.authenticate(s, username, password + "x") is None
    finally:
        engine.dispose()
    # A second run serves the store as it is and shows the same logins again.
    again = runner.invoke(cli, ["demo", "--size", "tiny", "--no-serve"])
    assert again.exit_code == 0 and rows[0][1] in again.output
