"""Engines for the two stores and the migrations that shape them.

PostGIS is chosen by a postgresql URL; anything `sqlite:` gets SpatiaLite loaded
into every connection. Callers hold sessions from `make_sessionmaker`; only this
package touches SQLAlchemy.
"""

from __future__ import annotations

import os
import time
from contextvars import ContextVar
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from geoalchemy2.admin.dialects.sqlite import init_spatialite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_module():
    """The DB-API module to use for SQLite: one that can load extensions.

    Interpreters built without loadable-extension support (pyenv's default)
    lack `enable_load_extension`; pysqlite3-binary ships an SQLite that has it.
    """
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import pysqlite3.dbapi2 as pysqlite3
    except ImportError as exc:  # pragma: no cover - depends on the platform
        raise RuntimeError(
            "this Python's sqlite3 cannot load SpatiaLite; pip install pysqlite3-binary"
        ) from exc
    return pysqlite3


def _on_sqlite_connect(dbapi_conn, _record) -> None:
    # Let SQLAlchemy, not the driver, decide where transactions begin (see the
    # "begin" listener): the driver's implicit BEGIN breaks SAVEPOINTs.
    dbapi_conn.isolation_level = None
    dbapi_conn.execute("PRAGMA journal_mode = WAL")
    dbapi_conn.enable_load_extension(True)
    dbapi_conn.load_extension(os.environ.get("SPATIALITE_LIBRARY_PATH", "mod_spatialite"))
    dbapi_conn.enable_load_extension(False)
    # Only the SRID we store in: the full EPSG table takes seconds to load.
    if dbapi_conn.execute("SELECT CheckSpatialMetaData()").fetchone()[0] < 1:
        init_spatialite(dbapi_conn, transaction=True, init_mode="EMPTY")
        dbapi_conn.execute("SELECT InsertEpsgSrid(4326)")
    dbapi_conn.execute("PRAGMA foreign_keys = ON")
    dbapi_conn.execute("PRAGMA busy_timeout = 10000")


#: Seconds a PostGIS connection attempt, and a wait for a pooled connection, may take
#: before the request fails (and answers 503): a database that went away must not
#: hold every request for libpq's default of forever and the pool's 30 s.
DEFAULT_TIMEOUT_S = 3

#: While the HTTP layer serves a request it sets a list here; every failure that
#: means "the store is unreachable" seen during the request is appended to it, so
#: an answer some router turned into a 500 can be answered 503 instead.
store_faults: ContextVar[list[str] | None] = ContextVar("wangge_store_faults", default=None)


def store_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the store cannot be reached (retry later), not a bug.

    Covers a refused or timed-out connection, a connection that broke mid-statement
    (SQLAlchemy then discards it and every pooled connection older than it), a pool
    with no connection free within the timeout, and SQLite's "database is locked".
    """
    if isinstance(exc, sa.exc.TimeoutError | sa.exc.DisconnectionError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    return False


def _note_store_fault(context) -> None:
    faults = store_faults.get()
    if faults is not None and (
        context.is_disconnect or store_unavailable(context.sqlalchemy_exception)
    ):
        faults.append(type(context.original_exception).__name__)


#: Execution option asking SQLite to take the write lock at BEGIN: a transaction that
#: reads and then writes a row others also write (an idempotency key) would
#: otherwise fail with "database is locked" instead of waiting its turn.
SQLITE_BEGIN_IMMEDIATE = {"sqlite_begin": "IMMEDIATE"}


def _sqlite_begin(conn) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "")
    conn.exec_driver_sql(f"BEGIN {mode}".strip())


def make_engine(url: str, *, echo: bool = False, timeout_s: int = DEFAULT_TIMEOUT_S) -> Engine:
    """An engine for a PostGIS or SpatiaLite URL, ready for spatial SQL.

    `timeout_s` bounds a PostGIS connection attempt and the wait for a pooled
    connection, so requests fail fast while the database is down.
    """
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, module=_sqlite_module(), echo=echo)
        sa.event.listen(engine, "connect", _on_sqlite_connect)
        sa.event.listen(engine, "begin", _sqlite_begin)
        sa.event.listen(engine, "handle_error", _note_store_fault)
        return engine
    if url.startswith("postgresql"):
        # pool_size: connections kept open per process. Past it, "overflow" connections
        # are opened per checkout and closed on return, and a new PostgreSQL backend
        # per request is what made intake collapse under load (SQLAlchemy's default
        # keeps 5; a uvicorn worker runs up to 40 handlers in its thread pool).
        # connect_timeout is libpq's (whole seconds, at least 2 in effect); pool_timeout
        # is how long a checkout waits for a free connection when all are in use.
        engine = sa.create_engine(
            url,
            echo=echo,
            pool_size=10,
            max_overflow=30,
            pool_timeout=timeout_s,
            connect_args={"connect_timeout": max(2, int(timeout_s))},
        )
        _ping_when_idle(engine)
        sa.event.listen(engine, "handle_error", _note_store_fault)
        return engine
    raise ValueError(f"unsupported database URL {url!r}: use postgresql+psycopg:// or sqlite://")


#: A pooled connection unused for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 5.0


def _ping_when_idle(engine: Engine) -> None:
    """`pool_pre_ping`, but only for connections that sat idle in the pool.

    A connection a busy server handed back milliseconds ago is alive: pinging it
    cost a round trip on every request (about a fifth of an intake's). One that
    idled may have been dropped (a restart, a firewall): it is pinged, and a dead
    one is replaced before anyone uses it, as with `pool_pre_ping`.
    """

    @sa.event.listens_for(engine, "checkin")
    def _stamp(dbapi_connection, record) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, record, proxy) -> None:
        since = record.info.get("checked_in_at")
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards it and checks out another
            raise sa.exc.DisconnectionError(str(exc)) from exc


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_postgis(engine_or_session) -> bool:
    bind = (
        engine_or_session.get_bind()
        if isinstance(engine_or_session, Session)
        else engine_or_session
    )
    return bind.dialect.name == "postgresql"


def _alembic_config(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("gis.db") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the store's schema to the newest migration (creating PostGIS if needed)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS postgis")
        command.upgrade(_alembic_config(conn), "head")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
