# tests: amavisd (daemon process) with @storage_sql_dsn: SQL logging and the sql: quarantine
"""SQL logging through the real daemon on the real PostgreSQL (spec/pipeline.md 22.3, 23).

Each test points ``@storage_sql_dsn`` at a private schema (t/helpers/pg.py), sends
mail with a raw SMTP client, and reads the rows a front end would read: ``msgs``,
``msgrcpt`` (joined with ``maddr``) and ``quarantine``.  The daemon answers the
MTA only after the final update, so the rows are there when the reply is.
"""

from __future__ import annotations

import re
import time

import pytest

from t.helpers.pg import pg_schema  # noqa: F401 - fixture
from t.helpers.spamd import running_spamd, spamd_available
from t.integration.conftest import send_message, wait_for
from t.integration.test_content import (
    BANNED_ZIP,
    BOB,
    BYPASS_CAROL,
    CAROL,
    LOG_ID,
    MAIL_ID,
    PROFILE,
    SENDER,
    delivered_to,
    mail,
    main_log_line,
    session,
)

DAVE = "dave@elsewhere.test"           # not in local_domains_acl
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
FROM_MTA = r"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:\d+\): 250 2\.0\.0 Ok: queued as Q\d+"


def storage(pg_schema, extra: str = "") -> str:  # noqa: F811
    return PROFILE + f"storage_sql_dsn = [{pg_schema.dsn!r}]\n" + extra


def mail_id_of(line: str) -> bytes:
    return re.search(rf"mail_id: ({MAIL_ID})", line).group(1).encode()


def msgs_row(pg_schema, mail_id: bytes) -> dict:  # noqa: F811
    cols = ("partition_tag", "secret_id", "am_id", "time_num", "policy", "client_addr",
            "size", "originating", "content", "quar_type", "quar_loc", "dsn_sent",
            "spam_level", "message_id", "from_addr", "subject", "host")
    rows = pg_schema.rows(f"SELECT {', '.join(cols)}, (SELECT email FROM maddr WHERE id=sid)"
                          " FROM msgs WHERE mail_id=%s", [mail_id])
    assert len(rows) == 1, rows
    return dict(zip((*cols, "sender"), rows[0], strict=True))


def rcpt_rows(pg_schema, mail_id: bytes) -> list[tuple]:  # noqa: F811
    return pg_schema.rows(
        "SELECT rseqnum, maddr.email, is_local, content, ds, rs, bl, wl, bspam_level, smtp_resp"
        " FROM msgrcpt JOIN maddr ON maddr.id=rid WHERE mail_id=%s ORDER BY rseqnum", [mail_id])


def stored_copy(pg_schema, mail_id: bytes) -> bytes:  # noqa: F811
    rows = pg_schema.rows("SELECT chunk_ind, mail_text FROM quarantine WHERE mail_id=%s"
                          " ORDER BY chunk_ind", [mail_id])
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    return b"".join(bytes(r[1]) for r in rows)


def test_clean_message_two_recipients(amavisd, sink, pg_schema):  # noqa: F811
    daemon = amavisd(storage(pg_schema))
    data = mail("sql-clean")
    reply = send_message(session(daemon), SENDER, [BOB, DAVE], data)
    assert re.fullmatch(FROM_MTA, reply[0]), reply
    assert len(sink.messages) == 1
    line = main_log_line(daemon)
    mail_id = mail_id_of(line)
    row = msgs_row(pg_schema, mail_id)
    log_id = re.search(rf"\(({LOG_ID})\) Passed", line).group(1)
    assert time.time() - 120 < row.pop("time_num") <= time.time()
    assert len(row.pop("secret_id")) == 12
    assert row == {"partition_tag": 0, "am_id": log_id, "policy": "", "client_addr": "127.0.0.1",
                   "size": len(data), "originating": "N", "content": "C", "quar_type": " ",
                   "quar_loc": "", "dsn_sent": "N", "spam_level": 0.0,
                   "message_id": "<sql-clean@anchor.test>",
                   "from_addr": "Alice <alice@anchor.test>", "subject": "sql-clean",
                   "host": "mx.anchor.test", "sender": b"alice@anchor.test"}
    rows = rcpt_rows(pg_schema, mail_id)
    assert [r[:9] for r in rows] == [
        (1, b"bob@anchor.test", "Y", "C", "P", " ", "N", "N", 0.0),
        (2, b"dave@elsewhere.test", "N", "C", "P", " ", "N", "N", 0.0)]
    assert all(re.fullmatch(FROM_MTA, r[9]) for r in rows), rows


def test_banned_message_in_the_sql_quarantine(amavisd, sink, pg_schema, tmp_path):  # noqa: F811
    """Two recipients: bob's copy is banned (discarded, quarantined to SQL), carol
    bypasses banned checks and gets the mail.  The stored copy is exactly what the
    local: method writes (here: the archive copy of the same message), less the
    Return-Path and Delivered-To that a mailbox delivery puts on top."""
    daemon = amavisd(storage(pg_schema, BYPASS_CAROL + "banned_files_quarantine_method = 'sql:'\n"
                             "sql_quarantine_chunksize_max = 500\n"
                             "archive_quarantine_method = 'local:archive-%m'\n"))
    data = mail("sql-banned", BANNED_ZIP)
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], data)
    assert re.fullmatch(FROM_MTA + ", but 1 DISCARD", reply[0]), reply
    assert delivered_to(sink, BOB) == [] and len(delivered_to(sink, CAROL)) == 1
    text = wait_for(lambda: " Blocked BANNED " in (t := daemon.logfile_text()) and t,
                    what="the Blocked log line")
    line = next(x for x in text.splitlines() if " Blocked BANNED " in x)
    mail_id = mail_id_of(line)
    assert re.search(rf"<{BOB}>, quarantine: {mail_id.decode()}, \w/archive-", line), line
    row = msgs_row(pg_schema, mail_id)
    assert (row["content"], row["quar_type"], row["quar_loc"], row["dsn_sent"]) == \
        ("B", "Q", mail_id.decode(), "N")
    rows = rcpt_rows(pg_schema, mail_id)
    assert [r[:5] for r in rows] == [(1, b"bob@anchor.test", "Y", "B", "D"),
                                     (2, b"carol@anchor.test", "Y", "C", "P")]
    assert re.fullmatch(rf"250 2\.7\.0 Ok, discarded, id={LOG_ID} - BANNED: \S+", rows[0][9])
    copy = stored_copy(pg_schema, mail_id)
    assert len(copy) > 1000                               # several 500-byte chunks
    archived = (tmp_path / "home" / "virusmails" / mail_id[:1].decode()
                / f"archive-{mail_id.decode()}").read_bytes()
    assert archived == (b"Return-Path: <alice@anchor.test>\n"
                        b"Delivered-To: archive-quarantine\n" + copy)
    ours, original = copy.split(b"From: Alice", 1)
    assert original.replace(b"\n", b"\r\n") == data.split(b"From: Alice", 1)[1]
    names = re.findall(rb"^([\w-]+):", ours, re.M)
    assert names[:4] == [b"X-Envelope-From", b"X-Envelope-To", b"X-Envelope-To-Blocked",
                         b"X-Quarantine-ID"]
    assert names[-1] == b"Received" and b"X-Amavis-Alert" in names
    assert re.search(rb"^X-Envelope-To: <bob@anchor\.test>,\s+<carol@anchor\.test>\n"
                     rb"X-Envelope-To-Blocked: <bob@anchor\.test>\n"
                     rb"X-Quarantine-ID: <" + mail_id + rb">\n", ours, re.M), ours


def test_sql_quarantine_with_the_database_down_tempfails(amavisd, sink, tmp_path):
    """Section 22.2: a quarantine copy that cannot be stored fails the whole message."""
    dead = ["DBI:Pg:dbname=test;host=127.0.0.1;port=9", "postgres", ""]
    daemon = amavisd(PROFILE + f"storage_sql_dsn = [{dead!r}]\n"
                     "banned_files_quarantine_method = 'sql:'\n")
    reply = send_message(session(daemon), SENDER, [BOB], mail("sql-down-q", BANNED_ZIP))
    assert re.fullmatch(rf"451 4\.5\.0 Error in processing, id={LOG_ID}, quar\+notif FAILED: "
                        r"temporarily unable to quarantine: 451 4\.5\.0 Storing to sql db as "
                        rf"mail_id {MAIL_ID} failed: .+", reply[0]), reply
    time.sleep(0.3)
    assert sink.messages == []


def test_database_down_still_delivers(amavisd, sink, tmp_path):
    """A logging failure must not cost mail: the clean message is delivered, the
    failures are logged (docs/differences.md: Perl tempfails here)."""
    dead = ["DBI:Pg:dbname=test;host=127.0.0.1;port=9", "postgres", ""]
    daemon = amavisd(PROFILE + f"storage_sql_dsn = [{dead!r}]\n")
    data = mail("sql-down")
    reply = send_message(session(daemon), SENDER, [BOB], data)
    assert re.fullmatch(FROM_MTA, reply[0]), reply
    assert len(delivered_to(sink, BOB)) == 1
    assert data.split(b"\r\n\r\n", 1)[1] in sink.messages[0].data
    line = main_log_line(daemon)
    assert " Passed CLEAN {RelayedInbound}" in line, line
    text = daemon.logfile_text()
    assert re.search(rf"SQL storage: save_info_preliminary {MAIL_ID} failed, message not "
                     r"logged: SQL storage: no server answered: .*port=9", text), text[-2000:]


def test_only_quarantined_messages_when_not_storing_all(amavisd, sink, pg_schema):  # noqa: F811
    """``$sql_store_info_for_all_msgs = 0``: rows only for quarantined mail."""
    daemon = amavisd(storage(pg_schema, "sql_store_info_for_all_msgs = 0\n"))
    client = session(daemon)
    assert re.fullmatch(FROM_MTA, send_message(client, SENDER, [BOB], mail("not-stored"))[0])
    client.cmd("RSET")
    reply = send_message(client, SENDER, [BOB], mail("stored", BANNED_ZIP), ehlo="")
    assert reply[0].startswith("250 2.7.0 Ok, discarded"), reply
    wait_for(lambda: daemon.logfile_text().count(" Blocked BANNED ") == 1, what="log line")
    assert pg_schema.rows("SELECT message_id, content, quar_type FROM msgs") == [
        ("<stored@anchor.test>", "B", "F")]
    assert pg_schema.rows("SELECT ds FROM msgrcpt") == [("D",)]


# ------------------------------------------------------------------ spam (real spamd)


@pytest.fixture(scope="module")
def spamd():
    if not spamd_available():
        pytest.skip("no /usr/sbin/spamd")
    with running_spamd() as instance:
        yield instance


def test_gtube_spam_quarantined_in_sql(amavisd, sink, pg_schema, spamd):  # noqa: F811
    """GTUBE through spamd: CC_SPAM, passed (final_spam_destiny D_PASS) and quarantined
    with ``spam_quarantine_method = 'sql:'``; spam levels per recipient and the
    minimum on the message."""
    daemon = amavisd(storage(pg_schema, f"spamd_address = ['{spamd.address}']\n"
                             "bypass_spam_checks_maps = []\nsa_tag_level_deflt = 2.0\n"
                             "sa_tag2_level_deflt = 6.31\nsa_kill_level_deflt = 6.31\n"
                             "spam_quarantine_method = 'sql:'\n"))
    data = (b"From: Alice <alice@anchor.test>\r\nTo: <bob@anchor.test>\r\n"
            b"Subject: sql-gtube\r\nMessage-ID: <sql-gtube@anchor.test>\r\n\r\n"
            + GTUBE + b"\r\n")
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], data)
    assert re.fullmatch(FROM_MTA, reply[0]), reply
    line = main_log_line(daemon, timeout=60)
    assert " Passed SPAM " in line, line
    mail_id = mail_id_of(line)
    row = msgs_row(pg_schema, mail_id)
    assert (row["content"], row["quar_type"], row["quar_loc"]) == ("S", "Q", mail_id.decode())
    assert row["spam_level"] >= 1000 and row["subject"] == "sql-gtube"
    rows = rcpt_rows(pg_schema, mail_id)
    assert [r[:8] for r in rows] == [(1, b"bob@anchor.test", "Y", "S", "P", " ", "N", "N"),
                                     (2, b"carol@anchor.test", "Y", "S", "P", " ", "N", "N")]
    assert [r[8] for r in rows] == [row["spam_level"]] * 2
    copy = stored_copy(pg_schema, mail_id)
    assert b"\nX-Spam-Flag: YES\n" in copy and copy.endswith(GTUBE + b"\n")
    assert len(sink.messages) == 1


@pytest.mark.parametrize("persistent", [1, 0])
def test_database_sessions_persistent(amavisd, sink, pg_schema, persistent):  # noqa: F811
    """protocols.md 1.2: with ``$database_sessions_persistent = 0`` the child closes its
    SQL connection when the session ends; by default it keeps it for the next one."""
    name = f"amavis_{pg_schema.name}"
    dsn = [pg_schema.dsn[0] + f";application_name={name}", *pg_schema.dsn[1:]]
    daemon = amavisd(PROFILE + f"storage_sql_dsn = [{dsn!r}]\n"
                     f"database_sessions_persistent = {persistent}\nmax_servers = 1\n")
    client = session(daemon)
    assert re.fullmatch(FROM_MTA, send_message(client, SENDER, [BOB], mail("persist"))[0])
    assert pg_schema.rows("SELECT count(*) FROM msgs WHERE content='C'") == [(1,)]

    def backends() -> int:
        return pg_schema.rows("SELECT count(*) FROM pg_stat_activity"
                              " WHERE application_name=%s", [name])[0][0]

    assert backends() == 1
    client.cmd("QUIT")
    if persistent:
        time.sleep(1.0)
        assert backends() == 1
    else:
        wait_for(lambda: backends() == 0, what="the connection to close")


def test_next_hop_rejection_is_content_t(amavisd, sink, pg_schema):  # noqa: F811
    """The sink rejects ``rej*`` at RCPT: that recipient becomes CC_MTA (``T``, see
    docs/differences.md #37) with its 5xx, the other one passes."""
    daemon = amavisd(storage(pg_schema))
    reply = send_message(session(daemon), SENDER, [BOB, "rejected@anchor.test"],
                         mail("sql-rej"))
    assert reply[0].startswith("250 "), reply
    mail_id = mail_id_of(main_log_line(daemon))
    rows = rcpt_rows(pg_schema, mail_id)
    assert [r[:5] for r in rows] == [(1, b"bob@anchor.test", "Y", "C", "P"),
                                     (2, b"rejected@anchor.test", "Y", "T", "R")]
    assert rows[1][9].startswith("550 5.1.1 id="), rows
    assert msgs_row(pg_schema, mail_id)["content"] == "T"
