# tests: t/checks/test_spam.py
"""An rspamd client: HTTP POST of the message to ``/checkv2``, JSON reply.

Runs in the child, inside the spam check (spec/pipeline.md section 10.5, as
amavis's ``RspamdClient``).  The envelope and the client go in request headers:
``Helo``, ``Hostname``, ``IP``, ``MTA-Name``, ``From``, ``Queue-Id``, one ``Rcpt``
per recipient (and ``Pass: all`` when asked).  The body is the message as spooled
(LF line ends), streamed from the file; with a ``mail_body_size_limit`` it is
``min(32 KiB, header) + min(limit, body)`` bytes, applied only when the message
is 5 KiB longer.  The reply gives ``score``, ``required_score``, ``action``,
``is_skipped`` and ``symbols{}.name/score``.

Difference: amavis sends only messages it holds in memory (< 100 KiB as received)
and scores larger ones 0 (section 27 item 8); we stream any size from the spool
file (docs/differences.md).

HTTP/1.0 over a blocking socket with a deadline, as ``amavisd.scanners.spamd``;
``https`` URLs go through the ``ssl`` module (verify_hostname as amavis's
``ssl_opts`` default).  Credentials are sent as HTTP Basic authentication.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:11333/checkv2"
#: LWP timeout amavis uses unless the entry's ``timeout`` option says otherwise.
DEFAULT_TIMEOUT = 60.0
#: Section 10.5: the header part of the size limit is at most 32 KiB.
HEADER_CAP = 32 * 1024
TRUNCATE_SLACK = 5 * 1024
CHUNK = 65536
MAX_REPLY = 4 << 20

#: RspamdClient.pm's action -> verdict table.
VERDICTS = {"add header": "Spam", "no action": "Ham", "reject": "Spam",
            "rewrite subject": "Spam", "discard": "Spam", "quarantine": "Spam"}


class RspamdError(Exception):
    """rspamd could not be asked, or its answer was not usable."""


@dataclass
class RspamdReply:
    """The parts of the JSON reply amavis uses."""

    score: float = 0.0
    required_score: float | None = None
    action: str | None = None
    is_skipped: bool = False
    tests: list[str] = field(default_factory=list)     # NAME=score
    verdict: str = "Unknown"
    raw: dict[str, Any] = field(default_factory=dict)


def size_limit(msg_size: int, header_size: int, body_size: int,
               mbsl: int | None) -> int | None:
    """Section 10.5's limit, or None when the message is sent whole."""
    if mbsl is None:
        return None
    limit = min(HEADER_CAP, header_size) + min(int(mbsl), body_size)
    return None if msg_size < limit + TRUNCATE_SLACK else limit


def parse_json(content: bytes) -> RspamdReply:
    """The JSON body of a ``/checkv2`` reply (``=`` and ``,`` in names become ``_``)."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise RspamdError(f"bad rspamd response: {exc}") from exc
    if not isinstance(data, dict):
        raise RspamdError("bad rspamd response: not a JSON object")
    reply = RspamdReply(raw=data)
    reply.score = float(data.get("score") or 0.0)
    required = data.get("required_score")
    reply.required_score = None if required is None else float(required)
    reply.action = data.get("action")
    reply.is_skipped = bool(data.get("is_skipped"))
    for symbol in (data.get("symbols") or {}).values():
        name = str(symbol.get("name", "")).replace("=", "_").replace(",", "_")
        reply.tests.append(f"{name}={_num(symbol.get('score', 0))}")
    reply.verdict = VERDICTS.get(reply.action or "", "Unknown")
    return reply


def _num(value: Any) -> str:
    number = float(value or 0)
    return str(int(number)) if number == int(number) else format(number, ".15g")


def request_head(url: str, length: int, meta: Sequence[tuple[str, str | None]],
                 credentials: dict[str, str] | None = None) -> bytes:
    """The request line and headers; empty or None values are left out (``pass_meta``)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    lines = [f"POST {path} HTTP/1.0", f"Host: {parts.netloc}", "User-Agent: amavisd-py",
             "Content-Type: application/octet-stream", f"Content-Length: {length}"]
    if credentials and credentials.get("username") is not None:
        token = f"{credentials['username']}:{credentials.get('password', '')}"
        lines.append("Authorization: Basic " + base64.b64encode(token.encode()).decode())
    for name, value in meta:
        if value is not None and value != "":
            clean = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{name}: {clean}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def body_chunks(path: Path, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        left = length
        while left > 0:
            piece = handle.read(min(CHUNK, left))
            if not piece:
                return
            left -= len(piece)
            yield piece


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise RspamdError("timed out")
    return left


def check_file(path: str | os.PathLike[str], *, url: str = DEFAULT_URL,
               meta: Sequence[tuple[str, str | None]] = (), limit: int | None = None,
               timeout: float = DEFAULT_TIMEOUT, credentials: dict[str, str] | None = None,
               verify_hostname: bool = True) -> RspamdReply:
    """POST the spool file (cut at ``limit`` bytes) to rspamd; RspamdError on any failure."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    size = path.stat().st_size
    length = size if limit is None else min(size, limit)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RspamdError(f"unsupported rspamd url {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        sock = socket.create_connection((parts.hostname, port), timeout=_left(deadline))
    except OSError as exc:
        raise RspamdError(f"Error calling rspamd: can't connect to {parts.netloc}: "
                          f"{exc.strerror or exc}") from exc
    try:
        if parts.scheme == "https":
            context = ssl.create_default_context()
            if not verify_hostname:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock, server_hostname=parts.hostname)
        sock.settimeout(_left(deadline))
        sock.sendall(request_head(url, length, meta, credentials))
        for piece in body_chunks(path, length):
            sock.settimeout(_left(deadline))
            sock.sendall(piece)
        received = bytearray()
        while len(received) < MAX_REPLY:
            sock.settimeout(_left(deadline))
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except TimeoutError as exc:
        raise RspamdError("Error calling rspamd: timed out") from exc
    except (OSError, ssl.SSLError) as exc:
        raise RspamdError(f"Error calling rspamd: {exc}") from exc
    finally:
        sock.close()
    return parse_http(bytes(received))


def parse_http(raw: bytes) -> RspamdReply:
    """Status line, headers, JSON body; a non-2xx status is an error (``is_success``)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise RspamdError("Missing rspamd response")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status.split(None, 2)
    if len(fields) < 2 or not fields[1].isdigit() or not fields[1].startswith("2"):
        raise RspamdError(f"Error calling rspamd: {status}")
    return parse_json(body)
