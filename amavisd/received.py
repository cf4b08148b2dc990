"""Our own ``Received:`` header field, prepended when amavis forwards a message.

Spec: protocols.md section 3.10 and pipeline.md section 20.3 item 13.  The field
describes the MTA -> amavis hop (the MTA's EHLO name and IP, not XFORWARD data).

Folding rule, derived from the golden files (shared/anchor/golden/pass/clean*.txt)
and the older observation in protocols.md section 10: the field body is made of
pieces ``from ...``, ``by ...``, ``with ...``, ``id ...``, ``for <r>`` and the
date, with ';' glued to the piece before the date.  Pieces are packed greedily:
a piece stays on the current line when the line, including the separating
space, stays within 78 characters; otherwise it starts a new line indented by
one space.  Both observations follow that one rule: in the golden files
``... (amavis, port 31024) with ESMTP`` is 74 characters so 'with' stays, while
in section 10 the longer hostname would make it 83, so 'with' moved down.
"""

from __future__ import annotations

import re
import time
from typing import Any

from amavisd.message import Message

FOLD_WIDTH = 78
_PROTO_RE = re.compile(r"^(UTF8)?(ES|S|L)MTPS?A?$", re.IGNORECASE)


def _bracket_ip(ip: str) -> str:
    """Spec pipeline.md 20.3: IPv6 addresses get an ``IPv6:`` prefix inside the brackets."""
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def rfc2822_date(now: float) -> str:
    """Local time as ``Mon, 30 Nov 2026 03:01:54 +0000 (UTC)``; the day is space padded.

    The zone comment is the local zone abbreviation, as the goldens show ``(UTC)``.
    """
    tm = time.localtime(now)
    day = f"{tm.tm_mday:2d}"
    return time.strftime(f"%a, {day} %b %Y %H:%M:%S %z (%Z)", tm)


def received_pieces(msg: Message, settings: Any, now: float) -> list[str]:
    """The unfolded pieces of the field body, in order (spec 3.10)."""
    client = msg.client
    first = f"from {client.mta_helo or 'unknown'}"
    if client.mta_addr:
        first += f" ({_bracket_ip(client.mta_addr)})"
    if msg.tls_cipher:
        first += f" (using TLS with cipher {msg.tls_cipher})"
    localhost_name = getattr(settings, "localhost_name", None) or "localhost"
    by = f"by {localhost_name}"
    myhostname = getattr(settings, "myhostname", None)
    if client.local_addr and myhostname:
        by += f" ({myhostname} {_bracket_ip(client.local_addr)})"
    where = "unix socket" if (client.unix_socket or not client.local_port) \
        else f"port {client.local_port}"
    by += f" (amavis, {where})"
    pieces = [first, by]
    if msg.protocol and _PROTO_RE.match(msg.protocol):
        pieces.append(f"with {msg.protocol}")
    if msg.mail_id:
        pieces.append(f"id {msg.mail_id}")
    if len(msg.recipients) == 1:
        pieces.append(f"for <{msg.recipients[0].quoted}>")
    pieces[-1] += ";"
    pieces.append(rfc2822_date(now))
    return pieces


def fold(name: str, pieces: list[str], width: int = FOLD_WIDTH) -> str:
    """Greedy packing of pieces into lines of at most ``width`` characters (CRLF joined)."""
    lines = [f"{name}: {pieces[0]}"]
    for piece in pieces[1:]:
        if len(lines[-1]) + 1 + len(piece) <= width:
            lines[-1] += " " + piece
        else:
            lines.append(" " + piece)
    return "\r\n".join(lines) + "\r\n"


def received_field(msg: Message, settings: Any, now: float) -> bytes:
    """The whole ``Received:`` field as CRLF-terminated bytes, ready for header_prefix."""
    return fold("Received", received_pieces(msg, settings, now)).encode("utf-8")
