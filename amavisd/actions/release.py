# tests: t/actions/test_release.py, t/integration/test_release.py
"""Release, requeue or report a quarantined message (AM.PDP ``request=release``).

Runs in the child, for one AM.PDP request (spec/protocols.md 4.5, pipeline.md 22.4
and 20.5).  The steps, each refusing bad input before anything is read or sent:

1. ``check_mail_id`` and ``authorize``: the mail_id syntax, then the secret_id
   (required when ``$auth_required_release``; a non-empty one is always checked).
2. ``open_stored``: the stored copy: ``F``/``Z`` (``.gz``) files under
   ``$QUARANTINEDIR``, named by a safe relative ``mail_file`` or by the guess
   ``[<first char>/]<mail_id>[.gz]``, or ``Q``, the SQL ``quarantine`` table.
3. ``parse_stored``: the leading fields our quarantine wrote (``X-Envelope-*``,
   ``X-Quarantine-ID``, which must name this mail_id); a BSMTP file is refused,
   from an mbox the message with this ``X-Quarantine-ID`` is taken.
4. The message is copied, chunk by chunk, into a private temp file, then either
   re-sent with ``Resent-*`` fields (``$release_format`` ``resend``) or wrapped
   in a short MIME notice (``arf``, ``attach``, ``plain``).
5. It goes out through ``forward`` by ``$release_method`` (``$notify_method``),
   or ``$requeue_method`` for requeue; the result is one reply per recipient.

Failures in steps 1-4 raise ``ReleaseError``: the AM.PDP server answers them with
the generic failure triple (protocols.md 4.4).  A failure while dispatching gives
``450 4.5.0 ERROR: ...`` for every recipient instead.  The message is never held
in memory whole.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import logging
import os
import re
import secrets
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet import defer

from amavisd import log as amavis_log
from amavisd.constants import PY_VERSION
from amavisd.errors import AmavisError, Reply
from amavisd.header import header_facts, read_header_block
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols.smtp_server import unquote_address
from amavisd.received import received_field, rfc2822_date

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
#: Longest line accepted inside a leading field; a folded X-Envelope-To line is short.
LINE_LIMIT = 64 * 1024
#: The leading fields together (the header-section sanity limit, protocols.md 6.6).
LEADING_LIMIT = 4 * 1024 * 1024
#: Spec 4.5: ``[A-Za-z0-9][A-Za-z0-9_+-]*={0,2}``.
MAIL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*={0,2}")
#: One component of a ``mail_file`` path: no leading dot (so no ``..``), no ``/``.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*")
_PARTITION_RE = re.compile(r"-?[0-9]{1,9}")
QUAR_TYPES = ("F", "Z", "B", "Q", "M")
REQUEST_KINDS = ("release", "requeue", "report")
#: Section 19: the default From of our notices (``hdrfrom_notify_*`` unset).
DEFAULT_HDRFROM = '"Content-filter at ${myhostname_utf8}" <postmaster@${myhostname_ascii}>'

#: Our own wording of the wrapped formats, in one place so that the template engine
#: (a later issue) can take it over.  ``{...}`` are filled by ``_text``.
TEXTS: dict[str, str] = {
    "subject_release": "Released quarantined message: {subject}",
    "subject_report": "Fw: {subject}",
    "body_release": ("A message held in quarantine as {mail_id} is released to you.\n"
                     "The original message is attached.\n"),
    "body_report": ("This is a report about a message held in quarantine as {mail_id}.\n"
                    "The original message is attached.\n"),
    "requested_by": "Requested by: {requested_by}\n",
    "envelope": "\nOriginal envelope sender: {sender}\nOriginal recipients: {recipients}\n",
    "preamble": "This is a multi-part message in MIME format...\n",
}


class ReleaseError(AmavisError):
    """The request is refused before anything is sent (the AM.PDP failure triple, 4.4)."""


@dataclass(frozen=True)
class ReleaseRequest:
    """The attributes of one release/requeue/report request (spec 4.5), still unchecked."""

    kind: str                                   # release | requeue | report
    mail_id: str = ""
    secret_id: str = ""
    partition_tag: str | None = None
    quar_type: str | None = None
    mail_file: str | None = None
    requested_by: str | None = None
    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass
class Stored:
    """What the leading fields of the stored copy say (pipeline.md 22.4)."""

    sender: str | None = None                    # quoted form, without brackets
    recipients: list[str] = field(default_factory=list)
    blocked: list[str] | None = None             # None: no X-Envelope-To-Blocked field
    quarantine_id: str | None = None
    kept: bytes = b""                            # X-Amavis-*/X-Spam-*/X-CRM114-* for report
    first: bytes = b""                           # the first line of the message itself
    #: where the rest of the message is read from: an ``MboxMessage`` for an mbox
    body: Any = None


# ------------------------------------------------------------------ checks (4.5)


def check_mail_id(mail_id: str) -> None:
    """Spec 4.5: the mail_id syntax, or ``Invalid mail_id '...'``."""
    if not MAIL_ID_RE.fullmatch(mail_id):
        raise ReleaseError(f"Invalid mail_id '{_printable(mail_id)}'")


def _b64url(raw: bytes) -> str:
    return base64.b64encode(raw, altchars=b"-_").decode("ascii")


def secret_id_matches(mail_id: str, secret_id: str) -> bool:
    """Whether ``secret_id`` belongs to ``mail_id`` (spec 4.5, pipeline.md 3).

    The current form: base64url(MD5(base64url-decode(secret_id))).  The pre-2.7
    form: MD5 of the secret_id string itself, in base64 with ``+/`` written as
    ``-_`` or as ``-.``.  Perl compares exactly 12 characters (pipeline.md 27
    item 20), so a longer mail_id ($mail_id_size_bits > 72) never matches there;
    we compare the mail_id's whole length, and never fewer than 12 characters.
    """
    if not secret_id or not mail_id or not secret_id.isascii():
        return False
    n = max(12, len(mail_id))
    candidates = []
    try:
        raw = base64.b64decode(secret_id + "=" * (-len(secret_id) % 4), altchars=b"-_",
                               validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is not None:
        candidates.append(_b64url(hashlib.md5(raw).digest()))
    legacy = base64.b64encode(hashlib.md5(secret_id.encode("ascii")).digest()).decode()
    candidates += [legacy.translate(str.maketrans("+/", "-_")),
                   legacy.translate(str.maketrans("+/", "-."))]
    return any(c[:n] == mail_id for c in candidates)


def authorize(request: ReleaseRequest, auth_required: bool) -> None:
    """Spec 4.5: a non-empty secret_id is always verified; an empty one only passes
    when ``$auth_required_release`` is false.  The refusal is amavis's wording."""
    secret = request.secret_id or ""
    if secret == "" and not auth_required:
        return
    if not secret_id_matches(request.mail_id, secret):
        raise ReleaseError(f"Secret_id {_printable(secret)} does not match mail_id "
                           f"{request.mail_id}")


def _printable(text: str, limit: int = 100) -> str:
    """Hostile text for a reply or log line: control characters escaped, length capped."""
    out = "".join(c if " " <= c <= "~" or c > "\x9f" else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def quar_type_of(request: ReleaseRequest, view: Any) -> str:
    """Spec 4.5: the given type, else ``Q`` when ``$spam_quarantine_method`` is ``sql:``."""
    given = (request.quar_type or "").strip()
    if given:
        qtype = given.upper()
        if qtype not in QUAR_TYPES:
            raise ReleaseError(f"Unknown quar_type '{_printable(given)}'")
        return qtype
    method = getattr(view, "spam_quarantine_method", None)
    if isinstance(method, (list, tuple)):
        method = method[0] if method else None
    return "Q" if str(method or "").lower().startswith("sql:") else "F"


def safe_mail_file(mail_file: str) -> str:
    """A relative path of safe components (``[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*``) only.

    No absolute path, no ``..`` or hidden component, no empty component: the
    file must lie under ``$QUARANTINEDIR`` by its name alone (spec 4.5).
    """
    parts = mail_file.split("/")
    if not mail_file or len(mail_file) > 1024 or not all(_SAFE_COMPONENT.fullmatch(p)
                                                         for p in parts):
        raise ReleaseError(f"Suspicious quarantine file name '{_printable(mail_file)}'")
    return mail_file


def file_candidates(request: ReleaseRequest, qtype: str, qdir: str,
                    subdir_levels: int) -> list[Path]:
    """Where the F/Z copy may be: ``mail_file``, then (for a bare name) the guess.

    The guess is ``[<first char>/]<mail_id>[.gz]`` (spec 4.5); it ignores the
    ``spam-``/``banned-`` prefixes of the default templates, as amavis does.
    """
    base = Path(qdir)
    out: list[Path] = []
    if request.mail_file:
        out.append(base / safe_mail_file(request.mail_file))
        if "/" in request.mail_file:
            return out
    name = request.mail_id + (".gz" if qtype == "Z" else "")
    if subdir_levels >= 1:
        out.append(base / request.mail_id[0] / name)
    out.append(base / name)
    return list(dict.fromkeys(out))


def _inside(base: Path, target: Path) -> bool:
    real_base = os.path.realpath(base)
    real = os.path.realpath(target)
    return real.startswith(real_base.rstrip("/") + "/")


def open_file(request: ReleaseRequest, qtype: str, view: Any,
              cleanup: ExitStack) -> tuple[BinaryIO, str]:
    """Open the F/Z copy for reading (gzip for ``Z`` or a ``.gz`` name); ``cleanup`` closes it."""
    qdir = getattr(view, "QUARANTINEDIR", None)
    if not qdir:
        raise ReleaseError("Config variable $QUARANTINEDIR is empty")
    levels = int(getattr(view, "quarantine_subdir_levels", None) or 0)
    candidates = file_candidates(request, qtype, str(qdir), levels)
    for path in candidates:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ReleaseError(f"File {path} is not accessible: {exc.strerror}") from None
        if not _inside(Path(qdir), path):
            raise ReleaseError(f"File {path} lies outside $QUARANTINEDIR")
        if not stat.S_ISREG(st.st_mode):
            raise ReleaseError(f"File {path} is not a regular file")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ReleaseError(f"Cannot open file {path}: {exc.strerror}") from None
        raw = cleanup.enter_context(os.fdopen(fd, "rb"))
        if qtype == "Z" or path.name.endswith(".gz"):
            return cleanup.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")), str(path)
        return raw, str(path)
    raise ReleaseError(f"File {candidates[0]} does not exist")


class _ChunkReader(io.RawIOBase):
    """A readable stream over the chunks of the SQL ``quarantine`` rows."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buf:
            try:
                self._buf = bytes(next(self._chunks))
            except StopIteration:
                return 0
            except Exception as exc:       # the store failed mid-stream: refuse the request
                raise ReleaseError(f"SQL quarantine: {' '.join(str(exc).split())}") from exc
        n = min(len(target), len(self._buf))
        target[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_sql(request: ReleaseRequest, config: Any,
             cleanup: ExitStack) -> tuple[BinaryIO, str]:
    """Spec 22.4: find the partition (``sel_msg``) if not given, stream ``sel_quar``."""
    from amavisd.sql.connection import database

    db = database(config, "storage")
    if db is None:
        raise ReleaseError("SQL quarantine requested, but @storage_sql_dsn is empty")
    from amavisd.sql import quarantine_store

    tag_text = (request.partition_tag or "").strip()
    try:
        if tag_text:
            if not _PARTITION_RE.fullmatch(tag_text):
                raise ReleaseError(f"Invalid partition_tag '{_printable(tag_text)}'")
            tag = int(tag_text)
        else:
            tag = quarantine_store.find_partition(db, request.mail_id, config=config)
        chunks = iter(quarantine_store.read_message(db, tag, request.mail_id, config=config))
    except ReleaseError:
        raise
    except Exception as exc:              # a store failure refuses the request
        raise ReleaseError(f"SQL quarantine: {' '.join(str(exc).split())}") from exc
    where = f"{request.mail_id}[{tag}]"
    close = getattr(chunks, "close", None)
    if close is not None:                  # a generator: let it release its cursor
        cleanup.callback(close)
    return cleanup.enter_context(io.BufferedReader(_ChunkReader(chunks), CHUNK)), where


# ------------------------------------------------------------------ the stored copy


_ENVELOPE_FIELDS = ("return-path", "x-envelope-from", "x-envelope-to", "x-envelope-to-blocked",
                    "x-quarantine-id", "delivered-to")
_REPORT_KEPT = re.compile(r"x-amavis-(hold|alert|modified|penpals|policybank|os-fingerprint)"
                          r"|x-spam-.*|x-crm114-.*", re.S)
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def split_addresses(value: str) -> list[str]:
    """The addresses of an ``X-Envelope-To`` body: ``<a>, <"b c"@d>`` -> ``a``, ``"b c"@d``.

    Angle brackets delimit each address; a quoted string inside may hold ``>`` or
    ``,``.  A body without brackets is split on commas.
    """
    value = value.strip()
    if "<" not in value:
        return [a.strip() for a in value.split(",") if a.strip()]
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        start = value.find("<", i)
        if start < 0:
            break
        j, quoted = start + 1, False
        while j < n:
            c = value[j]
            if c == "\\" and quoted:
                j += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == ">" and not quoted:
                break
            j += 1
        out.append(value[start + 1:j])
        i = j + 1
    return out


def _strip_brackets(value: str) -> str:
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def check_address(address: str, what: str) -> str:
    """An address from the request or the stored copy: no control characters, no
    brackets left, sane length (it ends up in header fields and SMTP commands)."""
    if len(address) > 1000 or any(c < " " or c == "\x7f" for c in address) \
            or "<" in address or ">" in address:
        raise ReleaseError(f"Invalid {what} address '{_printable(address)}'")
    return address


_MBOX_QID = re.compile(rb"X-Quarantine-ID:[ \t]*<?([^>\s]*)>?[ \t]*\r?\n?\Z", re.I)
_MBOXRD_QUOTED = re.compile(rb">+From ")


class MboxMessage:
    """One message of a Unix mbox, found by its ``X-Quarantine-ID``, read line by line.

    ``local:`` quarantine to a mailbox file (section 22.3) appends each message
    after a ``From `` line, with mboxrd quoting (``>*From `` gets one more ``>``)
    and a blank line after it.  This reads the mbox once, skipping the other
    messages, and gives back the chosen one unquoted, without the added blank
    line: what ``parse_stored`` would read from a one-message file.  Memory is
    bounded by the leading fields of one message.
    """

    def __init__(self, reader: BinaryIO, mail_id: str):
        self._reader = reader
        self._want = mail_id.encode("ascii", "replace")
        self._pending: list[bytes] = []     # lines found, not yet handed out
        self._next: bytes | None = None       # a line read ahead after an empty one
        self._done = False
        self._at_start = True                 # the last line read ended with a newline
        self._find()

    def _raw_line(self) -> bytes:
        line = self._reader.readline(LINE_LIMIT)
        starts = self._at_start
        self._at_start = line.endswith(b"\n")
        return line if starts else b"\0" + line   # mark continuations: never a separator

    def _find(self) -> None:
        """Advance to the message with our X-Quarantine-ID; keep its first lines."""
        while True:
            head: list[bytes] = []
            size = 0
            while True:                       # the leading fields of one message
                line = self._raw_line()
                if not line or line.startswith(b"From ") or line in (b"\n", b"\r\n"):
                    break
                head.append(line)
                size += len(line)
                if size > LEADING_LIMIT:
                    raise ReleaseError("Quarantined mailbox: leading header fields too long")
                match = _MBOX_QID.match(line)
                if match and match.group(1) == self._want:
                    self._pending = head
                    return
            if not line:
                raise ReleaseError(f"Quarantined mailbox holds no message {self._want.decode()}")
            while line and not line.startswith(b"From "):   # skip the rest of it
                line = self._raw_line()
            if not line:
                raise ReleaseError(f"Quarantined mailbox holds no message {self._want.decode()}")

    def readline(self, limit: int = -1) -> bytes:
        if self._pending:
            return self._unquote(self._pending.pop(0))
        if self._done:
            return b""
        line, self._next = (self._next, None) if self._next is not None else (
            self._raw_line(), None)
        if not line or line.startswith(b"From "):
            self._done = True
            return b""
        if line in (b"\n", b"\r\n"):            # the separator, if a From line follows
            following = self._raw_line()
            if not following or following.startswith(b"From "):
                self._done = True
                return b""
            self._next = following
        return self._unquote(line)

    def read(self, size: int = -1) -> bytes:
        """Whole lines up to about ``size`` bytes (the copy loop reads in chunks)."""
        out: list[bytes] = []
        total = 0
        while size < 0 or total < size:
            line = self.readline()
            if not line:
                break
            out.append(line)
            total += len(line)
        return b"".join(out)

    @staticmethod
    def _unquote(line: bytes) -> bytes:
        if line.startswith(b"\0"):
            return line[1:]
        return line[1:] if _MBOXRD_QUOTED.match(line) else line


def parse_stored(reader: BinaryIO, mail_id: str, *, keep_report_fields: bool) -> Stored:
    """Read the leading fields (pipeline.md 22.4) and stop at the first other line.

    That line is kept in ``first``; the rest of the message stays in ``reader``.
    X-Amavis-*/X-Spam-*/X-CRM114-* fields are dropped, or kept for a report.
    A BSMTP file (``EHLO``/``MAIL FROM:`` first) is refused; in an mbox (``From ``
    first) the message whose ``X-Quarantine-ID`` is ``mail_id`` is taken.
    """
    stored = Stored()
    kept: list[bytes] = []
    total = 0
    pending: list[bytes] = []              # the field being read, line by line
    line = reader.readline(LINE_LIMIT)
    if re.match(rb"(EHLO|HELO|LHLO) |MAIL FROM:", line, re.I):
        raise ReleaseError("Releasing messages from a BSMTP quarantine is not supported")
    if line.startswith(b"From "):            # a local: mbox (archive.mbox): pick ours
        reader = stored.body = MboxMessage(reader, mail_id)
        line = reader.readline(LINE_LIMIT)
    while True:
        if line[:1] in (b" ", b"\t") and pending:
            pending.append(line)
        else:
            if pending:
                _take_field(stored, kept, b"".join(pending), keep_report_fields)
                pending = []
            m = _FIELD_NAME.match(line)
            name = m.group(1).decode("ascii").lower() if m else ""
            if not name or not (name in _ENVELOPE_FIELDS or _REPORT_KEPT.fullmatch(name)):
                stored.first = line
                break
            pending = [line]
        if not line.endswith(b"\n"):
            if len(line) >= LINE_LIMIT:
                raise ReleaseError("Quarantined message: a leading header line is too long")
            stored.first = b""              # the file ended inside our fields
            if pending:
                _take_field(stored, kept, b"".join(pending), keep_report_fields)
            break
        total += len(line)
        if total > LEADING_LIMIT:
            raise ReleaseError("Quarantined message: its leading header fields are too long")
        line = reader.readline(LINE_LIMIT)
    stored.kept = b"".join(kept)
    if stored.quarantine_id is None:
        raise ReleaseError(f"Quarantined message {mail_id} has no X-Quarantine-ID field")
    if stored.quarantine_id != mail_id:
        raise ReleaseError(f"Stored X-Quarantine-ID does not match mail_id {mail_id}")
    return stored


def _take_field(stored: Stored, kept: list[bytes], raw: bytes, keep_report: bool) -> None:
    name_b, _, body_b = raw.partition(b":")
    name = name_b.strip().decode("ascii", "replace").lower()
    body = re.sub(r"\r?\n[ \t]", " ", body_b.decode("utf-8", "surrogateescape")).strip()
    if name in ("return-path", "x-envelope-from"):
        if name == "x-envelope-from" or stored.sender is None:
            stored.sender = _strip_brackets(body)
    elif name == "x-envelope-to":
        stored.recipients = split_addresses(body)
    elif name == "x-envelope-to-blocked":
        stored.blocked = split_addresses(body)
    elif name == "x-quarantine-id":
        stored.quarantine_id = _strip_brackets(body)
    elif name != "delivered-to" and keep_report:
        kept.append(raw if raw.endswith(b"\n") else raw + b"\n")


@dataclass
class Original:
    """The released message on disk: LF line ends, as the spool files are."""

    path: Path
    size: int = 0                 # RFC 1870 size: LF counted as CRLF
    eight_bit: bool = False
    last: bytes = b"\n"


def copy_original(stored: Stored, reader: BinaryIO, out: BinaryIO, path: Path) -> Original:
    """Write the kept fields, the first line and the rest of ``reader``, in chunks."""
    orig = Original(path)
    for piece in _pieces(stored, reader):
        out.write(piece)
        orig.size += len(piece) + piece.count(b"\n")
        orig.eight_bit = orig.eight_bit or not piece.isascii()
        orig.last = piece[-1:]
    return orig


def _pieces(stored: Stored, reader: BinaryIO) -> Iterator[bytes]:
    if stored.kept:
        yield stored.kept
    if stored.first:
        yield stored.first
    while chunk := reader.read(CHUNK):
        yield chunk


# ------------------------------------------------------------------ what is sent


def hdrfrom(view: Any, name: str) -> str:
    """``hdrfrom_notify_recip``/``_sender`` with ``${myhostname...}`` expanded (section 19)."""
    from amavisd.actions.dsn import expand_host

    value = getattr(view, name, None)
    if not value and name != "hdrfrom_notify_sender":
        value = getattr(view, "hdrfrom_notify_sender", None)
    return expand_host(str(value or DEFAULT_HDRFROM), myhostname(view))


def myhostname(view: Any) -> str:
    return str(getattr(view, "myhostname", None) or "localhost")


def _field(name: str, body: str) -> str:
    from amavisd.actions.quarantine import fold_plain

    return fold_plain(name, body)


def resend_fields(msg: Message, parent_id: str, view: Any, requested_by: str | None,
                  now: float) -> bytes:
    """Spec 20.5: our Received on top, then the Resent-* block (LF line ends)."""
    out: list[str] = []
    allowed = getattr(view, "allowed_added_header_fields", None) or {"received": 1}
    if allowed.get("received", 1):
        out.append(received_field(msg, view, now).decode("utf-8").replace("\r\n", "\n"))
    notify_from = hdrfrom(view, "hdrfrom_notify_recip")
    if requested_by:
        out.append(_field("Resent-From", f"<{requested_by}>"))
        out.append(_field("Resent-Sender", notify_from))
    else:
        out.append(_field("Resent-From", notify_from))
    to = f"<{msg.recipients[0].quoted}>" if len(msg.recipients) == 1 \
        else "undisclosed-recipients:;"
    out.append(_field("Resent-To", to))
    out.append(_field("Resent-Date", rfc2822_date(now)))
    out.append(_field("Resent-Message-ID", f"<{parent_id}-{msg.mail_id}@{myhostname(view)}>"))
    return "".join(out).encode("utf-8")


def _text(key: str, **values: str) -> str:
    return TEXTS[key].format(**values)


def _text_part(text: str) -> bytes:
    if text.isascii():
        head = 'Content-Type: text/plain; charset="us-ascii"\nContent-Transfer-Encoding: 7bit\n'
    else:
        head = 'Content-Type: text/plain; charset="UTF-8"\nContent-Transfer-Encoding: 8bit\n'
    return (head + "Content-Disposition: inline\n\n" + text).encode("utf-8")


def write_wrapper(fmt: str, kind: str, orig: Original, out: BinaryIO, *, parent_id: str,
                  msg: Message, stored: Stored, view: Any, requested_by: str | None,
                  now: float) -> None:
    """``arf`` (RFC 5965 feedback report), ``attach`` or ``plain``: our text, then the
    message as an attachment (``message/rfc822``; ``text/plain`` for ``plain``)."""
    host = myhostname(view)
    subject = ""
    try:
        subject = header_facts(read_header_block(orig.path)).subject or ""
    except Exception:                      # a subject is a nicety only
        log.debug("release: no subject read", exc_info=True)
    report = kind == "report"
    boundary = f"----------=_{int(now)}-{os.getpid()}-{secrets.token_hex(8)}"
    rcpts = ", ".join(f"<{r.quoted}>" for r in msg.recipients)
    text = _text("body_report" if report else "body_release", mail_id=parent_id)
    if requested_by:
        text += _text("requested_by", requested_by=f"<{requested_by}>")
    text += _text("envelope", sender=f"<{stored.sender or ''}>",
                  recipients=", ".join(f"<{r}>" for r in stored.recipients) or "-")
    ctype = (f"multipart/report; report-type=feedback-report;\n boundary=\"{boundary}\""
             if fmt == "arf" else f"multipart/mixed;\n boundary=\"{boundary}\"")
    prefix = "ARF" if report else "QRA"
    head = [
        _field("From", hdrfrom(view, "hdrfrom_notify_sender")),
        _field("To", rcpts if len(msg.recipients) == 1 else "undisclosed-recipients:;"),
        _field("Subject", _text("subject_report" if report else "subject_release",
                                subject=subject)),
        _field("Message-ID", f"<{prefix}{msg.mail_id}@{host}>"),
        _field("Date", rfc2822_date(now)),
        "MIME-Version: 1.0\n",
        f"Content-Type: {ctype}\n",
        f"Content-Transfer-Encoding: {'8bit' if orig.eight_bit else '7bit'}\n",
    ]
    out.write(("".join(head) + "\n" + TEXTS["preamble"] + "\n").encode("utf-8"))
    out.write(f"--{boundary}\n".encode() + _text_part(text))
    if fmt == "arf":
        feedback = ["Version: 1", f"Feedback-Type: {'abuse' if report else 'miscategorized'}",
                    f"User-Agent: amavisd-py/{PY_VERSION}", f"Reporting-MTA: dns; {host}",
                    f"Original-Mail-From: <{stored.sender or ''}>"]
        feedback += [f"Original-Rcpt-To: <{r}>" for r in stored.recipients]
        feedback.append("Incidents: 1")
        out.write(f"\n--{boundary}\nContent-Type: message/feedback-report\n"
                  "Content-Disposition: inline\nContent-Transfer-Encoding: 7bit\n\n".encode())
        out.write(("\n".join(feedback) + "\n").encode("utf-8", "surrogateescape"))
    cte = "8bit" if orig.eight_bit else "7bit"
    if fmt == "plain":
        charset = "us-ascii" if not orig.eight_bit else "unknown-8bit"
        part = (f'Content-Type: text/plain; charset="{charset}"\n'
                f'Content-Disposition: inline; filename="msg-{parent_id}.txt"\n')
    else:
        name = str(getattr(view, "attachment_email_name", None) or "msg-%m.eml")
        name = re.sub(r"[^A-Za-z0-9._+=-]", "_", name.replace("%m", parent_id))
        disposition = "inline" if fmt == "arf" else f'attachment; filename="{name}"'
        part = f"Content-Type: message/rfc822\nContent-Disposition: {disposition}\n"
    out.write(f"\n--{boundary}\n{part}Content-Transfer-Encoding: {cte}\n\n".encode())
    with open(orig.path, "rb") as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
    if orig.last != b"\n":
        out.write(b"\n")
    out.write(f"\n--{boundary}--\n".encode())


# ------------------------------------------------------------------ the whole request


def delivery_method(kind: str, view: Any) -> Any:
    """Spec 4.5: requeue -> ``$requeue_method``; else ``$release_method``, ``$notify_method``."""
    if kind == "requeue":
        return getattr(view, "requeue_method", None)
    return getattr(view, "release_method", None) or getattr(view, "notify_method", None) \
        or getattr(view, "forward_method", None)


def format_of(kind: str, view: Any) -> str:
    """``$report_format`` (default arf) for report, else ``$release_format`` (resend)."""
    if kind == "report":
        return str(getattr(view, "report_format", None) or "arf").lower()
    return str(getattr(view, "release_format", None) or "resend").lower()


def _recipient(quoted: str) -> Recipient:
    return Recipient(address=unquote_address(quoted), quoted=quoted)


@dataclass
class Prepared:
    """A checked request and the message ready on disk."""

    message: Message
    header: bytes                  # prefix sent before the file (resend), else b""
    method: Any
    summary: str                   # the log line of pipeline.md 22.4


def prepare(request: ReleaseRequest, view: Any, config: Any, *, mail_id: str,
            secret_id: str, log_id: str, tempdir: str, now: float,
            cleanup: ExitStack) -> Prepared | None:
    """Steps 1-4 of the module docstring; None when there is no recipient.

    Temp files it creates are removed by ``cleanup``.  Raises ``ReleaseError``.
    """
    if request.kind not in REQUEST_KINDS:
        raise ReleaseError(f"Unknown request '{request.kind}'")
    check_mail_id(request.mail_id)
    authorize(request, bool(getattr(view, "auth_required_release", 1)))
    requested_by = None
    if request.requested_by:
        requested_by = check_address(_strip_brackets(request.requested_by), "requested_by")
    alt = [check_address(_strip_brackets(r), "recipient") for r in request.recipients]
    sender_override = None
    if request.sender is not None:
        sender_override = check_address(_strip_brackets(request.sender), "sender")
    fmt = format_of(request.kind, view)
    if fmt not in ("resend", "arf", "attach", "plain"):
        raise ReleaseError(f"Release format '{_printable(fmt)}' is not supported")
    if fmt == "attach" and getattr(view, "attachment_password", None):
        raise ReleaseError("Release format 'attach' with $attachment_password (a protected "
                           "zip) is not supported")
    qtype = quar_type_of(request, view)
    if qtype == "M":
        raise ReleaseError("Releasing from a mailbox quarantine (quar_type M) is not supported")
    if qtype == "Q":
        reader, where = open_sql(request, config, cleanup)
    else:
        reader, where = open_file(request, qtype, view, cleanup)
    try:
        stored = parse_stored(reader, request.mail_id,
                              keep_report_fields=request.kind == "report")
        reader = stored.body or reader
        sender = sender_override if sender_override is not None else (stored.sender or "")
        check_address(sender, "sender")
        if alt:
            targets = alt
        else:
            targets = stored.blocked if stored.blocked is not None else stored.recipients
            targets = [check_address(r, "recipient") for r in targets]
        if not targets:
            log.info("release of %s: no recipients, nothing to do", request.mail_id)
            return None
        orig_path = _temp(tempdir, "release-", cleanup)
        with open(orig_path, "wb") as out:
            orig = copy_original(stored, reader, out, orig_path)
    except ReleaseError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise ReleaseError(f"Cannot read quarantined message {where}: {exc}") from exc
    rcpts = [_recipient(q) for q in targets]
    msg = Message(sender=unquote_address(sender), sender_quoted=sender,
                  recipients=rcpts, spool_path=orig_path, size=orig.size, log_id=log_id,
                  mail_id=mail_id, secret_id=secret_id, client=ClientInfo(),
                  protocol="", originating=True, rx_time=now,
                  smtputf8=not all(a.isascii() for a in [sender, *targets]))
    msg.findings["parent_mail_id"] = request.mail_id
    header = b""
    if fmt == "resend":
        header = resend_fields(msg, request.mail_id, view, requested_by, now)
    else:
        wrapped = _temp(tempdir, "release-wrapped-", cleanup)
        with open(wrapped, "wb") as out:
            write_wrapper(fmt, request.kind, orig, out, parent_id=request.mail_id, msg=msg,
                          stored=stored, view=view, requested_by=requested_by, now=now)
        msg.spool_path = wrapped
        msg.size = _rfc1870_size(wrapped)
        msg.sender = msg.sender_quoted = ""      # our own notice: the null reverse path
    feedback = "abuse" if request.kind == "report" else "miscategorized"
    summary = (f"Quarantined message {request.kind} ({feedback}): {request.mail_id} "
               f"<{sender}> -> {','.join(f'<{t}>' for t in targets)}")
    return Prepared(msg, header, delivery_method(request.kind, view), summary)


def _temp(tempdir: str, prefix: str, cleanup: ExitStack) -> Path:
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".txt", dir=tempdir or None)
    os.close(fd)
    path = Path(name)
    cleanup.callback(path.unlink, missing_ok=True)
    return path


def _rfc1870_size(path: Path) -> int:
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk) + chunk.count(b"\n")
    return size


@defer.inlineCallbacks
def release(request: ReleaseRequest, view: Any, config: Any, reactor: Any, *, mail_id: str,
            secret_id: str, log_id: str, tempdir: str,
            clock: Callable[[], float] = time.time) -> Any:
    """Carry out one request; a Deferred firing with one ``Reply`` per recipient.

    Fails with ``ReleaseError`` (or another exception) when nothing was sent.
    """
    from amavisd.actions.forward import forward

    now = clock()
    with ExitStack() as cleanup:
        prepared = prepare(request, view, config, mail_id=mail_id, secret_id=secret_id,
                           log_id=log_id, tempdir=tempdir, now=now, cleanup=cleanup)
        if prepared is None:
            return [Reply(250, "2.5.0", "No recipients, nothing to do")]
        msg = prepared.message
        amavis_log.do_log(0, "%s", prepared.summary)
        try:
            if not prepared.method:
                raise ValueError("no delivery method ($release_method, $notify_method or "
                                 "$requeue_method) is set")
            deadline = time.time() + float(getattr(view, "child_timeout", None) or 480)
            submit = "Arf" if format_of(request.kind, view) == "arf" else "Release"
            yield forward(msg, msg.recipients, prepared.method, prepared.header, 0, view,
                          reactor, True, deadline, submit=submit)
            replies = []
            for rcpt in msg.recipients:
                if rcpt.reply is None:
                    raise ValueError("the delivery method gave no reply")
                replies.append(rcpt.reply)
        except Exception as exc:          # noqa: BLE001 - dispatch errors are per recipient
            log.error("release of %s: dispatch failed: %s", request.mail_id, exc)
            replies = [Reply(450, "4.5.0", f"ERROR: {exc}") for _ in msg.recipients]
        for rcpt, reply in zip(msg.recipients, replies, strict=True):
            amavis_log.do_log(0 if reply.is_ok else -1, "%s %s -> <%s>: %s", request.kind,
                              request.mail_id, rcpt.quoted, reply)
        return replies
