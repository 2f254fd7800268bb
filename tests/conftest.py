"""Test setup: a real PostGIS server and real SpatiaLite files, never mocks.

Every test that takes the `store` fixture runs twice, once per store. PostGIS is a
throwaway cluster started here (or the server named by WANGGE_TEST_DATABASE_URL);
each test gets a fresh database cloned from a migrated template. A skipped test
fails the run: a database test that silently skips is a test that does not exist.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from gis.db.engine import make_engine, make_sessionmaker, migrate
from tests.pgserver import remove, start_postgis

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPLATE_DB = "wangge_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def postgis_admin_url() -> Iterator[str]:
    """URL of a PostGIS server's maintenance database, started for this run if needed."""
    url = os.environ.get("WANGGE_TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = start_postgis()
    try:
        yield server.url
    finally:
        remove(server)


@pytest.fixture(scope="session")
def postgis_template(postgis_admin_url: str) -> str:
    """A migrated database that each test's database is cloned from."""
    admin = sa.create_engine(postgis_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        conn.exec_driver_sql(f"CREATE DATABASE {TEMPLATE_DB}")
    admin.dispose()
    url = sa.engine.make_url(postgis_admin_url).set(database=TEMPLATE_DB)
    engine = make_engine(url.render_as_string(hide_password=False))
    migrate(engine)
    engine.dispose()
    return TEMPLATE_DB


def _fresh_postgis_url(admin_url: str, template: str) -> str:
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    admin.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@dataclass
class Store:
    """One migrated, empty store for a test."""

    kind: str
    url: str
    engine: sa.Engine
    sessions: sessionmaker[Session]

    def session(self) -> Session:
        return self.sessions()


@pytest.fixture(params=["spatialite", "postgis"])
def store_url(request, tmp_path) -> str:
    """The URL of an empty, migrated store of each kind."""
    if request.param == "spatialite":
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        return url
    admin = request.getfixturevalue("postgis_admin_url")
    template = request.getfixturevalue("postgis_template")
    return _fresh_postgis_url(admin, template)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    engine = make_engine(store_url)
    kind = "postgis" if engine.dialect.name == "postgresql" else "spatialite"
    try:
        yield Store(kind, store_url, engine, make_sessionmaker(engine))
    finally:
        engine.dispose()


# ------------------------------------------------------- development identities


@pytest.fixture(autouse=True)
def dev_role_headers(request):
    """The tests written before real logins name the caller with X-Wangge-Role /
    X-Wangge-User headers and, without them, act as an admin. Turn that development
    stand-in on for them by changing the Settings defaults (many fixtures clear the
    WANGGE_* environment, so the environment cannot carry it). Tests of logins, tokens
    and access (tests/test_auth.py, tests/test_access.py) are marked `real_auth` and
    run with the real defaults, as do tests that build production settings."""
    if "production" in request.node.name or request.node.get_closest_marker("real_auth"):
        yield
        return
    from api.settings import Settings

    fields = Settings.model_fields
    saved = {name: fields[name].default for name in ("dev_role_headers", "dev_default_role")}
    fields["dev_role_headers"].default = True
    fields["dev_default_role"].default = "admin"
    Settings.model_rebuild(force=True)
    try:
        yield
    finally:
        for name, value in saved.items():
            fields[name].default = value
        Settings.model_rebuild(force=True)


def pytest_configure(config):
    config.addinivalue_line("markers", "real_auth: run without the development role headers")


# ------------------------------------------------------------ no silent skips

_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) were skipped; wangge treats a skip as a failure:",
            red=True,
        )
        for nodeid in _skipped[:20]:
            terminalreporter.write_line(f"  {nodeid}", red=True)
