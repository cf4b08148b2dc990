"""Content categories and per-recipient destiny: pure functions, no I/O, no clock.

spec/pipeline.md sections 12, 13 and 17.  This version knows the categories the
relay path produces: CLEAN for every message (the content checks that add
VIRUS, BANNED, SPAM, BAD-HEADER ... come with their issues and only add findings),
and CC_MTA after forwarding, whose destiny is tempfail for a 4xx and reject for a
5xx from the next hop (protocols.md section 5.4).
"""

from __future__ import annotations

from amavisd.constants import CC_CLEAN, CC_MTA, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.errors import Reply
from amavisd.message import Message, Recipient

CCAT_CLEAN = str(CC_CLEAN)
CCAT_MTA_TEMPFAILED = f"{CC_MTA},1"
CCAT_MTA_REJECTED = f"{CC_MTA},2"


def decide(msg: Message) -> None:
    """Give every open recipient a content category and a destiny."""
    msg.findings.setdefault("ccat_main", CCAT_CLEAN)
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        rcpt.destiny = D_PASS
        rcpt.ccat_blocking = None


def apply_mta_failure(rcpt: Recipient, log_id: str) -> None:
    """After forwarding: a non-2xx reply from the next hop becomes CC_MTA (section 5.4).

    The reply keeps the next hop's code and enhanced code and gains amavis's reason:
    ``550 5.1.1 id=<log_id> - Rejected by next-hop MTA on relaying, from MTA(...): ...``.
    """
    reply = rcpt.reply
    if reply is None or reply.is_ok:
        return
    if reply.is_tempfail:
        rcpt.destiny = D_TEMPFAIL
        rcpt.ccat_blocking = CCAT_MTA_TEMPFAILED
        reason = "Temporary MTA failure on relaying"
    else:
        rcpt.destiny = D_REJECT
        rcpt.ccat_blocking = CCAT_MTA_REJECTED
        reason = "Rejected by next-hop MTA on relaying"
    rcpt.reply = Reply(reply.code, reply.enhanced, f"id={log_id} - {reason}, {reply.text}")
