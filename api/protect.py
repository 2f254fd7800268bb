"""Protections in front of the routers: abuse limits, idempotent intake, store faults.

`Protect` is one pure-ASGI middleware (no router needs to know about it):

- **Rate limit.** Public writes (POST /api/v1/cases, POST /open311/v2/requests.json
  and .xml) are limited per client with a token bucket: `rate_limit_burst` at once,
  refilled at `rate_limit_per_min`. Past it: 429 with `Retry-After`. The buckets live
  in the process, so with N uvicorn workers a client gets up to N times the rate.
- **Login attempts.** POST /login and /api/v1/auth/token are limited per peer
  address (`login_rate_per_min`, burst `login_rate_burst`), so passwords cannot be
  guessed at the speed of the server. Past it: 429 with `Retry-After`.
- **Body size.** A declared Content-Length over the limit is refused before anything
  is read; a body without one (chunked) is counted while it streams in and refused
  as soon as it passes the limit: 413. Uploads (/api/v1/imports) may send
  `upload_max_bytes`, everything else `body_max_bytes`.
- **bbox size.** A `bbox` query parameter wider or taller than `bbox_max_deg` is
  refused (400) on every route; parsing it is left to the routes.
- **Idempotency-Key** on the public writes (see `_Idempotency`): a retry gets the
  stored answer and creates nothing.
- **Store faults.** A request during which the database could not be reached and
  that some route answered 500 is answered 503 with the common message instead.

"Client" means the SHA-256 of the Authorization or X-API-Key header when one is
sent, else the peer address. Credentials are not verified here: a forged one only
buys a bucket of its own for a request the auth layer then refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from weakref import WeakSet

import sqlalchemy as sa
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import open311_xml
from api.errors import RETRY_AFTER_UNAVAILABLE_S, invalid_parameter, unavailable_body
from api.settings import Settings
from gis.db.engine import SQLITE_BEGIN_IMMEDIATE, store_faults, store_unavailable
from gis.db.models import IdempotencyKey
from gis.errors import Conflict

log = logging.getLogger("wangge.protect")

#: POSTs that create cases from the public side: rate-limited and idempotent.
PUBLIC_WRITES = re.compile(r"^(/api/v1/cases|/open311/v2/requests\.(json|xml))/?$")
#: Password checks: limited per peer address, whatever credentials the request carries.
LOGINS = re.compile(r"^(/login|/api/v1/auth/token)/?$")
UPLOAD_PREFIX = "/api/v1/imports"
OPEN311_PREFIX = "/open311/"
KEY_HEADER = "idempotency-key"
KEY_MAX = 200  # the idempotency_keys.key column
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, as HTTP header tokens are
#: Retry-After for a duplicate that arrives while the first request still runs.
RETRY_AFTER_RUNNING_S = 1
#: Marks a key whose request committed its writes but whose answer is not stored yet.
COMMITTED = 0
#: Buckets kept per process before full ones are forgotten.
MAX_BUCKETS = 10_000
PURGE_EVERY_S = 600.0


# ---------------------------------------------------------------- answers


def _is_open311(path: str) -> bool:
    return path.startswith(OPEN311_PREFIX)


def _answer(
    path: str,
    status: int,
    error: str,
    message: str,
    headers: dict[str, str] | None = None,
    detail: dict[str, Any] | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An error in the shape the route's clients expect: GeoReport's list for Open311,
    `{"error", "message", **detail}` for everything else."""
    if _is_open311(path):
        errors = [{"code": status, "description": message}]
        if path.endswith(".xml"):
            body = open311_xml.render("errors", errors, "error")
            media = "application/xml; charset=utf-8"
        else:
            body, media = json.dumps(errors, ensure_ascii=False).encode(), "application/json"
    else:
        payload = {**(detail or {}), "error": error, "message": message}
        body, media = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
    raw = [(b"content-type", media.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, raw, body


async def _send_answer(send: Send, answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _describe_bytes(n: int) -> str:
    mib = 1024 * 1024
    return f"{n / mib:g} MB" if n >= mib else f"{n} bytes"


# ------------------------------------------------------------ rate limits


class RateLimiter:
    """Token buckets per client: `burst` requests at once, refilled at `per_min`."""

    def __init__(self, per_min: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_per_s = per_min / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """Take one token; 0 when allowed, else the seconds until one is free."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self.clock()
        tokens, then = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget_full(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        full = [
            c
            for c, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self.rate_per_s >= self.burst
        ]
        for client in full:
            del self._buckets[client]


def client_of(scope: Scope) -> str:
    """Who sent the request: a credential's hash if there is one, else the peer address."""
    headers = dict(scope.get("headers") or [])
    credential = headers.get(b"authorization") or headers.get(b"x-api-key")
    if credential:
        return "key:" + hashlib.sha256(credential).hexdigest()
    peer = scope.get("client")
    return f"addr:{peer[0] if peer else 'unknown'}"


# ------------------------------------------------------------------- bbox


def bbox_too_large(query_string: bytes, max_deg: float) -> str | None:
    """The problem with an oversized `bbox` in a query string, or None.

    Only a well-formed bbox is judged here; a malformed or out-of-range one is the
    route's to refuse, with its own message.
    """
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name != "bbox":
            continue
        try:
            minx, miny, maxx, maxy = (float(p) for p in value.split(","))
        except ValueError:
            continue
        if not (-180 <= minx < maxx <= 180 and -90 <= miny < maxy <= 90):
            continue  # also NaN: every comparison with it is false
        width, height = maxx - minx, maxy - miny
        if width > max_deg or height > max_deg:
            return (
                f"must be at most {max_deg:g}° wide and {max_deg:g}° tall "
                f"(got {width:.4g}° × {height:.4g}°); ask for a smaller area or page through it"
            )
    return None


# ------------------------------------------------------------ idempotency


class IdempotencyKeyTaken(Conflict):
    """The request's hold on its Idempotency-Key lapsed and a retry took it over."""


@dataclass
class _Claim:
    """This request's hold on an idempotency key; `token` tells it from a later holder."""

    client: str
    key: str
    token: bytes
    committed: bool = False


#: The claim of the request being served, seen by the commit hook in its thread.
_current_claim: ContextVar[_Claim | None] = ContextVar("wangge_idempotency_claim", default=None)
_hooked: WeakSet = WeakSet()


def _aware(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they are UTC.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _mark_committed(session: Session) -> None:
    """Before the request's first commit, mark its key as committed in that very
    transaction, so the writes and the mark commit together or not at all.

    The intake routes commit once (a read-only session is closed, not committed).
    A route that committed an empty transaction before its write would mark the
    key early: never a second case, at worst an "answer lost" on a retry.
    """
    claim = _current_claim.get()
    if claim is None or claim.committed:
        return
    marked = session.execute(
        sa.update(IdempotencyKey)
        .where(
            IdempotencyKey.client == claim.client,
            IdempotencyKey.key == claim.key,
            IdempotencyKey.body == claim.token,
            IdempotencyKey.status_code.is_(None),
        )
        .values(status_code=COMMITTED)
        .execution_options(synchronize_session=False)
    )
    if marked.rowcount != 1:
        # Our lease ran out and a retry holds the key: it will do the work, we must not.
        raise IdempotencyKeyTaken(
            "this request took too long and a retry with the same Idempotency-Key "
            "has taken its place; nothing was written by this one",
            key=claim.key,
        )


def holds_idempotency_key() -> bool:
    """Whether the request being served holds an Idempotency-Key claim. Its writes
    must then run in a real transaction, for the key's mark to commit with them."""
    return _current_claim.get() is not None


def _note_committed(session: Session) -> None:
    claim = _current_claim.get()
    if claim is not None:
        claim.committed = True


def hook_sessions(sessions: sessionmaker) -> None:
    """Install the commit hooks on the app's sessionmaker (once)."""
    if sessions in _hooked:
        return
    sa.event.listen(sessions, "before_commit", _mark_committed)
    sa.event.listen(sessions, "after_commit", _note_committed)
    _hooked.add(sessions)


@dataclass
class _Decision:
    kind: str  # claimed, replay, mismatch, running, lost
    token: bytes = b""
    status: int = 0
    content_type: str | None = None
    body: bytes = b""


class _Idempotency:
    """Idempotency-Key on the public writes, backed by the `idempotency_keys` table.

    Guarantee: one key from one client creates at most one case, even across a
    crash. The request first claims the key in its own committed transaction
    (status NULL, a random token in `body`). The route's own transaction then marks
    the key COMMITTED just before it commits (a session hook), so the case and the
    mark are written together or not at all. The answer is stored afterwards.

    A retry therefore finds: no row (nothing happened: run), a stored answer
    (replay it), NULL within the lease (still running: 409 + Retry-After), NULL
    past the lease (the first died before committing: take the key over and run;
    should the first still be alive it cannot commit, its mark needs its token),
    COMMITTED within the lease (the first has committed and is storing its answer:
    409 + Retry-After, as running), or COMMITTED past the lease (the case exists but
    its answer was lost in a crash between commit and storing it: 409 saying so,
    never a second case). Only answers of
    requests that wrote something are kept; one that wrote nothing (a 400, a 503)
    frees the key, so a retry simply runs again.
    """

    def __init__(self, ttl_s: float, lease_s: float) -> None:
        self.ttl = timedelta(seconds=ttl_s)
        self.lease = timedelta(seconds=lease_s)
        self._last_purge = 0.0

    def claim(
        self, sessions: sessionmaker, client: str, key: str, method: str, path: str, digest: str
    ) -> _Decision:
        for _attempt in range(3):
            try:
                return self._claim_once(sessions, client, key, method, path, digest)
            except sa.exc.IntegrityError:
                continue  # a concurrent first request inserted the key: read it again
        return _Decision("running")

    def _claim_once(
        self, sessions: sessionmaker, client: str, key: str, method: str, path: str, digest: str
    ) -> _Decision:
        now = datetime.now(UTC)
        with sessions() as session, session.begin():
            session.connection(execution_options=SQLITE_BEGIN_IMMEDIATE)
            if time.monotonic() - self._last_purge > PURGE_EVERY_S:
                self._last_purge = time.monotonic()
                session.execute(
                    sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < now - self.ttl)
                )
            row = session.get(IdempotencyKey, (client, key), with_for_update=True)
            token = secrets.token_bytes(16)
            if row is None:
                session.add(
                    IdempotencyKey(
                        client=client,
                        key=key,
                        method=method,
                        path=path,
                        request_sha256=digest,
                        status_code=None,
                        content_type=None,
                        body=token,
                        created_at=now,
                    )
                )
                session.flush()
                return _Decision("claimed", token=token)
            age = now - _aware(row.created_at)
            expired = age > self.ttl
            if not expired and row.request_sha256 != digest:
                return _Decision("mismatch")
            if expired or (row.status_code is None and age > self.lease):
                row.method, row.path, row.request_sha256 = method, path, digest
                row.status_code, row.content_type, row.body = None, None, token
                row.created_at = now
                return _Decision("claimed", token=token)
            if row.status_code is None:
                return _Decision("running")
            if row.status_code == COMMITTED:
                # Within the lease the first request has committed and is storing its
                # answer right now; past it, that answer is not coming.
                return _Decision("running" if age <= self.lease else "lost")
            return _Decision(
                "replay",
                status=row.status_code,
                content_type=row.content_type,
                body=row.body or b"",
            )

    def finish(
        self, sessions: sessionmaker, claim: _Claim, status: int, content_type: str, body: bytes
    ) -> None:
        """Store the answer of a request that committed; free the key of one that did not."""
        mine = (
            IdempotencyKey.client == claim.client,
            IdempotencyKey.key == claim.key,
            IdempotencyKey.body == claim.token,
        )
        with sessions() as session, session.begin():
            session.connection(execution_options=SQLITE_BEGIN_IMMEDIATE)
            if status < 500:
                stored = session.execute(
                    sa.update(IdempotencyKey)
                    .where(*mine, IdempotencyKey.status_code == COMMITTED)
                    .values(status_code=status, content_type=content_type, body=body)
                    .execution_options(synchronize_session=False)
                )
                if stored.rowcount == 1:
                    return
            # Nothing committed under this claim: let a retry run the request again.
            session.execute(
                sa.delete(IdempotencyKey)
                .where(*mine, IdempotencyKey.status_code.is_(None))
                .execution_options(synchronize_session=False)
            )


def _digest(scope: Scope, body: bytes) -> str:
    headers = dict(scope.get("headers") or [])
    h = hashlib.sha256()
    for part in (
        scope["method"].encode(),
        scope["path"].encode(),
        scope.get("query_string", b""),
        headers.get(b"content-type", b""),
    ):
        h.update(len(part).to_bytes(8, "big") + part)
    h.update(body)
    return h.hexdigest()


# -------------------------------------------------------------- the guard


class BodyTooLarge(Exception):
    """Raised into the app by `receive` when a streamed body passes the limit."""


class _Guard:
    """Wraps receive (counting body bytes) and send (swapping the answer) for one request."""

    def __init__(self, path: str, receive: Receive, send: Send, limit: int, faults: list[str]):
        self.path = path
        self._receive = receive
        self._send = send
        self.limit = limit
        self.faults = faults
        self.received = 0
        self.too_large = False
        self.started = False
        self.swapped = False

    def too_large_answer(self):
        what = "upload" if self.path.startswith(UPLOAD_PREFIX) else "request body"
        hint = (
            "; import bigger files with the command line (wangge import)"
            if self.path.startswith(UPLOAD_PREFIX)
            else ""
        )
        return _answer(
            self.path,
            413,
            "PayloadTooLarge",
            f"{what} is larger than {_describe_bytes(self.limit)}{hint}",
        )

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise BodyTooLarge(f"request body over {self.limit} bytes")
        return message

    async def send(self, message: Message) -> None:
        if self.swapped:
            return  # the app's own answer is dropped: ours went out instead
        if message["type"] == "http.response.start":
            answer = None
            if self.too_large:
                answer = self.too_large_answer()
            elif message["status"] == 500 and self.faults:
                # A route caught the store's error itself and answered 500.
                answer = self.unavailable_answer()
            if answer is not None:
                self.swapped = self.started = True
                await _send_answer(self._send, answer)
                return
            self.started = True
        await self._send(message)

    def unavailable_answer(self):
        body = unavailable_body()
        return _answer(
            self.path,
            503,
            body["error"],
            body["message"],
            {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)},
        )


class Protect:
    """The middleware; install once with `app.add_middleware(Protect, settings=...)`."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit_per_min, settings.rate_limit_burst)
        self.logins = RateLimiter(settings.login_rate_per_min, settings.login_rate_burst)
        self.idempotency = _Idempotency(settings.idempotency_ttl_s, settings.idempotency_lease_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        public_write = method == "POST" and PUBLIC_WRITES.match(path) is not None
        refusal = None
        if public_write:
            wait_s = self.limiter.take(client_of(scope))
            if wait_s > 0:
                refusal = (
                    f"too many requests: at most {self.settings.rate_limit_per_min:g} per "
                    f"minute (burst {self.settings.rate_limit_burst})"
                )
        elif method == "POST" and LOGINS.match(path) is not None:
            peer = scope.get("client")
            wait_s = self.logins.take(peer[0] if peer else "unknown")
            if wait_s > 0:
                refusal = (
                    "too many login attempts from this address: at most "
                    f"{self.settings.login_rate_per_min:g} per minute"
                )
        if refusal is not None:
            retry = max(1, math.ceil(wait_s))
            message = f"{refusal}; try again in {retry} s"
            answer = _answer(path, 429, "TooManyRequests", message, {"Retry-After": str(retry)})
            await _send_answer(send, answer)
            return
        limit = (
            self.settings.upload_max_bytes
            if path.startswith(UPLOAD_PREFIX)
            else self.settings.body_max_bytes
        )
        faults: list[str] = []
        guard = _Guard(path, receive, send, limit, faults)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            guard.too_large = True
            await _send_answer(send, guard.too_large_answer())
            return
        problem = bbox_too_large(scope.get("query_string", b""), self.settings.bbox_max_deg)
        if problem:
            error = invalid_parameter("bbox", problem)
            answer = _answer(path, 400, "InvalidInput", error.message, detail=error.to_dict())
            await _send_answer(send, answer)
            return
        reset = store_faults.set(faults)
        try:
            key = _header(scope, KEY_HEADER)
            if public_write and key is not None:
                await self._idempotent(scope, guard, key)
            else:
                await self.app(scope, guard.receive, guard.send)
        except BodyTooLarge:
            if not guard.started:
                await _send_answer(send, guard.too_large_answer())
        except Exception:
            if guard.too_large and not guard.started:
                await _send_answer(send, guard.too_large_answer())
                return
            raise
        finally:
            store_faults.reset(reset)

    async def _idempotent(self, scope: Scope, guard: _Guard, key: str) -> None:
        path = scope["path"]
        if not (len(key) <= KEY_MAX and _KEY_CHARS.match(key)):
            error = invalid_parameter(
                "Idempotency-Key",
                f"must be 1 to {KEY_MAX} visible ASCII characters (a UUID is a good choice)",
                location="header",
            )
            answer = _answer(path, 400, "InvalidInput", error.message, detail=error.to_dict())
            await _send_answer(guard.send, answer)
            return
        body = await _read_body(guard.receive)
        digest = _digest(scope, body)
        sessions = scope["app"].state.sessions
        hook_sessions(sessions)
        client = client_of(scope)
        try:
            decision = await run_in_threadpool(
                self.idempotency.claim, sessions, client, key, scope["method"], path, digest
            )
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            await _send_answer(guard.send, guard.unavailable_answer())
            return
        if decision.kind != "claimed":
            await _send_answer(guard.send, _decided(path, decision))
            return

        claim = _Claim(client, key, decision.token)
        sent_body = False

        async def replay_receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await guard.receive()

        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        reset = _current_claim.set(claim)
        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            _current_claim.reset(reset)
            await self._finish(sessions, claim, 500, "", b"")
            raise
        _current_claim.reset(reset)
        status = start["status"] if start else 500
        headers = list(start.get("headers", [])) if start else []
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        answer = b"".join(chunks)
        await self._finish(sessions, claim, status, content_type.decode("latin-1"), answer)
        # The answer goes out only after it is stored, so a retry can always replay it.
        if start is not None:
            await guard.send(start)
            await guard.send({"type": "http.response.body", "body": answer, "more_body": False})

    async def _finish(
        self, sessions: sessionmaker, claim: _Claim, status: int, content_type: str, body: bytes
    ) -> None:
        try:
            await run_in_threadpool(
                self.idempotency.finish, sessions, claim, status, content_type, body
            )
        except Exception as exc:
            # The answer still goes to the client; a retry finds the key running (until
            # the lease ends) or committed, and never creates a second case.
            log.warning("could not store the answer for an Idempotency-Key: %s", exc)


def _decided(path: str, decision: _Decision):
    if decision.kind == "replay":
        headers = [
            (b"content-type", (decision.content_type or "application/json").encode()),
            (b"content-length", str(len(decision.body)).encode()),
            (b"idempotent-replayed", b"true"),
        ]
        return decision.status, headers, decision.body
    if decision.kind == "mismatch":
        return _answer(
            path,
            422,
            "IdempotencyKeyReused",
            "header Idempotency-Key: this key was already used with a different request "
            "body; use a new key for a new request",
        )
    if decision.kind == "running":
        return _answer(
            path,
            409,
            "IdempotencyKeyInUse",
            "a request with this Idempotency-Key is still being processed; "
            f"retry in {RETRY_AFTER_RUNNING_S} s for its answer",
            {"Retry-After": str(RETRY_AFTER_RUNNING_S)},
        )
    return _answer(
        path,
        409,
        "IdempotencyAnswerLost",
        "a request with this Idempotency-Key was carried out, but the service failed "
        "before it could keep the answer; it will not be carried out again: look the "
        "case up in the case list instead of retrying",
    )


def _header(scope: Scope, name: str) -> str | None:
    raw = name.encode()
    for key, value in scope.get("headers") or []:
        if key.lower() == raw:
            return value.decode("latin-1").strip()
    return None


async def _read_body(receive: Callable[[], Awaitable[Message]]) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


__all__ = ["Protect", "RateLimiter", "bbox_too_large", "client_of", "hook_sessions"]
