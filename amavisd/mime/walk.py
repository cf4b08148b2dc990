"""The streaming MIME splitter: email.txt -> parts/pNNN files and the parts tree.

Runs in the child, once per message, before the decoder loop (spec/pipeline.md
section 2 step 12, section 6.1).  It does what amavisd's MIME::Parser set-up does
(``extract_nested_messages(0)``, ``extract_uuencode(1)``, ``ignore_errors(1)``) but
never holds the message, or a body, in memory (DESIGN.md "Memory"): email.txt is
read in 1 MiB chunks, header blocks are parsed with the stdlib ``email`` package
(compat32), and bodies are decoded incrementally straight into files.

Behaviour mirrored from MIME-tools 5.510 as amavisd uses it (section 6.1):

* a boundary line starts with ``--``, trailing blanks/CR ignored; it may close an
  outer multipart too (the inner one then gets no epilogue); the line end before
  a boundary line belongs to the boundary;
* with several ``boundary`` parameters the **last** one is used and the container
  gets attribute ``B`` (CVE-2024-28054);
* ``message/rfc822`` is a leaf; ``multipart/digest`` children default to it;
* leaves are numbered in parse order; container pseudo parts and saved
  preambles/epilogues are numbered afterwards, in a depth-first walk, so a
  two-part message is p001, p002 and the container p003, as in amavisd's log;
* a text/plain 7bit/8bit/binary body holding ``begin NNN`` lines becomes a
  multipart/mixed container of its leading text and the uudecoded files;
* names: Content-Disposition ``filename`` and Content-Type ``name``, each
  RFC 2047/2231-decoded and raw (an RFC 2231 value's raw form is re-encoded as an
  encoded word, as MIME-tools does), deduplicated.

Every bound is explicit: parts (``max_files``), multipart nesting (an explicit
stack, never Python recursion), header block size, line length.
"""

from __future__ import annotations

import binascii
import codecs
import errno
import os
import re
from dataclasses import dataclass, field
from email import policy as _policy
from email.errors import HeaderParseError
from email.header import decode_header
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import BinaryIO

from amavisd.parts import (
    ATTR_AMBIGUOUS,
    ATTR_ENCRYPTED,
    ATTR_UNDECIPHERABLE,
    LimitExceeded,
    Part,
    PartsTree,
)

CHUNK = 1 << 20                 # read size: DESIGN.md asks for large chunks
MAX_HEADER_BLOCK = 4 << 20      # section 4: header parsing stops at 4 MiB
MAX_LINE = 64 << 10             # longest line kept whole when reading headers
MAX_BOUNDARY_LINE = 1024        # a longer line is never a boundary (RFC 2046: <= 70)
MAX_MIME_DEPTH = 100            # multipart nesting kept; deeper is a hold
MAX_ERRORS = 50                 # MIME errors kept (amavis logs at most 250 chars)
#: Parts are readable by the daemon's group, so a virus scanner daemon that opens
#: them itself (clamd CONTSCAN) can read them when its user is in that group (Debian:
#: ``adduser clamav amavis``); see docs/virus-scanning.md.  Set whatever the umask.
PART_FILE_MODE = 0o640
PARTS_DIR_MODE = 0o750

_HEADER_PARSER = BytesHeaderParser(policy=_policy.compat32)
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)
# section 6.1: a preamble/epilogue of more than 5 lines or with other characters is kept
_PE_ALLOWED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/@:;,. \t\n_-"
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DELETE = bytes(b for b in range(256) if b not in _B64_ALPHABET)
_UU_BEGIN = re.compile(rb"(?:^|\n)begin [0-7]{3}")
_UU_BEGIN_LINE = re.compile(rb"^begin\s+([0-7]{3,4})\s+(.*?)\s*$")
_IMAGE_EXT = re.compile(r"\.(gif|jpe?g|xbm|xpm|png)\Z", re.IGNORECASE)
_IDENTITY_ENCODINGS = {"7bit", "8bit", "binary", "none"}
_UU_ENCODINGS = {"x-uu", "x-uuencode", "uuencode", "x-uue"}


def ensure_parts_dir(parts_dir: Path) -> None:
    """Create ``parts/`` (0750: us and our group); refuse a symlink in its place."""
    try:
        os.mkdir(parts_dir, PARTS_DIR_MODE)
    except FileExistsError:
        pass
    st = os.lstat(parts_dir)
    if not os.path.isdir(parts_dir) or os.path.islink(parts_dir):
        raise OSError(errno.ENOTDIR, "parts folder is not a directory", str(parts_dir))
    if st.st_mode & 0o777 != PARTS_DIR_MODE:
        os.chmod(parts_dir, PARTS_DIR_MODE)


def create_part_file(path: Path) -> int:
    """Open a new part file for writing: O_EXCL|O_NOFOLLOW, mode 0640 whatever the umask."""
    fd = os.open(path, _OPEN_FLAGS, PART_FILE_MODE)
    try:
        os.fchmod(fd, PART_FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


# --------------------------------------------------------------------------
# Header parameters, as MIME-tools reads them


def _bytes_to_text(raw: bytes) -> str:
    """Header/name bytes to text: UTF-8 when valid, else ISO-8859-1 (never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _lookup_charset(name: str) -> str:
    name = name.split("*", 1)[0].strip().lower()     # RFC 2231 section 5 language suffix
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "latin-1"


def decode_words(raw: str) -> str:
    """RFC 2047 decoding of a name; unencoded runs are bytes read as UTF-8/ISO-8859-1.

    ``raw`` holds header bytes one char per byte (latin-1).  Returns '' when the
    encoded words cannot be decoded (amavis then keeps only the raw form).
    """
    if "=?" not in raw:
        return _bytes_to_text(raw.encode("latin-1", "replace"))
    try:
        chunks = decode_header(raw)
    except (HeaderParseError, ValueError, binascii.Error):
        return ""
    out = []
    for data, charset in chunks:
        if isinstance(data, str):
            data = data.encode("latin-1", "replace")
        if charset:
            out.append(data.decode(_lookup_charset(charset), "replace"))
        else:
            out.append(_bytes_to_text(data))
    return "".join(out)


def _q_reencode(value: bytes) -> str:
    """MIME-tools' re-encoding of an RFC 2231 value: =XX for [=?_], controls, 8-bit; _ for space."""
    out = []
    for b in value:
        if b in (0x3D, 0x3F, 0x5F) or b < 0x20 or b >= 0x7F:
            out.append(f"={b:02X}")
        elif b == 0x20:
            out.append("_")
        else:
            out.append(chr(b))
    return "".join(out)


_PARAM_NAME = re.compile(r"\s*([^\s=;\"]+)\s*=\s*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"?', re.S)
_ENCWORD = re.compile(r"=\?[^?]*\?[A-Za-z]\?[^?]*\?=")
_TOKEN = re.compile(r'[^\s;"]*')
_RFC2231_NAME = re.compile(r"^([^*]+)(?:\*([^*]+))?(\*)?\Z")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def parse_params(raw: str) -> tuple[str, dict[str, str], int]:
    """Split a structured field value: (first token, parameters, number of 'boundary' params).

    Like MIME-tools' ParamVal: folding removed, a repeated parameter keeps its
    **last** value, RFC 2231 continuations are joined in order and an encoded one
    becomes ``=?charset[*lang]?Q?...?=``.  ``raw`` is one char per header byte.
    """
    text = raw.replace("\r", "").replace("\n", "").strip()
    semi = text.find(";")
    first = (text if semi < 0 else text[:semi]).strip()
    params: dict[str, str] = {}
    pieces: dict[str, dict[int, str]] = {}
    encoded: set[str] = set()
    nbound = 0
    pos = semi
    while 0 <= pos < len(text):
        nxt = text.find(";", pos)
        if nxt < 0:
            break
        pos = nxt + 1
        m = _PARAM_NAME.match(text, pos)
        if not m:
            continue
        name = m.group(1).lower()
        pos = m.end()
        if pos < len(text) and text[pos] == '"':
            q = _QUOTED.match(text, pos)
            assert q is not None
            value = re.sub(r"\\(.)", r"\1", q.group(1))
            pos = q.end()
        else:
            e = _ENCWORD.match(text, pos)
            t = e or _TOKEN.match(text, pos)
            assert t is not None
            value = t.group(0)
            pos = t.end()
        if name == "boundary":
            nbound += 1
        if "*" in name:
            r = _RFC2231_NAME.match(name)
            if r:
                base, num, star = r.group(1), r.group(2) or "0", r.group(3)
                try:
                    idx = int(num)
                except ValueError:
                    idx = 0
                if star:
                    value = _PERCENT.sub(lambda x: bytes([int(x.group(1), 16)]),
                                         value.encode("latin-1", "replace")).decode("latin-1")
                    encoded.add(base)
                seg = pieces.setdefault(base, {})
                seg[idx] = seg.get(idx, "") + value
                continue
        params[name] = value
    for base, seg in pieces.items():
        value = "".join(seg[i] for i in sorted(seg))
        if base in encoded:
            parts = value.split("'", 2)
            if len(parts) >= 2:
                charset = parts[0]
                lang = parts[1] if len(parts) == 3 else ""
                rest = parts[-1]
                if lang:
                    charset += "*" + lang
                value = f"=?{charset}?Q?{_q_reencode(rest.encode('latin-1', 'replace'))}?="
        params[base] = value
    return first, params, nbound


# --------------------------------------------------------------------------
# Streaming reader


class _Scanner:
    """A window over email.txt: bounded header lines, and body copy up to a boundary."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.buf = b""
        self.pos = 0
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(CHUNK)
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + data if self.pos < len(self.buf) else data
        self.pos = 0
        return True

    def readline(self) -> bytes:
        """One line with its LF, at most MAX_LINE bytes (a longer line comes in pieces)."""
        while True:
            nl = self.buf.find(b"\n", self.pos, self.pos + MAX_LINE)
            if nl >= 0:
                line = self.buf[self.pos:nl + 1]
                self.pos = nl + 1
                return line
            if len(self.buf) - self.pos >= MAX_LINE or not self._fill():
                line = self.buf[self.pos:self.pos + MAX_LINE]
                self.pos += len(line)
                return line

    def copy_body(self, sink: _Sink, bounds: dict[bytes, tuple[int, bool]],
                  at_line_start: bool = True) -> tuple[int, bool] | None:
        """Copy bytes to ``sink`` up to a boundary line in ``bounds``; None at EOF.

        ``bounds`` maps ``--B`` / ``--B--`` to (stack level, is_close).  The LF (and
        any CRs) before the boundary line belong to the delimiter (RFC 2046 5.1.1).
        """
        if not bounds:
            if self.pos < len(self.buf):
                sink.write(self.buf[self.pos:])
            self.buf, self.pos = b"", 0
            while True:
                data = self.fh.read(CHUNK)
                if not data:
                    self.eof = True
                    return None
                sink.write(data)
        if at_line_start:
            # A boundary as the very first line: pretend a LF precedes it.
            hit = self._match_at(self.pos, bounds, virtual=True)
            if hit is not None:
                return hit
        while True:
            buf = self.buf
            idx = buf.find(b"\n--", self.pos)
            if idx < 0:
                if self.eof:
                    if self.pos < len(buf):
                        sink.write(buf[self.pos:])
                    self.pos = len(buf)
                    return None
                cut = max(self.pos, len(buf) - 2)
                back = 0
                while cut > self.pos and buf[cut - 1] == 0x0D and back < 16:
                    cut -= 1
                    back += 1
                if cut > self.pos:
                    sink.write(buf[self.pos:cut])
                    self.pos = cut
                self._fill()
                continue
            eol = buf.find(b"\n", idx + 1, idx + 1 + MAX_BOUNDARY_LINE)
            if eol < 0 and not self.eof and len(buf) - idx <= MAX_BOUNDARY_LINE:
                if idx > self.pos:
                    end = idx
                    while end > self.pos and buf[end - 1] == 0x0D:
                        end -= 1
                    sink.write(buf[self.pos:end])
                    self.pos = end
                self._fill()
                continue
            line_end = eol if eol >= 0 else min(len(buf), idx + 1 + MAX_BOUNDARY_LINE)
            key = buf[idx + 1:line_end].rstrip(b" \t\r")
            hit = bounds.get(key)
            if hit is None:
                sink.write(buf[self.pos:idx + 1])
                self.pos = idx + 1
                continue
            end = idx
            while end > self.pos and buf[end - 1] == 0x0D:
                end -= 1
            if end > self.pos:
                sink.write(buf[self.pos:end])
            self.pos = eol + 1 if eol >= 0 else len(buf)
            return hit

    def _match_at(self, start: int, bounds: dict[bytes, tuple[int, bool]],
                  virtual: bool) -> tuple[int, bool] | None:
        while True:
            eol = self.buf.find(b"\n", start, start + MAX_BOUNDARY_LINE)
            if eol >= 0 or self.eof or len(self.buf) - start > MAX_BOUNDARY_LINE:
                break
            if not self._fill():
                break
            start = self.pos
        if not self.buf.startswith(b"--", start):
            return None
        line_end = eol if eol >= 0 else min(len(self.buf), start + MAX_BOUNDARY_LINE)
        hit = bounds.get(self.buf[start:line_end].rstrip(b" \t\r"))
        if hit is not None:
            self.pos = eol + 1 if eol >= 0 else len(self.buf)
        return hit

    def read_header(self, bounds: dict[bytes, tuple[int, bool]],
                    errors: list[str]) -> tuple[bytes, tuple[int, bool] | None, bool]:
        """Header lines up to the empty line: (block, boundary hit instead, at EOF).

        Over MAX_HEADER_BLOCK the rest of the block is skipped, not stored.
        """
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.readline()
            if not line:
                return b"".join(lines), None, True
            if line in (b"\n", b"\r\n", b"\r"):
                return b"".join(lines), None, False
            if bounds and line.startswith(b"--"):
                hit = bounds.get(line.rstrip(b" \t\r\n"))
                if hit is not None:
                    _err(errors, "bogus part, without CRLF before body")
                    return b"".join(lines), hit, False
            if size < MAX_HEADER_BLOCK:
                lines.append(line)
                size += len(line)
                if size >= MAX_HEADER_BLOCK:
                    _err(errors, "header block too long, rest skipped")


def _err(errors: list[str], text: str) -> None:
    if len(errors) < MAX_ERRORS:
        errors.append(text)


# --------------------------------------------------------------------------
# Body sinks: content-transfer decoders writing to a file


class _Sink:
    """Receives raw body bytes."""

    size = 0

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _NullSink(_Sink):
    def write(self, data: bytes) -> None:
        pass


class _FileSink(_Sink):
    """Decodes a body (base64, quoted-printable, x-uuencode or as is) into one file."""

    def __init__(self, path: Path, encoding: str, hunt_uu: bool) -> None:
        self.path = path
        self.fd = create_part_file(path)
        self.encoding = encoding
        self.carry = b""
        self.size = 0
        self.hunt_uu = hunt_uu
        self.uu_seen = False
        self._uu_tail = b"\n"
        self._uu: _UUDecoder | None = _UUDecoder() if encoding in _UU_ENCODINGS else None

    def _out(self, data: bytes) -> None:
        if data:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            self.size += len(data)

    def write(self, data: bytes) -> None:
        enc = self.encoding
        if enc == "base64":
            s = self.carry + data.translate(None, _B64_DELETE) if self.carry else \
                data.translate(None, _B64_DELETE)
            n = len(s) & ~3
            self.carry = s[n:]
            if n:
                self._out(binascii.a2b_base64(s[:n]))
        elif enc == "quoted-printable":
            s = self.carry + data if self.carry else data
            cut = s.rfind(b"\n") + 1
            if cut == 0 and len(s) > 65536:
                cut = len(s) - 2
                eq = s.find(b"=", cut)
                if eq >= 0:
                    cut = eq
            self.carry = s[cut:]
            if cut:
                self._out(binascii.a2b_qp(s[:cut]))
        elif self._uu is not None:
            self._uu.feed(data, self._out)
        else:
            if self.hunt_uu and not self.uu_seen:
                if _UU_BEGIN.search(self._uu_tail + data):
                    self.uu_seen = True
                self._uu_tail = data[-12:]
            self._out(data)

    def close(self) -> None:
        try:
            if self.encoding == "base64" and self.carry:
                rest = len(self.carry)
                if rest >= 2:
                    self._out(binascii.a2b_base64(self.carry + b"=" * (4 - rest)))
            elif self.encoding == "quoted-printable" and self.carry:
                self._out(binascii.a2b_qp(self.carry))
            elif self._uu is not None:
                self._uu.finish(self._out)
        finally:
            self.carry = b""
            os.close(self.fd)


class _PreEpiSink(_Sink):
    """A preamble/epilogue: written to a temp file, kept only if section 6.1 says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = create_part_file(path)
        self.size = 0
        self.newlines = 0
        self.odd_chars = False
        self.last = b""

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.newlines += data.count(b"\n")
        if not self.odd_chars and data.translate(None, _PE_ALLOWED):
            self.odd_chars = True
        self.last = data[-1:]
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)

    @property
    def keep(self) -> bool:
        lines = self.newlines + (1 if self.size and self.last != b"\n" else 0)
        return lines > 5 or self.odd_chars


class _UUDecoder:
    """uudecode of one file: lines after ``begin`` up to ``end``; tolerant of bad lines."""

    def __init__(self) -> None:
        self.state = 0          # 0 before begin, 1 inside, 2 done
        self.carry = b""
        self.name: str | None = None

    def feed(self, data: bytes, out) -> None:
        s = self.carry + data
        lines = s.split(b"\n")
        self.carry = lines.pop()
        if len(self.carry) > MAX_LINE:
            self.carry = b""
        self._lines(lines, out)

    def finish(self, out) -> None:
        if self.carry:
            self._lines([self.carry], out)
            self.carry = b""

    def _lines(self, lines: list[bytes], out) -> None:
        for line in lines:
            if self.state == 2:
                return
            line = line.rstrip(b"\r")
            if self.state == 0:
                m = _UU_BEGIN_LINE.match(line)
                if m:
                    self.state = 1
                    self.name = _bytes_to_text(m.group(2))
                continue
            if line.strip() == b"end":
                self.state = 2
                continue
            if not line or line == b"`":
                continue
            out(_uu_line(line))


def _uu_line(line: bytes) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        n = (line[0] - 32) & 63
        body = line[1:1 + (n * 4 + 2) // 3]
        try:
            return binascii.a2b_uu(bytes([line[0]]) + body)
        except binascii.Error:
            return b""


# --------------------------------------------------------------------------
# The walk


@dataclass
class _Entity:
    """One MIME entity while parsing; becomes a Part (leaf or pseudo) afterwards."""

    placement: str
    default_type: str = "text/plain"
    mime_type: str = "text/plain"
    effective_type: str = "text/plain"
    encoding: str | None = None
    names: list[str] = field(default_factory=list)
    report_type: str | None = None
    ambiguous: bool = False
    multipart: bool = False
    boundary: bytes = b""
    children: list[_Entity] = field(default_factory=list)
    part: Part | None = None
    preamble: _PreEpiSink | None = None
    epilogue: _PreEpiSink | None = None
    nchild: int = 0


class MimeWalk:
    """Splits one message; ``run()`` returns the parts issued (tier 1 of section 6.5)."""

    def __init__(self, spool_path: Path, tree: PartsTree, parts_dir: Path, *,
                 max_files: int | None, max_depth: int = MAX_MIME_DEPTH) -> None:
        self.spool_path = spool_path
        self.tree = tree
        self.parts_dir = parts_dir
        self.max_files = max_files or 0
        self.max_depth = max_depth
        self.errors: list[str] = []
        self.issued: list[Part] = []
        self._tmp = 0
        self._entities = 0

    # -- helpers -----------------------------------------------------------
    def _tmp_path(self) -> Path:
        self._tmp += 1
        return self.parts_dir / f".mime{self._tmp}"

    def _new_part(self, with_file: bool) -> Part:
        name = self.tree.new_name(None, ignore_limit=True)   # MIME parts ignore $MAXFILES
        part = Part(base_name=name, depth=1, decoded_by=None)
        if with_file:
            part.path = self.parts_dir / name
        self.issued.append(part)
        return part

    def _analyse(self, ent: _Entity, block: bytes) -> None:
        """Fill the entity from its header block (stdlib email, compat32)."""
        ent.mime_type = ent.effective_type = ent.default_type
        if not block:
            return
        if block.startswith(b"\xef\xbb\xbf"):
            block = block[3:]
        msg = _HEADER_PARSER.parsebytes(block)
        ctype = _field(msg, "content-type")
        cte = _field(msg, "content-transfer-encoding")
        disp = _field(msg, "content-disposition")
        params: dict[str, str] = {}
        if ctype is not None:
            first, params, nbound = parse_params(ctype)
            first = first.lower()
            if "/" in first and first.split("/", 1)[0] and first.split("/", 1)[1]:
                ent.mime_type = ent.effective_type = first
            if first.startswith("multipart/"):
                ent.ambiguous = nbound > 1
            rt = params.get("report-type")
            if rt:
                ent.report_type = _bytes_to_text(rt.encode("latin-1", "replace"))
        if cte is not None:
            ent.encoding = cte.strip().lower() or None
        names: list[str] = []
        if disp is not None:
            _add_name(names, parse_params(disp)[1].get("filename"))
        _add_name(names, params.get("name"))
        ent.names = names
        if ent.mime_type.startswith("multipart/"):
            bound = params.get("boundary")
            if bound is None or "\r" in bound or "\n" in bound or bound == "":
                _err(self.errors, "multipart boundary is missing, or contains CR or LF")
                ent.effective_type = "application/x-unparseable-multipart"
            else:
                ent.multipart = True
                ent.boundary = bound.encode("latin-1", "replace")
        if not ent.multipart:
            enc = ent.encoding or "7bit"
            if enc not in _IDENTITY_ENCODINGS and enc not in _UU_ENCODINGS and \
                    enc not in ("base64", "quoted-printable"):
                _err(self.errors, f"Unsupported encoding '{enc}': using 'binary'")
                ent.effective_type = "application/octet-stream"

    def _leaf_sink(self, ent: _Entity) -> _FileSink:
        enc = ent.encoding or "7bit"
        if ent.effective_type == "application/octet-stream" and enc not in (
                "base64", "quoted-printable") and enc not in _UU_ENCODINGS:
            enc = "binary"
        hunt = enc in _IDENTITY_ENCODINGS and ent.effective_type in (
            "text/plain", "application/mac-binhex40", "application/mac-binhex")
        return _FileSink(self._tmp_path(), enc, hunt)

    def _finish_leaf(self, ent: _Entity, sink: _FileSink) -> None:
        sink.close()
        self.tree.bytes_extracted += sink.size       # MIME bytes: charged, may exceed (6.5)
        if sink.uu_seen and self._split_uuencode(ent, sink.path):
            os.unlink(sink.path)
            return
        part = self._new_part(with_file=True)
        assert part.path is not None
        os.rename(sink.path, part.path)
        part.size = sink.size
        ent.part = part

    def _split_uuencode(self, ent: _Entity, path: Path) -> bool:
        """extract_uuencode(1): the text part becomes multipart/mixed of text + files."""
        pieces: list[_Entity] = []
        preamble = bytearray()
        state = 0                     # 0 text before the first begin, 1 inside, 2 after end
        fd = -1
        uu = _UUDecoder()
        cur: _Entity | None = None
        size = 0

        def out(data: bytes) -> None:
            nonlocal size
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            size += len(data)

        def close_current() -> None:
            nonlocal fd, cur, size
            if cur is not None and cur.part is not None:
                os.close(fd)
                cur.part.size = size
                self.tree.bytes_extracted += size
            fd, cur, size = -1, None, 0

        try:
            with open(path, "rb") as fh:
                for raw in _bounded_lines(fh):
                    line = raw.rstrip(b"\r\n")
                    if state != 1:
                        m = _UU_BEGIN_LINE.match(line)
                        if m and re.match(rb"[0-7]{3}$", m.group(1)[:3]):
                            if not pieces and preamble.strip():
                                text = _Entity(placement="", mime_type="text/plain",
                                               effective_type="text/plain")
                                part = self._new_part(with_file=True)
                                assert part.path is not None
                                pfd = create_part_file(part.path)
                                try:
                                    os.write(pfd, bytes(preamble))
                                finally:
                                    os.close(pfd)
                                part.size = len(preamble)
                                self.tree.bytes_extracted += part.size
                                text.part = part
                                pieces.append(text)
                            preamble = bytearray()
                            name = _bytes_to_text(m.group(2))
                            itype = "application/octet-stream"
                            im = _IMAGE_EXT.search(name)
                            if im:
                                itype = "image/" + im.group(1).lower()
                            cur = _Entity(placement="", mime_type=itype, effective_type=itype,
                                          names=[name] if name else [])
                            cur.part = self._new_part(with_file=True)
                            assert cur.part.path is not None
                            fd = create_part_file(cur.part.path)
                            pieces.append(cur)
                            uu = _UUDecoder()
                            uu.state = 1
                            state = 1
                            continue
                        if not pieces and len(preamble) < MAX_HEADER_BLOCK:
                            preamble += raw
                        continue
                    uu._lines([line], out)
                    if uu.state == 2:
                        close_current()
                        state = 2
        finally:
            close_current()
        if not any(p.mime_type != "text/plain" or p.names for p in pieces):
            for p in pieces:
                if p.part is not None and p.part.path is not None:
                    _unlink_quiet(p.part.path)
                    self.issued.remove(p.part)
            return False
        _err(self.errors, "Found a uu attachment")
        ent.multipart = True
        ent.mime_type = ent.effective_type = "multipart/mixed"
        ent.names = []
        ent.encoding = None
        for i, p in enumerate(pieces, 1):
            p.placement = f"{ent.placement}/{i}"
        ent.children = pieces
        return True

    # -- main loop -------------------------------------------------------------
    def run(self) -> list[Part]:
        """Split the message; errors go to ``tree.mime_errors``; never raises on bad mail."""
        ensure_parts_dir(self.parts_dir)
        top = _Entity(placement="1")
        try:
            with open(self.spool_path, "rb", buffering=0) as fh:
                self._parse(_Scanner(fh), top)
        finally:
            self._number(top)
        if self.errors:
            self.tree.mime_errors.extend(self.errors)
        return self.issued

    def _parse(self, sc: _Scanner, top: _Entity) -> None:
        stack: list[_Entity] = []           # open multiparts, outermost first
        bounds: dict[bytes, tuple[int, bool]] = {}
        ent: _Entity | None = top
        while ent is not None:
            self._entities += 1
            if self.max_files and self._entities > self.max_files:
                _err(self.errors, "Unable to parse, perhaps message contains too many parts")
                self.tree.hold = self.tree.hold or \
                    f"Maximum number of files ({self.max_files}) exceeded"
                self.tree.over_levels = True
                return
            block, hit, _eof = sc.read_header(bounds, self.errors)
            self._analyse(ent, block)
            if hit is None:
                if ent.multipart and len(stack) >= self.max_depth:
                    _err(self.errors, f"MIME nesting deeper than {self.max_depth} levels")
                    self.tree.hold = self.tree.hold or \
                        f"Maximum MIME nesting depth ({self.max_depth}) exceeded"
                    self.tree.over_levels = True
                    ent.multipart = False
                    ent.effective_type = "application/octet-stream"
                if ent.multipart:
                    stack.append(ent)
                    level = len(stack) - 1
                    bounds[b"--" + ent.boundary] = (level, False)
                    bounds[b"--" + ent.boundary + b"--"] = (level, True)
                    ent.preamble = _PreEpiSink(self._tmp_path())
                    try:
                        hit = sc.copy_body(ent.preamble, bounds)
                    finally:
                        ent.preamble.close()
                    if hit is None:
                        _err(self.errors, "unexpected end of preamble")
                    elif hit == (level, True):
                        _err(self.errors, "empty multipart message")
                else:
                    sink = self._leaf_sink(ent)
                    try:
                        hit = sc.copy_body(sink, bounds)
                    finally:
                        self._finish_leaf(ent, sink)
            elif ent.multipart:
                ent.multipart = False            # a header cut short by a boundary
                self._finish_leaf(ent, self._leaf_sink(ent))
            else:
                self._finish_leaf(ent, self._leaf_sink(ent))
            ent = None
            while True:                          # act on how the body ended
                if hit is None:
                    if stack:
                        _err(self.errors, "part did not end with expected boundary")
                    return
                level, close = hit
                while len(stack) - 1 > level:    # an outer boundary ends inner multiparts
                    _pop(stack, bounds)
                    _err(self.errors, "unexpected end of parts before epilogue")
                parent = stack[-1]
                if not close:
                    parent.nchild += 1
                    default = "message/rfc822" if parent.mime_type == "multipart/digest" \
                        else "text/plain"
                    ent = _Entity(placement=f"{parent.placement}/{parent.nchild}",
                                  default_type=default)
                    parent.children.append(ent)
                    break
                _pop(stack, bounds)
                parent.epilogue = _PreEpiSink(self._tmp_path())
                try:
                    hit = sc.copy_body(parent.epilogue, bounds, at_line_start=True)
                finally:
                    parent.epilogue.close()

    def _number(self, top: _Entity) -> None:
        """Depth-first, as amavis's traversal: preamble, the part itself, epilogue, children."""
        todo: list[tuple[_Entity, Part]] = [(top, self.tree.root)]
        while todo:
            ent, parent = todo.pop()
            self._pre_epi(ent.preamble, "preamble", ent.placement, parent)
            if ent.multipart:
                part: Part | None = self._new_part(with_file=False)
                assert part is not None
                part.decoded_by = "MimeParser"
                if ent.ambiguous:
                    part.attributes.add(ATTR_AMBIGUOUS)
            else:
                part = ent.part
            if part is not None:
                parent.add(part)
                part.placement = ent.placement
                part.declared_types = [ent.mime_type] if ent.mime_type == ent.effective_type \
                    else [ent.mime_type, ent.effective_type]
                if "encrypted" in ent.mime_type.partition("/")[2] or \
                        "encrypted" in ent.effective_type.partition("/")[2]:
                    part.attributes.update((ATTR_UNDECIPHERABLE, ATTR_ENCRYPTED))
                part.declared_names = list(ent.names)
                part.report_type = ent.report_type
                part.encoding = None if ent.multipart else ent.encoding
            self._pre_epi(ent.epilogue, "epilogue", ent.placement, parent)
            if part is not None:
                todo.extend((child, part) for child in reversed(ent.children))

    def _pre_epi(self, sink: _PreEpiSink | None, label: str, placement: str,
                 parent: Part) -> None:
        if sink is None:
            return
        if not sink.keep:
            _unlink_quiet(sink.path)
            return
        part = self._new_part(with_file=True)
        assert part.path is not None
        os.rename(sink.path, part.path)
        part.size = sink.size
        part.placement = placement
        part.declared_names = [label]
        parent.add(part)
        self.tree.bytes_extracted += sink.size


def _pop(stack: list[_Entity], bounds: dict[bytes, tuple[int, bool]]) -> None:
    ent = stack.pop()
    bounds.pop(b"--" + ent.boundary, None)
    bounds.pop(b"--" + ent.boundary + b"--", None)
    # a boundary reused by an outer multipart must stay matched at its own level
    for level, outer in enumerate(stack):
        if outer.boundary == ent.boundary:
            bounds[b"--" + outer.boundary] = (level, False)
            bounds[b"--" + outer.boundary + b"--"] = (level, True)


def _field(msg, name: str) -> str | None:
    """The first field ``name`` as one char per byte (compat32 keeps surrogates)."""
    value = msg.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value.encode("ascii", "surrogateescape").decode("latin-1") \
        if not value.isascii() else value


def _add_name(names: list[str], raw: str | None) -> None:
    """Decoded then raw form, both deduplicated (MIME.pm's name_declared)."""
    if raw is None or raw == "":
        return
    decoded = decode_words(raw)
    raw_text = _bytes_to_text(raw.encode("latin-1", "replace"))
    if decoded and decoded not in names:
        names.append(decoded)
    if raw_text not in names:
        names.append(raw_text)


def _bounded_lines(fh: BinaryIO):
    while True:
        line = fh.readline(MAX_LINE)
        if not line:
            return
        yield line


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mime_walk(spool_path: Path, tree: PartsTree, parts_dir: Path, *,
              max_files: int | None, max_depth: int = MAX_MIME_DEPTH) -> list[Part]:
    """Split ``spool_path`` into ``parts_dir`` and hang the parts under ``tree.root``.

    Returns the parts issued, in numbering order (the first decoding tier).  Bad
    MIME never raises: errors land in ``tree.mime_errors``; too many parts or too
    deep nesting set ``tree.hold``.  OSError (disk full, ...) propagates: that is
    our infrastructure failing, a tempfail (STYLE.md section 5).
    """
    tree.folder = parts_dir
    try:
        return MimeWalk(spool_path, tree, parts_dir, max_files=max_files,
                        max_depth=max_depth).run()
    except LimitExceeded as exc:          # not raised with ignore_limit; kept for safety
        tree.hold = tree.hold or str(exc)
        tree.over_levels = True
        return []
