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
    import re
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


def secrets_in(*texts: object) -> list[str]:
    """The secrets :func:`redact` would hide in each text (URLs, DSNs); other values ignored.

    For the arguments of a call (a conninfo passed positionally): what a
    :class:`Redactor` built from an already redacted target must still scrub.
    """
    found: list[str] = []
    for text in texts:
        if isinstance(text, str) and ("=" in text or "@" in text):
            found += _redact_with_secrets(text)[1]
    return found


def redact(target: str) -> str:
    """Return ``target`` with every password replaced by ``***``.

    Understands URLs (``scheme://user:password@host/...``, also with several
    hosts and with ``?password=...`` in the query), ``user:password@host``
    without a scheme, and ``key=value`` DSNs (``password=secret`` or
    ``password='quoted \\' secret'``). Text that is none of these is returned
    unchanged. Malformed input errs on the side of hiding: a password with an
    unencoded ``@ / ? #`` is hidden up to the last ``@``, and an unquoted DSN
    value up to the next space (which is where libpq ends it).
    """
    return _redact_with_secrets(target)[0]


def _redact_with_secrets(target: str) -> tuple[str, list[str]]:
    """Redact ``target`` and return the secrets that were removed."""
    secrets: list[str] = []
    text, query_start = _redact_url_userinfo(target, secrets)
    if query_start is None:
        text = _redact_key_values(text, secrets)
    else:  # a URL: in its query, values end at '&' or '#' as well
        text = text[:query_start] + _redact_key_values(text[query_start:], secrets, query=True)
    return text, secrets


def _redact_url_userinfo(text: str, secrets: list[str]) -> tuple[str, int | None]:
    """Mask the password of a URL's (or a scheme-less ``user:password@host``) userinfo.

    Returns the text and, for a URL, where its query starts (``None``: not a URL).
    Parsers disagree on malformed URLs (libpq ends the userinfo at the first ``@``,
    most URL parsers at the last), so the password is taken to run from the first
    ``:`` of the userinfo to the *last* ``@``: whatever a parser makes of it, no part
    of it stays visible.
    """
    scheme_end = text.find("://")
    if scheme_end >= 0 and _is_scheme(text[:scheme_end]):
        rest_start = scheme_end + 3
    elif scheme_end < 0 and _SCHEMELESS_USERINFO(text):
        rest_start = 0
    else:
        return text, None
    at = text.rfind("@", rest_start)
    if at < 0:
        return text, _query_start(text, rest_start) if rest_start else None
    userinfo = text[rest_start:at]
    colon = userinfo.find(":")
    if colon < 0 or colon == len(userinfo) - 1:
        return text, _query_start(text, at) if rest_start else None
    secrets.append(userinfo[colon + 1 :])
    masked = f"{text[:rest_start]}{userinfo[: colon + 1]}{MASK}{text[at:]}"
    return masked, _query_start(masked, rest_start + colon + 1 + len(MASK)) if rest_start else None


def _query_start(text: str, after: int) -> int | None:
    found = text.find("?", after)
    return None if found < 0 else found


def _SCHEMELESS_USERINFO(text: str) -> bool:  # noqa: N802 - reads as a predicate constant
    """``user:password@host...`` without a scheme (a typo for a URL): no spaces or '='
    before the ':'."""
    colon = text.find(":")
    return 0 < colon < text.rfind("@") and not any(c in " =/" for c in text[:colon])


def _is_scheme(candidate: str) -> bool:
    return (
        bool(candidate)
        and candidate[0].isalpha()
        and all(c.isalnum() or c in "+-." for c in candidate)
    )


def _key_value_pattern(*, query: bool) -> re.Pattern[str]:
    import re

    # A libpq DSN value runs to the next space unless quoted; in a URL query, also to
    # '&' or '#'.
    stops = r"\s&#" if query else r"\s"
    return re.compile(
        r"(?P<key>(?:^|(?<=[\s?&;,(]))[A-Za-z_][\w.-]*)(?P<eq>\s*=\s*)"
        rf"(?P<value>(?:'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?)?[^{stops}]*)",
        re.IGNORECASE,
    )


def _redact_key_values(text: str, secrets: list[str], *, query: bool = False) -> str:
    import re

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

    return _key_value_pattern(query=query).sub(mask, text)


def _redact_embedded_urls(text: str) -> str:
    """Mask ``user:password@`` in URLs that appear inside a longer text."""
    import re

    return re.sub(
        r"(?P<head>\b[A-Za-z][\w+.-]*://[^\s:/@]*:)[^\s@]+(?=@)", rf"\g<head>{MASK}", text
    )


#: Driver messages that echo a piece of their input, which may be (part of) a password
#: the caller never named (a decorated function's own URL, say): the echoed piece is
#: masked whatever it is. libpq: bad percent-encoding, a space in a URL, an unterminated
#: IPv6 host (the whole URI), a non-numeric port, a host holding a password's tail after
#: an unencoded '@'; urllib and redis-py: a non-numeric port.
_ECHOES = (
    # (the fixed text that starts the echo, the pattern that masks it). Greedy to the
    # last closing quote of the line: the echoed text may itself hold quotes.
    (
        'invalid percent-encoded token: "',
        r'(?P<head>invalid percent-encoded token: ")(?P<echo>[^\n]*)(?=")',
    ),
    (
        'unexpected spaces found in "',
        r'(?P<head>unexpected spaces found in ")(?P<echo>[^\n]*)(?=")',
    ),
    ('in URI: "', r'(?P<head>in URI: ")(?P<echo>[^\n]*)(?=")'),
    (
        'invalid integer value "',
        r'(?P<head>invalid integer value ")(?P<echo>[^\n]*)(?=" for connection option)',
    ),
    ("resolve host '", r"(?P<head>resolve host ')(?P<echo>[^\n]*)(?=@[^'@\n]*')"),
    # Python cuts a long literal without closing its quote: mask to the end of the line.
    (
        "Port could not be cast to integer value as ",
        r"(?P<head>Port could not be cast to integer value as )(?P<echo>'[^\n]*|\S+)",
    ),
    (
        "invalid literal for int() with base 10: ",
        r"(?P<head>invalid literal for int\(\) with base 10: )(?P<echo>['\"][^\n]*)",
    ),
)


def _mask_echoes(text: str) -> str:
    # Every failure with a hook scrubs its message: a substring test first keeps that
    # to microseconds (the patterns only run on the rare text that holds an echo).
    for head, pattern in _ECHOES:
        if head in text:
            import re

            text = re.sub(pattern, rf"\g<head>{MASK}", text)
    return text


#: Punctuation that splits a password into the pieces a parser may echo on its own.
_SPLITTERS = "@:/?#&=;,()% \t'\"\\"


def _pieces(secret: str) -> set[str]:
    import re

    return {p for p in re.split("[" + re.escape(_SPLITTERS) + "]+", secret) if p}


class Redactor:
    """Redacts one target and scrubs its secrets from any text.

    Built once per failing call (never on the success path). ``secrets`` adds
    values known to be secret, such as a ``password=`` keyword argument.

    Each secret is scrubbed raw and percent-encoded or decoded, and so is each
    piece of it between URL punctuation (a parser may echo only the part after
    an unencoded ``@``). Secrets and pieces shorter than
    ``_MIN_SECRET_LENGTH`` would match innocent text everywhere; they are masked
    only where a driver echoes a value: quoted, after ``password=`` or between
    ``:`` and ``@``. Known echoes of malformed input (:data:`_ECHOES`) are
    masked whatever they contain.
    """

    __slots__ = ("_secrets", "_short", "target")

    def __init__(self, target: str, secrets: Iterable[str] = ()) -> None:
        self.target, found = _redact_with_secrets(target)
        candidates = {s for s in (*found, *secrets) if s}
        variants: set[str] = set()
        if candidates:
            from urllib.parse import quote, unquote

            for secret in candidates:
                for form in {secret, unquote(secret), quote(secret, safe=""), quote(secret)}:
                    variants.add(form)
                    variants.update(_pieces(form))
        # Longest first, so that a secret is not half-replaced by a shorter one.
        self._secrets = tuple(
            sorted((v for v in variants if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)
        )
        self._short = tuple(v for v in variants if len(v) < _MIN_SECRET_LENGTH)

    def scrub(self, text: str) -> str:
        """Return ``text`` with known secrets masked and any DSN or URL redacted."""
        # Echoes first, while their quotes are intact (a masked secret may have held one).
        text = _mask_echoes(text)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        if self._short:
            text = _mask_short(text, self._short)
        if "://" in text:
            text = _redact_embedded_urls(text)
        return _redact_key_values(text, []) if "=" in text else text

    def describe(self, exc: BaseException) -> str:
        """One line naming the exception type and its (scrubbed) message.

        Scrubbed before it is shortened, so that no cut leaves part of a secret.
        """
        return self.describe_text(type(exc).__qualname__, str(exc))

    def describe_text(self, name: str, text: str) -> str:
        """:meth:`describe` for an error known by its type name and message only."""
        message = self.scrub(" ".join(text.split()))
        if len(message) > _MAX_CAUSE_LENGTH:
            message = message[: _MAX_CAUSE_LENGTH - 3] + "..."
        return f"{name}: {message}" if message else name

    def scrub_exception(self, exc: BaseException) -> None:
        """Mask secrets in the messages of ``exc`` and of its cause/context chain, in place.

        What the application catches (and ``traceback.format_exception`` prints, the
        whole chain) must not show a password a driver echoed. Only string arguments
        that contain a secret are rewritten; the exceptions keep their types and
        other attributes (do not log ``psycopg``'s ``exc.pgconn``: it holds the
        password).
        """
        seen: set[int] = set()
        pending: list[BaseException] = [exc]
        while pending and len(seen) < _MAX_CHAIN:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            args = current.args
            if any(isinstance(arg, str) for arg in args):
                scrubbed = tuple(self.scrub(a) if isinstance(a, str) else a for a in args)
                if scrubbed != args:
                    try:  # noqa: SIM105 - contextlib would load with the package
                        current.args = scrubbed
                    except (AttributeError, TypeError):  # a C type that refuses: leave it
                        pass
            linked = (
                current.__cause__,
                current.__context__,
                getattr(current, "orig", None),  # SQLAlchemy's wrapped DBAPI error
                getattr(current, "last_exception", None),
            )
            pending.extend(e for e in linked if isinstance(e, BaseException))


def _mask_short(text: str, shorts: tuple[str, ...]) -> str:
    """Mask short secrets where a driver would echo them, not inside other words."""
    import re

    for short in shorts:
        s = re.escape(short)
        text = re.sub(
            rf"(?P<q>['\"]){s}(?P=q)|(?P<colon>:){s}(?=@)|(?P<eq>=\s*){s}(?=\s|$|[&#'\"])",
            lambda m: (
                (m.group("q") or "")
                + (m.group("colon") or "")
                + (m.group("eq") or "")
                + MASK
                + (m.group("q") or "")
            ),
            text,
        )
    return text


_MAX_CAUSE_LENGTH = 500
_MAX_CHAIN = 16
