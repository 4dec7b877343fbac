"""Parse a database URL as SQLAlchemy does, without echoing its password in the error."""

from __future__ import annotations

import sqlalchemy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def make_url(url: str | URL) -> URL:
    """``sqlalchemy.make_url(url)``; a parse error has any password it quotes masked.

    SQLAlchemy reports a bad port with Python's own ``invalid literal for int()``
    text, which quotes what it took for the port: with an unencoded ``@`` or ``/``
    in the password, part of the password. The masked error is raised without the
    original as its context (which would still quote it).
    """
    try:
        return sqlalchemy.make_url(url)
    except ValueError as exc:
        if not isinstance(url, str):
            raise
        from .._redact import Redactor

        text = str(exc)
        masked = Redactor(url).scrub(text)
        if masked == text:
            raise
    raise ValueError(masked)
