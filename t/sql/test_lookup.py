# tests: amavisd/sql/lookup.py, amavisd/config/lookup.py (SQL fields), amavisd/checks/spam.py
"""SQL lookups against the real PostgreSQL: key order, records, field types, wblist.

Each test gets its own schema (t/helpers/pg.py) with the tables of sql/schema-pg.sql,
fills ``users``/``policy``/``mailaddr``/``wblist`` and asks through the same
per-recipient path the daemon uses (``Lookups(view).per_recipient``), so the
implied SQL fields in front of the static maps are part of every answer
(pipeline.md 14, 10.1, 23).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from amavisd import log as amavis_log
from amavisd.checks import spam
from amavisd.config.lookup import Lookups, PerlLookup, SQLField, lookup, q_sql_n
from amavisd.config.model import Config
from amavisd.errors import ConfigError, TempFail
from amavisd.message import Message, Recipient
from amavisd.sql import connection
from amavisd.sql import lookup as sql_lookup
from amavisd.sql.lookup import expand_clause, key_octets, query_keys
from t.helpers.daemon import free_port
from t.helpers.pg import pg_schema  # noqa: F401 - fixture

DOMAIN = "example.com"


@pytest.fixture(autouse=True)
def _isolated():
    """No engine, no task id and no open lookup connection leak out of a test."""
    yield
    amavis_log.set_task_id(None)
    for db in list(connection._databases.values()):
        db.close()
    connection._databases.clear()
    sql_lookup._active = None


def make_config(dsn, **values) -> Config:
    config = Config()
    settings = {"lookup_sql_dsn": [dsn] if dsn else [], "local_domains_acl": [DOMAIN],
                "sa_kill_level_deflt": 6.31, **values}
    for name, value in settings.items():
        config.assign(name, value, "test")
    config.finish()
    return config


def ask(config: Config, setting: str, address: str):
    return Lookups(config.view()).per_recipient(setting, address)


def policy(pg, name: str, **columns) -> int:
    names = ["policy_name", *columns]
    marks = ", ".join(["%s"] * len(names))
    return pg.rows(f"INSERT INTO policy ({', '.join(names)}) VALUES ({marks}) RETURNING id",
                   [name, *columns.values()])[0][0]


def user(pg, email: str | bytes, policy_id: int, priority: int = 7) -> int:
    data = email if isinstance(email, bytes) else email.encode()
    return pg.rows("INSERT INTO users (email, policy_id, priority) VALUES (%s, %s, %s) "
                   "RETURNING id", [data, policy_id, priority])[0][0]



@pytest.fixture
def pg(pg_schema):  # noqa: F811 - the private schema of t/helpers/pg.py
    return pg_schema

# ---------------------------------------------------------------- keys (pure)
def test_key_order_local_with_extension():
    keys = query_keys("User+Foo@Sub.Example.COM", delimiter="+", is_local=True)
    assert keys.keys == ["User+Foo@Sub.Example.COM", "user+foo@sub.example.com",
                         "user@sub.example.com", "user+foo", "user", "@sub.example.com",
                         "@.sub.example.com", "@.example.com", "@.com", "@."]
    assert keys.rhs == ("User+Foo@Sub.Example.COM", "User+Foo", "user", "+foo",
                        "sub.example.com")


def test_key_order_not_local_has_no_bare_user_keys():
    keys = query_keys("User+Foo@Sub.Example.COM", delimiter="+", is_local=False)
    assert keys.keys == ["User+Foo@Sub.Example.COM", "user+foo@sub.example.com",
                         "user@sub.example.com", "@sub.example.com", "@.sub.example.com",
                         "@.example.com", "@.com", "@."]


def test_key_order_without_delimiter_and_case_sensitive():
    assert query_keys("Bob+x@Example.COM", is_local=True).keys == [
        "Bob+x@Example.COM", "bob+x@example.com", "bob+x", "@example.com",
        "@.example.com", "@.com", "@."]
    assert query_keys("Bob@example.com", case_sensitive=True).keys[:2] == [
        "Bob@example.com", "@example.com"]


def test_no_at_means_domain_keys():
    assert query_keys("bob+x@example.com", delimiter="+", is_local=True,
                      no_at_means_domain=True).keys == [
        "bob+x@example.com", "bob@example.com", "bob+x@", "bob@", "example.com",
        ".example.com", ".com", "."]


def test_literal_null_sender_and_idn_keys():
    assert query_keys("bob@[192.0.2.1]").keys == ["bob@[192.0.2.1]", "@[192.0.2.1]", "@."]
    assert query_keys("").keys == ["", "@", "@."]
    assert query_keys("jörg@bücher.example").keys[1:3] == [
        "jörg@xn--bcher-kva.example", "@xn--bcher-kva.example"]


def test_eight_bit_key_octets():
    assert key_octets("jörg@example.com") == b"j??rg@example.com"     # one ? per octet
    assert key_octets("a\tb\x7f") == b"a?b?"
    assert key_octets("jörg@example.com", allow_8bit=True) == "jörg@example.com".encode()


def test_clause_expansion_placeholders():
    keys = query_keys("Bob+x@Example.com", delimiter="+", is_local=True)
    sql, params = expand_clause(
        "SELECT * FROM t WHERE rid=? AND e IN (%k) AND a=%a AND l=%l AND u=%u AND x=%e "
        "AND d=%d AND loc=%L AND z LIKE '%k?'", keys, extra=[42])
    assert len(keys.keys) == 9
    assert sql == ("SELECT * FROM t WHERE rid=%s AND e IN (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                   "AND a=%s AND l=%s AND u=%s AND x=%s AND d=%s AND loc=%s AND z LIKE '%%k?'")
    assert params == [42, *keys.keys, "Bob+x@Example.com", "Bob+x", "bob", "+x",
                      "example.com", True]


# ---------------------------------------------------------------- records and fields
def test_user_record_then_domain_record_then_static_maps(pg):
    """The first record with a non-NULL field wins per field; NULL everywhere falls
    through to the static maps (pipeline.md 14, 23)."""
    user_p = policy(pg, "bob", spam_kill_level=5.5)
    domain_p = policy(pg, "domain", spam_kill_level=9, spam_tag2_level=4.25,
                      spam_subject_tag="[dom] ")
    user(pg, "bob@example.com", user_p)
    user(pg, "@example.com", domain_p)
    config = make_config(pg.dsn, sa_tag_level_deflt=1.5)
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 5.5
    assert ask(config, "spam_tag2_level_maps", "bob@example.com") == 4.25   # user's is NULL
    assert ask(config, "spam_subject_tag_maps", "bob@example.com") == "[dom] "
    assert ask(config, "spam_kill_level_maps", "carol@example.com") == 9
    assert ask(config, "spam_tag_level_maps", "bob@example.com") == 1.5     # static
    assert ask(config, "spam_kill_level_maps", "dave@other.test") == 6.31   # no record


def test_priority_order_and_ties(pg):
    """ORDER BY users.priority DESC decides; equal priorities go most specific key first."""
    low = policy(pg, "low", spam_kill_level=1)
    high = policy(pg, "high", spam_kill_level=2)
    user(pg, "@example.com", low, priority=7)
    user(pg, "bob@example.com", high, priority=7)
    user(pg, "carol@example.com", low, priority=3)
    user(pg, "@.example.com", high, priority=5)
    config = make_config(pg.dsn)
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 2       # tie: user first
    assert ask(config, "spam_kill_level_maps", "carol@example.com") == 1     # @dom prio 7
    assert ask(config, "spam_kill_level_maps", "dave@sub.example.com") == 2  # @.example.com


def test_bare_user_keys_only_for_local_addresses(pg):
    """``bob`` (no @) is a local mailbox: it matches bob@ a local domain only; the
    local test uses the static local_domains_maps (SQL would recurse)."""
    pid = policy(pg, "bare", virus_lover="Y")
    user(pg, "bob", pid)
    config = make_config(pg.dsn)
    assert ask(config, "virus_lovers_maps", "bob@example.com") is True
    assert ask(config, "virus_lovers_maps", "bob@elsewhere.test") is None
    assert lookup(False, "bob@elsewhere.test", config.virus_lovers_maps) is None


def test_no_at_means_domain(pg):
    pid = policy(pg, "dom", virus_quarantine_to="dom-quarantine")
    user(pg, "example.com", pid)
    assert ask(make_config(pg.dsn), "virus_quarantine_to_maps", "bob@example.com") == \
        "virus-quarantine"                          # 'example.com' is a local mailbox
    config = make_config(pg.dsn, sql_lookups_no_at_means_domain=1)
    assert ask(config, "virus_quarantine_to_maps", "bob@example.com") == "dom-quarantine"


def test_address_extension(pg):
    plain = policy(pg, "plain", spam_quarantine_to="plain-quarantine")
    tagged = policy(pg, "tagged", spam_quarantine_to="tagged-quarantine")
    user(pg, "bob@example.com", plain)
    config = make_config(pg.dsn, recipient_delimiter="+")
    assert ask(config, "spam_quarantine_to_maps", "bob+lists@example.com") == \
        "plain-quarantine"
    user(pg, "bob+lists@example.com", tagged)
    amavis_log.set_task_id("t-ext")                  # a new message: a fresh cache
    assert ask(config, "spam_quarantine_to_maps", "bob+lists@example.com") == \
        "tagged-quarantine"
    assert ask(config, "spam_quarantine_to_maps", "bob+other@example.com") == \
        "plain-quarantine"
    assert ask(config, "spam_quarantine_to_maps", "carol@example.com") == "spam-quarantine"


def test_catch_all_and_implied_local(pg):
    """A user record makes its address local (``local`` B1); the ``@.`` catch-all does
    not, but still answers the other fields; an explicit ``local`` column wins."""
    catch_all = policy(pg, "catch-all", spam_kill_level=12, bypass_virus_checks="Y")
    user(pg, "@.", catch_all, priority=0)
    user(pg, "@partner.test", catch_all)
    config = make_config(pg.dsn)
    assert ask(config, "spam_kill_level_maps", "x@anywhere.test") == 12
    assert ask(config, "bypass_virus_checks_maps", "x@anywhere.test") is True
    assert ask(config, "local_domains_maps", "x@anywhere.test") is None
    assert ask(config, "local_domains_maps", "x@partner.test") is True
    assert ask(config, "local_domains_maps", "x@example.com") is True   # static acl
    pg.execute("ALTER TABLE users ADD COLUMN local char(1)")
    pg.execute("UPDATE users SET local='N' WHERE email='@partner.test'")
    sql_lookup.clear_cache()
    assert ask(config, "local_domains_maps", "x@partner.test") is False


def test_field_types(pg):
    """B: N n F f 0 space NUL are false; N: a number; S: the text; a missing column is
    no answer for '-' types, true for B1, false for B0 (pipeline.md 14)."""
    values = {"virus_lover": "N", "spam_lover": "f", "unchecked_lover": "0",
              "banned_files_lover": " ", "bad_header_lover": "Y", "bypass_spam_checks": "x",
              "message_size_limit": 200000, "spam_tag3_level": 7.5,
              "addr_extension_spam": "spam"}
    user(pg, "bob@example.com", policy(pg, "types", **values))
    config = make_config(pg.dsn)
    engine = sql_lookup.active()
    got = {name: engine.field("bob@example.com", name, "B-")[0][0]
           for name in ("virus_lover", "spam_lover", "unchecked_lover", "banned_files_lover",
                        "bad_header_lover", "bypass_spam_checks")}
    assert got == {"virus_lover": False, "spam_lover": False, "unchecked_lover": False,
                   "banned_files_lover": False, "bad_header_lover": True,
                   "bypass_spam_checks": True}
    assert ask(config, "message_size_limit_maps", "bob@example.com") == 200000
    assert ask(config, "spam_tag3_level_maps", "bob@example.com") == 7.5
    assert ask(config, "addr_extension_spam_maps", "bob@example.com") == "spam"
    assert engine.field("bob@example.com", "nosuchcolumn", "S-") == []
    assert engine.field("bob@example.com", "nosuchcolumn", "B1") == [(True, "sql:bob@example.com")]
    assert engine.field("bob@example.com", "nosuchcolumn", "B0") == [
        (False, "sql:bob@example.com")]
    assert engine.field("bob@example.com", "policy_name", "S-") == [
        ("types", "sql:bob@example.com")]
    # users.id comes last in sel_policy, so 'id' is the user's, not the policy's
    assert engine.user_ids("bob@example.com") == [pg.rows("SELECT id FROM users")[0][0]]


def test_eight_bit_keys(pg):
    """Without $sql_allow_8bit_address every non-ASCII octet of a key is '?'."""
    question = policy(pg, "question", virus_quarantine_to="q-quarantine")
    utf8 = policy(pg, "utf8", virus_quarantine_to="u-quarantine")
    user(pg, b"j??rg@example.com", question)
    user(pg, "jörg@example.com".encode(), utf8)
    assert ask(make_config(pg.dsn), "virus_quarantine_to_maps", "jörg@example.com") == \
        "q-quarantine"
    config = make_config(pg.dsn, sql_allow_8bit_address=1)
    assert ask(config, "virus_quarantine_to_maps", "jörg@example.com") == "u-quarantine"


def test_one_query_per_address_and_message(pg):
    """All fields of one address cost one sel_policy per message; a new task id
    (a new message) asks again and sees changed rows."""
    pid = policy(pg, "p", spam_kill_level=5, spam_tag2_level=3, virus_lover="Y")
    user(pg, "bob@example.com", pid)
    config = make_config(pg.dsn)
    engine = sql_lookup.active()
    amavis_log.set_task_id("12345-01")
    for setting in ("spam_kill_level_maps", "spam_tag2_level_maps", "virus_lovers_maps",
                    "bypass_spam_checks_maps", "local_domains_maps", "virus_quarantine_to_maps"):
        ask(config, setting, "bob@example.com")
    assert engine.queries == 1
    pg.execute("UPDATE policy SET spam_kill_level=8")
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 5     # same message
    amavis_log.set_task_id("12345-02")
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 8
    assert engine.queries == 2
    amavis_log.set_task_id(None)                                          # no task: no cache
    ask(config, "spam_kill_level_maps", "bob@example.com")
    ask(config, "spam_kill_level_maps", "bob@example.com")
    assert engine.queries == 4


def test_admin_clause_with_placeholders(pg):
    """An admin's sel_policy may use %u (and %a %l %e %d %L) besides %k."""
    pid = policy(pg, "p", spam_kill_level=3)
    pg.execute("INSERT INTO users (email, policy_id, fullname) VALUES "
                      "('@example.com', %s, 'bob'), ('carol@example.com', %s, 'x')", [pid, pid])
    clause = ("SELECT users.*, policy.*, users.id FROM users LEFT JOIN policy"
              " ON users.policy_id=policy.id WHERE users.email IN (%k) AND users.fullname=%u"
              " ORDER BY users.priority DESC")
    config = make_config(pg.dsn, sql_clause={"sel_policy": clause},
                         recipient_delimiter="+")
    assert ask(config, "spam_kill_level_maps", "Bob+x@example.com") == 3
    assert ask(config, "spam_kill_level_maps", "carol@example.com") == 6.31


def test_perl_config_sql_fields(pg):
    """q_sql_s/n/b of an imported Perl config (and of a native one) ask SQL when
    @lookup_sql_dsn is set, and nothing otherwise."""
    user(pg, "bob@example.com", policy(pg, "p", spam_admin="sa@example.com",
                                              message_size_limit=90000))
    tables = [PerlLookup("q_sql_s", ("spam_admin",)), "static"]
    assert lookup(False, "bob@example.com", tables) == "static"           # no SQL
    make_config(pg.dsn, lookup_maps_imply_sql_and_ldap=0)
    assert lookup(False, "bob@example.com", tables) == "sa@example.com"
    assert lookup(False, "bob@example.com", [q_sql_n("message_size_limit")]) == 90000
    assert lookup(False, "bob@example.com", [PerlLookup("q_ldap_s", ("x",)), 1]) == 1


def test_imply_off_leaves_the_maps_alone(pg):
    config = make_config(pg.dsn, lookup_maps_imply_sql_and_ldap=0)
    assert config.spam_kill_level_maps == [6.31]
    config = make_config(pg.dsn)
    assert config.spam_kill_level_maps == [SQLField("spam_kill_level", "N-", True), 6.31]
    config.finish()                                                      # idempotent
    assert len(config.local_domains_maps) == 2
    assert isinstance(config.banned_filename_maps[0], SQLField)
    assert config.banned_filename_maps[0].field == "banned_rulenames"


def test_spam_code_decision_looks_past_the_implied_fields(pg):
    """Debian's @bypass_spam_checks_maps = (1) keeps the spam code unloaded even with
    SQL lookups, as amavisd decides before it puts the SQL fields first."""
    config = make_config(pg.dsn, bypass_spam_checks_maps=[1])
    assert isinstance(config.bypass_spam_checks_maps[0], SQLField)
    assert not spam.spam_code_loaded(config)
    assert spam.spam_code_loaded(make_config(pg.dsn, bypass_spam_checks_maps=[]))


def test_bad_dsn_is_a_config_error():
    with pytest.raises(ConfigError, match="driver is not supported"):
        make_config(["DBI:mysql:database=mail;host=127.0.0.1", "u", "p"])


# ---------------------------------------------------------------- failures
def test_server_down_tempfails():
    port = free_port()
    dsn = [f"DBI:Pg:dbname=test;host=127.0.0.1;port={port}", "postgres", ""]
    config = make_config(dsn)
    with pytest.raises(TempFail) as caught:
        ask(config, "spam_kill_level_maps", "bob@example.com")
    assert caught.value.section == "lookup_sql"
    assert caught.value.reason.startswith("sel_policy for <bob@example.com>: SQL lookup: "
                                          "no server answered: ")
    assert f"port={port}" in caught.value.reason and "\n" not in caught.value.reason


def test_bad_clause_tempfails(pg, caplog):
    config = make_config(pg.dsn, sql_clause={
        "sel_policy": "SELECT * FROM nosuchtable WHERE email IN (%k)"})
    with pytest.raises(TempFail, match='relation "nosuchtable" does not exist'):
        ask(config, "bypass_spam_checks_maps", "bob@example.com")
    assert any(r.getMessage().startswith("lookup_sql: sel_policy for <bob@example.com> "
                                         "failed: relation \"nosuchtable\"")
               for r in caplog.records)


def test_disabled_clause_answers_nothing(pg):
    user(pg, "bob@example.com", policy(pg, "p", spam_kill_level=1))
    config = make_config(pg.dsn, sql_select_policy=None)
    assert config.origin("sql_select_policy") == "test"
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 6.31


# ---------------------------------------------------------------- wblist
def wb_rows(pg, rid: int, entries: dict[str, str], priority: int = 9) -> None:
    for email, wb in entries.items():
        sid = pg.rows("INSERT INTO mailaddr (email, priority) VALUES (%s, %s) "
                      "ON CONFLICT (email) DO UPDATE SET priority=mailaddr.priority "
                      "RETURNING id", [email.encode(), priority])[0][0]
        pg.execute("INSERT INTO wblist (rid, sid, wb) VALUES (%s, %s, %s)", [rid, sid, wb])


def spam_message(tmp_path: Path, rcpts, sender="news@shop.test",
                 from_header="Shop <offers@shop.test>") -> Message:
    path = tmp_path / "email.txt"
    data = f"From: {from_header}\nSubject: x\n\nbody\n".encode()
    path.write_bytes(data)
    return Message(sender, sender, [Recipient(r, r) for r in rcpts], path, len(data), "1-01")


def wbl(config: Config, msg: Message) -> spam.SpamResult:
    """The spam check with a scanner that finds nothing (the w/b step is under test)."""
    return spam.check(msg, config.view(), config, scan=lambda s, m, v: []).result


def test_wblist_per_recipient(pg, tmp_path):
    """sel_wblist for each users.id of the recipient: B blacklists, W whitelists, a
    number is a soft score (AM.WBL), a space is neutral and stops the search."""
    pid = policy(pg, "p")
    rids = {name: user(pg, f"{name}@example.com", pid)
            for name in ("bob", "carol", "dave", "erin", "fred")}
    wb_rows(pg, rids["bob"], {"news@shop.test": "B"})
    wb_rows(pg, rids["carol"], {"@shop.test": "W"})
    wb_rows(pg, rids["dave"], {"@.shop.test": "7.5"})
    wb_rows(pg, rids["erin"], {"offers@shop.test": " "})
    config = make_config(pg.dsn, bypass_spam_checks_maps=[],
                         blacklist_sender_maps=[["offers@shop.test"]])
    msg = spam_message(tmp_path, [f"{n}@example.com" for n in rids])
    result = wbl(config, msg)
    got = {addr.split("@")[0]: (e.blacklisted, e.whitelisted, e.level, e.tests)
           for addr, e in result.recipients.items()}
    assert got == {
        "bob": (True, False, None, []),
        "carol": (False, True, None, []),
        "dave": (True, False, 15.0, ["AM.WBL=15"]),   # 7.5 per sender, then the static list
        "erin": (False, False, None, []),             # neutral: the static list not asked
        "fred": (True, False, None, []),              # static list (From: offers@)
    }
    assert result.performed                            # erin is not w/b listed


def test_wblist_mailaddr_priority_and_several_users_ids(pg, tmp_path):
    """A recipient matching several users rows asks wblist for each id in order; within
    one id the higher mailaddr.priority wins."""
    pid = policy(pg, "p")
    own = user(pg, "bob@example.com", pid, priority=9)
    domain = user(pg, "@example.com", pid, priority=5)
    wb_rows(pg, domain, {"news@shop.test": "B"})
    wb_rows(pg, own, {"@shop.test": "W"}, priority=3)
    wb_rows(pg, own, {"@.": "B"}, priority=0)
    config = make_config(pg.dsn, bypass_spam_checks_maps=[])
    entry = wbl(config, spam_message(tmp_path, ["bob@example.com"])).recipients[
        "bob@example.com"]
    assert (entry.whitelisted, entry.blacklisted) == (True, False)
    entry = wbl(config, spam_message(tmp_path, ["carol@example.com"])).recipients[
        "carol@example.com"]
    assert (entry.whitelisted, entry.blacklisted) == (False, True)


def test_wblist_needs_the_implied_lookups(pg, tmp_path):
    pid = policy(pg, "p")
    wb_rows(pg, user(pg, "bob@example.com", pid), {"news@shop.test": "B"})
    config = make_config(pg.dsn, bypass_spam_checks_maps=[],
                         lookup_maps_imply_sql_and_ldap=0)
    entry = wbl(config, spam_message(tmp_path, ["bob@example.com"])).recipients[
        "bob@example.com"]
    assert not entry.blacklisted


# ---------------------------------------------------------------- docs/sql-lookups.md
def test_the_documented_example(pg, tmp_path):
    """The SQL of docs/sql-lookups.md's example, run as printed, answers as the text says."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sql-lookups.md").read_text()
    example = doc.split("## An example", 1)[1].split("```sql\n", 1)[1].split("```", 1)[0]
    pg.execute(example)
    config = make_config(pg.dsn, bypass_spam_checks_maps=[], local_domains_acl=[])
    assert ask(config, "spam_lovers_maps", "bob@example.com") is True
    assert ask(config, "banned_files_lovers_maps", "bob@example.com") is True
    assert ask(config, "spam_kill_level_maps", "bob@example.com") == 8
    assert ask(config, "spam_tag2_level_maps", "bob@example.com") == 3
    assert ask(config, "spam_lovers_maps", "carol@example.com") is None
    assert ask(config, "spam_kill_level_maps", "carol@example.com") == 8
    assert ask(config, "spam_kill_level_maps", "x@elsewhere.test") == 6.31
    assert ask(config, "local_domains_maps", "carol@example.com") is True
    assert ask(config, "local_domains_maps", "x@elsewhere.test") is None
    boss = wbl(config, spam_message(tmp_path, ["boss@example.com"], sender="ceo@competitor.test",
                                    from_header="<ceo@competitor.test>"))
    assert boss.recipients["boss@example.com"].blacklisted
    bob = wbl(config, spam_message(tmp_path, ["bob@example.com"])).recipients["bob@example.com"]
    assert (bob.level, bob.tests, bob.blacklisted) == (2.0, ["AM.WBL=2"], False)
