#!/usr/bin/env python3
"""Generate ``src/resilient_connect/_postgres/_messages.py``: PostgreSQL's connect-time messages
in every language the server ships, as data for the classification rules.

Why: at connect time libpq (so psycopg and psycopg2) gives no SQLSTATE, only the server's text,
and the server translates that text (``lc_messages``). A German server says
``Passwort-Authentifizierung für Benutzer »app« fehlgeschlagen``; without its translation a
wrong password would look unknown and be retried until the deadline. PostgreSQL ships its
translations as gettext catalogues (``/usr/share/locale/LANG/LC_MESSAGES/postgres-N.mo`` on
Debian); this script reads them, picks the messages named in ``MESSAGES`` below, and writes
each translation as a phrase in the rules' syntax (``…`` for a placeholder such as ``%s``).

Each translation is written twice when the forms differ: as is (a server whose process
locale is UTF-8), and transliterated to ASCII the way glibc's gettext does when the server
runs with ``LC_CTYPE=C`` (``f?r``, ``>>app<<``), computed with ``iconv -t ASCII//TRANSLIT``
under ``LC_ALL=C``. A phrase with too little literal text to be specific (a Russian message
transliterated to question marks, say) is left out.

Usage (from the project root)::

    python scripts/gen_pg_messages.py            # rewrite the module
    python scripts/gen_pg_messages.py --check    # exit 1 if the module is not current
    python scripts/gen_pg_messages.py --locale-dir DIR

``--check`` compares only when this machine has the same catalogue versions the module was
generated from; otherwise it says so and exits 0.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "src" / "resilient_connect" / "_postgres" / "_messages.py"

# Rule name -> the server's message ids (C format strings, as in PostgreSQL's source) that the
# rule stands for. A message id no catalogue has is skipped (it may exist in other versions).
MESSAGES: dict[str, tuple[str, ...]] = {
    "pg:auth-failed": (
        'password authentication failed for user "%s"',
        'Ident authentication failed for user "%s"',
        'Peer authentication failed for user "%s"',
        'GSSAPI authentication failed for user "%s"',
        'SSPI authentication failed for user "%s"',
        'PAM authentication failed for user "%s"',
        'BSD authentication failed for user "%s"',
        'LDAP authentication failed for user "%s"',
        'certificate authentication failed for user "%s"',
        'RADIUS authentication failed for user "%s"',
    ),
    "pg:auth-rejected": (
        'authentication failed for user "%s": host rejected',
        'role "%s" is not permitted to log in',
        'role "%s" does not exist',
        'no pg_hba.conf entry for host "%s", user "%s", database "%s", %s',
        'no pg_hba.conf entry for host "%s", user "%s", database "%s"',
        'no pg_hba.conf entry for replication connection from host "%s", user "%s", %s',
        'no pg_hba.conf entry for replication connection from host "%s", user "%s"',
        'pg_hba.conf rejects connection for host "%s", user "%s", database "%s", %s',
        'pg_hba.conf rejects connection for host "%s", user "%s", database "%s"',
        'pg_hba.conf rejects replication connection for host "%s", user "%s", %s',
        'pg_hba.conf rejects replication connection for host "%s", user "%s"',
    ),
    "pg:database-missing": ('database "%s" does not exist',),
    "pg:no-connect-privilege": ('permission denied for database "%s"',),
    "pg:starting-up": ("the database system is starting up",),
    "pg:recovering": (
        "the database system is not yet accepting connections",
        "the database system is in recovery mode",
    ),
    "pg:standby": ("the database system is not accepting connections",),
    "pg:shutting-down": ("the database system is shutting down",),
    "pg:too-many-connections": (
        "sorry, too many clients already",
        "remaining connection slots are reserved for non-replication superuser connections",
        "remaining connection slots are reserved for roles with the %s attribute",
        'remaining connection slots are reserved for roles with privileges of the "%s" role',
        'too many connections for role "%s"',
        'too many connections for database "%s"',
    ),
    "pg:out-of-resources": ("could not fork new process for connection: %m",),
    "pg:admin-shutdown": ("terminating connection due to administrator command",),
    "pg:crash-shutdown": ("terminating connection because of crash of another server process",),
    "pg:session-timeout": (
        "terminating connection due to idle-session timeout",
        "terminating connection due to idle-in-transaction timeout",
    ),
}

# A printf conversion (with an optional positional index, as translations reorder them).
_PLACEHOLDER = re.compile(r"%(?:\d+\$)?[-+ #0]*\d*(?:\.\d+)?(?:hh|h|ll|l|z|j|t)?[sdiuxXcfgm]")
# Literal characters a phrase must keep (placeholders removed) to be specific enough.
_MIN_LITERAL = 10
# ASCII letters a transliterated phrase must keep (a Cyrillic text becomes question marks).
_MIN_ASCII_LETTERS = 12


def read_mo(path: Path) -> dict[str, str]:
    """The singular msgid -> msgstr pairs of a GNU ``.mo`` catalogue (plurals: first forms)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    _, count, ids_at, strs_at = struct.unpack(order + "4I", data[4:20])
    catalogue: dict[str, str] = {}
    for index in range(count):
        id_len, id_off = struct.unpack(
            order + "2I", data[ids_at + 8 * index : ids_at + 8 * index + 8]
        )
        str_len, str_off = struct.unpack(
            order + "2I", data[strs_at + 8 * index : strs_at + 8 * index + 8]
        )
        msgid = data[id_off : id_off + id_len].decode("utf-8", "replace")
        msgstr = data[str_off : str_off + str_len].decode("utf-8", "replace")
        if not msgid or "\x04" in msgid:  # the header, or a message with a context
            continue
        catalogue[msgid.split("\x00")[0]] = msgstr.split("\x00")[0]
    return catalogue


def to_ascii(texts: list[str]) -> list[str]:
    """glibc's transliteration under ``LC_ALL=C``, what a server with ``LC_CTYPE=C`` sends."""
    if not texts:
        return []
    # One line per text; a newline inside a text travels as a unit separator.
    joined = "\n".join(text.replace("\n", "\x1f") for text in texts) + "\n"
    result = subprocess.run(
        ["iconv", "-f", "UTF-8", "-t", "ASCII//TRANSLIT"],  # noqa: S607 - found on PATH below
        input=joined.encode(),
        capture_output=True,
        check=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    )
    lines = result.stdout.decode("ascii").split("\n")[:-1]
    if len(lines) != len(texts):
        raise RuntimeError("iconv changed the number of lines")
    return [line.replace("\x1f", "\n") for line in lines]


def phrase(text: str) -> str:
    """A format string as a rule phrase: placeholders become ``…``, ``%%`` becomes ``%``."""
    text = _PLACEHOLDER.sub("…", text).replace("%%", "%")
    return re.sub(r"(?:…\s*)+…", "…", text).strip()


def specific(text: str, *, ascii_form: bool) -> bool:
    literal = text.replace("…", "").strip()
    if len(literal) < _MIN_LITERAL:
        return False
    return not ascii_form or len(re.findall(r"[A-Za-z]", literal)) >= _MIN_ASCII_LETTERS


def catalogues(locale_dir: Path) -> list[tuple[str, str, Path]]:
    """``(language, version, path)`` for every ``postgres-N.mo`` under ``locale_dir``."""
    found = []
    for path in sorted(locale_dir.glob("*/LC_MESSAGES/postgres-*.mo")):
        version = path.stem.removeprefix("postgres-")
        found.append((path.parent.parent.name, version, path))
    return found


def generate(locale_dir: Path) -> str:
    found = catalogues(locale_dir)
    if not found:
        raise SystemExit(f"no postgres-N.mo catalogues under {locale_dir} (install postgresql)")
    english = {msgid for ids in MESSAGES.values() for msgid in ids}
    loaded = [(language, version, read_mo(path)) for language, version, path in found]
    present = {msgid for _, _, catalogue in loaded for msgid in catalogue}
    unknown = sorted(english - present)
    phrases: dict[str, set[str]] = {rule: set() for rule in MESSAGES}
    raw: list[tuple[str, str]] = []
    for rule, ids in MESSAGES.items():
        for _, _, catalogue in loaded:
            for msgid in ids:
                msgstr = catalogue.get(msgid, "")
                if msgstr and msgstr != msgid:
                    raw.append((rule, msgstr))
    for (rule, msgstr), ascii_text in zip(raw, to_ascii([text for _, text in raw]), strict=True):
        exact = phrase(msgstr)
        if specific(exact, ascii_form=False):
            phrases[rule].add(exact)
        transliterated = phrase(ascii_text)
        if transliterated != exact and specific(transliterated, ascii_form=True):
            phrases[rule].add(transliterated)
    languages = sorted({language for language, _, _ in loaded})
    versions = sorted({version for _, version, _ in loaded}, key=int)
    return render(phrases, languages, versions, unknown)


def quoted(text: str) -> str:
    """A Python literal for ``text`` in the quotes ruff would choose (the module is not
    reformatted, so the output must be stable by itself)."""
    body = text.replace("\\", "\\\\").replace("\n", "\\n")
    if '"' in text and "'" not in text:
        return "'" + body + "'"
    return '"' + body.replace('"', '\\"') + '"'


def render(
    phrases: dict[str, set[str]], languages: list[str], versions: list[str], unknown: list[str]
) -> str:
    out = [
        '"""Translations of PostgreSQL\'s connect-time messages, by classification rule.',
        "",
        "GENERATED by scripts/gen_pg_messages.py from the server's gettext catalogues; do not",
        "edit (run the script again). Each phrase uses the rules' syntax (``…`` stands for any",
        "text on one line). See the script for how phrases are chosen.",
        '"""',
        "",
        "# PostgreSQL major versions whose catalogues (postgres-N.mo) this was generated from.",
        f"VERSIONS: tuple[str, ...] = ({', '.join(quoted(v) for v in versions)},)",
        "# Languages (catalogue directory names) the phrases cover.",
        "LANGUAGES: tuple[str, ...] = (",
        *(f"    {quoted(language)}," for language in languages),
        ")",
        "# Message ids of the generator's list that none of those catalogues has.",
        "MISSING: tuple[str, ...] = (",
        *(f"    {quoted(msgid)}," for msgid in unknown),
        ")",
        "",
        "TRANSLATIONS: dict[str, tuple[str, ...]] = {",
    ]
    for rule in sorted(phrases):
        out.append(f"    {quoted(rule)}: (")
        out += [f"        {quoted(text)}," for text in sorted(phrases[rule])]
        out.append("    ),")
    out += ["}", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the module is not current")
    parser.add_argument("--locale-dir", type=Path, default=Path("/usr/share/locale"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = generate(args.locale_dir)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        versions = re.search(r"^VERSIONS: .*$", current, re.MULTILINE)
        wanted = re.search(r"^VERSIONS: .*$", text, re.MULTILINE)
        if versions is None or wanted is None or versions.group() != wanted.group():
            sys.stderr.write("gen_pg_messages: other catalogue versions here; not compared\n")
            return 0
        if current != text:
            sys.stderr.write(f"gen_pg_messages: {args.output} is out of date; run the script\n")
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
