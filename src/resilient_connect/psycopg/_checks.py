"""Connection parameters that libpq accepts when parsing but that can never work.

``conninfo_to_dict`` only checks the syntax. Some values fail later, and badly: a host
name holding an ``@`` (the tail of a password with an unencoded ``@``) is retried to the
deadline as a DNS failure, logging that tail each time; a bad ``sslmode`` fails only at
connect time. These checks run before any attempt: the psycopg adapter refuses a host
with ``@`` at once, and the command line turns every problem here into a usage error.
Messages never quote a value that may hold a secret.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: libpq parameters with a fixed set of values (PostgreSQL 17 documentation).
CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
}
#: libpq parameters that must be whole numbers (``connect_timeout`` may be a float string
#: for psycopg, which truncates it).
INTEGERS = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")


def host_problem(params: Mapping[str, object]) -> str | None:
    """Why the host list cannot be right, or ``None``: a name with ``@`` never resolves."""
    hosts = str(params.get("host") or "")
    if "@" in hosts:
        return (
            "a host name contains '@': is there an unencoded '@' in the password? "
            "Percent-encode it as %40"
        )
    return None


def connect_timeout_problem(value: object) -> str | None:
    """psycopg's own complaint about a ``connect_timeout`` it cannot read, or ``None``."""
    if value in (None, ""):
        return None
    try:
        int(float(str(value)))
    except (ValueError, OverflowError):
        return f"bad value for connect_timeout: {value!r}"
    return None


def problems(params: Mapping[str, object]) -> list[str]:
    """The mistakes in parsed libpq parameters that libpq would report only when connecting.

    Public as ``resilient_connect.psycopg.conninfo_problems``: the command line
    refuses such a target before it waits. Each problem is one line (not yet
    redacted). Checks :func:`host_problem`, the timeout and the enumerated values.
    """
    found = [
        p
        for p in (host_problem(params), connect_timeout_problem(params.get("connect_timeout")))
        if p
    ]
    for name, allowed in CHOICES.items():
        value = params.get(name)
        if value not in (None, "") and str(value) not in allowed:
            found.append(f"invalid {name} {value!r}: expected one of {', '.join(allowed)}")
    for name in INTEGERS:
        value = params.get(name)
        if value not in (None, "") and not str(value).strip().lstrip("-").isdigit():
            found.append(f"invalid {name} {value!r}: expected a whole number")
    return found
