# tests: amavisd/report.py amavisd/redis_store.py amavisd/msglog.py (and the daemon)
"""The structured JSON event (spec monitoring.md 5.6, pipeline.md 25-26).

* Its encoding is Amavis::JSON's: compact, keys sorted, escapes for `"` `\\` and
  controls, U+2028/9, ``/`` and non-ASCII kept, formatted numbers.
* The real daemon logs it through ``[:report_json]`` in ``$log_templ``: after a
  clean, a banned and a virus message (real clamd) every key it has is a key of
  the spec with the spec's type, and the keys such a message must have are there.
  Backslashes and non-ASCII in the sender and the Subject still parse: the log
  writer does not double the JSON's backslashes (docs/differences.md).
* With ``@storage_redis_dsn`` the event goes to a list on the real Redis
  (127.0.0.1:6379, a private database and key), trimmed to the newest
  ``$redis_logging_queue_size_limit`` entries, byte for byte the logged JSON.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid

import pytest

from amavisd.redis_store import Connection, EventPusher, RedisServer, encode_command, parse_dsn
from amavisd.report import Number, ReportFacts, encode_json, structured_report
from t.helpers.clamd import EICAR, ClamdServer, clamd_available
from t.integration.conftest import (  # noqa: F401 - fixtures for the daemon tests
    Client,
    _close_clients,
    amavisd,
    send_message,
    sink,
    tmp_path,
    wait_for,
)
from t.test_logtemplates import SHAPES, context

NUMBER, STRING, BOOL, ARRAY, OBJECT = "number", "string", "bool", "array", "object"
#: monitoring.md 5.6, top-level keys and their types.
TOP_KEYS = {
    "@timestamp": STRING, "time_unix": NUMBER, "time_iso_week_date": STRING,
    "type": STRING, "host": STRING, "log_id": STRING, "mail_id": STRING,
    "mail_id_parent": STRING, "mail_id_related": ARRAY, "src_ip": STRING, "dst_ip": STRING,
    "dst_port": NUMBER, "client_ip": STRING, "client_port": NUMBER, "partition": STRING,
    "queue_id": STRING, "sid": STRING, "protocol": STRING, "attached_file_names": ARRAY,
    "mail_from": STRING, "rcpt_to": ARRAY, "rcpt_num": NUMBER, "recipients": ARRAY,
    "sender": STRING, "author": ARRAY, "to_addr": ARRAY, "cc_addr": ARRAY,
    "subject": STRING, "subject_rot13": STRING, "message_id": STRING, "references": ARRAY,
    "user_agent": STRING, "policy_banks": ARRAY, "ip_trace": ARRAY, "ip_proto_trace": ARRAY,
    "size": NUMBER, "digest_body": STRING, "content_type": STRING, "quarantine": STRING,
    "quar_type": STRING, "spam_score": NUMBER, "dsn_sent": BOOL, "originating": BOOL,
    "os_fp": STRING, "actions_performed": STRING, "checks_performed": STRING,
    "virusnames": ARRAY, "av_scan": OBJECT, "tests": ARRAY, "tests_spam": ARRAY,
    "tests_ham": ARRAY, "is_auto_resp": BOOL, "is_mlist": BOOL, "is_bulk": BOOL,
    "dkim_valid_sig": ARRAY, "dkim_new_sig": ARRAY, "dkim_author_sig": STRING,
    "smtp_code": ARRAY, "queued_as": ARRAY, "action": ARRAY, "message": STRING,
    "elapsed": OBJECT,
}
#: Present in every message report (the rest only when they have a value).
ALWAYS = {"@timestamp", "time_unix", "time_iso_week_date", "type", "host", "log_id",
          "mail_id", "partition", "mail_from", "rcpt_to", "rcpt_num", "recipients",
          "policy_banks", "content_type", "dsn_sent", "originating", "action", "message"}
RCPT_KEYS = {
    "rcpt_to": STRING, "rcpt_to_orig": STRING, "rid": STRING, "rid_orig": NUMBER,
    "rcpt_is_local": BOOL, "sql_user_policy_id": STRING, "action": STRING,
    "smtp_response": STRING, "smtp_code": STRING, "queued_as": STRING, "spam_score": NUMBER,
    "blacklisted": BOOL, "whitelisted": BOOL, "bypass_virus_checks": BOOL,
    "bypass_banned_checks": BOOL, "bypass_spam_checks": BOOL, "ccat_blocking": STRING,
    "ccat_main": STRING, "banning_reason": STRING, "mail_id_related": STRING,
    "penpals_age": NUMBER,
}
ELAPSED = {"Receiving", "Decoding", "VirusCheck", "SpamCheck", "Sending", "Total", "Amavis"}


def json_type(value) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return ARRAY
    if isinstance(value, dict):
        return OBJECT
    return "null"


def check_types(event: dict, required: set[str]) -> None:
    """Every key is the spec's with its type; the required ones are there."""
    assert required <= set(event), sorted(required - set(event))
    for key, value in event.items():
        assert key in TOP_KEYS, key
        assert json_type(value) == TOP_KEYS[key], (key, value)
    for rcpt in event["recipients"]:
        assert {"rcpt_to", "rcpt_is_local", "action"} <= set(rcpt)
        for key, value in rcpt.items():
            assert key in RCPT_KEYS, key
            assert json_type(value) == RCPT_KEYS[key], (key, value)
    for key, value in event.get("elapsed", {}).items():
        assert key in ELAPSED and json_type(value) == NUMBER, (key, value)
    assert all(json_type(x) == STRING for k in ("rcpt_to", "action", "policy_banks")
               for x in event[k])
    assert event["rcpt_num"] == len(event["rcpt_to"]) == len(event["recipients"])
    assert event["type"] == "amavis"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["@timestamp"])
    assert re.fullmatch(r"\d{4}-W\d\d-[1-7]", event["time_iso_week_date"])


# -------------------------------------------------------------------- the encoder
def test_encoding_is_amavis_json():
    value = {"b": [1, Number("0.010"), True, False, None], "a": 'q"b\\s/é\u2028\x01\x7f\t',
             "@t": {"z": 1, "Z": 2}}
    text = encode_json(value)
    assert text == ('{"@t":{"Z":2,"z":1},"a":"q\\"b\\\\s/é\\u2028\\u0001\\u007F\\t",'
                    '"b":[1,0.010,true,false,null]}')
    assert json.loads(text)["a"] == value["a"]


def test_undecodable_octets_become_replacement_characters():
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    text = encode_json({"subject": raw})
    assert text == '{"subject":"caf\ufffd"}'
    text.encode("utf-8")                         # valid UTF-8 for Redis


# -------------------------------------------------------------------- built reports
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_gives_spec_keys_and_types(shape, tmp_path):  # noqa: F811
    msg = SHAPES[shape](tmp_path)
    ctx, _ = context(msg)
    facts = ReportFacts(sid=7, rids=[11] * len(msg.recipients), quar_type="F", dsn_sent=0,
                        checks_performed="V S H B", elapsed_ms={"Receiving": 3.0,
                                                                "SpamCheck": 5.0})
    event = json.loads(encode_json(structured_report(ctx, facts, src_ip="127.0.0.1",
                                                     dst_ip="127.0.0.1", dst_port=10024,
                                                     now=20.0)))
    check_types(event, ALWAYS | {"src_ip", "dst_ip", "dst_port", "sid", "protocol", "size",
                                 "elapsed", "ip_proto_trace", "subject", "message_id"})
    assert event["elapsed"] == {"Receiving": 0.003, "SpamCheck": 0.005, "Total": 0.02,
                                "Amavis": 0.015}
    assert event["recipients"][0]["rid"] == "11" and event["sid"] == "7"


def test_spam_shape_carries_tests_and_scores(tmp_path):  # noqa: F811
    msg = SHAPES["spam_passed_tagged"](tmp_path)
    ctx, _ = context(msg)
    text = encode_json(structured_report(ctx, ReportFacts(quar_type="F", dsn_sent=0)))
    event = json.loads(text)
    assert event["tests"] == ["ALL_TRUSTED", "GTUBE"]
    assert event["tests_spam"] == ["GTUBE"] and event["tests_ham"] == ["ALL_TRUSTED"]
    assert '"spam_score":999.000' in text
    assert event["content_type"] == "Spam" and event["quarantine"] == "u/spam-o-5GBb5NUXln.gz"
    assert event["actions_performed"] == "RelayedTaggedInbound Quarantined"
    assert event["message"] == "12345-01 PASS Spam alice@anchor.test -> bob@anchor.test"


def test_mixed_shape_actions_codes_and_blocking(tmp_path):  # noqa: F811
    msg = SHAPES["mixed_passed_and_blocked"](tmp_path)
    ctx, _ = context(msg)
    event = json.loads(encode_json(structured_report(ctx, ReportFacts())))
    assert event["action"] == ["PASS", "BOUNCE"]
    assert event["smtp_code"] == ["250", "554"]
    assert event["queued_as"] == ["4XYZ9"]
    bob, dave = event["recipients"]
    assert bob["ccat_main"] == "Spam" and "ccat_blocking" not in bob
    assert dave["ccat_blocking"] == "Spam" and "ccat_main" not in dave
    assert bob["rcpt_is_local"] is True and dave["rcpt_is_local"] is False


# -------------------------------------------------------------------- the daemon
JSON_LOG = """
log_templ = log_short_templ + '[:report_json]\\n'
"""
BANNED = """
from amavisd.checks.banned import DEBIAN_BANNED_FILENAME_RE as _DEBIAN_BANNED
banned_filename_re = _DEBIAN_BANNED
final_banned_destiny = D_DISCARD
QUARANTINEDIR = MYHOME + '/virusmails'
"""
ODD_SENDER = '"back\\\\slash"@anchor.test'          # the local part holds one backslash
SUBJECT = "=?UTF-8?B?" + __import__("base64").b64encode(
    "Grüße \\ aus Zürich \u2028".encode()).decode() + "?="


def deliver(daemon, sender: str, rcpts: list[str], data: bytes) -> list[str]:
    """One session: greeting, the transaction, QUIT; the final reply of DATA."""
    client = Client(daemon.port)
    try:
        assert client.reply()[0].startswith("220 ")
        reply = send_message(client, sender, rcpts, data)
        client.cmd("QUIT")
        return reply
    finally:
        client.close()


def logged_events(daemon, count: int) -> list[tuple[str, dict]]:
    def found():
        lines = [x.split("]: ", 1)[1] for x in daemon.logfile_text().splitlines()
                 if "]: (" in x and ') {"' in x]
        return lines if len(lines) >= count else None
    lines = wait_for(found, 20, "the JSON log lines")
    return [(line.split(" ", 1)[1], json.loads(line.split(" ", 1)[1])) for line in lines]


def test_clean_and_banned_through_the_daemon(amavisd, sink):  # noqa: F811
    daemon = amavisd(JSON_LOG + BANNED)
    clean = (b"From: =?UTF-8?B?SsO8cmdlbg==?= <j\xc3\xbcrgen@anchor.test>\r\n"
             b"To: Bob <bob@anchor.test>\r\nDate: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
             b"Cc: carol@example.com\r\n"
             b"Subject: " + SUBJECT.encode() + b"\r\nMessage-ID: <json-1@anchor.test>\r\n"
             b"References: <a@x> <b@y>\r\nUser-Agent: Test Agent 1.0\r\n\r\nHi\r\n")
    reply = deliver(daemon, ODD_SENDER, ["bob@anchor.test"], clean)
    assert reply[0].startswith("250 2.0.0 from MTA(")
    banned = (b"From: alice@anchor.test\r\nTo: bob@anchor.test\r\nSubject: invoice\r\n"
              b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
              b"Message-ID: <json-2@anchor.test>\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
              b"Content-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\n"
              b"Content-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
              b"Content-Disposition: attachment; filename=\"invoice.exe\"\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAA=\r\n"
              b"--XX--\r\n")
    reply = deliver(daemon, "alice@anchor.test", ["bob@anchor.test"], banned)
    assert reply[0].startswith("250 2.7.0 Ok, discarded")
    (raw1, ev1), (raw2, ev2) = logged_events(daemon, 2)

    check_types(ev1, ALWAYS | {"src_ip", "dst_ip", "dst_port", "protocol", "size", "author",
                               "to_addr", "cc_addr", "subject", "subject_rot13", "message_id",
                               "references", "user_agent", "ip_proto_trace", "smtp_code",
                               "elapsed", "actions_performed", "checks_performed"})
    # the address as given in MAIL FROM (a quoted pair: two characters), escaped once
    assert '"mail_from":"\\"back\\\\\\\\slash\\"@anchor.test"' in raw1
    assert ev1["mail_from"] == ODD_SENDER
    assert ev1["subject"] == "Grüße \\ aus Zürich \u2028"
    assert "\\u2028" in raw1 and "ü" in raw1                  # escaped, and UTF-8 as is
    assert ev1["subject_rot13"] == "Teüßr \\ nhf Müevpu \u2028"
    assert ev1["author"] == ["jürgen@anchor.test"]
    assert ev1["to_addr"] == ["bob@anchor.test"] and ev1["cc_addr"] == ["carol@example.com"]
    assert ev1["references"] == ["<a@x>", "<b@y>"] and ev1["user_agent"] == "Test Agent 1.0"
    assert ev1["message_id"] == "<json-1@anchor.test>"
    assert ev1["action"] == ["PASS"] and ev1["content_type"] == "Clean"
    assert ev1["recipients"][0]["smtp_code"] == "250"
    assert ev1["dst_port"] == daemon.port and ev1["src_ip"] == "127.0.0.1"
    assert ev1["dsn_sent"] is False and ev1["policy_banks"] == []
    assert {"Receiving", "Sending", "Total", "Amavis"} <= set(ev1["elapsed"])
    mail_id = re.search(r"mail_id: (\S+),", daemon.logfile_text()).group(1)
    assert ev1["mail_id"] == mail_id

    check_types(ev2, ALWAYS | {"quarantine", "quar_type", "attached_file_names", "size"})
    assert ev2["content_type"] == "Banned" and ev2["action"] == ["DISCARD"]
    assert ev2["quar_type"] == "F" and ev2["quarantine"].startswith("banned-")
    assert ev2["actions_performed"] == "DiscardedInbound Quarantined"
    assert ev2["attached_file_names"] == ["invoice.exe"]
    rcpt = ev2["recipients"][0]
    assert rcpt["ccat_blocking"] == "Banned" and rcpt["banning_reason"].endswith("invoice.exe")
    assert rcpt["bypass_virus_checks"] is True and rcpt["bypass_spam_checks"] is True
    assert rcpt["smtp_response"].startswith("250 2.7.0 Ok, discarded")


@pytest.mark.skipif(not clamd_available() and os.environ.get("CI") != "true",
                    reason="clamd or clamav-testfiles missing")
def test_virus_through_the_daemon_and_real_clamd(amavisd, sink, tmp_path):  # noqa: F811
    with ClamdServer(tmp_path / "clamd") as clamd:
        daemon = amavisd(JSON_LOG + f"""
bypass_virus_checks_maps = []
av_scanners = [('ClamAV-clamd', 'ask_daemon', ['CONTSCAN {{}}\\n', {clamd.socket_path!r}],
                r'\\bOK$', r'\\bFOUND$', r'^.*?: (?!Infected Archive)(.*) FOUND$')]
av_scanners_backup = []
final_virus_destiny = D_DISCARD
QUARANTINEDIR = MYHOME + '/virusmails'
""")
        data = (b"From: alice@anchor.test\r\nTo: bob@anchor.test\r\nSubject: v\r\n"
                b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
                b"Message-ID: <json-3@anchor.test>\r\n\r\n" + EICAR + b"\r\n")
        reply = deliver(daemon, "alice@anchor.test", ["bob@anchor.test"],
                             data)
        assert reply[0].startswith("250 2.7.0 Ok, discarded")
        [(_, event)] = logged_events(daemon, 1)
    check_types(event, ALWAYS | {"virusnames", "av_scan", "quarantine", "quar_type"})
    assert event["content_type"] == "Virus"
    assert event["virusnames"] == ["Eicar-Test-Signature.UNOFFICIAL"]
    assert event["av_scan"] == {"ClamAV-clamd": ["Eicar-Test-Signature.UNOFFICIAL"]}
    assert event["checks_performed"].split()[0] == "V"
    assert event["quar_type"] == "F" and event["quarantine"].startswith("virus-")
    assert "VirusCheck" in event["elapsed"]


# -------------------------------------------------------------------- Redis
REDIS = RedisServer(host="127.0.0.1", port=6379, db_id=11)


def redis_up() -> bool:
    try:
        Connection(REDIS, timeout=2).close()
        return True
    except OSError:
        return False


need_redis = pytest.mark.skipif(not redis_up() and os.environ.get("CI") != "true",
                                reason="no Redis on 127.0.0.1:6379")


def redis_cli(*args: str) -> str:
    """Read back with redis-cli when it is there (an independent client), else ours."""
    if shutil.which("redis-cli"):
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-n", str(REDIS.db_id), "--raw",
                               *args], capture_output=True, check=True, timeout=10).stdout \
            .decode("utf-8")
    conn = Connection(REDIS)
    try:
        reply = conn.call(*args)
    finally:
        conn.close()
    items = reply if isinstance(reply, list) else [reply]
    return "".join((x.decode() if isinstance(x, bytes) else str(x)) + "\n" for x in items)


def test_dsn_entries_and_resp_encoding():
    assert parse_dsn({"server": "[::1]:6380", "db_id": "2"}) == RedisServer("::1", 6380, db_id=2)
    assert parse_dsn({"sock": "/run/redis.sock"}).path == "/run/redis.sock"
    assert parse_dsn({}) == RedisServer()
    assert encode_command("RPUSH", "k", b"\xc3\xbc") == \
        b"*3\r\n$5\r\nRPUSH\r\n$1\r\nk\r\n$2\r\n\xc3\xbc\r\n"


@need_redis
def test_pusher_keeps_the_newest_entries():
    key = f"amavis-test-{uuid.uuid4().hex}"
    pusher = EventPusher([RedisServer(host="127.0.0.1", port=1, db_id=11), REDIS])  # 1st: down
    try:
        for i in range(5):
            assert pusher.push("1-01", key, f'{{"n":{i},"s":"\\\\ü"}}'.encode(), 3)
        assert pusher.flush()
        got = [json.loads(x) for x in redis_cli("LRANGE", key, "0", "-1").splitlines()]
        assert got == [{"n": i, "s": "\\ü"} for i in (2, 3, 4)]
    finally:
        redis_cli("DEL", key)


@need_redis
def test_daemon_pushes_each_event_to_redis(amavisd, sink):  # noqa: F811
    key = f"amavis-test-{uuid.uuid4().hex}"
    daemon = amavisd(JSON_LOG + f"""
storage_redis_dsn = [{{'server': '127.0.0.1:6379', 'db_id': {REDIS.db_id}}}]
redis_logging_key = {key!r}
redis_logging_queue_size_limit = 2
""")
    try:
        for i in range(3):
            data = (b"From: alice@anchor.test\r\nTo: bob@anchor.test\r\n"
                    b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\nSubject: r" +
                    str(i).encode() + b" \\ \xc3\xa9\r\nMessage-ID: <redis-" + str(i).encode()
                    + b"@anchor.test>\r\n\r\nHi\r\n")
            assert deliver(daemon, ODD_SENDER, ["bob@anchor.test"],
                                data)[0].startswith("250 ")
        logged = logged_events(daemon, 3)
        pushed = wait_for(lambda: (x := redis_cli("LRANGE", key, "0", "-1").splitlines())
                          and json.loads(x[-1])["message_id"] == "<redis-2@anchor.test>" and x,
                          10, "the events in Redis")
        assert len(pushed) == 2                           # LTRIM: the newest two
        events = [json.loads(x) for x in pushed]
        assert [e["subject"] for e in events] == ["r1 \\ é", "r2 \\ é"]
        for event in events:
            _, log_event = next(x for x in logged if x[1]["mail_id"] == event["mail_id"])
            assert event["mail_from"] == ODD_SENDER
            # the same event: the logged copy may have an older elapsed Total only
            del event["elapsed"], log_event["elapsed"]
            assert event == log_event
    finally:
        redis_cli("DEL", key)
