# tests: amavisd/sql/quarantine_store.py, amavisd/actions/quarantine.py (sql:)
"""The ``sql:`` quarantine against the real PostgreSQL (spec/pipeline.md 22.3, 22.4).

Writing goes through the quarantine action exactly as the pipeline calls it; the
chunks are read back with a separate connection and, for the release side, with
``find_partition``/``read_message``.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from amavisd.actions import quarantine as q
from amavisd.actions.quarantine import QuarantineRequest
from amavisd.config.model import Config
from amavisd.errors import TempFail
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.sql import connection as sql_connection
from amavisd.sql import quarantine_store as store
from amavisd.sql.connection import Database
from t.helpers.pg import pg_schema  # noqa: F401 - fixture

RX_TIME = 1796007763.0
BODY = (b"Return-Path: <alice@anchor.test>\nFrom: Alice <alice@anchor.test>\n"
        b"Subject: banned\n\nHello,\nFrom the start of a line\n")
REQUEST = QuarantineRequest("sql:", ("banned-quarantine",), ("Banned",), ("bob@anchor.test",))


@pytest.fixture
def db(pg_schema):  # noqa: F811
    database = Database([pg_schema.dsn], "storage")
    yield database
    database.close()


@pytest.fixture(autouse=True)
def _forget_connections():
    """``database()`` keeps one Database per DSN and process: close the tests' ones."""
    yield
    for database in sql_connection._databases.values():
        database.close()
    sql_connection._databases.clear()


def view(pg_schema, **values):  # noqa: F811
    cfg = Config()
    for name, value in {"storage_sql_dsn": [pg_schema.dsn], "myhostname": "mx.anchor.test",
                        **values}.items():
        cfg.assign(name, value, "test")
    cfg.finish()
    return cfg.view()


def make_msg(tmp_path: Path, body: bytes = BODY, **findings) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    rcpt = Recipient("bob@anchor.test", "bob@anchor.test", done=1, ccat_blocking="8")
    msg = Message("alice@anchor.test", "alice@anchor.test", [rcpt], spool, len(body),
                  "21574-03", mail_id="kULeRChqr0W1", secret_id="Zk3v6GQ0kZ9a",
                  rx_time=RX_TIME, client=ClientInfo(mta_addr="127.0.0.1",
                                                     local_addr="127.0.0.1", local_port=10024))
    msg.findings.update(findings)
    return msg


def chunks(pg_schema):  # noqa: F811
    return pg_schema.rows("SELECT partition_tag, mail_id, chunk_ind, mail_text FROM quarantine"
                          " ORDER BY chunk_ind")


def test_sql_quarantine_stores_the_copy_in_chunks(tmp_path, pg_schema):  # noqa: F811
    settings = view(pg_schema, sql_quarantine_chunksize_max=40)
    msg = make_msg(tmp_path, partition_tag=0)
    [result] = q.quarantine(msg, [REQUEST], settings)
    assert str(result.reply) == ("250 2.6.0 Ok, Stored to sql db as mail_id kULeRChqr0W1, "
                                 "id=21574-03")
    assert (result.quar_type, result.locations) == ("Q", ["kULeRChqr0W1"])
    assert msg.findings["quar_type"] == ["Q"]
    assert msg.findings["quarantined_to"] == ["kULeRChqr0W1"]
    assert "Quarantined" in msg.actions_performed
    rows = chunks(pg_schema)
    assert [r[2] for r in rows] == list(range(1, len(rows) + 1))
    assert {(r[0], r[1]) for r in rows} == {(0, b"kULeRChqr0W1")}
    assert all(len(r[3]) == 40 for r in rows[:-1]) and 0 < len(rows[-1][3]) <= 40
    stored = b"".join(bytes(r[3]) for r in rows)
    header = q.quarantine_header(msg, REQUEST, settings, scheme="sql")
    assert stored == header + BODY                      # the original, untouched, after ours
    assert stored.startswith(b"X-Envelope-From: <alice@anchor.test>\n"
                             b"X-Envelope-To: <bob@anchor.test>\n"
                             b"X-Envelope-To-Blocked: <bob@anchor.test>\n"
                             b"X-Quarantine-ID: <kULeRChqr0W1>\n")


def test_partition_in_the_key_and_the_location(tmp_path, pg_schema):  # noqa: F811
    settings = view(pg_schema, partition_tag=27)
    msg = make_msg(tmp_path)                 # no finding yet: the setting is asked
    [result] = q.quarantine(msg, [REQUEST], settings)
    assert result.locations == ["kULeRChqr0W1[27]"]
    assert {r[0] for r in chunks(pg_schema)} == {27}
    assert store.location("kULeRChqr0W1", 0) == "kULeRChqr0W1"
    assert store.location("kULeRChqr0W1", None) == "kULeRChqr0W1"


def test_database_down_tempfails_the_message(tmp_path, pg_schema):  # noqa: F811
    """Section 22.2: the copy could not be stored -> 'temporarily unable to quarantine'."""
    settings = view(pg_schema, storage_sql_dsn=[["DBI:Pg:dbname=test;host=127.0.0.1;port=9",
                                                 "postgres", ""]])
    msg = make_msg(tmp_path)
    with pytest.raises(TempFail) as info:
        q.quarantine(msg, [REQUEST], settings)
    assert str(info.value).startswith(
        "quar+notif FAILED: temporarily unable to quarantine: 451 4.5.0 Storing to sql db "
        "as mail_id kULeRChqr0W1 failed: SQL storage: no server answered: ")
    assert str(info.value).endswith(", id=21574-03")
    assert "quarantined_to" not in msg.findings


def test_storing_is_one_transaction(db, pg_schema):  # noqa: F811
    def write(out):
        out.write(b"x" * 100)
        raise OSError("disk gone while reading the spool")

    with pytest.raises(OSError):
        store.store(db, 0, "kULeRChqr0W1", write, chunk_size=10)
    assert chunks(pg_schema) == []


def test_storing_streams_with_bounded_memory(tmp_path, db, pg_schema):  # noqa: F811
    """An 8 MiB message: Python allocations stay far below the message size."""
    big = tmp_path / "big"
    block = bytes(range(256)) * 4096                           # 1 MiB
    with open(big, "wb") as f:
        for _ in range(8):
            f.write(block)

    def write(out):
        with open(big, "rb") as src:
            while piece := src.read(65536):
                out.write(piece)

    tracemalloc.start()
    try:
        count, size = store.store(db, 0, "kULeRChqr0W1", write, chunk_size=16384)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (count, size) == (512, 8 << 20)
    assert peak < 2 << 20, peak
    assert pg_schema.rows("SELECT sum(length(mail_text)), max(chunk_ind) FROM quarantine") == \
        [(8 << 20, 512)]


# ------------------------------------------------------------------ the release side (22.4)


def test_find_partition(db, pg_schema):  # noqa: F811
    insert = ("INSERT INTO msgs (partition_tag, mail_id, am_id, time_num, time_iso, sid, size,"
              " host) VALUES (%s, %s, '1-01', 0, now(), 1, 1, 'h')")
    with pytest.raises(store.NotQuarantined):
        store.find_partition(db, "kULeRChqr0W1")
    pg_schema.execute(insert, [7, b"kULeRChqr0W1"])
    assert store.find_partition(db, "kULeRChqr0W1") == 7
    pg_schema.execute(insert, [8, b"kULeRChqr0W1"])
    with pytest.raises(store.AmbiguousMailId, match=r"Multiple \(2\) records"):
        store.find_partition(db, "kULeRChqr0W1")


def test_read_message_streams_in_order_in_batches(db, pg_schema):  # noqa: F811
    data = bytes(range(256)) * 100                       # 25600 bytes
    assert store.store(db, 3, "kULeRChqr0W1", lambda out: out.write(data), chunk_size=100) \
        == (256, 25600)
    pg_schema.execute("INSERT INTO quarantine VALUES (4, %s, 1, 'other partition')",
                      [b"kULeRChqr0W1"])
    reader = store.read_message(db, 3, "kULeRChqr0W1", batch=16)
    first = next(reader)
    # a server-side cursor: rows come as they are fetched, not all at once
    assert db.query("SELECT count(*) FROM pg_cursors WHERE name LIKE 'amavis_quar_%%'") == [(1,)]
    assert first + b"".join(reader) == data
    assert db.query("SELECT count(*) FROM pg_cursors") == [(0,)]


def test_read_message_without_chunks_is_not_found_at_once(db, pg_schema):  # noqa: F811
    store.store(db, 0, "kULeRChqr0W1", lambda out: out.write(b"y"))
    with pytest.raises(store.NotQuarantined):
        store.read_message(db, 5, "kULeRChqr0W1")          # raised by the call itself
    assert db.connection().info.transaction_status.name == "IDLE"


def test_an_abandoned_reader_frees_the_connection(db, pg_schema):  # noqa: F811
    store.store(db, 0, "kULeRChqr0W1", lambda out: out.write(b"y" * 1000), chunk_size=10)
    reader = store.read_message(db, 0, "kULeRChqr0W1", batch=5)
    next(reader)
    reader.close()
    assert db.connection().info.transaction_status.name == "IDLE"
    assert db.query("SELECT count(*) FROM quarantine") == [(100,)]
