"""The redis-py classification table: which errors are worth another attempt.

One ordered table, first match wins. It is rendered in ``docs/redis.md`` (a
unit test keeps the two in step) and used twice: by the start-up wait
(:func:`resilient_connect.redis.connect_with_retry`) and by the runtime bridge,
which consults it before redis-py's own ``supported_errors`` may retry.

Why a table and not redis-py's class tree alone: redis-py files
``AuthenticationError``, ``AuthorizationError``, ``BusyLoadingError`` and
"max number of clients reached" all under ``ConnectionError``, so "retry every
``ConnectionError``" (redis-py's default) retries a wrong password eleven
times. The rules below split that family by what can change on its own
(a server starting, loading, failing over) and what cannot (credentials,
permissions, a malformed URL, a certificate).

Everything here works on exception objects only. Importing this module imports
nothing of redis-py; :func:`classify` imports ``redis.exceptions`` when it first
judges an error (which redis-py raised, so redis-py is loaded by then anyway).
"""

from __future__ import annotations

import dataclasses

from .._classify import Verdict, cost_of, os_error_verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType

    from .._classify import Cost


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One row of the table.

    Attributes:
        name: stable rule name, shown in logs and events (``redis:loading``).
        transient: ``True`` if another attempt may succeed.
        matches: what the rule matches, in words (rendered in the docs).
        why: the reason for the verdict, in words (rendered in the docs).
        cost: what such a failure cost the server (``"server"``: the server
            itself answered; ``"free"``: the resolver did). For the rest, the
            error decides: a refused connect inside a ``ConnectionError`` is free.
    """

    name: str
    transient: bool
    matches: str
    why: str
    cost: Cost = "unknown"


# Message fragments (lower case) that identify a state regardless of the
# exception class redis-py chose (older redis-py versions map fewer codes).
_AUTH_CODES = ("WRONGPASS", "NOAUTH")
_TLS_FRAGMENTS = ("certificate verify failed", "certificate_verify_failed", "wrong version number")
_DNS_FRAGMENTS = ("name or service not known", "temporary failure in name resolution")
_CLUSTER_UNREACHABLE = (
    "cannot be connected",
    "all slots are not covered",
    "slot is not covered",
    "no slots",
)


def _code(exc: BaseException) -> str:
    """The RESP error code (``WRONGPASS``), from ``status_code`` or the message's first word."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    first = str(exc).split(" ", 1)[0]
    return first if first.isupper() else ""


def _text(exc: BaseException) -> str:
    return str(exc).lower()


def _is_auth(exc: BaseException, rx: ModuleType) -> bool:
    if isinstance(exc, rx.AuthenticationError):
        return True
    # An auth failure reported as a plain ResponseError (NOAUTH to a command).
    return isinstance(exc, rx.ResponseError) and _code(exc) in _AUTH_CODES


def _is_auth_syntax(exc: BaseException, rx: ModuleType) -> bool:
    # "AUTH user pass" against a server older than 6: the credentials cannot work.
    cls = getattr(rx, "AuthenticationWrongNumberOfArgsError", None)
    return cls is not None and isinstance(exc, cls)


def _is_authorization(exc: BaseException, rx: ModuleType) -> bool:
    cls = getattr(rx, "AuthorizationError", None)
    return cls is not None and isinstance(exc, cls)


def _is_no_permission(exc: BaseException, rx: ModuleType) -> bool:
    if isinstance(exc, rx.NoPermissionError):
        return True
    return isinstance(exc, rx.ResponseError) and _code(exc) == "NOPERM"


def _is_tls_certificate(exc: BaseException, rx: ModuleType) -> bool:
    if not isinstance(exc, rx.ConnectionError):
        return False
    text = _text(exc)
    return any(fragment in text for fragment in _TLS_FRAGMENTS)


def _is_permission_denied(exc: BaseException, rx: ModuleType) -> bool:
    # "Error 13 connecting to /run/redis.sock. Permission denied." (a unix socket's mode)
    return isinstance(exc, rx.ConnectionError) and "permission denied" in _text(exc)


def _is_bad_url(exc: BaseException, rx: ModuleType) -> bool:
    # from_url() raises plain ValueError for a bad scheme, port, db or query value.
    return isinstance(exc, ValueError) and not isinstance(exc, rx.RedisError)


def _is_loading(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.BusyLoadingError) or _code(exc) == "LOADING"


def _is_max_clients(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.RedisError) and "max number of clients reached" in _text(exc)


def _is_pool_exhausted(exc: BaseException, rx: ModuleType) -> bool:
    cls = getattr(rx, "MaxConnectionsError", None)
    return cls is not None and isinstance(exc, cls)


def _is_master_down(exc: BaseException, rx: ModuleType) -> bool:
    cls = getattr(rx, "MasterDownError", None)
    return (cls is not None and isinstance(exc, cls)) or _code(exc) == "MASTERDOWN"


def _is_readonly(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.ReadOnlyError) or _code(exc) == "READONLY"


def _is_master_not_found(exc: BaseException, rx: ModuleType) -> bool:
    # redis.sentinel.MasterNotFoundError / SlaveNotFoundError (and the asyncio twins)
    # subclass ConnectionError; matched by name to avoid importing redis.sentinel.
    return isinstance(exc, rx.ConnectionError) and type(exc).__name__ in {
        "MasterNotFoundError",
        "SlaveNotFoundError",
    }


def _is_sentinel_auth(exc: BaseException, rx: ModuleType) -> bool:
    # discover_master() swallows each sentinel's ConnectionError, AuthenticationError
    # included, into one MasterNotFoundError whose text lists them. Only auth errors
    # listed (no network error besides): the sentinel password is wrong.
    if not _is_master_not_found(exc, rx):
        return False
    text = str(exc)
    return "AuthenticationError" in text and not any(
        name in text for name in ("ConnectionError", "TimeoutError")
    )


def _is_cluster_down(exc: BaseException, rx: ModuleType) -> bool:
    down = getattr(rx, "ClusterDownError", None)
    again = getattr(rx, "TryAgainError", None)
    return (down is not None and isinstance(exc, down)) or (
        again is not None and isinstance(exc, again)
    )


def _is_cluster_unreachable(exc: BaseException, rx: ModuleType) -> bool:
    cls = getattr(rx, "RedisClusterException", None)
    if cls is None or not isinstance(exc, cls):
        return False
    text = _text(exc)
    return any(fragment in text for fragment in _CLUSTER_UNREACHABLE)


def _is_timeout(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.TimeoutError)


def _is_name_resolution(exc: BaseException, rx: ModuleType) -> bool:
    if not isinstance(exc, rx.ConnectionError):
        return False
    text = _text(exc)
    return any(fragment in text for fragment in _DNS_FRAGMENTS)


def _is_connection(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.ConnectionError)


def _is_os_error(exc: BaseException, rx: ModuleType) -> bool:
    return os_error_verdict(exc) is not None


def _is_response(exc: BaseException, rx: ModuleType) -> bool:
    return isinstance(exc, rx.ResponseError)


def _is_anything(exc: BaseException, rx: ModuleType) -> bool:
    return True


_TABLE: tuple[tuple[Rule, Callable[[BaseException, ModuleType], bool]], ...] = (
    (
        Rule(
            name="redis:auth-failed",
            transient=False,
            matches="AuthenticationError; WRONGPASS / NOAUTH replies",
            why="wrong or missing password, unknown user: retrying cannot fix credentials",
        ),
        _is_auth,
    ),
    (
        Rule(
            name="redis:auth-syntax",
            transient=False,
            matches="AuthenticationWrongNumberOfArgsError",
            why="username given to a server older than Redis 6",
        ),
        _is_auth_syntax,
    ),
    (
        Rule(
            name="redis:authorization",
            transient=False,
            matches="AuthorizationError",
            why="the server refused these credentials",
        ),
        _is_authorization,
    ),
    (
        Rule(
            name="redis:no-permission",
            transient=False,
            matches="NoPermissionError; NOPERM replies (ACL denies PING, HELLO, SELECT...)",
            why="an ACL decision, not a state that passes",
        ),
        _is_no_permission,
    ),
    (
        Rule(
            name="redis:tls-certificate",
            transient=False,
            matches="ConnectionError: certificate verify failed, wrong TLS version number",
            why="a TLS configuration mistake (bad CA, TLS against a plain port)",
        ),
        _is_tls_certificate,
    ),
    (
        Rule(
            name="redis:permission-denied",
            transient=False,
            matches="ConnectionError 'Permission denied' (unix socket mode)",
            why="file permissions do not change on their own",
        ),
        _is_permission_denied,
    ),
    (
        Rule(
            name="redis:bad-url",
            transient=False,
            matches="ValueError from from_url (scheme, port, db, query value)",
            why="a malformed URL stays malformed",
        ),
        _is_bad_url,
    ),
    (
        Rule(
            name="redis:loading",
            transient=True,
            matches="BusyLoadingError; LOADING replies",
            why="the server is reading its dataset into memory",
            cost="server",
        ),
        _is_loading,
    ),
    (
        Rule(
            name="redis:max-clients",
            transient=True,
            matches="'max number of clients reached'",
            why="another client may disconnect",
            cost="server",
        ),
        _is_max_clients,
    ),
    (
        Rule(
            name="redis:pool-exhausted",
            transient=True,
            matches="MaxConnectionsError (client-side pool full)",
            why="another thread may give a connection back",
        ),
        _is_pool_exhausted,
    ),
    (
        Rule(
            name="redis:master-down",
            transient=True,
            matches="MasterDownError; MASTERDOWN replies",
            why="a replica lost its master during a failover",
            cost="server",
        ),
        _is_master_down,
    ),
    (
        Rule(
            name="redis:readonly",
            transient=True,
            matches="ReadOnlyError; READONLY replies",
            why="the address still points at a demoted master during a failover",
            cost="server",
        ),
        _is_readonly,
    ),
    (
        Rule(
            name="redis:sentinel-auth-failed",
            transient=False,
            matches="MasterNotFoundError listing only AuthenticationErrors",
            why="every sentinel rejected the sentinel password",
        ),
        _is_sentinel_auth,
    ),
    (
        Rule(
            name="redis:master-not-found",
            transient=True,
            matches="Sentinel MasterNotFoundError / SlaveNotFoundError",
            why="sentinels not up yet, or a failover in progress",
        ),
        _is_master_not_found,
    ),
    (
        Rule(
            name="redis:cluster-down",
            transient=True,
            matches="ClusterDownError (CLUSTERDOWN), TryAgainError (TRYAGAIN)",
            why="slots are being assigned or migrated",
            cost="server",
        ),
        _is_cluster_down,
    ),
    (
        Rule(
            name="redis:cluster-unreachable",
            transient=True,
            matches="RedisClusterException: no startup node reachable, slots not covered",
            why="the cluster is still forming",
        ),
        _is_cluster_unreachable,
    ),
    (
        Rule(
            name="redis:timeout",
            transient=True,
            matches="redis TimeoutError (connect or read timed out)",
            why="a server that is slow, overloaded or behind a partition",
        ),
        _is_timeout,
    ),
    (
        Rule(
            name="redis:name-resolution",
            transient=True,
            matches="ConnectionError 'Name or service not known' / 'Temporary failure'",
            why="a container name may not be registered yet (bounded by the policy)",
            cost="free",
        ),
        _is_name_resolution,
    ),
    (
        Rule(
            name="redis:connection",
            transient=True,
            matches="any other ConnectionError (refused, reset, closed by server)",
            why="the server is starting, restarting or unreachable for now",
        ),
        _is_connection,
    ),
    (
        Rule(
            name="redis:os-error",
            transient=True,
            matches="OSError that escaped redis-py",
            why="a network error",
        ),
        _is_os_error,
    ),
    (
        Rule(
            name="redis:response-error",
            transient=False,
            matches="any other ResponseError",
            why="the server answered; the command or configuration is wrong",
        ),
        _is_response,
    ),
    (
        Rule(
            name="redis:other",
            transient=False,
            matches="anything else",
            why="a bug or misconfiguration, not a server state",
        ),
        _is_anything,
    ),
)

#: The rules in order; the first that matches decides.
RULES: tuple[Rule, ...] = tuple(rule for rule, _ in _TABLE)

# Permanent rules that only mean "we know no better": at run time, an error that
# redis-py was told to retry (``retry_on_error``) and that lands here is retried.
FALLBACK_RULES = frozenset({"redis:response-error", "redis:other"})

_VERDICTS = {
    rule.name: Verdict(transient=rule.transient, rule=rule.name, cost=rule.cost) for rule in RULES
}
_FREE_VERDICTS = {
    rule.name: Verdict(transient=True, rule=rule.name, cost="free")
    for rule in RULES
    if rule.transient and rule.cost == "unknown"
}


def classify(exc: BaseException) -> Verdict:
    """Return the verdict of the first rule in :data:`RULES` that matches ``exc``."""
    import redis.exceptions as rx

    for rule, predicate in _TABLE:
        if predicate(exc, rx):
            free = _FREE_VERDICTS.get(rule.name)
            if free is not None and cost_of(exc) == "free":
                return free
            return _VERDICTS[rule.name]
    raise AssertionError("unreachable: the last rule matches everything")  # pragma: no cover


def is_transient(exc: BaseException) -> bool:
    """True if another attempt may succeed (server starting, loading, failing over...)."""
    return classify(exc).transient
