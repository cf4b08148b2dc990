"""Reading the header section of the spooled message, bounded and cheap.

Only the header block is parsed here (the body stays on disk); the limit of
4 MiB is amavis's header-section sanity limit (spec/protocols.md section 6.6).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

HEADER_LIMIT = 4 * 1024 * 1024
READ_CHUNK = 65536


def read_header_block(path: Path, limit: int = HEADER_LIMIT) -> bytes:
    """Bytes up to and including the empty line that ends the header section."""
    data = bytearray()
    with open(path, "rb") as handle:
        while len(data) < limit:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                break
            start = max(0, len(data) - 1)
            data += chunk
            if data.startswith(b"\n"):
                return b""
            end = data.find(b"\n\n", start)
            if end >= 0:
                return bytes(data[:end + 1])
    return bytes(data[:limit])


@dataclass
class HeaderFacts:
    """What the log line and the pipeline need from the header."""

    message_id: str | None = None
    resent_message_id: str | None = None
    subject: str | None = None
    from_: str | None = None
    received: list[str] = field(default_factory=list)


def header_facts(block: bytes) -> HeaderFacts:
    msg = BytesHeaderParser(policy=compat32).parsebytes(block)
    facts = HeaderFacts()
    facts.message_id = _clean(msg.get("Message-ID"))
    facts.resent_message_id = _clean(msg.get("Resent-Message-ID"))
    facts.subject = _clean(msg.get("Subject"))
    facts.from_ = _clean(msg.get("From"))
    facts.received = [str(v) for v in msg.get_all("Received") or []]
    return facts


def _clean(value) -> str | None:
    if value is None:
        return None
    return " ".join(str(value).split())


_IP_IN_BRACKETS = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")


def oldest_public_ip(received: list[str]) -> str | None:
    """The oldest public IP address in the Received trace (the log line's ``[%e]``).

    Public as amavis counts it (``@public_networks_maps``): the documentation
    ranges such as 192.0.2.0/24 are public there, unlike Python's ``is_global``.
    """
    from amavisd.templates.trace import is_public_ip

    for field_value in reversed(received):
        head = field_value.split(" by ", 1)[0]
        for candidate in _IP_IN_BRACKETS.findall(head):
            try:
                addr = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if is_public_ip(str(addr)):
                return str(addr)
    return None
