"""Checked by mypy --strict: the psycopg adapter keeps psycopg's row types."""

from __future__ import annotations

from psycopg import AsyncConnection, Connection
from psycopg.rows import DictRow, TupleRow, class_row, dict_row
from typing_extensions import assert_type

import resilient_connect as rc
from resilient_connect._classify import Verdict
from resilient_connect.psycopg import (
    aconnect_with_retry,
    classify,
    connect_with_retry,
    is_transient,
)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def sync_forms() -> None:
    assert_type(connect_with_retry(), Connection[TupleRow])
    assert_type(connect_with_retry("postgresql://db/app"), Connection[TupleRow])
    assert_type(
        connect_with_retry(
            "host=db",
            policy=rc.Backoff(timeout=5),
            hooks=(),
            autocommit=True,
            prepare_threshold=None,
            connect_timeout=3,
            password="x",
        ),
        Connection[TupleRow],
    )
    assert_type(connect_with_retry(row_factory=dict_row), Connection[DictRow])
    assert_type(connect_with_retry("", row_factory=class_row(Point)), Connection[Point])
    with connect_with_retry(row_factory=dict_row) as conn:
        row = conn.execute("select 1 as one").fetchone()
        assert_type(row, DictRow | None)


async def async_forms() -> None:
    assert_type(await aconnect_with_retry(), AsyncConnection[TupleRow])
    assert_type(
        await aconnect_with_retry("postgresql://db/app", autocommit=True, hooks=[rc.log_event]),
        AsyncConnection[TupleRow],
    )
    assert_type(await aconnect_with_retry(row_factory=dict_row), AsyncConnection[DictRow])
    conn = await aconnect_with_retry(row_factory=dict_row)
    cur = await conn.execute("select 1")
    assert_type(await cur.fetchone(), DictRow | None)


def classification(exc: BaseException) -> None:
    assert_type(classify(exc), Verdict)
    assert_type(is_transient(exc), bool)


def bad_calls() -> None:
    connect_with_retry(policy=5)  # type: ignore[call-overload]
    connect_with_retry(autocommit="yes")  # type: ignore[call-overload]
    connect_with_retry(host=object())  # type: ignore[call-overload]
