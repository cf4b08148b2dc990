"""amavisd/sql/connection.py against the real PostgreSQL."""

from __future__ import annotations

import os

import pytest

from amavisd.sql.connection import (
    DEFAULT_CLAUSES,
    Database,
    SQLConfigError,
    clause,
    clauses,
    conninfo,
)
from t.helpers.pg import pg_schema  # noqa: F401 - fixture


@pytest.fixture
def request_close():
    """Closes the Databases a test opens, so no connection is left to the collector."""
    opened = []
    yield opened.append
    for db in opened:
        db.close()


def test_dbi_dsn_forms():
    assert conninfo(["DBI:Pg:database=mail;host=127.0.0.1;port=5432", "amavis", "pw"]) == {
        "dbname": "mail", "host": "127.0.0.1", "port": "5432", "user": "amavis",
        "password": "pw"}
    assert conninfo("dbi:Pg:dbname=mail") == {"dbname": "mail"}
    assert conninfo(["DBI:Pg:mail", None, None]) == {"dbname": "mail"}


@pytest.mark.parametrize("entry", [["DBI:mysql:database=mail;host=127.0.0.1", "u", "p"],
                                   ["dbi:SQLite:dbname=/tmp/x"], ["mail"], [], 42])
def test_unusable_dsn_is_a_clear_error(entry):
    with pytest.raises(SQLConfigError):
        conninfo(entry)


def test_clause_syntax():
    assert clause("SELECT id FROM t WHERE a=? AND b IN (%k)", 2) == \
        "SELECT id FROM t WHERE a=%s AND b IN (%s, %s)"
    assert clause("SELECT '50% ?' , x LIKE ?", 0) == "SELECT '50%% ?' , x LIKE %s"


def test_legacy_and_override_clauses():
    class Conf:
        sql_select_policy = "SELECT 1 WHERE x IN (%k)"
        sql_select_white_black_list = None
        sql_clause = {"sel_adr": "SELECT 2"}

    got = clauses(Conf())
    assert got["sel_policy"] == "SELECT 1 WHERE x IN (%k)"
    assert got["sel_adr"] == "SELECT 2"
    assert got["sel_wblist"] == DEFAULT_CLAUSES["sel_wblist"]


def test_failover_to_the_second_server_and_reconnect(pg_schema, request_close):  # noqa: F811
    dead = ["DBI:Pg:dbname=test;host=127.0.0.1;port=9", "postgres", ""]
    db = Database([dead, pg_schema.dsn], "lookup", connect_timeout=2)
    request_close(db)
    assert db.query("SELECT count(*) FROM users") == [(0,)]
    # the server ends the session (as a restart would): the next query reconnects
    pid = db.query("SELECT pg_backend_pid()")[0][0]
    pg_schema.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert db.query("SELECT count(*) FROM policy") == [(0,)]
    assert db.query("SELECT pg_backend_pid()")[0][0] != pid


def test_run_is_one_transaction(pg_schema, request_close):  # noqa: F811
    db = Database([pg_schema.dsn], "storage")
    request_close(db)

    def work(cur):
        cur.execute(clause(DEFAULT_CLAUSES["ins_adr"]), [0, b"a@example.com", "com.example"])
        raise RuntimeError("fails after the insert")

    with pytest.raises(RuntimeError):
        db.run(work)
    assert pg_schema.rows("SELECT count(*) FROM maddr") == [(0,)]


def test_no_server_at_all_is_a_connection_error():
    db = Database([["DBI:Pg:dbname=test;host=127.0.0.1;port=9", "postgres", ""]], "storage",
                  connect_timeout=2)
    with pytest.raises(ConnectionError, match="no server answered"):
        db.query("SELECT 1")


def test_a_forked_child_opens_its_own_connection(pg_schema, request_close):  # noqa: F811
    db = Database([pg_schema.dsn], "lookup")
    request_close(db)
    parent_pid = db.query("SELECT pg_backend_pid()")[0][0]
    read, write = os.pipe()
    child = os.fork()
    if child == 0:                      # pragma: no cover - runs in the child
        try:
            os.write(write, str(db.query("SELECT pg_backend_pid()")[0][0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_backend = int(os.read(read, 100))
    os.waitpid(child, 0)
    assert child_backend != parent_pid
    assert db.query("SELECT pg_backend_pid()")[0][0] == parent_pid   # still usable
