"""The reply sent after the final dot, computed from each recipient's outcome.

Pure functions; the SMTP/LMTP server calls them once ``process()`` has set every
recipient's ``reply``/``destiny``/``done`` (spec/protocols.md section 3.8).  The
AM.PDP server uses ``one_response_for_all`` too.

Recipient groups used below (section 3.8, "Otherwise" paragraph):

* TEMPFAIL: reply 4xx;
* REJECT: reply 5xx and destiny not D_BOUNCE (a genuine reject, ours or the next hop's);
* BOUNCE: reply 5xx and destiny D_BOUNCE (amavis sends, or suppresses, a DSN);
* DISCARD: reply 2xx and destiny D_DISCARD;
* PASS: everything else.
"""

from __future__ import annotations

import re

from amavisd.constants import D_BOUNCE, D_DISCARD, D_REJECT
from amavisd.errors import Reply
from amavisd.message import Message, Recipient

#: RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
MAX_REPLY_LINE = 510

_NAMED_ESCAPES = {"\r": "\\r", "\t": "\\t", "\f": "\\f", "\b": "\\b", "\x1b": "\\e",
                  "\\": "\\\\"}
#: C0 controls except LF, DEL, C1 controls, and backslash (spec 3.8, sanitize_str).
_NEEDS_ESCAPE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\\\\]")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _code_class(r: Recipient) -> int | None:
    """First digit of the recipient's reply code, None when it has no reply."""
    return r.reply.code // 100 if r.reply is not None else None


def _is_reject(r: Recipient) -> bool:
    return _code_class(r) == 5 and r.destiny != D_BOUNCE


def _is_bounce(r: Recipient) -> bool:
    return _code_class(r) == 5 and r.destiny == D_BOUNCE


def _is_discard(r: Recipient) -> bool:
    return _code_class(r) == 2 and r.destiny == D_DISCARD


def _dsn_suppressed(r: Recipient) -> bool:
    """Set by the DSN action when it decided not to send the bounce (optional attribute)."""
    return bool(getattr(r, "dsn_suppressed", False))


def one_response_for_all(msg: Message) -> Reply:
    """One SMTP reply for the whole message, by the priority list of spec section 3.8."""
    rcpts = msg.recipients
    if not rcpts:                                                        # 1
        return Reply(250, "2.5.0", f"Ok, id={msg.log_id}")
    for r in rcpts:                                                      # 2
        if _code_class(r) == 4:
            return r.reply                                               # type: ignore
    for r in rcpts:                                                      # 3
        if r.done and _code_class(r) not in (2, 4, 5):
            resp = str(r.reply) if r.reply is not None else ""
            return Reply(451, "4.5.0", f'Bad SMTP response code??? "{resp}"')
    if all(_is_discard(r) for r in rcpts):                               # 4
        return rcpts[0].reply                                            # type: ignore
    rejects = [r for r in rcpts if _is_reject(r)]
    if rejects and all(_is_reject(r) or _is_discard(r) for r in rcpts):  # 5
        from_next_hop = [r for r in rejects if r.done == 2]
        return (from_next_hop or rejects)[0].reply                       # type: ignore
    return _mixed_or_passed(msg)                                         # 6


def _mixed_or_passed(msg: Message) -> Reply:
    """Rule 6: a PASS recipient's 2xx (or our own Ok) plus the blocked-group counts."""
    rcpts = msg.recipients
    base = next((r.reply for r in rcpts
                 if r.done and _code_class(r) == 2 and not _is_discard(r)), None)
    if base is None:
        text = f"Ok, id={msg.log_id}"
        if any(not r.done for r in rcpts):
            text += ", continue delivery"
        base = Reply(250, "2.5.0", text)
    groups = _blocked_groups(rcpts)
    if not groups:
        return base
    blocked = len([r for r in rcpts if _is_reject(r) or _is_bounce(r) or _is_discard(r)])
    but = "but " if blocked < len(rcpts) else ""
    return Reply(base.code, base.enhanced, f"{base.text}, {but}" + ", and ".join(groups))


def _blocked_groups(rcpts: list[Recipient]) -> list[str]:
    """``N REJECT``, ``M BOUNCE``, ``K DISCARD``: the count is left out when it is all."""
    total = len(rcpts)
    bounces = [r for r in rcpts if _is_bounce(r)]
    suppressed = [r for r in bounces if _dsn_suppressed(r)]
    counted = [
        ("REJECT", len([r for r in rcpts if _is_reject(r)])),
        ("BOUNCE", len(bounces) - len(suppressed)),
        ("DISCARD(bounce.suppressed)", len(suppressed)),
        ("DISCARD", len([r for r in rcpts if _is_discard(r)])),
    ]
    return [name if n == total else f"{n} {name}" for name, n in counted if n]


def lmtp_replies(msg: Message) -> list[Reply]:
    """One reply per accepted recipient, in RCPT order (LMTP, spec section 3.8).

    A 5xx for which amavis bounced (or deliberately did not) becomes a 250, since
    the sender is (or must not be) told by a DSN.  A genuine reject stays 5xx; a
    next-hop MTA reject (``done == 2``) counts as genuine even if no destiny was
    recorded, so a rejected recipient is never silently accepted.
    """
    return [_lmtp_reply(msg, r) for r in msg.recipients]


def _lmtp_reply(msg: Message, r: Recipient) -> Reply:
    if r.reply is None:
        # Not done and no reply: a pipeline bug.  Tempfail so the MTA keeps the mail.
        return Reply(451, "4.5.0", f"Error in processing, id={msg.log_id}, "
                                   f"check_mail FAILED: no reply for <{r.quoted}>")
    if r.reply.code // 100 != 5:
        return r.reply
    addr = f"<{r.quoted}>"
    if r.destiny == D_BOUNCE and not _dsn_suppressed(r):
        return Reply(250, "2.5.0", f"Ok {addr}, DSN was sent ({r.reply})")
    if _dsn_suppressed(r):
        return Reply(250, "2.5.0", f"Ok {addr}, DSN suppressed ({r.reply})")
    if r.destiny != D_REJECT and r.done != 2:
        return Reply(250, "2.5.0", f"Ok {addr}, DSN suppressed_2 ({r.reply})")
    return r.reply


def sanitize(text: str, backslash: bool = True) -> str:
    """Escape control characters (except LF) and backslash, as Perl's sanitize_str.

    Named escapes for the usual ones (``\\r``, ``\\t``...), ``\\xNN`` otherwise.
    ``backslash=False`` leaves backslashes alone (command replies that echo an
    address such as ``"a\\"b"@x`` must echo it as given).
    """
    pattern = _NEEDS_ESCAPE if backslash else _CONTROL
    return pattern.sub(
        lambda m: _NAMED_ESCAPES.get(m.group(), f"\\x{ord(m.group()):02X}"), text)


def wrap_reply(reply: Reply, escape_backslash: bool = True) -> list[str]:
    """Sanitize and split a reply into wire lines (no CRLF), spec section 3.8 last paragraph.

    Splits at embedded LFs and so that no line exceeds 510 octets (UTF-8), and
    repeats ``ddd-`` plus the enhanced code on every line but the last.
    """
    prefix_len = len(f"{reply.code} {reply.enhanced} " if reply.enhanced else f"{reply.code} ")
    pieces: list[str] = []
    for part in sanitize(reply.text, escape_backslash).split("\n"):
        pieces.extend(_split_octets(part, MAX_REPLY_LINE - prefix_len))
    last = len(pieces) - 1
    lines = []
    for i, piece in enumerate(pieces):
        sep = " " if i == last else "-"
        head = f"{reply.code}{sep}{reply.enhanced} " if reply.enhanced else f"{reply.code}{sep}"
        lines.append((head + piece).rstrip(" ") if not piece else head + piece)
    return lines


def _split_octets(text: str, limit: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``limit`` UTF-8 octets, never inside a char."""
    if len(text) <= limit and (text.isascii() or len(text.encode("utf-8", "replace")) <= limit):
        return [text]
    if text.isascii():
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    pieces, current, size = [], [], 0
    for ch in text:
        n = len(ch.encode("utf-8", "surrogateescape" if "\udc80" <= ch <= "\udcff"
                          else "replace"))
        if size + n > limit:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(ch)
        size += n
    pieces.append("".join(current))
    return pieces
