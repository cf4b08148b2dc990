# tests: t/templates/test_engine.py
"""Address, Message-ID, header text and date forms the macros print (spec/pipeline.md 19.2).

Each function gives the text amavis gives for the same input: ``<"a b"@x>`` quoting
(RFC 5321), ``[:mail_addr_decode|...]`` (IDN A-labels to U-labels, ASCII domain
lowercased), RFC 2047 decoding, control characters shown as ``\\xHH``, RFC 5322
local dates with the zone name, ISO 8601 basic forms and weeks.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import quopri
import re
import time
from datetime import datetime, timedelta, tzinfo

_ATEXT = r"a-zA-Z0-9!#$%&'*/=?^_`{|}~+\-"
_DOT_ATOM = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_SPLIT_ADDRESS = re.compile(r"(.*?)(@(?:\[(?:\\.|[^\]\\]){0,999}(?:\]|\Z)|[^\[@])*)\Z", re.S)


def split_address(mailbox: str) -> tuple[str, str]:
    """(local part, ``@domain`` or ``''``), splitting at the last ``@`` outside a literal."""
    m = _SPLIT_ADDRESS.match(mailbox)
    return (m.group(1), m.group(2)) if m else (mailbox, "")


def quote_rfc2821_local(mailbox: str) -> str:
    """The address with its local part quoted when it is not a dot-atom (RFC 5321/6531)."""
    local, domain = split_address(mailbox)
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + re.sub(r'(["\\])', r"\\\1", local) + '"'
    if domain == "@" and "@" in local:
        domain = ""
    return local + domain


def qquote_rfc2821_local(mailbox: str) -> str:
    """``<quoted address>``, ``<>`` for the null address."""
    return "<>" if mailbox == "" else f"<{quote_rfc2821_local(mailbox)}>"


def idn_labels_to_unicode(domain: str) -> str:
    """Each ``xn--`` label as its U-label; others unchanged."""
    labels = []
    for label in domain.split("."):
        if label.lower().startswith("xn--"):
            try:
                label = label.encode("ascii").decode("idna")
            except UnicodeError:
                pass
        labels.append(label)
    return ".".join(labels)


def mail_addr_decode(addr: str | None) -> str | None:
    """``mail_addr_decode``: A-labels to U-labels; an all-ASCII domain is lowercased.

    The domain is whatever follows the last ``@`` (so a delivery report line such as
    ``<a@b>:\\n   250 Ok`` comes out lowercased after its ``@``, as in amavis).
    """
    if addr is None:
        return None
    bracketed = len(addr) >= 2 and addr.startswith("<") and addr.endswith(">")
    if bracketed:
        addr = addr[1:-1]
    at = addr.rfind("@")
    if at >= 0:
        local, domain = addr[:at], addr[at + 1:]
        if re.search(r"(?:^|\.)xn--", domain, re.I):
            domain = idn_labels_to_unicode(domain.lower())
        if domain.isascii():
            domain = domain.lower()
        addr = f"{local}@{domain}"
    return f"<{addr}>" if bracketed else addr


_MSGID_TOKEN = re.compile(r"""[ \t]+|\((?:\\.|[^()\\]){0,999}\)|<(?:"(?:\\.|[^"\\>]){0,999}"|"""
                          r"""\[(?:\\.|[^\]\\>]){0,999}\]|[^"<>\[\]\\]+)*>|[^<( \t]+|.""", re.S)


def parse_message_id(text: str) -> list[str]:
    """The ``<...>`` ids of a Message-ID/References field, comments dropped."""
    text = re.sub(r"[ \t]+", " ", text.replace("\n", ""))
    ids: list[str] = []
    garbage = False
    for m in _MSGID_TOKEN.finditer(text):
        token = m.group(0)
        if token.startswith("<") and token.endswith(">") and len(token) > 1:
            ids.append(token)
        elif token.strip(" \t") == "" or (token.startswith("(") and token.endswith(")")):
            continue
        else:
            garbage = True
    if len(ids) > 1:
        ids = list(dict.fromkeys(ids))
    elif garbage and not ids:
        inner = text.strip(" \t").rstrip(" \t\n")
        inner = inner[1:] if inner.startswith("<") else inner
        inner = inner[:-1] if inner.endswith(">") else inner
        ids = ["<" + inner.replace(">", "_") + ">"]
    return ids


_CONTROLS = {"\r": "\\r", "\n": "\\n", "\t": "\\t", "\\": "\\\\"}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\\]")
_CONTROL_KEEP_EOL_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\\]")


def sanitize_str(text: str | None, keep_eol: bool = False) -> str:
    """Control characters, DEL and backslash as ``\\n``, ``\\t``, ``\\\\``, ``\\xHH``."""
    if text is None:
        return ""
    pattern = _CONTROL_KEEP_EOL_RE if keep_eol else _CONTROL_RE
    return pattern.sub(lambda m: _CONTROLS.get(m.group(0), f"\\x{ord(m.group(0)):02X}"), text)


def decode_octets(data: bytes) -> str:
    """Header octets as characters: UTF-8 when valid, else one character per octet."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([BbQq])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"(=\?[^?\s]*\?[BbQq]\?[^?]*\?=)[ \t\r\n]+(?==\?[^?\s]*\?[BbQq]\?)")


def _decode_word(m: re.Match[str]) -> str:
    charset = m.group(1).split("*", 1)[0] or "us-ascii"
    payload = m.group(3)
    try:
        if m.group(2) in "Bb":
            raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            raw = quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
        return raw.decode(charset, errors="replace")
    except (LookupError, ValueError, binascii.Error, UnicodeEncodeError):
        return m.group(0)


def mime_decode_header(text: str | None) -> str | None:
    """RFC 2047 encoded-words decoded (blank runs between two words dropped)."""
    if text is None:
        return None
    if "=?" not in text:
        return text
    text = _BETWEEN_WORDS.sub(r"\1", text)
    return _ENCODED_WORD.sub(_decode_word, text)


def truncate_utf8(text: str, max_octets: int | None) -> str:
    """``text`` cut to at most ``max_octets`` UTF-8 octets, at a character boundary."""
    if max_octets is None:
        return text
    if max_octets <= 0:
        return ""
    data = text.encode("utf-8", errors="surrogatepass")
    if len(data) <= max_octets:
        return text
    return data[:max_octets].decode("utf-8", errors="ignore")


def parse_address_list(text: str | None) -> list[str]:
    """The addresses of a From/Sender/To-like field body (display names dropped)."""
    if text is None:
        return []
    return [addr for _name, addr in email.utils.getaddresses([text]) if addr]


# ----------------------------------------------------------------------------- dates
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def _local(t: float, tz: tzinfo | None) -> datetime:
    seconds = int(t)
    if tz is None:
        return datetime.fromtimestamp(seconds).astimezone()
    return datetime.fromtimestamp(seconds, tz)


def _offset(dt: datetime) -> str:
    delta = dt.utcoffset() or timedelta(0)
    minutes = int(round(delta.total_seconds() / 60.0))
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def rfc2822_timestamp(t: float, tz: tzinfo | None = None) -> str:
    """``Mon,  1 Jan 2024 13:05:09 +0100 (CET)``: local time, day space-padded (``%e``)."""
    dt = _local(t, tz)
    zone = dt.tzname() or ""
    text = (f"{_DAYS[dt.weekday()]}, {dt.day:2d} {_MONTHS[dt.month - 1]} {dt.year:04d} "
            f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {_offset(dt)}")
    if zone.strip():
        text += f" ({zone})"
    return text


def iso8601_timestamp(t: float, tz: tzinfo | None = None) -> str:
    """``20240101T130509+0100``: local basic ISO 8601 with the zone offset."""
    dt = _local(t, tz)
    return dt.strftime("%Y%m%dT%H%M%S") + _offset(dt)


def iso8601_utc_timestamp(t: float) -> str:
    """``20240101T120509Z``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(t)))


def iso8601_week(t: float, tz: tzinfo | None = None) -> int:
    """ISO 8601 week number 1..53 of the local date."""
    return _local(t, tz).isocalendar()[1]


def iso8601_weekday(t: float, tz: tzinfo | None = None) -> int:
    """ISO 8601 weekday 1..7 (Monday is 1) of the local date."""
    return _local(t, tz).isoweekday()

