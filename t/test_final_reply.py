# tests: amavisd/final_reply.py
"""The reply after the final dot (spec/protocols.md section 3.8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.errors import Reply
from amavisd.final_reply import lmtp_replies, one_response_for_all, wrap_reply
from amavisd.message import Message, Recipient
from t.replies import s250_ok_id

FWD_OK = "250 2.0.0 from MTA(smtp:[127.0.0.1]:20025): 250 2.0.0 Ok: queued as Q72998"
NEXT_HOP_REJECT = ("550 5.1.1 id=12160-02-2 - Rejected by next-hop MTA on relaying, from "
                   "MTA(smtp:[127.0.0.1]:20025): 550 5.1.1 <rej1@example.com>: Recipient "
                   "address rejected: User unknown")
BANNED = "554 5.7.0 Reject, id=12161-02-2 - BANNED: application/octet-stream,evil.exe"
BOUNCE = "554 5.7.0 Bounce, id=12161-02 - spam"
DISCARDED = "250 2.7.0 Ok, discarded, id=12161-02 - spam"
TEMPFAIL = "450 4.7.0 Temporary failure, id=26590-01 - BANNED: application/octet-stream,evil.exe"


def rcpt(addr: str, reply: str | None, destiny: int | None, done: int = 1,
         **extra) -> Recipient:
    r = Recipient(address=addr, quoted=addr, destiny=destiny, done=done,
                  reply=Reply.parse(reply) if reply else None)
    for name, value in extra.items():
        setattr(r, name, value)
    return r


def message(*rcpts: Recipient, log_id: str = "12160-02") -> Message:
    return Message(sender="alice@example.org", sender_quoted="alice@example.org",
                   recipients=list(rcpts), spool_path=Path("/nonexistent"), size=0,
                   log_id=log_id)


def one(msg: Message) -> str:
    return str(one_response_for_all(msg))


def test_rule1_no_recipients():
    assert one(message(log_id="abc-01")) == s250_ok_id("abc-01")


def test_rule2_first_tempfail_wins_over_everything():
    msg = message(rcpt("a@x", FWD_OK, D_PASS, 2), rcpt("b@x", BANNED, D_REJECT),
                  rcpt("c@x", TEMPFAIL, D_TEMPFAIL), rcpt("d@x", "451 4.5.0 other", D_TEMPFAIL))
    assert one(msg) == TEMPFAIL


def test_rule3_bad_reply_code():
    msg = message(rcpt("a@x", FWD_OK, D_PASS, 2), rcpt("b@x", "354 3.0.0 go on", D_PASS, 2))
    assert one(msg) == '451 4.5.0 Bad SMTP response code??? "354 3.0.0 go on"'


def test_rule4_all_discarded_gives_first_discard_reply():
    msg = message(rcpt("a@x", DISCARDED, D_DISCARD), rcpt("b@x", "250 2.7.0 second", D_DISCARD))
    assert one(msg) == DISCARDED


def test_rule5_all_rejected_prefers_next_hop_reject():
    msg = message(rcpt("a@x", BANNED, D_REJECT, 1), rcpt("b@x", NEXT_HOP_REJECT, D_REJECT, 2),
                  rcpt("c@x", DISCARDED, D_DISCARD))
    assert one(msg) == NEXT_HOP_REJECT


def test_rule5_internal_reject_when_no_next_hop_one():
    msg = message(rcpt("a@x", DISCARDED, D_DISCARD), rcpt("b@x", BANNED, D_REJECT))
    assert one(msg) == BANNED


def test_rule6_observed_partial_reject():
    """Observed (section 3.8): one forwarded, one rejected by the next hop."""
    msg = message(rcpt("bob@x", FWD_OK, D_PASS, 2), rcpt("rej1@x", NEXT_HOP_REJECT, D_REJECT, 2))
    assert one(msg) == FWD_OK + ", but 1 REJECT"


def test_rule6_without_forwarding_continue_delivery():
    """AM.PDP style: nobody delivered by us; the client continues delivery."""
    msg = message(rcpt("a@x", None, D_PASS, 0), rcpt("b@x", None, D_PASS, 0), log_id="X-02")
    assert one(msg) == "250 2.5.0 Ok, id=X-02, continue delivery"


def test_rule6_all_bounced_count_omitted():
    msg = message(rcpt("a@x", BOUNCE, D_BOUNCE), rcpt("b@x", BOUNCE, D_BOUNCE), log_id="B-01")
    assert one(msg) == "250 2.5.0 Ok, id=B-01, BOUNCE"


def test_rule6_groups_in_order_with_but():
    msg = message(rcpt("a@x", FWD_OK, D_PASS, 2), rcpt("b@x", BANNED, D_REJECT),
                  rcpt("c@x", BOUNCE, D_BOUNCE), rcpt("d@x", BOUNCE, D_BOUNCE),
                  rcpt("e@x", DISCARDED, D_DISCARD))
    assert one(msg) == FWD_OK + ", but 1 REJECT, and 2 BOUNCE, and 1 DISCARD"


def test_rule6_no_but_when_every_recipient_blocked():
    msg = message(rcpt("b@x", BANNED, D_REJECT), rcpt("c@x", BOUNCE, D_BOUNCE), log_id="M-01")
    assert one(msg) == "250 2.5.0 Ok, id=M-01, 1 REJECT, and 1 BOUNCE"


def test_rule6_suppressed_bounce_is_named_discard():
    msg = message(rcpt("a@x", FWD_OK, D_PASS, 2),
                  rcpt("c@x", BOUNCE, D_BOUNCE, dsn_suppressed=True))
    assert one(msg) == FWD_OK + ", but 1 DISCARD(bounce.suppressed)"


def test_rule6_all_passed_is_the_forwarding_reply():
    msg = message(rcpt("a@x", FWD_OK, D_PASS, 2), rcpt("b@x", FWD_OK, D_PASS, 2))
    assert one(msg) == FWD_OK


def lmtp(*rcpts: Recipient) -> list[str]:
    return [str(r) for r in lmtp_replies(message(*rcpts))]


def test_lmtp_observed_ok_reject_tempfail_pass_through():
    tmp = ("450 4.2.0 id=12161-02 - Temporary MTA failure on relaying, from MTA(smtp:"
           "[127.0.0.1]:20025): 450 4.2.0 <tmp1@example.com>: Recipient address rejected: "
           "try later")
    assert lmtp(rcpt("bob@x", FWD_OK, D_PASS, 2), rcpt("rej1@x", NEXT_HOP_REJECT, D_REJECT, 2),
                rcpt("tmp1@x", tmp, D_TEMPFAIL, 2)) == [FWD_OK, NEXT_HOP_REJECT, tmp]


def test_lmtp_bounce_dsn_was_sent():
    assert lmtp(rcpt("bob@example.com", BOUNCE, D_BOUNCE)) == [
        f"250 2.5.0 Ok <bob@example.com>, DSN was sent ({BOUNCE})"]


def test_lmtp_bounce_dsn_suppressed():
    assert lmtp(rcpt("bob@example.com", BOUNCE, D_BOUNCE, dsn_suppressed=True)) == [
        f"250 2.5.0 Ok <bob@example.com>, DSN suppressed ({BOUNCE})"]


def test_lmtp_other_5xx_not_reject_suppressed_2():
    assert lmtp(rcpt("bob@example.com", BANNED, D_DISCARD)) == [
        f"250 2.5.0 Ok <bob@example.com>, DSN suppressed_2 ({BANNED})"]


def test_lmtp_genuine_reject_stays():
    assert lmtp(rcpt("a@x", BANNED, D_REJECT), rcpt("b@x", BANNED, D_REJECT)) == [BANNED, BANNED]


def test_lmtp_next_hop_reject_without_destiny_stays_5xx():
    """Never turn a next-hop rejection into a 250 (the mail would be lost)."""
    assert lmtp(rcpt("a@x", NEXT_HOP_REJECT, None, 2)) == [NEXT_HOP_REJECT]


def test_lmtp_missing_reply_tempfails():
    [reply] = lmtp(rcpt("a@x", None, None, 0))
    assert reply.startswith("451 4.5.0 Error in processing, id=12160-02, ")


@pytest.mark.parametrize("reply, lines", [
    (Reply(250, "2.0.0", "Ok"), ["250 2.0.0 Ok"]),
    (Reply(250, "", "[127.0.0.1]"), ["250 [127.0.0.1]"]),
    (Reply(550, "5.1.1", "first\nsecond\nthird"),
     ["550-5.1.1 first", "550-5.1.1 second", "550 5.1.1 third"]),
    (Reply(554, "", "a\nb"), ["554-a", "554 b"]),
    (Reply(451, "4.5.0", "tab\there\rcr\x01soh\x7fdel back\\slash"),
     ["451 4.5.0 tab\\there\\rcr\\x01soh\\x7Fdel back\\\\slash"]),
])
def test_wrap_reply(reply, lines):
    assert wrap_reply(reply) == lines


def test_wrap_reply_splits_at_510_octets():
    text = "".join(chr(ord("a") + i % 26) for i in range(1300))
    lines = wrap_reply(Reply(554, "5.7.0", text))
    assert len(lines) == 3
    assert all(len(line) <= 510 for line in lines)
    assert [line[:10] for line in lines] == ["554-5.7.0 ", "554-5.7.0 ", "554 5.7.0 "]
    assert "".join(line[10:] for line in lines) == text


def test_wrap_reply_never_cuts_a_utf8_character():
    text = "ü" * 600
    lines = wrap_reply(Reply(250, "2.0.0", text))
    assert all(len(line.encode()) <= 510 for line in lines)
    assert "".join(line[10:] for line in lines) == text
