"""Spool the DATA phase of an SMTP/LMTP session into ``email.txt``.

Runs in the child, inside the SMTP server's raw mode; a plain class with no
Twisted so it can be tested and reused (AM.PDP never spools, but bench tools do).

What it does (spec/protocols.md section 3.7):

* every CRLF becomes LF; bare CR and bare LF are stored unchanged;
* one dot directly after a CRLF is removed (RFC 5321 section 4.5.2).  Unlike
  Perl amavisd (spec section 9.3) the very first line is unstuffed too: the CRLF
  that ended the DATA command counts as the line start;
* the data end only at CRLF "." CRLF (or "." CRLF at the very start).  The
  look-alikes ``\\n.\\n``, ``\\r.\\r\\n``, ``\\n.\\r\\n`` and ``\\r\\n.\\n`` are data,
  never an end (the "SMTP smuggling" family);
* the size is counted per RFC 1870: CRLF counts two octets, stuffing dots and
  the terminating ".CRLF" do not count;
* past ``size_limit`` nothing more is written, but the input is read to the
  end so one reply can be sent (RFC 5321 section 4.2.5); the file then ends
  with ``\\n***TRUNCATED***\\n`` as Perl's does.

Speed: each chunk is handled with ``bytes.find``/``split``/``replace`` (C loops);
at most four bytes are carried between chunks, so the message is never held
in memory.
"""

from __future__ import annotations

import enum
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from amavisd.digest import BodyDigest

log = logging.getLogger(__name__)

#: The end-of-data marker, including the CRLF that ends the last data line.
END_MARKER = b"\r\n.\r\n"
#: Proper prefixes of END_MARKER, longest first: a chunk ending in one of them
#: cannot be decided yet, so that tail is carried to the next chunk.
_PARTIAL_MARKERS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
#: Written after the kept part of an oversized message (spec section 3.7).
TRUNCATED_TRAILER = b"\n***TRUNCATED***\n"
#: Large buffered writes: chunks are ~64 KiB, the buffer collects a few.
WRITE_BUFFER_SIZE = 256 * 1024
FILE_MODE = 0o640
#: CRLF plus the one stuffing dot that may follow it (RFC 5321 section 4.5.2).
_CRLF_DOT = re.compile(rb"\r\n\.?")


class SpoolState(enum.Enum):
    """NOMINAL while writing; TOO_BIG past the limit; FAILED after a write error."""

    NOMINAL = "nominal"
    TOO_BIG = "too_big"
    FAILED = "failed"


@dataclass(frozen=True)
class SpoolResult:
    """What ``DataSpool.close()`` reports about the spooled message."""

    path: Path
    size: int              # RFC 1870 size of the whole message, even when too big
    too_big: bool
    eight_bit: bool        # some byte >= 0x80 was seen
    error: str | None = None   # a write failure (disk full ...): reply 451, spec 3.7
    complete: bool = True      # False when closed before the final dot arrived
    body_digest: str | None = None  # hex digest of the body as stored (pipeline.md 5)


class DataSpool:
    """Takes DATA bytes in any chunking; writes the unstuffed message to ``path``.

    ``feed()`` returns None until the final dot arrived, then the bytes that
    followed it (pipelined commands, possibly ``b""``).
    """

    def __init__(self, path: Path, size_limit: int | None = None,
                 digest: BodyDigest | None = None):
        self.path = Path(path)
        self.digest = digest
        self.size_limit = size_limit
        self.state = SpoolState.NOMINAL
        self.size = 0
        self.eight_bit = False
        self.error: str | None = None
        self.ended = False
        # The CRLF that ended the DATA command: makes the first line a line start,
        # so a leading ".CRLF" ends the data and a leading ".." is unstuffed.
        self._carry = b"\r\n"
        self._at_start = True
        self._file: BinaryIO | None = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        """Open email.txt O_CREAT|O_TRUNC|O_WRONLY, mode 0640 whatever the umask."""
        fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            return os.fdopen(fd, "wb", buffering=WRITE_BUFFER_SIZE)
        except BaseException:
            os.close(fd)
            raise

    def feed(self, chunk: bytes) -> bytes | None:
        """Spool one chunk; return the bytes after the final dot once it arrived."""
        if self.ended:
            raise ValueError("DataSpool.feed() after the end of data")
        buf = self._carry + chunk if self._carry else chunk
        end = buf.find(END_MARKER)
        if end >= 0:
            self._carry = b""
            self._consume(buf[:end + 2])     # keep the CRLF ending the last line
            self.ended = True
            return buf[end + len(END_MARKER):]
        keep = _undecided_tail(buf)
        self._carry = buf[len(buf) - keep:] if keep else b""
        if keep < len(buf):
            self._consume(buf[:len(buf) - keep] if keep else buf)
        return None

    def _consume(self, region: bytes) -> None:
        """Convert a region holding no end marker and no cut-off CRLF; count; write."""
        if not self.eight_bit and not region.isascii():
            self.eight_bit = True
        if b"\r\n." in region:
            # One left-to-right pass, so a bare CR before CRLF "." stays a bare CR.
            dots = region.count(b"\r\n.")
            out = _CRLF_DOT.sub(b"\n", region)
        else:
            dots = 0
            out = region.replace(b"\r\n", b"\n")
        size = len(region) - dots
        if self._at_start:                 # drop the DATA command's own CRLF
            self._at_start = False
            size -= 2
            out = out[1:]
        self.size += size
        if self.digest is not None:
            self.digest.feed(out)
        self._write(out)

    def _write(self, out: bytes) -> None:
        """Write while NOMINAL; switch to TOO_BIG or FAILED instead of raising."""
        if self.state is not SpoolState.NOMINAL or self._file is None:
            return
        if self.size_limit is not None and self.size > self.size_limit:
            self.state = SpoolState.TOO_BIG
            self._safe_write(TRUNCATED_TRAILER)
            return
        self._safe_write(out)

    def _safe_write(self, out: bytes) -> None:
        """A disk error must not break the session: keep reading, reply 451 (spec 3.7)."""
        try:
            self._file.write(out)          # type: ignore[union-attr]
        except OSError as exc:
            log.error("writing %s failed: %s", self.path, exc)
            self.error = str(exc)
            self.state = SpoolState.FAILED

    def close(self) -> SpoolResult:
        """Flush and close the file (idempotent) and report the outcome."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                log.error("closing %s failed: %s", self.path, exc)
                self.error = self.error or str(exc)
                self.state = SpoolState.FAILED
            self._file = None
        return SpoolResult(
            path=self.path,
            size=self.size,
            too_big=self.state is SpoolState.TOO_BIG,
            eight_bit=self.eight_bit,
            error=self.error,
            complete=self.ended,
            body_digest=self.digest.hexdigest() if self.digest is not None else None,
        )


def _undecided_tail(buf: bytes) -> int:
    """Length of the tail of ``buf`` that could still start the end marker."""
    for partial in _PARTIAL_MARKERS:
        if buf.endswith(partial):
            return len(partial)
    return 0
