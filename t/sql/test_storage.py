# tests: amavisd/sql/storage.py
"""SQL logging against the real PostgreSQL: maddr, msgs, msgrcpt (spec/pipeline.md 23).

Each test gets a private schema with the tables of sql/schema-pg.sql (t/helpers/pg.py)
and writes through ``Database`` exactly as the child does; the rows are then read
back with a separate connection, as a front end would.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from pathlib import Path

import psycopg
import pytest

from amavisd import stats
from amavisd.config.model import Config
from amavisd.config.perlconf import PerlCode
from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.errors import Reply
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.sql import storage
from amavisd.sql.connection import DEFAULT_CLAUSES, Database
from t.helpers.pg import pg_schema  # noqa: F401 - fixture

RX_TIME = 1796007763.0                # 2026-11-30 03:02:43 UTC
HEADER = (b"Received: from pc.x.test\n\tby mta.x.test\n"
          b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\n"
          b"Subject: =?ISO-8859-1?Q?caf=E9?=\n  and more\n"
          b"Message-ID: (a comment)\n <part1.x@example.org> \n\n")


@pytest.fixture
def db(pg_schema):  # noqa: F811
    database = Database([pg_schema.dsn], "storage")
    yield database
    database.close()


def config(pg_schema, **values):  # noqa: F811
    cfg = Config()
    for name, value in {"storage_sql_dsn": [pg_schema.dsn], "myhostname": "mx.anchor.test",
                        **values}.items():
        cfg.assign(name, value, "test")
    cfg.finish()
    return cfg.view()


def make_msg(tmp_path: Path, *rcpts: str, sender: str = "Alice@Anchor.TEST",
             mail_id: str = "kULeRChqr0W1") -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(HEADER + b"Hello\n")
    recipients = [Recipient(r, r) for r in rcpts or ("bob@anchor.test",)]
    return Message(sender, sender, recipients, spool, 1234, "21574-03", mail_id=mail_id,
                   secret_id="Zk3v6GQ0kZ9a", rx_time=RX_TIME, policy_bank_path="MYNETS",
                   client=ClientInfo(addr="192.0.2.7"))


def save(db, view, msg, partition=0, **kw):
    return storage.save_info_preliminary(db, view, msg, storage.address_keys(view, msg),
                                         partition, **kw)


# ------------------------------------------------------------------ values


@pytest.mark.parametrize(("addr", "kw", "email", "domain"), [
    ("John.Doe@Sub.EXAMPLE.com.", {}, b"john.doe@sub.example.com", "com.example.sub"),
    ("John.Doe@Sub.EXAMPLE.com", {"localpart_is_case_sensitive": True},
     b"John.Doe@sub.example.com", "com.example.sub"),
    ("user@B\u00fccher.Example", {}, b"user@xn--bcher-kva.example", "example.xn--bcher-kva"),
    ("jos\u00e9@example.com", {}, b"jos??@example.com", "com.example"),       # 2 octets
    ("jos\u00e9@example.com", {"allow_8bit": True}, "jos\u00e9@example.com".encode(),
     "com.example"),
    ('"a b"@x.test', {}, b'"a b"@x.test', "test.x"),
    ("postmaster", {}, b"postmaster@", ""),
    ("", {}, b"", ""),
])
def test_normalize_address(addr, kw, email, domain):
    assert storage.normalize_address(addr, **kw) == (email, domain)


def test_normalize_address_cuts_at_255_octets():
    email, _ = storage.normalize_address("a" * 300 + "@example.com")
    assert email == b"a" * 255


def test_smtp_form_quotes_like_the_envelope():
    assert storage.smtp_form("a b@x.test") == '"a b"@x.test'
    assert storage.smtp_form("alice@x.test") == "alice@x.test"


def test_partition_tag(tmp_path, pg_schema):  # noqa: F811
    msg = make_msg(tmp_path)
    assert storage.partition_tag(config(pg_schema), msg) == 0         # undef -> 0 (spec 3)
    assert storage.partition_tag(config(pg_schema, partition_tag=17), msg) == 17
    weekly = config(pg_schema, partition_tag=lambda m: time.gmtime(m.rx_time).tm_yday // 7)
    assert storage.partition_tag(weekly, msg) == 47
    perl = config(pg_schema, partition_tag=PerlCode("__ANON__"))
    assert storage.partition_tag(perl, msg) == 0


@pytest.mark.parametrize(("blocking", "ccats", "letter"), [
    (None, [], "C"), (None, ["6", "5", "1,1"], "S"), (None, ["4,2", "4"], "M"),
    (None, ["4,1"], "H"), ("8", ["8", "6"], "B"), ("9", [], "V"), ("2,1", [], "T"),
    ("3", ["3"], "O"), ("7,2", ["7,2"], "U"), (None, ["5"], "Y"),
])
def test_content_letter(blocking, ccats, letter):
    assert storage.content_letter(blocking, ccats) == letter


@pytest.mark.parametrize(("destiny", "reply", "done", "ds"), [
    (D_PASS, "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok", 2, "P"),
    (D_PASS, None, 0, "P"),                                  # the AM.PDP client delivers
    (D_DISCARD, "250 2.7.0 Ok, discarded, id=1-01 - BANNED: x", 1, "D"),
    (D_BOUNCE, "554 5.7.0 Bounce, id=1-01 - BANNED: x", 1, "B"),
    (D_REJECT, "554 5.7.0 Reject, id=1-01 - BANNED: x", 1, "R"),
    (D_PASS, "550 5.1.1 id=1-01 - Rejected by next-hop MTA on relaying", 2, "R"),
    (D_TEMPFAIL, "450 4.7.0 Temporary failure, id=1-01", 1, "T"),
])
def test_delivery_status(destiny, reply, done, ds):
    rcpt = Recipient("b@x.test", "b@x.test", destiny=destiny, done=done,
                     reply=Reply.parse(reply) if reply else None)
    assert storage.delivery_status(rcpt) == ds


def test_header_columns():
    assert storage.message_id_column(storage.field_body(HEADER, "message-id")) == \
        "<part1.x@example.org>"
    assert storage.decoded_field(storage.field_body(HEADER, "From")) == \
        "J\u00f6rg M\u00fcller <joerg@example.org>"
    assert storage.decoded_field(storage.field_body(HEADER, "Subject")) == "caf\u00e9  and more"
    assert storage.decoded_field(None) == ""
    assert storage.decoded_field(b" " + b"x" * 300) == "x" * 255
    assert storage.message_id_column(b" <a@b> <c@d> <a@b>") == "<a@b> <c@d>"
    assert storage.message_id_column(b" garbage>id\xff") == "<garbage_id?>"
    # hostile: an unclosed bracket must not make the parser backtrack for ages
    started = time.monotonic()
    storage.message_id_column(b"<" + b"a" * 5000)
    assert time.monotonic() - started < 1


def test_time_iso_is_utc_basic_format():
    assert storage.time_iso(RX_TIME) == "20261130T030243Z"


# ------------------------------------------------------------------ maddr


def test_find_or_insert_address_inserts_once(db, pg_schema):  # noqa: F811
    statements = dict(DEFAULT_CLAUSES)
    first = db.run(lambda cur: storage.find_or_insert_address(
        cur, statements, 0, b"bob@anchor.test", "test.anchor"))
    again = db.run(lambda cur: storage.find_or_insert_address(
        cur, statements, 0, b"bob@anchor.test", "test.anchor"))
    other_partition = db.run(lambda cur: storage.find_or_insert_address(
        cur, statements, 3, b"bob@anchor.test", "test.anchor"))
    assert first[1] is False and again == (first[0], True)
    assert other_partition[0] != first[0]
    assert pg_schema.rows("SELECT partition_tag, email, domain FROM maddr ORDER BY id") == [
        (0, b"bob@anchor.test", "test.anchor"), (3, b"bob@anchor.test", "test.anchor")]


def test_find_or_insert_address_loses_the_race_and_reselects(db, pg_schema):  # noqa: F811
    """Another child inserts the same new address and commits while our insert waits on
    the unique key: our insert fails, the transaction survives (savepoint) and the
    second select returns the other child's id."""
    other = psycopg.connect(**{k: v for k, v in _keywords(pg_schema).items()})
    try:
        other.execute(f"SET search_path TO {pg_schema.name}")
        other.execute("BEGIN")
        other.execute("INSERT INTO maddr (partition_tag, email, domain) VALUES (0, %s, %s)",
                      [b"new@anchor.test", "test.anchor"])
        winner = other.execute("SELECT id FROM maddr WHERE email=%s",
                               [b"new@anchor.test"]).fetchone()[0]
        result: list = []

        def ours():
            result.append(db.run(lambda cur: (
                storage.find_or_insert_address(cur, dict(DEFAULT_CLAUSES), 0,
                                               b"new@anchor.test", "test.anchor"),
                cur.execute("SELECT 1").fetchone())))

        thread = threading.Thread(target=ours)
        thread.start()
        time.sleep(0.5)                      # our INSERT now waits for the other's commit
        assert thread.is_alive()
        other.execute("COMMIT")
        thread.join(10)
        assert result == [((winner, True), (1,))]
    finally:
        other.close()
    assert pg_schema.rows("SELECT count(*) FROM maddr") == [(1,)]


def _keywords(pg_schema) -> dict:  # noqa: F811
    from amavisd.sql.connection import conninfo

    keywords = conninfo(pg_schema.dsn)
    keywords.pop("options", None)
    return keywords


# ------------------------------------------------------------------ the two steps


def test_preliminary_row_then_final_rows(tmp_path, db, pg_schema):  # noqa: F811
    view = config(pg_schema)
    msg = make_msg(tmp_path, "bob@anchor.test", "Carol@Example.COM")
    msg.originating = True
    stats.drain_pending()
    stored = save(db, view, msg)
    assert stored is not None and stored.mail_id == "kULeRChqr0W1"
    assert stats.drain_pending() == {"SqlAddrSenderAttempts": 1, "SqlAddrSenderMisses": 1,
                                     "SqlAddrRecipAttempts": 2, "SqlAddrRecipMisses": 2}
    row = pg_schema.rows("SELECT partition_tag, mail_id, secret_id, am_id, time_num, time_iso,"
                         " policy, client_addr, size, originating, content, host,"
                         " (SELECT email FROM maddr WHERE id=sid) FROM msgs")
    assert row == [(0, b"kULeRChqr0W1", b"Zk3v6GQ0kZ9a", "21574-03", 1796007763,
                    datetime.datetime(2026, 11, 30, 3, 2, 43, tzinfo=datetime.UTC),
                    "MYNETS", "192.0.2.7", 1234, " ", None, "mx.anchor.test",
                    b"alice@anchor.test")]          # content NULL: in progress
    bob, carol = msg.recipients
    bob.destiny, bob.done, bob.ccats = D_PASS, 2, ["6", "1"]
    bob.reply = Reply(250, "2.0.0", "from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: q\u00fc")
    bob.spam_level, bob.whitelisted = 7.5, True
    carol.destiny, carol.done, carol.ccat_blocking, carol.ccats = D_DISCARD, 1, "6", ["6", "1"]
    carol.reply = Reply(250, "2.7.0", "Ok, discarded, id=21574-03 - spam")
    carol.spam_level, carol.blacklisted = 12.25, True
    msg.findings.update(ccats=["6", "1"], ccat_main="6", quar_type=["Q"], dsn_sent=2)
    rows = storage.final_rows(view, msg, stored, HEADER, [True, False], "kULeRChqr0W1")
    assert storage.save_info_final(db, view, rows, stored.mail_id)
    assert pg_schema.rows(
        "SELECT content, quar_type, quar_loc, dsn_sent, spam_level, message_id, from_addr,"
        " subject, originating FROM msgs") == [
        ("S", "Q", "kULeRChqr0W1", "q", 7.5, "<part1.x@example.org>",
         "J\u00f6rg M\u00fcller <joerg@example.org>", "caf\u00e9  and more", "Y")]
    assert pg_schema.rows(
        "SELECT rseqnum, (SELECT email FROM maddr WHERE id=rid), is_local, content, ds, rs,"
        " bl, wl, bspam_level, smtp_resp FROM msgrcpt ORDER BY rseqnum") == [
        (1, b"bob@anchor.test", "Y", "S", "P", " ", "N", "Y", 7.5,
         "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: q?"),
        (2, b"carol@example.com", "N", "S", "D", " ", "Y", "N", 12.25,
         "250 2.7.0 Ok, discarded, id=21574-03 - spam")]


def test_known_addresses_are_hits(tmp_path, db, pg_schema):  # noqa: F811
    view = config(pg_schema)
    assert save(db, view, make_msg(tmp_path, mail_id="AAAAAAAAAAAA")) is not None
    stats.drain_pending()
    assert save(db, view, make_msg(tmp_path, mail_id="BBBBBBBBBBBB")) is not None
    assert stats.drain_pending() == {"SqlAddrSenderAttempts": 1, "SqlAddrSenderHits": 1,
                                     "SqlAddrRecipAttempts": 1, "SqlAddrRecipHits": 1}
    assert pg_schema.rows("SELECT count(*) FROM maddr") == [(2,)]


def test_mail_id_collision_draws_a_new_id(tmp_path, db, pg_schema):  # noqa: F811
    """Spec section 3: the preliminary insert proves the mail_id unique; on a clash a
    new id is drawn (GenMailIdRetries), after a pause."""
    view = config(pg_schema, partition_tag=4)
    assert save(db, view, make_msg(tmp_path), partition=4) is not None
    pauses: list[float] = []
    stats.drain_pending()
    stored = save(db, view, make_msg(tmp_path), partition=4,
                  new_id=lambda: ("SecondId0001", "SecondSecret"), sleep=pauses.append)
    assert stored is not None
    assert (stored.mail_id, stored.secret_id, stored.retries) == \
        ("SecondId0001", "SecondSecret", 1)
    assert len(pauses) == 1 and 1 <= pauses[0] <= 3
    assert stats.drain_pending()["GenMailIdRetries"] == 1
    assert pg_schema.rows("SELECT partition_tag, mail_id FROM msgs ORDER BY mail_id") == [
        (4, b"SecondId0001"), (4, b"kULeRChqr0W1")]


def test_too_many_collisions_store_nothing(tmp_path, db, pg_schema, caplog):  # noqa: F811
    view = config(pg_schema)
    assert save(db, view, make_msg(tmp_path)) is not None
    caplog.set_level(logging.INFO)
    stored = save(db, view, make_msg(tmp_path), new_id=lambda: ("kULeRChqr0W1", "x" * 12),
                  sleep=lambda s: None)
    assert stored is None
    assert "too many retries on storing preliminary, info not saved" in caplog.text
    assert pg_schema.rows("SELECT count(*) FROM msgs") == [(1,)]


def test_unreachable_server_is_logged_not_raised(tmp_path, caplog):
    dead = Database([["DBI:Pg:dbname=test;host=127.0.0.1;port=9", "postgres", ""]],
                    "storage", connect_timeout=2)
    cfg = Config()
    cfg.finish()
    msg = make_msg(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert save(dead, cfg.view(), msg) is None
        stored = storage.Stored(0, msg.mail_id, msg.secret_id, 1, [1])
        rows = storage.final_rows(cfg.view(), msg, stored, HEADER, [True], None)
        assert storage.save_info_final(dead, cfg.view(), rows, msg.mail_id) is False
    assert "save_info_preliminary kULeRChqr0W1 failed, message not logged: SQL storage: " \
           "no server answered" in caplog.text
    assert "save_info_final kULeRChqr0W1 failed, info not saved" in caplog.text


def test_old_schema_version_and_clause_overrides(tmp_path, db, pg_schema):  # noqa: F811
    """``$sql_schema_version`` < 2.007 leaves out the 2.7 columns; the admin's own
    ``%sql_clause`` statements (Perl ``?`` syntax) are the ones run."""
    pg_schema.execute("ALTER TABLE msgs DROP COLUMN originating")
    view = config(pg_schema, sql_schema_version=2.006, sql_clause={
        "upd_msg": "UPDATE msgs SET content=?, quar_type=?, quar_loc=?, dsn_sent=?,"
                   " spam_level=?, message_id=?, from_addr=?, subject=?, client_addr=?"
                   " WHERE partition_tag=? AND mail_id=?",
        "ins_rcp": "INSERT INTO msgrcpt (partition_tag, mail_id, rid, ds, rs, bl, wl,"
                   " bspam_level, smtp_resp) VALUES (?,?,?,?,?,?,?,?,?)"})
    msg = make_msg(tmp_path)
    stored = save(db, view, msg)
    msg.recipients[0].destiny, msg.recipients[0].done = D_PASS, 2
    msg.recipients[0].reply = Reply(250, "2.0.0", "Ok")
    rows = storage.final_rows(view, msg, stored, HEADER, [True], None)
    assert storage.save_info_final(db, view, rows, stored.mail_id)
    assert pg_schema.rows("SELECT rseqnum, ds, smtp_resp FROM msgrcpt") == [
        (0, "P", "250 2.0.0 Ok")]
    assert pg_schema.rows("SELECT content, quar_type FROM msgs") == [("C", " ")]


def test_final_update_failure_is_logged(tmp_path, db, pg_schema, caplog):  # noqa: F811
    view = config(pg_schema)
    msg = make_msg(tmp_path)
    stored = save(db, view, msg)
    pg_schema.execute("ALTER TABLE msgrcpt DROP COLUMN smtp_resp")
    rows = storage.final_rows(view, msg, stored, HEADER, [True], None)
    pauses: list[float] = []
    with caplog.at_level(logging.WARNING):
        assert storage.save_info_final(db, view, rows, stored.mail_id,
                                       sleep=pauses.append) is False
    assert pauses == []                  # a schema error is not worth another attempt
    assert 'column "smtp_resp" of relation "msgrcpt" does not exist' in caplog.text
    assert pg_schema.rows("SELECT content FROM msgs") == [(None,)]   # rolled back


def test_a_hung_database_gives_up_at_the_deadline(tmp_path, db, pg_schema):  # noqa: F811
    """sql/offload.py: the call runs in a worker thread and the pipeline stops waiting
    at the deadline, while the reactor stays live; the thread finishes on its own
    once the database answers again."""
    from twisted.internet import defer, reactor

    from amavisd.sql.offload import run_blocking
    from t.sink import in_reactor

    view = config(pg_schema)
    msg = make_msg(tmp_path)
    other = psycopg.connect(**_keywords(pg_schema), autocommit=True)
    try:
        other.execute("BEGIN")
        other.execute(f"LOCK TABLE {pg_schema.name}.maddr IN ACCESS EXCLUSIVE MODE")
        ticks: list[float] = []
        started = time.monotonic()
        with pytest.raises(defer.TimeoutError):
            in_reactor(lambda: (reactor.callLater(0.3, ticks.append, 1.0),
                                run_blocking(reactor, time.time() + 1.0, save, db, view,
                                             msg))[1], timeout=10)
        assert 0.9 < time.monotonic() - started < 3
        assert ticks == [1.0]                       # the reactor kept running meanwhile
        other.execute("ROLLBACK")
    finally:
        other.close()
    deadline = time.monotonic() + 10
    while pg_schema.rows("SELECT count(*) FROM msgs") != [(1,)]:
        assert time.monotonic() < deadline, "the worker thread never finished"
        time.sleep(0.05)
