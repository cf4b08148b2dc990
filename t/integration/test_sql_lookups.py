# tests: amavisd (daemon process) with @lookup_sql_dsn: users/policy, wblist, SQL down
"""SQL lookups through the real daemon, the real PostgreSQL and (for spam) real spamd.

The daemon reads its per-recipient policy from ``users``/``policy`` and its
per-recipient sender lists from ``wblist``/``mailaddr`` in a private schema
(t/helpers/pg.py); each test asserts the exact SMTP reply, what the sink got
for which recipient, and the main log lines (pipeline.md 14, 10.1, 23).  With
the database unreachable the mail is never passed: the MTA gets a 4xx.
"""

from __future__ import annotations

import re

import pytest

from t.helpers.daemon import free_port
from t.helpers.pg import pg_schema  # noqa: F401 - fixture
from t.helpers.spamd import running_spamd, spamd_available
from t.integration.conftest import send_message, wait_for
from t.integration.test_content import (
    BANNED_ZIP,
    BOB,
    CAROL,
    FAKE_EXE_LEAF,
    LOG_ID,
    PROFILE,
    SENDER,
    delivered_to,
    mail,
    main_log_lines,
    session,
)

DAVE = "dave@anchor.test"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def sql_profile(pg, extra: str = "") -> str:
    return PROFILE + f"lookup_sql_dsn = [{pg.dsn!r}]\n" + extra


def policy(pg, name: str, **columns) -> int:
    names = ["policy_name", *columns]
    marks = ", ".join(["%s"] * len(names))
    return pg.rows(f"INSERT INTO policy ({', '.join(names)}) VALUES ({marks}) RETURNING id",
                   [name, *columns.values()])[0][0]


def user(pg, email: str, policy_id: int, priority: int = 7) -> int:
    return pg.rows("INSERT INTO users (email, policy_id, priority) VALUES (%s, %s, %s) "
                   "RETURNING id", [email.encode(), policy_id, priority])[0][0]


def wblist(pg, rid: int, sender: str, wb: str) -> None:
    sid = pg.rows("INSERT INTO mailaddr (email) VALUES (%s) ON CONFLICT (email) "
                  "DO UPDATE SET priority=mailaddr.priority RETURNING id",
                  [sender.encode()])[0][0]
    pg.execute("INSERT INTO wblist (rid, sid, wb) VALUES (%s, %s, %s)", [rid, sid, wb])


def forwarded(sink_port: int, discards: int) -> str:
    """The reply of a message passed to some recipients and discarded for others."""
    return (rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink_port}\): "
            rf"250 2\.0\.0 Ok: queued as Q\d+, but {discards} DISCARD")



@pytest.fixture
def pg(pg_schema):  # noqa: F811 - the private schema of t/helpers/pg.py
    return pg_schema

# ------------------------------------------------------------------ users / policy
def test_policy_row_makes_one_recipient_a_banned_files_lover(amavisd, sink, pg):
    """pipeline.md 14/23: carol's ``users`` row points at a policy with
    banned_files_lover='Y' (the implied SQL field in front of
    @banned_files_lovers_maps), so the banned .exe reaches her; bob, with no row,
    keeps the static policy and the message is discarded for him."""
    lover = policy(pg, "lover", banned_files_lover="Y")
    user(pg, CAROL, lover)
    daemon = amavisd(sql_profile(pg))
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], mail("lover", BANNED_ZIP))
    assert re.fullmatch(forwarded(sink.port, 1), reply[0]), reply
    assert delivered_to(sink, BOB) == []
    assert [m.rcpts for m in sink.messages] == [[f"RCPT TO:<{CAROL}>".encode()]]
    lines = main_log_lines(daemon, 2)          # Passed for carol, Blocked for bob
    assert any(re.search(rf"\({LOG_ID}\) Blocked BANNED \({FAKE_EXE_LEAF}\) "
                         r"\{DiscardedInbound,RelayedTaggedInbound,Quarantined\}, "
                         r".*<alice@anchor\.test> -> "
                         r"<bob@anchor\.test>,", x) for x in lines), lines


def test_domain_row_with_user_override(amavisd, sink, pg):
    """A domain row (``@anchor.test``: bypass_banned_checks='Y') answers for everyone
    in the domain; bob's own row with a higher priority says 'N', and NULL in a
    more specific row falls through to the domain row (carol)."""
    domain = policy(pg, "domain", bypass_banned_checks="Y")
    strict = policy(pg, "strict", bypass_banned_checks="N")
    undecided = policy(pg, "undecided")              # all NULL: no opinion
    user(pg, "@anchor.test", domain, priority=5)
    user(pg, BOB, strict, priority=10)
    user(pg, CAROL, undecided, priority=10)
    daemon = amavisd(sql_profile(pg))
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], mail("domain", BANNED_ZIP))
    assert re.fullmatch(forwarded(sink.port, 1), reply[0]), reply
    assert delivered_to(sink, BOB) == []
    assert len(delivered_to(sink, CAROL)) == 1


# ------------------------------------------------------------------ wblist
@pytest.fixture(scope="module")
def spamd():
    if not spamd_available():
        pytest.skip("no /usr/sbin/spamd")
    with running_spamd() as instance:
        yield instance


def spam_profile(pg, spamd) -> str:
    return sql_profile(pg, f"""
bypass_spam_checks_maps = []
sa_tag_level_deflt = 2.0
sa_tag2_level_deflt = 6.31
sa_kill_level_deflt = 6.31
final_spam_destiny = D_DISCARD
spam_scanners = [['spamd', 'Amavis::SpamControl::SpamdClient']]
spamd_address = [{spamd.address!r}]
""")


def test_wblist_blacklist_and_soft_score_per_recipient(amavisd, sink, pg, spamd):
    """pipeline.md 10.1: a clean message from alice; bob's wblist says 'B' for her
    address, dave's says '7.5' for her domain (a soft score above the kill level
    6.31), carol has none: bob and dave get it discarded as spam, carol gets it."""
    pid = policy(pg, "p")
    wblist(pg, user(pg, BOB, pid), SENDER, "B")
    wblist(pg, user(pg, DAVE, pid), "@anchor.test", "7.5")
    user(pg, CAROL, pid)
    daemon = amavisd(spam_profile(pg, spamd))
    reply = send_message(session(daemon), SENDER, [BOB, CAROL, DAVE], mail("wbl"))
    assert re.fullmatch(forwarded(sink.port, 2), reply[0]), reply
    assert [m.rcpts for m in sink.messages] == [[f"RCPT TO:<{CAROL}>".encode()]]
    text = wait_for(lambda: "Blocked SPAM" in (t := daemon.logfile_text()) and t,
                    what="the Blocked SPAM log line")
    blocked = [x for x in text.splitlines() if " Blocked SPAM " in x]
    assert len(blocked) == 1, blocked
    assert re.search(r"<alice@anchor\.test> -> <bob@anchor\.test>,<dave@anchor\.test>, ",
                     blocked[0]), blocked
    assert re.search(r"Hits: 0\.\.7\.5, ", blocked[0]), blocked


def test_wblist_whitelist_passes_gtube(amavisd, sink, pg, spamd):
    """GTUBE (score 1000) to bob and carol: bob's wblist whitelists the sender's
    domain ('W' for ``@anchor.test``), so only carol's copy is spam."""
    pid = policy(pg, "p")
    wblist(pg, user(pg, BOB, pid), "@anchor.test", "W")
    daemon = amavisd(spam_profile(pg, spamd))
    data = (b"From: Alice <alice@anchor.test>\r\nTo: <bob@anchor.test>\r\n"
            b"Subject: gtube\r\nMessage-ID: <gtube@anchor.test>\r\n\r\n" + GTUBE + b"\r\n")
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], data)
    assert re.fullmatch(forwarded(sink.port, 1), reply[0]), reply
    assert [m.rcpts for m in sink.messages] == [[f"RCPT TO:<{BOB}>".encode()]]
    assert b"X-Spam-Flag: YES" not in sink.messages[0].data.split(b"\r\n\r\n")[0]
    text = daemon.logfile_text()
    assert re.search(r"Blocked SPAM \{DiscardedInbound.*<alice@anchor\.test> -> "
                     r"<carol@anchor\.test>, .*Hits: 10\d\d\.?\d*, ", text), text


# ------------------------------------------------------------------ SQL down
def down_dsn() -> str:
    return repr([f"DBI:Pg:dbname=test;host=127.0.0.1;port={free_port()}", "postgres", ""])


def test_sql_down_at_rcpt_closes_with_421(amavisd, sink):
    """The per-recipient size limit is asked at RCPT (@message_size_limit_maps has
    the SQL field first): with the database down the session ends with 421, as
    amavisd's dies there, and the log says why; nothing is forwarded."""
    daemon = amavisd(PROFILE + f"lookup_sql_dsn = [{down_dsn()}]\n")
    client = session(daemon)
    assert client.cmd("EHLO client.anchor.test")[-1].startswith("250 ")
    assert client.cmd(f"MAIL FROM:<{SENDER}>") == ["250 2.1.0 Sender <alice@anchor.test> OK"]
    assert client.cmd(f"RCPT TO:<{BOB}>") == [
        "421 4.3.2 Service shutting down, closing channel"]
    assert client.eof() == b""
    log = wait_for(lambda: "lookup_sql:" in (t := daemon.logfile_text()) and t,
                   what="the lookup_sql log line")
    assert re.search(r"lookup_sql: sel_policy for <bob@anchor\.test> failed: SQL lookup: "
                     r"no server answered: dbname=test host=127\.0\.0\.1 port=\d+ user=postgres: "
                     r"connection failed: ", log), log
    assert sink.messages == []


def test_sql_down_in_the_checks_tempfails_451(amavisd, sink):
    """An SQL field asked while the message is checked (here the only one: a native
    config's ``q_sql_b`` in @bypass_banned_checks_maps, the implied ones off) and the
    database down: 451 4.5.0 for the whole message, never a pass."""
    extra = f"""lookup_sql_dsn = [{down_dsn()}]
lookup_maps_imply_sql_and_ldap = 0
from amavisd.config.lookup import q_sql_b as _q_sql_b
bypass_banned_checks_maps = [_q_sql_b('bypass_banned_checks')]
"""
    daemon = amavisd(PROFILE + extra)
    reply = send_message(session(daemon), SENDER, [BOB, CAROL], mail("down"))
    assert len(reply) >= 1 and re.match(
        rf"451[ -]4\.5\.0 Error in processing, id={LOG_ID}, lookup_sql FAILED: "
        r"sel_policy for <bob@anchor\.test>: SQL lookup: no server answered: ", reply[0]), reply
    assert sink.messages == []
    text = daemon.logfile_text()
    assert re.search(rf"\({LOG_ID}\) TROUBLE in lookup_sql: sel_policy for "
                     r"<bob@anchor\.test>: SQL lookup: no server answered", text), text
    assert " Passed " not in text and " Blocked " not in text
