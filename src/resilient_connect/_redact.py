"""Hide passwords in connection targets and in error texts.

Every string that leaves the package through an event, a log record, an
exception message, a ``repr`` or the command line goes through here first.
Two tools:

* :func:`redact` rewrites a connection target (URL or ``key=value`` DSN) so
  that its password reads ``***``.
* :class:`Redactor` remembers the secrets found in a target (and any given
  explicitly, such as a ``password=`` keyword argument) and scrubs them from
  arbitrary text, such as a driver's error message. libpq, for one, echoes a
  malformed URL, password included, in its error text.

:mod:`re` is imported lazily: this only runs on the failure path.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

MASK = "***"
#: A key (a keyword argument, a DSN or URL query key) names a secret when its lower-case
#: form contains one of these: password, passwd, ssl_password, sslpassword, passphrase,
#: pwd, client_secret, token, auth_token...
SECRET_KEY_FRAGMENTS = ("pass", "pwd", "secret", "token")
#: Keys that are secrets although they contain no fragment (redis URLs' ``?auth=``).
SECRET_KEYS = frozenset({"auth"})
_MIN_SECRET_LENGTH = 3


def is_secret_key(key: str) -> bool:
    """Whether the value of ``key`` is a secret: the one rule every adapter uses."""
    lowered = key.lower()
    return lowered in SECRET_KEYS or any(f in lowered for f in SECRET_KEY_FRAGMENTS)


def secret_values(*sources: Mapping[str, object] | None) -> list[str]:
    """The values of the secret keys (:func:`is_secret_key`) of every mapping, as text.

    For keyword arguments and ``connect_args``: what a :class:`Redactor` must scrub
    from error texts although it never appears in the target.
    """
    return [
        str(value)
        for source in sources
        if source
        for key, value in source.items()
        if value is not None and value != "" and isinstance(key, str) and is_secret_key(key)
    ]


def redact(target: str) -> str:
    """Return ``target`` with every password replaced by ``***``.

    Understands URLs (``scheme://user:password@host/...``, also with several
    hosts and with ``?password=...`` in the query) and ``key=value`` DSNs
    (``password=secret`` or ``password='quoted \\' secret'``). Text that is
    neither is returned unchanged.
    """
    return _redact_with_secrets(target)[0]


def _redact_with_secrets(target: str) -> tuple[str, list[str]]:
    """Redact ``target`` and return the secrets that were removed."""
    secrets: list[str] = []
    text = _redact_url_userinfo(target, secrets)
    text = _redact_key_values(text, secrets)
    return text, secrets


def _redact_url_userinfo(text: str, secrets: list[str]) -> str:
    scheme_end = text.find("://")
    if scheme_end < 0 or not _is_scheme(text[:scheme_end]):
        return text
    rest_start = scheme_end + 3
    # The authority ends at the first '/', '?' or '#'; a password may contain '@' and ':',
    # so the userinfo ends at the *last* '@' of the authority.
    end = len(text)
    for stop in "/?#":
        found = text.find(stop, rest_start)
        if 0 <= found < end:
            end = found
    at = text.rfind("@", rest_start, end)
    if at < 0:
        # A password with an unencoded '/' or '?' confuses the split; fall back to the
        # last '@' before the query, which is what libpq does for such URLs.
        query = text.find("?", rest_start)
        at = text.rfind("@", rest_start, len(text) if query < 0 else query)
        if at < 0:
            return text
    userinfo = text[rest_start:at]
    colon = userinfo.find(":")
    if colon < 0:
        return text
    password = userinfo[colon + 1 :]
    if not password:
        return text
    secrets.append(password)
    return f"{text[:rest_start]}{userinfo[: colon + 1]}{MASK}{text[at:]}"


def _is_scheme(candidate: str) -> bool:
    return (
        bool(candidate)
        and candidate[0].isalpha()
        and all(c.isalnum() or c in "+-." for c in candidate)
    )


def _redact_key_values(text: str, secrets: list[str]) -> str:
    import re

    pattern = re.compile(
        r"(?P<key>(?:^|(?<=[\s?&;,(]))[A-Za-z_][\w.-]*)(?P<eq>\s*=\s*)"
        r"(?P<value>(?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?)?[^\s&;,)]*)",
        re.IGNORECASE,
    )

    def mask(match: re.Match[str]) -> str:
        raw = match.group("value")
        if not raw or not is_secret_key(match.group("key")):
            return match.group(0)
        inner = raw
        if raw[0] in "'\"":
            inner = raw[1:-1] if len(raw) > 1 and raw[-1] == raw[0] else raw[1:]
            inner = re.sub(r"\\(.)", r"\1", inner)
        if inner:
            secrets.append(inner)
        return f"{match.group('key')}{match.group('eq')}{MASK}"

    return pattern.sub(mask, text)


def _redact_embedded_urls(text: str) -> str:
    """Mask ``user:password@`` in URLs that appear inside a longer text."""
    import re

    return re.sub(
        r"(?P<head>\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]+(?=@)", rf"\g<head>{MASK}", text
    )


class Redactor:
    """Redacts one target and scrubs its secrets from any text.

    Built once per failing call (never on the success path). ``secrets`` adds
    values known to be secret, such as a ``password=`` keyword argument.
    """

    __slots__ = ("_secrets", "target")

    def __init__(self, target: str, secrets: Iterable[str] = ()) -> None:
        self.target, found = _redact_with_secrets(target)
        candidates = {s for s in (*found, *secrets) if s and len(s) >= _MIN_SECRET_LENGTH}
        variants: set[str] = set()
        if candidates:
            from urllib.parse import quote, unquote

            for secret in candidates:
                variants.update({secret, unquote(secret), quote(secret, safe=""), quote(secret)})
        # Longest first, so that a secret is not half-replaced by a shorter one.
        self._secrets = tuple(
            sorted((v for v in variants if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
        )

    def scrub(self, text: str) -> str:
        """Return ``text`` with known secrets masked and any DSN or URL redacted."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        if "://" in text:
            text = _redact_embedded_urls(text)
        return _redact_key_values(text, []) if "=" in text else text

    def describe(self, exc: BaseException) -> str:
        """One line naming the exception type and its (scrubbed) message."""
        return self.describe_text(type(exc).__qualname__, str(exc))

    def describe_text(self, name: str, text: str) -> str:
        """:meth:`describe` for an error known by its type name and message only."""
        message = " ".join(text.split())
        if len(message) > _MAX_CAUSE_LENGTH:
            message = message[: _MAX_CAUSE_LENGTH - 3] + "..."
        return self.scrub(f"{name}: {message}" if message else name)


_MAX_CAUSE_LENGTH = 500
