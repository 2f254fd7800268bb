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
    with sessions() as s:
        stored = s.scalars(sa.select(ApiKey)).one()
        assert stored.key_sha256 == users_repo.key_digest(key) and key not in stored.key_sha256
    me = httpx.get(f"{base}/api/v1/auth/me", headers={"X-API-Key": key}).json()
    assert me["role"] == "dispatcher" and me["scope"] == C1
    assert httpx.get(f"{base}/api/v1/cases", headers={"X-API-Key": key}).status_code == 200
    assert httpx.get(f"{base}/api/v1/users", headers={"X-API-Key": key}).status_code == 403
    assert httpx.get(f"{base}/api/v1/cases", headers={"X-API-Key": "wgk_nope"}).status_code == 401
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


def test_cli_user_and_apikey_commands(store_url, tmp_path, monkeypatch):
    seed_world(store_url)
    for name in list(os.environ):
        if name.startswith("WANGGE_") and name != "WANGGE_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("WANGGE_DATABASE_URL", store_url)
    monkeypatch.setenv("WANGGE_DATA_DIR", str(tmp_path))
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
