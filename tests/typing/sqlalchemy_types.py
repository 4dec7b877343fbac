"""Checked by mypy --strict: the SQLAlchemy adapter returns SQLAlchemy's own engine types."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import assert_type

import resilient_connect as rc
from resilient_connect import sqlalchemy as rc_sqlalchemy


def sync_engines() -> None:
    engine = rc_sqlalchemy.create_engine("postgresql+psycopg://app@db/app", pool_size=5)
    assert_type(engine, sqlalchemy.Engine)
    url = sqlalchemy.make_url("postgresql+psycopg://app@db/app")
    assert_type(
        rc_sqlalchemy.create_engine(url, retry=rc.Backoff(timeout=30), lazy=True, hooks=()),
        sqlalchemy.Engine,
    )


async def async_engines() -> None:
    engine = await rc_sqlalchemy.create_async_engine(
        "postgresql+psycopg://app@db/app", reconnect=rc.Backoff(timeout=10), echo=True
    )
    assert_type(engine, AsyncEngine)


def classification(exc: Exception) -> None:
    assert_type(rc_sqlalchemy.is_transient(exc), bool)
    assert_type(rc_sqlalchemy.classify(exc).transient, bool)
    assert_type(rc_sqlalchemy.classify(exc).rule, str)
