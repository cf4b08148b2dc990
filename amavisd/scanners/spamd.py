# tests: t/checks/test_spam.py
"""A spamd client speaking the spamc protocol, as amavis's ``SpamdClient`` does.

Runs in the child, inside the spam check (spec/pipeline.md sections 10.2 and 10.4).
One connection per message: ``SYMBOLS SPAMC/1.3`` (or ``REPORT``), a
``Content-length`` header, an empty line, then amavis's pseudo header lines and
the message with CRLF line ends, streamed from the spool file in 16 KiB pieces.
The reply's ``Spam: True|False ; <score> / <threshold>`` header gives the score;
its body is the comma-separated list of rule names (SYMBOLS) or SpamAssassin's
report (REPORT, whose "Content analysis details" table also gives each rule's
points, so the tests read ``NAME=points`` as amavis's in-process SpamAssassin
writes them).

Truncation (section 10.2): ``limit = min(64 KiB, header size) + 1 + min(mbsl,
body size)``, applied only when the message is at least ``limit + 5 KiB``; the
bytes sent (pseudo header included) are cut at ``limit`` and the last byte sent
becomes a LF, as amavis does.  Nothing beyond one 16 KiB piece is ever held in
memory.

Blocking sockets with a deadline, like ``amavisd.scanners.clamd`` (see the
reasons there): every call takes a ``timeout`` bounding the whole exchange, and
the spam check may run the call in a thread to overlap the virus check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: amavis's hard-coded spamd addresses (SpamdClient.pm, spec 10.4).
DEFAULT_ADDRESSES = ("127.0.0.1:783", "[::1]:783")
#: Seconds to connect, as amavis's ``Timeout => 10`` (SpamdClient.pm).
CONNECT_TIMEOUT = 10.0
#: amavis reads and converts the spool file in pieces of this size.
CHUNK = 16384
#: Section 10.2: the header part of the truncation limit is at most 64 KiB ...
HEADER_CAP = 64 * 1024
#: ... and the limit applies only when the message exceeds it by 5 KiB.
TRUNCATE_SLACK = 5 * 1024
#: A spamd reply larger than this is cut (a REPORT is a few KiB).
MAX_REPLY = 1 << 20

_SPAM_HEADER = re.compile(r"^\s*(\S+)\s*;\s*(\S+)\s*/\s*(\S+)")
_REPORT_ROW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Za-z0-9_.:-]+)(?:\s|$)")


class SpamdError(Exception):
    """spamd could not be asked, or its answer was not usable."""


Address = tuple[int, str | tuple[str, int]]   # (socket family, path or (host, port))


def parse_address(spec: str) -> Address:
    """``127.0.0.1:783``, ``[::1]:783``, ``localhost:783``, ``/path`` or ``unix:/path``."""
    spec = spec.strip()
    if spec.startswith("unix:"):
        return socket.AF_UNIX, spec[5:]
    if spec.startswith("/"):
        return socket.AF_UNIX, spec
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", spec)
    if not match:
        raise ValueError(f"not a spamd address (host:port, [v6]:port or a path): {spec!r}")
    if match.group(1):
        return socket.AF_INET6, (match.group(1), int(match.group(2)))
    return socket.AF_INET, (match.group(3), int(match.group(4)))


def describe(address: Address) -> str:
    family, where = address
    if family == socket.AF_UNIX:
        return str(where)
    host, port = where  # type: ignore[misc]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise SpamdError("timed out")
    return left


def connect(addresses: list[Address], deadline: float,
            connect_timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """The first address that accepts, tried in order (amavis tries its two in turn)."""
    errors = []
    for address in addresses:
        family, where = address
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                host, port = where  # type: ignore[misc]
                infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
                family, _, _, _, where = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(min(connect_timeout, _left(deadline)))
            try:
                sock.connect(where)
            except BaseException:
                sock.close()
                raise
            return sock
        except OSError as exc:
            errors.append(f"{describe(address)}: {exc.strerror or exc}")
    raise SpamdError("Can't connect to spamd, " + "; ".join(errors))


# ---------------------------------------------------------------- what is sent
def size_limit(msg_size: int, header_size: int, body_size: int,
               mbsl: int | None) -> int | None:
    """The truncation limit of section 10.2, or None when the message is sent whole."""
    if mbsl is None:
        return None
    limit = min(HEADER_CAP, header_size) + 1 + min(int(mbsl), body_size)
    return None if msg_size < limit + TRUNCATE_SLACK else limit


def crlf_size(path: Path, offset: int = 0, stop_at: int | None = None) -> int:
    """Bytes of the spool file from ``offset`` once LF became CRLF (stops past ``stop_at``)."""
    total = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 20):
            total += len(chunk) + chunk.count(b"\n")
            if stop_at is not None and total > stop_at:
                break
    return total


def message_chunks(path: Path, prefix: bytes, limit: int | None,
                   offset: int = 0) -> Iterator[bytes]:
    """``prefix`` then the spool file with CRLF line ends, cut at ``limit`` bytes in all.

    When cut, the last byte becomes LF, as amavis's spamc code does (SpamdClient.pm).
    """
    written = len(prefix)
    yield prefix
    with open(path, "rb") as handle:
        handle.seek(offset)
        while piece := handle.read(CHUNK):
            piece = piece.replace(b"\n", b"\r\n")
            if limit is not None and written + len(piece) >= limit:
                piece = piece[:limit - written]
                if piece:
                    piece = piece[:-1] + b"\n"
                yield piece
                return
            written += len(piece)
            yield piece


@dataclass
class SpamdReply:
    """What spamd said (section 10.4): score, threshold, verdict, tests, report."""

    is_spam: bool | None = None
    score: float | None = None
    threshold: float | None = None
    tests: list[str] = field(default_factory=list)     # names, or NAME=points (REPORT)
    report: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def parse_reply(raw: bytes, command: str = "SYMBOLS") -> SpamdReply:
    """Parse ``SPAMD/1.x 0 EX_OK``, the headers, and the body of a SYMBOLS/REPORT reply."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise SpamdError("Empty spamd response" if not raw else
                         f"Error in spamd resp: {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise SpamdError(f"Error in spamd resp: {lines[0]!r}")
    if status[1] != "0":
        raise SpamdError("Failure reported by spamd: " + " ".join(status))
    reply = SpamdReply()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            reply.headers[name.strip().lower()] = value.strip()
    length = reply.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) != len(body):
        log.warning("Reply from spamd size mismatch: %d %s", len(body), length)
    match = _SPAM_HEADER.match(reply.headers.get("spam", ""))
    if match:
        verdict = match.group(1).lower()
        reply.is_spam = True if verdict in ("true", "yes") else \
            False if verdict in ("false", "no") else None
        reply.score = float(match.group(2))
        reply.threshold = float(match.group(3))
    text = body.decode("utf-8", "replace")
    if command == "SYMBOLS":
        last = text.strip().splitlines()[-1] if text.strip() else ""
        reply.tests = [t for t in (x.strip() for x in last.split(",")) if t]
    else:
        reply.report = text
        reply.tests = report_tests(text)
    return reply


def report_tests(report: str) -> list[str]:
    """``NAME=points`` from a SpamAssassin report's table, sorted by name (as TESTSSCORES)."""
    rows: dict[str, str] = {}
    in_table = False
    for line in report.splitlines():
        if line.startswith("----"):
            in_table = True
            continue
        if not in_table:
            continue
        match = _REPORT_ROW.match(line)
        if match:
            points = float(match.group(1))
            rows[match.group(2)] = format(points, ".15g") if points != int(points) \
                else str(int(points))
    return [f"{name}={points}" for name, points in sorted(rows.items())]


def check_file(path: str | os.PathLike[str], *, prefix: bytes = b"",
               addresses: list[Address] | None = None, limit: int | None = None,
               command: str = "SYMBOLS", timeout: float = 60.0,
               connect_timeout: float = CONNECT_TIMEOUT) -> SpamdReply:
    """Ask spamd about the spool file ``path`` (LF line ends) with ``prefix`` before it.

    ``prefix`` is already CRLF-terminated text (the pseudo header lines).  Raises
    SpamdError on any failure; the whole exchange is bounded by ``timeout``.
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    if addresses is None:
        addresses = [parse_address(a) for a in DEFAULT_ADDRESSES]
    length = len(prefix) + crlf_size(path, stop_at=None if limit is None else limit)
    if limit is not None and length > limit:
        length = limit
    sock = connect(addresses, deadline, connect_timeout)
    try:
        sock.settimeout(_left(deadline))
        sock.sendall(f"{command} SPAMC/1.3\r\nContent-length: {length}\r\n\r\n".encode())
        for piece in message_chunks(path, prefix, limit):
            sock.settimeout(_left(deadline))
            sock.sendall(piece)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while len(received) < MAX_REPLY:
            sock.settimeout(_left(deadline))
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except TimeoutError as exc:
        raise SpamdError("timed out talking to spamd") from exc
    except OSError as exc:
        raise SpamdError(f"spamd: {exc.strerror or exc}") from exc
    finally:
        sock.close()
    return parse_reply(bytes(received), command)


def ping(address: Address, timeout: float = 5.0) -> bool:
    """True when spamd answers ``PING`` with ``PONG``."""
    deadline = time.monotonic() + timeout
    try:
        sock = connect([address], deadline, timeout)
    except SpamdError:
        return False
    try:
        sock.settimeout(timeout)
        sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
        return b"PONG" in sock.recv(1024)
    except OSError:
        return False
    finally:
        sock.close()

