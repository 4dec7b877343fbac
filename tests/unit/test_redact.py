"""Redaction of connection targets and error texts."""

from __future__ import annotations

import pytest

from resilient_connect import redact
from resilient_connect._redact import Redactor


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql+psycopg://app:p%40ss@db/app", "postgresql+psycopg://app:***@db/app"),
        ("redis://:p@ss@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:pw@cache", "rediss://user:***@cache"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://db/app", "postgresql://db/app"),
        ("postgresql://app:@db/app", "postgresql://app:@db/app"),
        ("postgresql://a:b/c@h1,h2/app", "postgresql://a:***@h1,h2/app"),
        ("postgresql://h/app?user=a&password=x%20y", "postgresql://h/app?user=a&password=***"),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password = 'it''s' x=1", "host=db password = *** x=1"),
        (r"password='a \' b' host=db", "password=*** host=db"),
        ("PASSWORD=abc host=x", "PASSWORD=*** host=x"),
        ("sslpassword=k host=x", "sslpassword=*** host=x"),
        ("just a name", "just a name"),
        ("tcp://db:5432", "tcp://db:5432"),
        ("9x://a:b@c", "9x://a:b@c"),
    ],
)
def test_redact(target: str, expected: str) -> None:
    """Passwords in URLs and key=value DSNs become ***; other text is unchanged."""
    assert redact(target) == expected


def test_redactor_scrubs_known_secrets_everywhere() -> None:
    """Secrets from the target (raw and URL-encoded) and explicit ones are scrubbed from text."""
    redactor = Redactor("postgresql://app:p%40ss%20w@db/app", secrets=["hunter22", "", "ab"])
    assert redactor.target == "postgresql://app:***@db/app"
    text = "bad URI 'postgresql://app:p@ss w@db/app' pw p%40ss%20w, also hunter22 and ab"
    assert redactor.scrub(text) == "bad URI 'postgresql://app:***@db/app' pw ***, also *** and ab"


def test_redactor_masks_urls_and_dsns_inside_messages() -> None:
    """URLs and password= pairs quoted inside a message are masked even if not known."""
    redactor = Redactor("db")
    assert redactor.scrub("connecting to redis://u:zzz@h:1 failed") == (
        "connecting to redis://u:***@h:1 failed"
    )
    assert redactor.scrub("options: password=zzz host=h") == "options: password=*** host=h"


def test_describe_exception() -> None:
    """describe() names the exception type and gives one scrubbed line."""
    redactor = Redactor("host=h password=topsecret")
    assert redactor.describe(OSError("x\n  topsecret")) == "OSError: x ***"
    assert redactor.describe(TimeoutError()) == "TimeoutError"


def test_empty_and_unterminated_quoted_values() -> None:
    """An empty password= stays as is; libpq-style spacing and unterminated quotes are masked."""
    assert redact("postgresql://h/db?password=&user=u") == "postgresql://h/db?password=&user=u"
    assert redact("password= host=x") == "password= ***"  # libpq reads "host=x" as the password
    redactor = Redactor("password='abc host=x")
    assert redactor.target == "password=***"  # the rest of the string might be the secret
    assert redactor.scrub("echo abc host=x") == "echo ***"
