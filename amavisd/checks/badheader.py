# tests: t/checks/test_badheader.py
"""The bad-header check: facts about the original header section, nothing more.

spec/pipeline.md section 8 (``check_header_validity``) and section 12 (``CC_BADH``
minors).  Runs in the child after the header section has been read
(``amavisd.header.read_header_block``) and the MIME walk has collected its errors.
It records ``HeaderFault`` findings; ``decide`` turns them into ``CC_BADH,<minor>``
for the recipients that do not bypass header checks (STYLE.md section 5).

The header block is handled as bytes throughout, as amavis handles it as an octet
string: lengths, offsets and excerpts count bytes, and an excerpt is turned into
text only at the end, where every non-ASCII byte becomes ``\\x{XX}``.  The texts
were checked against the Perl code itself (``t/data/badheader/oracle.pl``), including
its accidents:

* the C0-controls test can never fire (its ``^`` anchor is tried where the previous
  match stopped, never at offset 0), so a valid UTF-8 field carrying e.g. ``\\x01``
  is not flagged at all;
* the excerpt of a non-ASCII field name is built as if the match were at offset 0,
  so it shows the field twice;
* C0 controls other than NUL/CR are escaped only when the finding also holds a
  non-ASCII byte;
* the 100-finding cap applies to the per-field loop; the missing/duplicate findings
  and the MIME error come after it and are not capped, and the field counts behind
  them stop where the loop stopped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from amavisd.log import do_log

NAME = "badheader"

#: ``%allowed_header_tests`` as amavis sets it (pipeline.md section 8): every test
#: on except ``utf8``.  ``other`` is accepted but no test uses it.
ALLOWED_HEADER_TESTS: dict[str, bool] = {
    "other": True, "mime": True, "syntax": True, "empty": True, "long": True,
    "control": True, "8bit": True, "utf8": False, "missing": True, "multiple": True,
}

# CC_BADH minors (pipeline.md section 12.1).
MINOR_MIME = 1
MINOR_8BIT = 2
MINOR_CONTROL = 3
MINOR_EMPTY = 4
MINOR_LONG = 5
MINOR_SYNTAX = 6
MINOR_MISSING = 7
MINOR_MULTIPLE = 8

#: At most this many findings from the per-field loop (section 8: "at most 100").
MAX_FIELD_FINDINGS = 100

#: Fields that must not repeat (RFC 5322, RFC 2045, RFC 2183), in amavis's report
#: order; Date and From are also required.
SINGLETON_FIELDS = (
    "Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Subject", "Message-ID",
    "References", "In-Reply-To", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "Content-ID", "Content-Description",
    "Content-Disposition", "Auto-Submitted",
)
REQUIRED_FIELDS = ("Date", "From")

#: A MIME error text is cut here and marked ``[...]`` (pipeline.md section 6.1).
MIME_ERROR_LIMIT = 250


@dataclass(frozen=True)
class HeaderFault:
    """One bad-header finding: which test, its CC_BADH minor and amavis's text.

    ``text`` is exactly what amavis puts into ``%X`` and the first one into
    ``X-Amavis-Alert`` (``BAD HEADER SECTION, <text>``).
    """

    test: str       # key of %allowed_header_tests: syntax, empty, long, ... mime
    minor: int      # CC_BADH minor category
    text: str


# ---------------------------------------------------------------- field split
def split_fields(header_block: bytes) -> list[bytes]:
    """Header fields as amavis keeps them: each with its folded lines and trailing LF.

    A line starting with SP or TAB continues the previous field; the first empty
    line ends the section.  Lines end at LF only (a bare CR is data).  A block whose
    first line is a continuation line (Perl amavis dies on it) gives that line its
    own field, which the syntax test then flags.
    """
    return _fields_from_lines(_lf_lines(header_block))


def _lf_lines(block: bytes) -> list[bytes]:
    lines: list[bytes] = []
    start = 0
    while start < len(block):
        end = block.find(b"\n", start)
        if end < 0:
            lines.append(block[start:])
            break
        lines.append(block[start:end + 1])
        start = end + 1
    return lines


def _fields_from_lines(lines: Iterable[bytes]) -> list[bytes]:
    fields: list[bytes] = []
    for line in lines:
        if line == b"\n":
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


# ---------------------------------------------------------------- Perl helpers
_FIELD_NAME = re.compile(rb"^([!-9;-\x7e\x80-\xff]+)[ \t]*:", re.S)
_NON_ASCII = re.compile(rb"([^\x00-\x7f])", re.S)
_WS_ONLY_LINE = re.compile(rb"^([ \t]+)(?=\n|\Z)", re.M | re.S)
_LONG_LINE = re.compile(rb"^([^\n]{999,})(?=\n|\Z)", re.M | re.S)
_CONTROL = re.compile(rb"([\x00\r])", re.S)
_C0 = re.compile(rb"^([\x00-\x08\x0b-\x1f\x7f])", re.S)
_C1 = re.compile(rb"((?:\xc2|\xe0\x82|\xf0\x80\x82)[\x80-\x9f])", re.S)
_UTF8_CHAR = re.compile(
    rb"([\xc0-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3})", re.S)
_VALID_UTF8 = re.compile(
    rb"(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]"
    rb"|[\xe1-\xec][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]|[\xee-\xef][\x80-\xbf]{2}"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2})*", re.S)
_PARTIAL_TAILS = (
    re.compile(rb"[\xc0-\xdf]\Z", re.S),
    re.compile(rb"[\xe0-\xef][\x80-\xbf]{0,1}\Z", re.S),
    re.compile(rb"[\xf0-\xf7][\x80-\xbf]{0,2}\Z", re.S),
    re.compile(rb"[\xf8-\xfb][\x80-\xbf]{0,3}\Z", re.S),
    re.compile(rb"[\xfc-\xfd][\x80-\xbf]{0,4}\Z", re.S),
    re.compile(rb"\xfe[\x80-\xbf]{0,5}\Z", re.S),
)
_ESCAPE = re.compile(rb"([^\x20-\x7e]|\\(?=x\{))", re.S)


def is_valid_utf8(data: bytes) -> bool:
    """RFC 3629 UTF-8 (no surrogates, no overlongs), as amavis tests it."""
    return _VALID_UTF8.fullmatch(data) is not None


def truncate_utf8(data: bytes, max_len: int) -> bytes:
    """Cut to ``max_len`` bytes, then drop a partial last UTF-8 character."""
    if max_len <= 0:
        return b""
    data = data[:max_len]
    if _NON_ASCII.search(data):
        for pattern in _PARTIAL_TAILS:
            data, count = pattern.subn(b"", data, count=1)
            if count:
                break
    return data


def _substr(data: bytes, offset: int, length: int | None = None) -> bytes:
    """Perl's ``substr(EXPR, OFFSET[, LENGTH])`` for the offsets this check uses."""
    size = len(data)
    start = offset + size if offset < 0 else offset
    if start > size or start < 0:
        start = min(max(start, 0), size)
    if length is None:
        return data[start:]
    end = start + length if length >= 0 else size + length
    return data[start:max(end, start)]


def _chomp(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\n") else data


class _Scan:
    """A field and its Perl ``pos()``: a ``//g`` match starts where the last one ended.

    The C0/C1/UTF-8 tests depend on it, so it is modelled rather than guessed.
    """

    def __init__(self, data: bytes):
        self.data = data
        self.pos: int | None = None

    def g(self, pattern: re.Pattern[bytes]) -> re.Match[bytes] | None:
        """Scalar-context ``$x =~ /.../g``: a failure resets ``pos`` to undef."""
        match = pattern.search(self.data, self.pos or 0)
        self.pos = match.end() if match else None
        return match


def _escape(text: bytes) -> str:
    """Non-ASCII and controls as ``\\x{XX}``, but only when some byte is non-ASCII."""
    if _NON_ASCII.search(text):
        text = _ESCAPE.sub(lambda m: b"\\x{%02X}" % m.group(1)[0], text)
    return text.decode("latin-1")


# ---------------------------------------------------------------- the check
@dataclass
class _Found:
    """The first failing test of one field, before the excerpt is built."""

    test: str
    minor: int
    prefix: bytes
    mid: bytes = b""                # the offending bytes
    excerpt: bytes | None = None    # given outright (syntax, long), else built
    pos: int = 0                    # Perl pos(): where the matching test stopped


def _field_fault(head: bytes, field_name: bytes | None, tests: Mapping[str, bool],
                 smtputf8: bool) -> _Found | None:
    """Run the per-field tests in amavis's order; the first one that fails counts."""
    scan = _Scan(head)
    if field_name is None or field_name.startswith(b"--"):
        if tests.get("syntax"):
            return _Found("syntax", MINOR_SYNTAX, b"Invalid header field syntax",
                          excerpt=head)
        return None
    if tests.get("syntax") and (m := _NON_ASCII.search(field_name)):
        # pos(field) was never set: amavis builds the excerpt as if at offset 0
        return _Found("syntax", MINOR_SYNTAX,
                      b"Invalid header field name, contains non-ASCII char", m.group(1))
    if tests.get("empty") and (m := scan.g(_WS_ONLY_LINE)):
        return _Found("empty", MINOR_EMPTY,
                      b"Improper folded header field made up entirely of whitespace",
                      m.group(1), pos=m.end())
    if tests.get("long") and (m := scan.g(_LONG_LINE)):
        excerpt = m.group(1)
        if len(excerpt) > 55:
            excerpt = excerpt[:50] + b"[...]"
        return _Found("long", MINOR_LONG, b"Header line longer than 998 characters",
                      excerpt=excerpt)
    if tests.get("control") and (m := scan.g(_CONTROL)):
        return _Found("control", MINOR_CONTROL, b"Improper use of control character",
                      m.group(1), pos=m.end())
    if tests.get("8bit") and (m := scan.g(_NON_ASCII)):
        found = _Found("8bit", MINOR_8BIT, b"", m.group(1), pos=m.end())
        if not is_valid_utf8(head):
            found.prefix = b"Non-encoded non-ASCII data (and not UTF-8)"
        elif m := scan.g(_C0):  # never matches: tried from pos > 0 with a bare ^
            found.mid, found.pos = m.group(1), m.end()
            found.prefix = b"UTF-8 string contains C0 Controls"
        elif m := scan.g(_C1):
            found.mid, found.pos = m.group(1), m.end()
            found.prefix = b"UTF-8 string contains C1 Controls"
        elif smtputf8:
            pass  # UTF-8 header bodies are valid with SMTPUTF8
        elif tests.get("utf8"):
            found.test, found.prefix = "utf8", b"Non-encoded UTF-8 string in non-EAI mail"
            if m := scan.g(_UTF8_CHAR):
                found.mid = m.group(1)
            found.pos = scan.pos or 0
        return found if found.prefix else None
    return None


def _excerpt(head: bytes, field_name: bytes, mid: bytes, pos: int) -> tuple[bytes, bytes]:
    """``pre . mid . post`` around the offending bytes, shortened as amavis does."""
    pre = _substr(head, 0, pos - len(mid))
    post = _chomp(_substr(head, pos))
    if len(mid) > 20:
        mid = truncate_utf8(mid, 15) + b"[...]"
    if len(post) > 20:
        post = truncate_utf8(post, 15) + b"[...]"
    if len(pre) - len(field_name) - 2 > 50 - len(post):
        pre = field_name + b": ..." + _substr(pre, len(pre) - (45 - len(post)))
    return pre + mid + post, mid


def format_mime_error(errors: Iterable[str]) -> str | None:
    """MIME::Parser's errors as one line: ``; ``-joined, spaces squeezed, 250 chars.

    pipeline.md section 6.1; the same text follows ``MIME error: `` here and
    ``WARN: MIME::Parser`` in the log.
    """
    errors = list(errors)
    if not errors:
        return None
    text = "; ".join(errors)
    text = re.sub(r"[ \t\n\r\f\v]+\Z", "", text)
    text = re.sub(r"[ \t\r]*\n+", "; ", text)
    text = re.sub(r"[ \t\n\r\f\v]+", " ", text)
    if len(text) > MIME_ERROR_LIMIT:
        text = text[:MIME_ERROR_LIMIT] + "[...]"
    return text


def run(header_block: bytes, *, smtputf8: bool = False,
        allowed_tests: Mapping[str, bool] | None = None,
        mime_errors: Iterable[str] = ()) -> list[HeaderFault]:
    """All bad-header findings of one message, in amavis's order (section 8).

    ``header_block`` is the original header section (LF line ends; the empty line
    that ends it may be included).  ``allowed_tests`` is ``%allowed_header_tests``
    of the policy bank in force (default ``ALLOWED_HEADER_TESTS``); ``smtputf8``
    is whether the client said SMTPUTF8; ``mime_errors`` are the MIME parser's
    errors (``PartsTree.mime_errors``), reported last as ``MIME error: ...`` when
    the ``mime`` test is on.  Per-field findings come first (at most one per field,
    at most 100), then missing and duplicate fields, then the MIME error.
    """
    tests = ALLOWED_HEADER_TESTS if allowed_tests is None else allowed_tests
    faults: list[HeaderFault] = []
    if any(True for _ in tests):  # amavis skips the header tests when the hash is empty
        faults = _header_faults(header_block, tests, smtputf8)
    if tests.get("mime"):
        mime_err = format_mime_error(mime_errors)
        if mime_err:
            faults.append(HeaderFault("mime", MINOR_MIME, "MIME error: " + mime_err))
    return faults


def _header_faults(header_block: bytes, tests: Mapping[str, bool],
                   smtputf8: bool) -> list[HeaderFault]:
    counts: dict[bytes, int] = {}
    raw: list[tuple[str, int, bytes]] = []
    minor = 0
    for head in split_fields(header_block):
        m = _FIELD_NAME.match(head)
        field_name = m.group(1) if m else None
        if field_name is not None:
            key = field_name.lower()
            counts[key] = counts.get(key, 0) + 1
        found = _field_fault(head, field_name, tests, smtputf8)
        if found is None:
            continue
        prefix, mid, excerpt = found.prefix, found.mid, found.excerpt
        if excerpt is None:
            excerpt, mid = _excerpt(head, field_name or b"", mid, found.pos)
        if mid and len(mid) <= 4:
            prefix += b" (char " + b" ".join(b"%02X" % c for c in mid) + b" hex)"
        test, fminor = found.test, found.minor
        minor = max(minor, fminor)
        raw.append((test, fminor, prefix + b": " + excerpt))
        if len(raw) >= MAX_FIELD_FINDINGS:
            break
    for name in SINGLETON_FIELDS:
        n = counts.get(name.lower().encode(), 0)
        if not n and tests.get("missing") and name in REQUIRED_FIELDS:
            raw.append(("missing", MINOR_MISSING,
                        b'Missing required header field: "%s"' % name.encode()))
            minor = max(minor, MINOR_MISSING)
        elif n > 1 and tests.get("multiple"):
            text = (b'Duplicate header field: "%s"' % name.encode() if n == 2 else
                    b'Header field occurs more than once: "%s" occurs %d times'
                    % (name.encode(), n))
            raw.append(("multiple", MINOR_MULTIPLE, text))
            minor = max(minor, MINOR_MULTIPLE)
    faults = [HeaderFault(test, fminor, _escape(text)) for test, fminor, text in raw]
    if not faults:
        do_log(5, "check_header: %d, OK", minor)
    for fault in faults:
        do_log(2, "check_header: %d, %s", minor, fault.text)
    return faults


def badh_minors(faults: Iterable[HeaderFault]) -> list[int]:
    """The CC_BADH minors amavis adds for these findings, highest first.

    The header tests add one ``4,<max minor>``; a MIME error adds ``4,1`` of its
    own (pipeline.md section 12.3), so a message can carry both.
    """
    faults = list(faults)
    header = [f.minor for f in faults if f.test != "mime"]
    minors = [max(header)] if header else []
    if any(f.test == "mime" for f in faults) and MINOR_MIME not in minors:
        minors.append(MINOR_MIME)
    return minors
