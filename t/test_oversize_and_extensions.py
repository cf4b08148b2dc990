# tests: amavisd/sizelimit.py amavisd/actions/addrext.py amavisd/content.py
"""Per-recipient size limits and address extensions.

Size limits: spec/protocols.md 3.6 (RCPT with a declared SIZE) and 3.7 (DATA
enforcement), spec/pipeline.md 12.3 and 13 step 2 (CC_OVERSIZED in the content
checks, ``552 5.3.4`` for a blocked recipient).  Address extensions: pipeline.md
20.9.  Unit tests first, then the real daemon against the recording sink.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from amavisd import decide as decider
from amavisd.actions.addrext import (
    apply_address_extensions,
    extended_address,
    extension_for,
    extension_maps,
)
from amavisd.child_session import SmtpSession
from amavisd.config.model import Config
from amavisd.config.perlconf import load_perl_config
from amavisd.constants import D_BOUNCE, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.content import oversized_recipients
from amavisd.message import Message, Recipient
from amavisd.protocols.smtp_client import rcpt_command
from amavisd.protocols.smtp_server import SizePolicy
from amavisd.sizelimit import oversized_destiny, perl_number, recipient_size_limit
from t.integration.conftest import (  # noqa: F401 - the fixtures, used by name
    Client,
    _close_clients,
    amavisd,
    message,
    send_message,
    sink,
    tmp_path,
    wait_for,
)
from t.integration.test_golden import GOLDEN, PROFILE_PASS, sections


def config(**values: Any) -> Config:
    cfg = Config()
    for name, value in values.items():
        cfg.assign(name, value, "t:1")
    cfg.finish()
    return cfg


def msg_for(rcpts: list[str], size: int = 100_000, sender: str = "alice@anchor.test") -> Message:
    return Message(sender, sender, [Recipient(a, a) for a in rcpts], Path("/nonexistent"),
                   size, "12345-01")


# ---------------------------------------------------------------- size limits (unit)
def test_no_limit_without_maps_or_with_a_false_answer() -> None:
    assert recipient_size_limit(config().view(), "bob@anchor.test") is None
    view = config(message_size_limit_maps=[{"bob@anchor.test": 0, "carol@anchor.test": ""},
                                           {"dave@anchor.test": None}]).view()
    assert recipient_size_limit(view, "bob@anchor.test") is None
    assert recipient_size_limit(view, "carol@anchor.test") is None
    assert recipient_size_limit(view, "dave@anchor.test") is None
    assert recipient_size_limit(view, "eve@anchor.test") is None


def test_limit_by_recipient_lookup_and_raised_to_64k() -> None:
    """pipeline.md 13 step 2: '(>= 65536 enforced)'; lookups as in section 14."""
    view = config(message_size_limit_maps=[{"bob@anchor.test": 1000,
                                            ".example.com": "200000"}, 5_000_000]).view()
    assert recipient_size_limit(view, "Bob@Anchor.test") == 65536
    assert recipient_size_limit(view, "x@sub.example.com") == 200_000
    assert recipient_size_limit(view, "carol@anchor.test") == 5_000_000
    off = config(message_size_limit_maps=[1000],
                 enforce_smtpd_message_size_limit_64kb_min=0).view()
    assert recipient_size_limit(off, "bob@anchor.test") == 1000


def test_perl_numbers() -> None:
    assert perl_number("70000") == 70000
    assert perl_number(" 1e5 B") == 100000
    assert perl_number("abc") == 0
    assert perl_number(12.5) == 12.5


def test_oversized_destiny_defaults_to_bounce_and_follows_the_by_ccat_map() -> None:
    """pipeline.md 13 step 4 (OVERSIZED -> D_BOUNCE), protocols.md 3.6."""
    assert oversized_destiny(config().view(), "bob@anchor.test") == D_BOUNCE
    for destiny in (D_PASS, D_TEMPFAIL, D_REJECT):
        view = config(final_destiny_maps_by_ccat={"3": destiny}).view()
        assert oversized_destiny(view, "bob@anchor.test") == destiny
    by_rcpt = config(final_destiny_maps_by_ccat={
        "3": [{"bob@anchor.test": D_PASS}, D_REJECT]}).view()
    assert oversized_destiny(by_rcpt, "bob@anchor.test") == D_PASS
    assert oversized_destiny(by_rcpt, "carol@anchor.test") == D_REJECT
    undef = config(final_destiny_maps_by_ccat={"3": None}).view()
    assert oversized_destiny(undef, "bob@anchor.test") == D_PASS


def test_session_gives_the_server_limit_and_destiny() -> None:
    """The SessionHandler hook the server asks at RCPT (protocols.md 3.6, 3.7)."""
    view = config(message_size_limit_maps=[{"bob@anchor.test": 70000}],
                  final_destiny_maps_by_ccat={"3": D_TEMPFAIL}).view()
    session = SmtpSession(SimpleNamespace(), view)
    assert session.recipient_size_policy(Recipient("bob@anchor.test", "bob@anchor.test")) \
        == SizePolicy(70000, D_TEMPFAIL)
    assert session.recipient_size_policy(Recipient("eve@anchor.test", "eve@anchor.test")) \
        is None


def test_oversized_recipients_and_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    view = config(message_size_limit_maps=[{"bob@anchor.test": 70000,
                                            "dave@anchor.test": 70000},
                                           {"carol@anchor.test": 1_000_000}]).view()
    msg = msg_for(["bob@anchor.test", "carol@anchor.test", "dave@anchor.test",
                   "eve@anchor.test"])
    msg.recipients[2].done = 1                  # already decided: not looked at again
    with caplog.at_level(logging.DEBUG):
        assert oversized_recipients(msg, view) == {"bob@anchor.test": 70000}
    lines = [r.getMessage() for r in caplog.records if "OVERSIZED" in r.getMessage()]
    assert lines == ["OVERSIZED from <alice@anchor.test> to <bob@anchor.test>: "
                     "size 100000 B, limit 70000 B"]
    assert oversized_recipients(msg_for(["bob@anchor.test"], size=70000), view) == {}


@pytest.mark.parametrize(("destiny", "reply"), [
    (None, "552 5.3.4 Bounce, id=12345-01 - Message size exceeds recipient's size limit"),
    (D_REJECT, "552 5.3.4 Reject, id=12345-01 - Message size exceeds recipient's size limit"),
    (D_TEMPFAIL, "450 4.3.4 Temporary failure, id=12345-01 - Message size exceeds "
                 "recipient's size limit"),
])
def test_decide_blocks_an_oversized_recipient(destiny: int | None, reply: str) -> None:
    """pipeline.md 12.3 (size > recipient limit -> '3') and 13 step 6 (552 5.3.4)."""
    overrides = {} if destiny is None else {"final_destiny_maps_by_ccat": {"3": destiny}}
    view = config(**overrides).view()
    rcpt = Recipient("bob@anchor.test", "bob@anchor.test")
    findings = decider.ContentFindings(oversized={"bob@anchor.test": 70000})
    cats = decider.categorize(findings, rcpt, lambda kind: False)
    assert cats.items == ["3", "1"]
    verdict = decider.decide_recipient(
        rcpt, cats, view=view, is_lover=lambda c: False, destiny_for=lambda v: v,
        sender="alice@anchor.test", bulk=False, log_id="12345-01", macros={})
    assert verdict.destiny == (D_BOUNCE if destiny is None else destiny)
    assert verdict.blocking_ccat == "3"
    assert str(verdict.reply) == reply


def test_decide_passes_oversized_with_destiny_pass() -> None:
    view = config(final_destiny_maps_by_ccat={"3": D_PASS}).view()
    rcpt = Recipient("bob@anchor.test", "bob@anchor.test")
    cats = decider.categorize(decider.ContentFindings(oversized={"bob@anchor.test": 1}),
                              rcpt, lambda kind: False)
    verdict = decider.decide_recipient(
        rcpt, cats, view=view, is_lover=lambda c: False, destiny_for=lambda v: v,
        sender="alice@anchor.test", bulk=False, log_id="12345-01", macros={})
    assert (verdict.destiny, verdict.blocking_ccat) == (D_PASS, None)


# ---------------------------------------------------------------- address extensions (unit)
def test_extended_address_replaces_or_appends() -> None:
    """pipeline.md 20.9: ``local<first delimiter char>ext@domain``."""
    assert extended_address("bob@anchor.test", "spam", "+-", True) == "bob+spam@anchor.test"
    assert extended_address("bob+list@anchor.test", "spam", "+", True) == \
        "bob+spam@anchor.test"
    assert extended_address("bob-list@anchor.test", "spam", "+-", True) == \
        "bob+spam@anchor.test"
    assert extended_address("bob+list@anchor.test", "spam", "+", False) == \
        "bob+list+spam@anchor.test"
    assert extended_address("Bob@Anchor.test", "spam", "+", False) == "Bob+spam@Anchor.test"


def rcpt_with(ccats: list[str], address: str = "bob@anchor.test",
              blocking: str | None = None) -> Recipient:
    rcpt = Recipient(address, address)
    rcpt.ccats = ccats
    rcpt.ccat_blocking = blocking
    return rcpt


def test_extension_by_category() -> None:
    view = config(recipient_delimiter="+",
                  addr_extension_virus_maps=["virus"], addr_extension_spam_maps=["spam"],
                  addr_extension_banned_maps=[{"bob@anchor.test": "banned"}],
                  addr_extension_bad_header_maps=["badh"]).view()
    assert extension_for(rcpt_with(["9", "8", "1"]), view) == "virus"
    assert extension_for(rcpt_with(["8", "4", "1"]), view) == "banned"
    assert extension_for(rcpt_with(["8", "1"], "carol@anchor.test"), view) is None
    assert extension_for(rcpt_with(["6", "5", "1,1", "1"]), view) == "spam"
    assert extension_for(rcpt_with(["5", "1,1", "1"]), view) == "spam"
    assert extension_for(rcpt_with(["4,2", "4", "1"]), view) == "badh"
    assert extension_for(rcpt_with(["3", "1"]), view) is None
    assert extension_for(rcpt_with(["1"]), view) is None
    # the blocking category alone (then CATCHALL) is asked when there is one
    assert extension_for(rcpt_with(["9", "4", "1"], blocking="4"), view) == "badh"


def test_extension_maps_by_ccat_overrides() -> None:
    view = config(recipient_delimiter="+", addr_extension_spam_maps=["spam"],
                  addr_extension_maps_by_ccat={"3": ["oversized"], "6": None,
                                               "0": "not-a-table-list"}).view()
    maps = extension_maps(view)
    assert maps["3"] == ["oversized"] and maps["5"] == ["spam"]
    assert extension_for(rcpt_with(["3", "1"]), view) == "oversized"
    assert extension_for(rcpt_with(["6", "5", "1"]), view) is None    # '6' present: undef
    assert extension_for(rcpt_with(["1"]), view) is None               # a string is no list


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
def test_perl_config_legacy_scalars_feed_the_maps(tmp_path: Path) -> None:  # noqa: F811
    """Amavis::Conf: ``@addr_extension_spam_maps = (\\$addr_extension_spam)``."""
    conf = tmp_path / "amavisd.conf"
    conf.write_text("use strict;\n$recipient_delimiter = '+';\n$addr_extension_spam = 'spam';\n"
                    "$addr_extension_maps_by_ccat{+CC_OVERSIZED} = ['big'];\n1;\n")
    cfg = Config()
    load_perl_config([str(conf)], cfg)
    cfg.finish()
    view = cfg.view()
    assert (view.addr_extension_spam_maps, view.addr_extension_virus_maps) == (["spam"], [])
    assert extension_for(rcpt_with(["6", "5", "1"]), view) == "spam"
    assert extension_for(rcpt_with(["3", "1"]), view) == "big"
    assert extension_for(rcpt_with(["9", "1"]), view) is None


def test_apply_only_to_local_recipients_with_a_delimiter() -> None:
    """Non-local recipients, and no delimiter, leave the address alone (20.9)."""
    settings = {"local_domains_maps": [[".anchor.test"]], "addr_extension_banned_maps":
                ["banned"]}
    local = rcpt_with(["8", "1"])
    remote = rcpt_with(["8", "1"], "bob@example.org")
    apply_address_extensions([local, remote], config(**settings).view())
    assert local.final_address is None and local.orcpt is None
    view = config(recipient_delimiter="+", **settings).view()
    apply_address_extensions([local, remote], view)
    assert (local.address, local.final_address, local.orcpt) == (
        "bob@anchor.test", "bob+banned@anchor.test", "rfc822;bob@anchor.test")
    assert remote.final_address is None and remote.orcpt is None
    given = rcpt_with(["8", "1"], "carol+x@anchor.test")
    given.orcpt = "rfc822;carol@old.test"
    apply_address_extensions([given], view)
    assert (given.final_address, given.orcpt) == ("carol+banned@anchor.test",
                                                  "rfc822;carol@old.test")


def test_rcpt_to_uses_the_final_address_and_orcpt() -> None:
    msg = msg_for(["bob@anchor.test"])
    rcpt = msg.recipients[0]
    rcpt.final_address, rcpt.orcpt = "bob+banned@anchor.test", "rfc822;bob@anchor.test"
    assert rcpt_command(msg, rcpt, True, False, False) == (
        "RCPT TO:<bob+banned@anchor.test> ORCPT=rfc822;bob@anchor.test")
    assert rcpt_command(msg, rcpt, False, False, False) == "RCPT TO:<bob+banned@anchor.test>"
    odd = Recipient("a b@anchor.test", '"a b"@anchor.test', orcpt=';"a b"@anchor.test')
    odd.final_address = "a b+spam@anchor.test"
    assert rcpt_command(msg, odd, True, False, False) == (
        'RCPT TO:<"a b+spam"@anchor.test> ORCPT=rfc822;"a+20b"@anchor.test')


# ---------------------------------------------------------------- the daemon
LIMITS = "message_size_limit_maps = [{'bob@anchor.test': 70000, 'carol@anchor.test': 1000000}]\n"


def big_message(size: int = 100_000) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return message("big", body=line * (size // len(line)))


def greet(daemon: Any) -> Client:
    client = Client(daemon.port)
    client.reply()
    assert client.cmd("EHLO client.anchor.test")[-1].startswith("250 ")
    return client


def test_rcpt_with_declared_size_over_the_limit(amavisd, sink) -> None:  # noqa: F811
    """protocols.md 3.6: 552 by default (D_BOUNCE counts as reject), others accepted."""
    client = greet(amavisd(LIMITS))
    assert client.cmd("MAIL FROM:<alice@anchor.test> SIZE=200000") == [
        "250 2.1.0 Sender <alice@anchor.test> OK"]
    assert client.cmd("RCPT TO:<bob@anchor.test>") == [
        "552 5.3.4 Declared message size (200000 B) exceeds size limit "
        "for recipient <bob@anchor.test>"]
    assert client.cmd("RCPT TO:<carol@anchor.test>") == [
        "250 2.1.5 Recipient <carol@anchor.test> OK"]
    assert client.cmd("RCPT TO:<eve@anchor.test>") == [
        "250 2.1.5 Recipient <eve@anchor.test> OK"]


def test_data_over_the_limit_is_refused(amavisd, sink) -> None:  # noqa: F811
    """protocols.md 3.7: '552 5.3.4 Message size (N B) exceeds size limit', not checked."""
    daemon = amavisd(LIMITS)
    client = greet(daemon)
    data = big_message()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data, ehlo="")
    assert reply == [f"552 5.3.4 Message size ({len(data)} B) exceeds size limit"]
    assert client.cmd("RSET")[0].startswith("250 ")
    assert sink.messages == []


def test_oversized_with_destiny_pass_is_delivered(amavisd, sink) -> None:  # noqa: F811
    """A D_PASS oversized destiny: 250 2.3.4 at RCPT, no DATA limit, the mail passes."""
    daemon = amavisd(LIMITS + "final_destiny_maps_by_ccat = {'3': D_PASS}\n")
    client = greet(daemon)
    data = big_message()
    assert client.cmd(f"MAIL FROM:<alice@anchor.test> SIZE={len(data)}")[0].startswith("250 ")
    assert client.cmd("RCPT TO:<bob@anchor.test>") == [
        f"250 2.3.4 Declared message size ({len(data)} B) exceeds size limit "
        "for recipient <bob@anchor.test>"]
    client.cmd("RSET")
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data, ehlo="")
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    assert [m.rcpts for m in sink.messages] == [[b"RCPT TO:<bob@anchor.test>"]]
    assert sink.messages[0].data.endswith(data)
    log = wait_for(lambda: " Passed " in (t := daemon.logfile_text()) and t,
                   what="the main log line")
    assert (f"OVERSIZED from <alice@anchor.test> to <bob@anchor.test>: size {len(data)} B, "
            "limit 70000 B") in log
    assert re.search(r"Passed OVERSIZED \{RelayedInbound\}, \[127\.0\.0\.1\] "
                     r"<alice@anchor\.test> -> <bob@anchor\.test>", log), log


def test_content_check_bounces_the_oversized_recipient_only(amavisd, sink) -> None:  # noqa: F811
    """The DATA limit is the largest one; the smaller recipient gets CC_OVERSIZED,
    D_BOUNCE and a DSN (pipeline.md 12.3, 13 step 6; protocols.md 3.8)."""
    daemon = amavisd(LIMITS)
    client = greet(daemon)
    data = big_message()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test", "carol@anchor.test"],
                         data, ehlo="")
    assert re.fullmatch(r"250 2\.0\.0 from MTA\(.*\): 250 2\.0\.0 Ok: queued as \w+, "
                        r"but 1 BOUNCE", reply[0]), reply
    wait_for(lambda: len(sink.messages) == 2, what="the message and the DSN")
    delivered = [m for m in sink.messages if m.mail.startswith(b"MAIL FROM:<alice@")]
    dsns = [m for m in sink.messages if m.mail.startswith(b"MAIL FROM:<>")]
    assert [m.rcpts for m in delivered] == [[b"RCPT TO:<carol@anchor.test>"]]
    assert len(dsns) == 1 and dsns[0].rcpts[0].startswith(b"RCPT TO:<alice@anchor.test>")
    assert b"Message size exceeds recipient's size limit" in dsns[0].data
    assert b"552 5.3.4" in dsns[0].data


def test_address_extension_on_forwarding(amavisd, sink) -> None:  # noqa: F811
    """pipeline.md 20.9: RCPT TO gets the extension, ORCPT the original, logs the original."""
    golden = sections((GOLDEN / "banned-exe-in-zip.txt").read_text(errors="surrogateescape"))
    data = golden["INPUT MESSAGE"].rstrip("\n").encode(errors="surrogateescape") \
        .replace(b"\n", b"\r\n") + b"\r\n"
    daemon = amavisd(PROFILE_PASS + "final_banned_destiny = D_PASS\n"
                     "recipient_delimiter = '+'\n"
                     "addr_extension_banned_maps = ['banned']\n")
    client = greet(daemon)
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], data, ehlo="")
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    assert [m.rcpts for m in sink.messages] == [
        [b"RCPT TO:<bob+banned@anchor.test> ORCPT=rfc822;bob@anchor.test"]]
    log = wait_for(lambda: " Passed " in (t := daemon.logfile_text()) and t,
                   what="the main log line")
    line = next(x for x in log.splitlines() if " Passed " in x)
    assert "Passed BANNED" in line and "<alice@anchor.test> -> <bob@anchor.test>" in line, line
    assert "bob+banned" not in line
