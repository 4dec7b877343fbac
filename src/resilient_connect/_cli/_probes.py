"""Readiness probes for the command line: one per target scheme.

A probe answers "is this service ready to serve?" at the protocol level, not
"does the port accept TCP": PostgreSQL accepts TCP while it answers "the
database system is starting up", and ``pg_isready`` reports success for a
database that does not exist. So:

* ``postgresql://`` / ``postgres://`` (and SQLAlchemy-style
  ``postgresql+psycopg://``, and libpq ``key=value`` strings): connect with the
  psycopg adapter and run ``SELECT 1``;
* ``redis://`` / ``rediss://``: connect with the redis adapter, which PINGs;
* ``tcp://host:port``: open a TCP connection;
* ``http://`` / ``https://``: ``GET`` the URL and expect a 2xx status.

Targets are parsed and validated before anything waits (:func:`parse_target`),
so a typo is a usage error at once, not a timeout a minute later. Every probe
runs under the engine with the caller's policy and hooks; giving up raises
:class:`~resilient_connect.RetryExhausted`, a permanent error propagates
unchanged. Drivers are imported only when a target of theirs is probed.
"""

from __future__ import annotations

import re
import socket

from .._classify import Verdict, os_error_verdict
from .._engine import Attempt, Retrier
from .._redact import Redactor, redact

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeAlias
    from urllib.parse import SplitResult

    from .._budget import RetryBudget
    from .._events import Hook
    from .._policy import Backoff

    Probe: TypeAlias = Callable[["Target", Backoff, Sequence[Hook], RetryBudget | None], None]

#: Upper bound on one TCP connect, in seconds (the policy deadline may cut it shorter).
TCP_ATTEMPT_TIMEOUT = 5.0
#: Upper bound on each socket operation of one HTTP request, in seconds.
HTTP_ATTEMPT_TIMEOUT = 10.0
#: HTTP statuses worth another attempt besides 5xx: the service (or the proxy in
#: front of it) may still be starting. 404 is here because reverse proxies such as
#: Traefik answer 404 until the backend registers; like an unknown host name, it is
#: retried until the deadline and then reported.
HTTP_RETRY_STATUSES = frozenset({404, 408, 425, 429})
_MAX_BODY = 64 * 1024

POSTGRES_SCHEMES = ("postgresql", "postgres")
REDIS_SCHEMES = ("redis", "rediss")
SCHEMES = (*POSTGRES_SCHEMES, *REDIS_SCHEMES, "tcp", "http", "https")
_KEY_VALUE = re.compile(r"^[A-Za-z_]+\s*=")


class TargetError(ValueError):
    """A target cannot be probed as given (unknown scheme, bad URL, missing driver).

    The message is already redacted.
    """


class NotReady(Exception):
    """A target failed transiently outside the engine's loop; the message is redacted."""


class HTTPStatusError(Exception):
    """An HTTP target answered, but not with a 2xx status."""

    def __init__(self, status: int, reason: str, location: str | None = None) -> None:
        message = f"HTTP {status} {reason}".rstrip()
        if location:
            message += f" (redirect to {location}; redirects are not followed)"
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.location = location


class Target:
    """One thing to wait for: the raw text (a secret), its redacted label and its probe."""

    __slots__ = ("label", "probe", "raw", "scheme", "url")

    def __init__(self, raw: str, url: str, scheme: str, probe: Probe) -> None:
        self.raw = raw
        #: What is actually connected to (``postgresql+psycopg://`` becomes ``postgresql://``).
        self.url = url
        self.scheme = scheme
        self.label = redact(raw)
        self.probe = probe

    def wait(
        self, policy: Backoff, hooks: Sequence[Hook], budget: RetryBudget | None = None
    ) -> None:
        """Probe until ready under ``policy``, taking retries from ``budget`` (shared by
        the targets of one command line); raise ``RetryExhausted`` or a permanent error."""
        self.probe(self, policy, hooks, budget)

    def describe(self, exc: BaseException) -> str:
        """One line describing ``exc`` with this target's secrets removed."""
        return Redactor(self.raw).describe(exc)

    def __repr__(self) -> str:
        return f"Target({self.label!r})"


def parse_target(raw: str) -> Target:
    """Validate ``raw`` and return its :class:`Target`; raise :class:`TargetError` if unusable."""
    from urllib.parse import urlsplit

    text = raw.strip()
    label = redact(text)
    if "://" not in text and _KEY_VALUE.match(text):
        # A libpq key=value conninfo ("host=db dbname=app"), as PG tools and DATABASE_URL
        # sometimes hold: a PostgreSQL target.
        _check_postgres(text, label)
        return Target(text, text, "postgresql", _probe_postgres)
    if "://" not in text:
        hint = ""
        if text and not text.startswith("-"):
            hint = f"; did you mean tcp://{label}, or is it a command that belongs after --?"
        msg = f"target {label!r} has no scheme (expected one of {', '.join(SCHEMES)}){hint}"
        raise TargetError(msg)
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    text = f"{scheme}://{rest}"  # drivers (libpq) only know lower-case schemes
    base_scheme, plus, _driver = scheme.partition("+")
    if base_scheme in POSTGRES_SCHEMES:
        # SQLAlchemy-style "postgresql+psycopg://": the driver suffix means nothing to libpq.
        url = "postgresql://" + text.partition("://")[2] if plus else text
        _check_postgres(url, label)
        return Target(text, url, base_scheme, _probe_postgres)
    if plus:
        msg = f"target {label!r}: a driver suffix is only understood for postgresql+DRIVER://"
        raise TargetError(msg)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        msg = f"target {label!r}: {Redactor(text).scrub(str(exc))}"
        raise TargetError(msg) from None
    if port == 0:
        msg = f"target {label!r}: port 0 is not a port a service listens on"
        raise TargetError(msg)
    if scheme in REDIS_SCHEMES:
        _check_redis(text, label)
        return Target(text, text, scheme, _probe_redis)
    if scheme == "tcp":
        if not parts.hostname or port is None:
            msg = f"target {label!r}: expected tcp://HOST:PORT"
            raise TargetError(msg)
        return Target(text, text, scheme, _probe_tcp)
    if scheme in {"http", "https"}:
        if not parts.hostname:
            msg = f"target {label!r}: expected {scheme}://HOST[:PORT]/PATH"
            raise TargetError(msg)
        return Target(text, text, scheme, _probe_http)
    msg = f"target {label!r}: unsupported scheme {scheme!r} (expected one of {', '.join(SCHEMES)})"
    raise TargetError(msg)


def _require(module: str, extra: str, label: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        # Not "pip install resilient-connect[...]": the package is not on PyPI.
        msg = (
            f"target {label!r} needs the {module} package: install it, or install "
            f"resilient-connect with its {extra!r} extra"
        )
        raise TargetError(msg)


def _check_postgres(url: str, label: str) -> None:
    """Parse the URL offline with libpq, so a malformed one is a usage error right away."""
    _require("psycopg", "psycopg", label)
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a usage error
        msg = f"target {label!r}: {Redactor(url).describe(exc)}"
        raise TargetError(msg) from None
    # libpq checks these only when connecting; a typo there would look transient (or
    # permanent, exit 3), not like the usage error it is.
    redactor = Redactor(url)
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            msg = f"target {label!r}: invalid port {redactor.scrub(repr(port))}"
            raise TargetError(msg)
    from ..psycopg import conninfo_problems

    for problem in conninfo_problems(params):
        msg = f"target {label!r}: {redactor.scrub(problem)}"
        raise TargetError(msg)


def _check_redis(url: str, label: str) -> None:
    _require("redis", "redis", label)
    from redis.connection import parse_url

    try:
        parse_url(url)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
    except Exception as exc:  # noqa: BLE001 - any parse failure is a usage error
        msg = f"target {label!r}: {Redactor(url).describe(exc)}"
        raise TargetError(msg) from None


# ---------------------------------------------------------------------------- postgresql
def _probe_postgres(
    target: Target, policy: Backoff, hooks: Sequence[Hook], budget: RetryBudget | None
) -> None:
    """Connect through the psycopg adapter (which retries), then run ``SELECT 1``.

    The query fails right after a successful connect only if the server goes away in
    between; a transient error there is reported as "not ready" (exit 1), a permanent
    one propagates (exit 3).
    """
    from ..psycopg import classify, connect_with_retry

    conn = connect_with_retry(target.url, policy=policy, hooks=hooks, budget=budget)
    try:
        conn.execute("SELECT 1").fetchone()
    except Exception as exc:
        if not classify(exc).transient:
            raise
        msg = f"connected, but SELECT 1 failed: {target.describe(exc)}"
        raise NotReady(msg) from exc
    finally:
        conn.close()


# ---------------------------------------------------------------------------- redis
def _probe_redis(
    target: Target, policy: Backoff, hooks: Sequence[Hook], budget: RetryBudget | None
) -> None:
    """Connect through the redis adapter, which returns after a successful PING."""
    from ..redis import connect_with_retry

    client = connect_with_retry(target.url, policy=policy, hooks=hooks, budget=budget)
    client.close()


# ---------------------------------------------------------------------------- tcp
def classify_network(exc: Exception) -> Verdict:
    """Socket errors (refused, reset, timeout, name not resolvable yet) are transient."""
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return Verdict(transient=False, rule="tls:certificate")
    return os_error_verdict(exc) or Verdict(
        transient=False, rule=f"unexpected:{type(exc).__name__}"
    )


def _attempt_timeout(attempt: Attempt, ceiling: float) -> float:
    share = attempt.share(ceiling)  # the engine's one rule: the ceiling, or the time left
    assert share is not None  # ceiling is a number
    return share


def _probe_tcp(
    target: Target, policy: Backoff, hooks: Sequence[Hook], budget: RetryBudget | None
) -> None:
    parts = _split(target.url)
    host, port = parts.hostname, parts.port
    assert host is not None
    assert port is not None

    def attempt(attempt: Attempt) -> None:
        timeout = _attempt_timeout(attempt, TCP_ATTEMPT_TIMEOUT)
        with socket.create_connection((host, port), timeout=timeout):
            pass

    Retrier(
        policy=policy, classify=classify_network, target=target.raw, hooks=hooks, budget=budget
    ).call(attempt)


# ---------------------------------------------------------------------------- http
def classify_http(exc: Exception) -> Verdict:
    """5xx and the statuses in :data:`HTTP_RETRY_STATUSES` are transient; so are socket
    errors and garbled responses (something else may hold the port while the app starts).
    Other statuses (401, 403, redirects...) and certificate errors are permanent."""
    import http.client

    if isinstance(exc, HTTPStatusError):
        transient = exc.status >= 500 or exc.status in HTTP_RETRY_STATUSES
        return Verdict(transient=transient, rule=f"http:{exc.status}")
    if isinstance(exc, http.client.HTTPException) and not isinstance(exc, OSError):
        return Verdict(transient=True, rule=f"http:{type(exc).__name__}")
    return classify_network(exc)


def _probe_http(
    target: Target, policy: Backoff, hooks: Sequence[Hook], budget: RetryBudget | None
) -> None:
    import http.client

    parts = _split(target.url)
    host = parts.hostname
    assert host is not None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"User-Agent": "resilient-connect", "Accept": "*/*", "Connection": "close"}
    if parts.username is not None or parts.password is not None:
        headers["Authorization"] = _basic_auth(parts)

    def attempt(attempt: Attempt) -> None:
        timeout = _attempt_timeout(attempt, HTTP_ATTEMPT_TIMEOUT)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            import ssl

            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read(_MAX_BODY)
            if not 200 <= response.status < 300:
                location = response.getheader("Location")
                raise HTTPStatusError(response.status, response.reason, location)
        finally:
            conn.close()

    Retrier(
        policy=policy, classify=classify_http, target=target.raw, hooks=hooks, budget=budget
    ).call(attempt)


def _basic_auth(parts: SplitResult) -> str:
    import base64
    from urllib.parse import unquote

    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _split(url: str) -> SplitResult:
    from urllib.parse import urlsplit

    return urlsplit(url)
