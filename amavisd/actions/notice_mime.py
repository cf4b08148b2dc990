# tests: t/actions/test_notify.py t/actions/test_dsn.py
"""The MIME form of the messages amavis writes itself: notices and DSNs.

Runs in the child while a notification or DSN is built (spec/pipeline.md 18,
19, 20.6).  An expanded template (``split_notice``) gives header fields and a
text; this module turns them into what amavis's ``build_mime_entity`` sends:

* header fields RFC 2047 encoded (``$hdr_encoding``, ``$hdr_encoding_qb``) and
  folded at 78 columns (``headers.hdr``), raw UTF-8 for SMTPUTF8 mail; a later
  template line replaces an earlier one of the same name in place, and the
  fields the program forces (From, To, Date of a DSN) replace or follow them;
* the text part: ``us-ascii``/7bit when it is ASCII, else in ``$bdy_encoding``,
  quoted-printable when under a fifth of its octets are 8-bit, else base64;
* the original header section as ``text/rfc822-headers`` (``message/global-
  headers`` when it is 8-bit UTF-8), ``Return-Path:`` first;
* boundaries ``----------=_<time>-<pid>-<n>`` as MIME::Tools makes them.

Content-Type, Content-Transfer-Encoding and MIME-Version are the program's: a
template cannot replace them (it could only break the structure).
"""

from __future__ import annotations

import base64
import itertools
import os
import quopri
import time
from collections.abc import Iterable, Sequence

from amavisd.actions.headers import hdr
from amavisd.templates import Notice

#: The preamble MIME::Tools writes before the first part.
PREAMBLE = b"This is a multi-part message in MIME format...\n"
_PROGRAM_FIELDS = frozenset(("content-type", "content-transfer-encoding", "mime-version"))
_counter = itertools.count()


def new_boundary(now: float | None = None) -> str:
    """``----------=_<unix time>-<pid>-<n>``, n counting up in this process."""
    return f"----------=_{int(now if now is not None else time.time())}-{os.getpid()}-" \
           f"{next(_counter)}"


def merged_fields(notice: Notice, forced: Sequence[tuple[str, str]] = ()) -> list[tuple[str,
                                                                                       str]]:
    """Template fields with amavis's replace rule, then the forced ones over them.

    A name seen again replaces the value at its first position (Mail::Header's
    ``replace``); a forced field absent from the template is appended.
    """
    order: list[str] = []
    values: dict[str, tuple[str, str]] = {}
    for name, value in [*notice.fields, *forced]:
        key = name.lower()
        if key in _PROGRAM_FIELDS:
            continue
        if key not in values:
            order.append(key)
        values[key] = (name if key not in values else values[key][0], value)
    return [values[key] for key in order]


def encode_fields(fields: Iterable[tuple[str, str]], *, smtputf8: bool = False,
                  hdr_encoding: str = "UTF-8", qb: str = "Q") -> bytes:
    """Each field encoded and folded as amavis's ``hdr()`` does; LF line ends."""
    return b"".join(hdr(name, value, 0, smtputf8=smtputf8, encoding=hdr_encoding or "UTF-8",
                        qb=qb or "Q") for name, value in fields)


def _codec(charset: str) -> str:
    import codecs

    try:
        return codecs.lookup(charset).name
    except LookupError:
        return "utf-8"


def text_part(body: str, bdy_encoding: str = "UTF-8") -> tuple[bytes, bytes]:
    """(MIME header lines, encoded body) of the text part of a notice."""
    charset = bdy_encoding or "UTF-8"
    octets = body.encode(_codec(charset), errors="replace")
    eight_bit = sum(1 for b in octets if b >= 0x80)
    if not eight_bit:
        return (b'Content-Type: text/plain; charset="us-ascii"\nContent-Disposition: inline\n'
                b"Content-Transfer-Encoding: 7bit\n", octets)
    if eight_bit < 0.2 * len(octets):
        encoding, data = "quoted-printable", quopri.encodestring(octets)
    else:
        encoding, data = "base64", base64.encodebytes(octets)
    head = (f'Content-Type: text/plain; charset="{charset}"\nContent-Disposition: inline\n'
            f"Content-Transfer-Encoding: {encoding}\n").encode("ascii", "replace")
    return head, data


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def header_part(sender_quoted: str, header_block: bytes) -> bytes:
    """The original header section as a MIME part (headers and data, no boundary).

    ``sender_quoted`` is the envelope sender as the client wrote it (Return-Path).
    """
    data = f"Return-Path: <{sender_quoted}>\n".encode() + header_block
    eight_bit = not data.isascii()
    mtype, fname = (("message/global-headers", "header.u8hdr")
                    if eight_bit and _valid_utf8(data) else ("text/rfc822-headers", "header.hdr"))
    return (f'Content-Type: {mtype}; name="{fname}"\n'
            f'Content-Disposition: inline; filename="{fname}"\n'
            f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\n"
            f"Content-Description: Message header section\n\n").encode() + data


def mixed(fields: bytes, parts: Sequence[bytes], boundary: str) -> bytes:
    """``multipart/mixed``: our three fields, the given ones, the parts (each already
    ``headers + blank line + body``)."""
    out = [f'Content-Type: multipart/mixed; boundary="{boundary}"\n'
           f"Content-Transfer-Encoding: 8bit\nMIME-Version: 1.0\n".encode(), fields,
           b"\n", PREAMBLE]
    for part in parts:
        out += [b"\n--", boundary.encode(), b"\n", part]
    out += [b"\n--", boundary.encode(), b"--\n"]
    return b"".join(out)


def single(fields: bytes, text_head: bytes, text_body: bytes) -> bytes:
    """A one-part notice: MIME-Version, the fields, then the text part's own fields."""
    return b"MIME-Version: 1.0\n" + fields + text_head + b"\n" + text_body
