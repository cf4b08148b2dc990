"""A private schema on the real PostgreSQL (127.0.0.1:5432, database ``test``) per test.

Each test gets its own schema with the amavis tables from ``sql/schema-pg.sql`` and a
DSN entry that points the daemon at it (``options=-csearch_path=...``), so tests
never see each other's rows and can run in any order.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "sql" / "schema-pg.sql"
HOST, PORT, DBNAME, USER = "127.0.0.1", 5432, "test", "postgres"


@dataclass
class PgSchema:
    """One test's schema: its name, a connection into it, and the daemon's DSN entry."""

    name: str
    conn: psycopg.Connection

    @property
    def dsn(self) -> list[str]:
        """``[dsn, user, password]`` as ``@storage_sql_dsn``/``@lookup_sql_dsn`` take it."""
        return [f"DBI:Pg:dbname={DBNAME};host={HOST};port={PORT};"
                f"options=-csearch_path={self.name}", USER, ""]

    def rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def execute(self, sql: str, params: Any = ()) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)


def connect() -> psycopg.Connection:
    try:
        return psycopg.connect(host=HOST, port=PORT, dbname=DBNAME, user=USER,
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on {HOST}:{PORT} is not available: {exc}")


@pytest.fixture
def pg_schema() -> Iterator[PgSchema]:
    """A fresh schema holding the amavis tables; dropped after the test."""
    conn = connect()
    name = "amavis_t_" + secrets.token_hex(4)
    conn.execute(f"CREATE SCHEMA {name}")
    conn.execute(f"SET search_path TO {name}")
    conn.execute(SCHEMA_FILE.read_text())
    try:
        yield PgSchema(name, conn)
    finally:
        conn.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()
