# tests: amavisd/checks/spam.py, amavisd/scanners/spamd.py, amavisd/scanners/rspamd.py
"""The spam check against a real spamd (and rspamd), and its pure parts.

One private spamd per module (t/helpers/spamd.py); GTUBE comes from the golden
case of the Perl amavisd (t/data/golden/full/gtube.txt), the ham from
SpamAssassin's examples.  Header fields are compared with the golden ones up to
what spamd cannot tell (per-rule points of in-process SpamAssassin, autolearn).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from amavisd import decide
from amavisd.actions.headers import HeaderSettings, spam_edits
from amavisd.checks import spam
from amavisd.config.model import Config
from amavisd.message import Message, Recipient
from amavisd.scanners import rspamd as rspamd_client
from amavisd.scanners import spamd as spamd_client
from t.helpers.daemon import free_port
from t.helpers.spamd import rspamd_available, running_rspamd, running_spamd, spamd_available

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "golden" / "full" / "gtube.txt"


def golden_input() -> bytes:
    text = GOLDEN.read_text()
    return text.split("## INPUT MESSAGE (as sent; CRLF shown as LF)\n", 1)[1] \
        .rstrip("\n").encode() + b"\n"


def golden_spam_fields() -> list[str]:
    text = GOLDEN.read_text().split("### message 1: header fields added/changed", 1)[1]
    text = text.split("\n", 1)[1].split("\n### ", 1)[0]
    return [f for f in re.split(r"\n(?![ \t])", text) if f.startswith("X-Spam-")]


def make_config(**values) -> Config:
    config = Config()
    debian = {"sa_tag_level_deflt": 2.0, "sa_tag2_level_deflt": 6.31,
              "sa_kill_level_deflt": 6.31, "sa_dsn_cutoff_level": 10,
              "sa_spam_subject_tag": "***SPAM*** ", "local_domains_acl": [".anchor.test"],
              "sa_mail_body_size_limit": 200 * 1024}
    for name, value in {**debian, **values}.items():
        config.assign(name, value, "test")
    config.finish()
    return config


def message(tmp_path: Path, data: bytes, rcpts=("bob@anchor.test",),
            sender="alice@anchor.test") -> Message:
    path = tmp_path / "email.txt"
    path.write_bytes(data)
    size = len(data) + data.count(b"\n")
    return Message(sender, sender, [Recipient(r, r) for r in rcpts], path, size, "12345-01")


@pytest.fixture(scope="module")
def spamd():
    if not spamd_available():
        pytest.skip("no /usr/sbin/spamd")
    with running_spamd() as instance:
        yield instance


# ---------------------------------------------------------------- pure parts
@pytest.mark.parametrize("levels,text", [([], "-"), ([None], "-"), ([999.0], "999"),
                                         ([1.7014], "1.701"), ([-1.0], "-1"),
                                         ([1.0, 1.05], "1"), ([0.5, 7.25], "0.5..7.25")])
def test_hits_format_monitoring_5_3(levels, text):
    """%.3f, trailing zeros stripped; '-' without a check; min..max when 0.1 apart."""
    assert spam.hits_text(levels) == text


def test_size_limit_pipeline_10_2():
    """min(64 KiB, header) + 1 + min(limit, body), only when 5 KiB longer than that."""
    assert spamd_client.size_limit(10_000, 500, 9_500, None) is None
    assert spamd_client.size_limit(10_000, 500, 9_500, 5_000) is None      # 5501+5120 > 10000
    assert spamd_client.size_limit(10_000, 500, 9_500, 4_000) == 4_501
    assert spamd_client.size_limit(300_000, 500, 299_500, 1_000) == 1_501
    assert spamd_client.size_limit(900_000, 100_000, 800_000, 1_000) == 65_536 + 1 + 1_000


def test_truncated_stream_ends_in_lf_and_counts_prefix(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"a: b\n\n" + b"x" * 100_000 + b"\n")
    sent = b"".join(spamd_client.message_chunks(path, b"P: 1\r\n", 1000))
    assert len(sent) == 1000 and sent.endswith(b"\n") and sent.startswith(b"P: 1\r\na: b\r\n")
    whole = b"".join(spamd_client.message_chunks(path, b"", None))
    assert whole == path.read_bytes().replace(b"\n", b"\r\n")
    assert spamd_client.crlf_size(path) == len(whole)


def test_parse_symbols_and_report_replies():
    raw = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 17\r\nSpam: True ; 999.0 / 5.0\r\n\r\n" \
          b"ALL_TRUSTED,GTUBE"
    reply = spamd_client.parse_reply(raw)
    assert (reply.is_spam, reply.score, reply.threshold, reply.tests) == \
        (True, 999.0, 5.0, ["ALL_TRUSTED", "GTUBE"])
    report = ("Content analysis details:   (999.0 points, 5.0 required)\n\n"
              " pts rule name              description\n"
              "---- ---------------------- ------------\n"
              "-1.0 ALL_TRUSTED            Passed through trusted hosts\n"
              "1000 GTUBE                  BODY: Generic Test\n"
              "                            [cont]\n 0.1 X_A                    x\n")
    assert spamd_client.report_tests(report) == ["ALL_TRUSTED=-1", "GTUBE=1000", "X_A=0.1"]
    with pytest.raises(spamd_client.SpamdError, match="Failure reported"):
        spamd_client.parse_reply(b"SPAMD/1.0 76 Bad header line\r\n\r\n")


def test_rspamd_json_symbols_become_tests():
    reply = rspamd_client.parse_json(
        b'{"score": 15.5, "required_score": 15, "action": "reject", "is_skipped": false,'
        b' "symbols": {"GTUBE": {"name": "GTUBE", "score": 0}, "A=B,C": {"name": "A=B,C",'
        b' "score": 1.25}}}')
    assert (reply.score, reply.verdict) == (15.5, "Spam")
    assert reply.tests == ["GTUBE=0", "A_B_C=1.25"]


def rs(**kw) -> spam.RecipientSpam:
    base = dict(address="r@x", level=0.0, tag_level=2.0, tag2_level=6.31, tag3_level=None,
                kill_level=6.31)
    return spam.RecipientSpam(**{**base, **kw})


@pytest.mark.parametrize("entry,cats", [
    (rs(level=1.0), []),
    (rs(level=2.0), ["1,1"]),
    (rs(level=6.31), ["1,1", "5", "6"]),
    (rs(level=7, tag3_level=7, kill_level=20), ["1,1", "5", "5,1"]),
    (rs(level=12, whitelisted=True), ["1,1"]),
    (rs(level=11.9, whitelisted=True, tag_level=2), []),
    (rs(level=0.0, blacklisted=True), ["1,1", "5", "5,1", "6"]),
    (rs(level=None, tag_level=None), ["1,1"]),
])
def test_spam_categories_pipeline_12_3(entry, cats):
    assert decide.spam_categories(entry) == cats


def test_soft_and_hard_listing_pipeline_10_1(tmp_path):
    """@score_sender_maps adds AM.WBL; a whitelisted sender skips the scanners."""
    data = b"From: Offers <offers@shop.example>\nSubject: x\n\nbody\n"
    msg = message(tmp_path, data, sender="bounce@shop.example")
    config = make_config(score_sender_maps=[{".anchor.test": [{"offers@": 5.0}]}],
                         bypass_spam_checks_maps=[])
    called = []
    result = spam.check(msg, config.view(), config,
                        scan=lambda s, m, v: called.append(1) or []).result
    entry = result.recipients["bob@anchor.test"]
    assert (entry.level, entry.tests, called) == (5.0, ["AM.WBL=5"], [1])
    config = make_config(whitelist_sender_maps=[["offers@shop.example"]])
    result = spam.check(msg, config.view(), config,
                        scan=lambda s, m, v: called.append(2) or []).result
    assert result.recipients["bob@anchor.test"].whitelisted
    assert result.skipped == "sender white/blacklisted" and called == [1]


def test_skipped_when_bypassed_or_blocked(tmp_path):
    msg = message(tmp_path, golden_input())
    config = make_config(bypass_spam_checks_maps=[1])
    result = spam.check(msg, config.view(), config).result
    assert not result.code_loaded and result.hits == "-"
    config = make_config()
    result = spam.check(msg, config.view(), config, blocked={"bob@anchor.test"}).result
    assert result.skipped == "message will be blocked anyway" and result.hits == "-"


def test_in_process_spamassassin_is_served_by_spamd_with_one_notice(caplog):
    config = make_config()
    spam._noticed.clear()
    with caplog.at_level(logging.INFO):
        first = spam.scanners(config)
        spam.scanners(config)
    assert [s.kind for s in first] == [spam.SPAMASSASSIN]
    assert len([r for r in caplog.records if "not run in-process" in r.getMessage()]) == 1


# ---------------------------------------------------------------- real spamd
def scan(tmp_path, spamd, data: bytes, **values):
    config = make_config(spamd_address=[spamd.address], **values)
    msg = message(tmp_path, data)
    result = spam.check(msg, config.view(), config).result
    return msg, config, result


def test_gtube_is_spam_with_golden_header_fields(tmp_path, spamd):
    msg, config, result = scan(tmp_path, spamd, golden_input())
    assert result.performed and result.hits == "999"
    entry = result.recipients["bob@anchor.test"]
    assert "GTUBE=1000" in entry.tests[0].split(",")
    findings = decide.ContentFindings(spam=result.recipients)
    rcpt = msg.recipients[0]
    rcpt.ccats = list(decide.categorize(findings, rcpt, lambda kind: False).items)
    assert rcpt.ccats == ["6", "5", "1,1", "1"]
    spam.apply(msg, result)
    edits = spam_edits(msg, rcpt, HeaderSettings.from_view(config.view()), True)
    got = [f.raw.decode().rstrip("\n") for f in edits.fields]
    want = golden_spam_fields()
    assert [g.split(":")[0] for g in got] == [w.split(":")[0] for w in want]
    assert got[:3] == want[:3]          # Flag YES, Score 999, 64 stars

    def status(text: str) -> str:   # spamd cannot tell SA's autolearn
        return re.sub(r"autolearn=.*", "autolearn=X", " ".join(text.split()))
    assert status(got[3]) == status(want[3])
    assert edits.do_tag2 and msg.findings["hits"] == "999"


def test_sample_nonspam_is_ham(tmp_path, spamd):
    data = (DATA / "spam" / "sample-nonspam.txt").read_bytes()
    _, _, result = scan(tmp_path, spamd, data)
    assert result.performed
    assert result.scanners[0].verdict == "Ham"
    assert result.recipients["bob@anchor.test"].level < 2.0


def test_symbols_command_as_spamdclient(tmp_path, spamd):
    """An explicit SpamdClient entry asks SYMBOLS: names without points (10.4)."""
    _, _, result = scan(tmp_path, spamd, golden_input(), spam_scanners=[
        ["Spamd", "Amavis::SpamControl::SpamdClient", "score_factor", 0.5]])
    assert result.recipients["bob@anchor.test"].tests == ["ALL_TRUSTED,GTUBE"]
    assert result.hits == "499.5"


def test_truncated_message_is_still_spam(tmp_path, spamd):
    data = golden_input() + b"filler line\n" * 20000
    _, _, result = scan(tmp_path, spamd, data, sa_mail_body_size_limit=2000)
    assert result.hits == "999"


def test_spamd_down_passes_with_log_line(tmp_path, caplog):
    """amavis logs '<name> client failed: ...' and scores the message 0 (10.2, 10.4)."""
    config = make_config(spamd_address=[f"127.0.0.1:{free_port()}"])
    msg = message(tmp_path, golden_input())
    with caplog.at_level(logging.DEBUG):
        result = spam.check(msg, config.view(), config).result
    assert result.performed and result.hits == "0"
    assert any(re.match(r"SpamAssassin client failed: Can't connect to spamd, 127\.0\.0\.1:\d+"
                        r": Connection refused", r.getMessage()) for r in caplog.records)


def test_unix_socket_address_is_accepted():
    assert spamd_client.parse_address("/run/spamd.sock")[1] == "/run/spamd.sock"
    assert spamd_client.parse_address("[::1]:783")[1] == ("::1", 783)


# ---------------------------------------------------------------- real rspamd
@pytest.mark.skipif(not rspamd_available(), reason="rspamd is not installed")
def test_rspamd_detects_gtube(tmp_path):
    with running_rspamd() as rspamd:
        config = make_config(spam_scanners=[
            ["Local Rspamd", "Amavis::SpamControl::RspamdClient",
             "url", f"http://127.0.0.1:{rspamd.port}/checkv2"]])
        msg = message(tmp_path, golden_input())
        msg.client = SimpleNamespace(helo="client.anchor.test", name=None, addr="10.20.30.40",
                                     ident="4QJGTUBE")
        result = spam.check(msg, config.view(), config).result
    outcome = result.scanners[0]
    assert outcome.error is None and outcome.verdict == "Spam"
    assert "GTUBE" in outcome.tests and outcome.score >= 15
