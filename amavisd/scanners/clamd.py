# tests: t/checks/test_virus.py
"""A clamd client: CONTSCAN/MULTISCAN of a folder, INSTREAM of files, PING/VERSION.

Runs in the child, inside a virus check (spec/pipeline.md sections 9.3 and 9.4;
libraries.md 4.6).  Three ways to ask clamd, as amavis's ``ask_daemon`` does:

* ``ask(address, query)`` -- the generic protocol amavis uses for Debian's
  ``ClamAV-clamd`` entry: connect (a Unix socket path or ``host:port``), send the
  expanded query (``CONTSCAN <tempdir>/parts\\n``), read the reply until clamd
  closes the connection.  clamd opens the files itself, so its user must be able
  to read the parts folder (0750, files 0640, group of the daemon: add clamd's
  user to that group, as Debian does with ``adduser clamav amavis``).
* ``instream_files(address, paths)`` -- the native ``clamd:`` protocol: one
  ``zIDSESSION`` connection, then per file ``zINSTREAM`` with the file's bytes
  streamed in large chunks (``<4-byte big-endian length><data>``, a zero length
  ends the stream).  Works over TCP, and whatever clamd's user may read.  Replies
  ``<id>: stream: <result>`` are rewritten to ``<path>: <result>`` as amavis does.
* ``ping``/``version`` go through pyclamd (``ClamdUnixSocket`` and
  ``ClamdNetworkSocket``), the project's clamd library.

Why our own code for the scan commands and not pyclamd's ``contscan_file``/
``multiscan_file``/``scan_stream``: the @av_scanners entries (native and imported
from Perl) match their regexes against clamd's *raw* reply, which pyclamd turns
into a dict; pyclamd parses each 4 KiB ``recv`` as if it held whole lines (a
reply longer than that is cut mid-line and its parser raises IndexError); its
timeout is per socket call, with no overall deadline; and ``scan_stream`` holds
the whole file in memory and re-slices it in 4 KiB chunks (see
bench/clamd_stream.py for the cost on a 20 MB part).

Why blocking sockets with a deadline and not a Twisted protocol: the child
serves one session at a time (DESIGN.md, Processes), so while a message is being
checked the reactor has nothing to do but the 1 s heartbeat.  Every call here
takes a ``timeout`` that bounds the whole exchange (connect, send, every read),
so the reactor is blocked for at most that long, well within ``child_timeout``
(the master's kill limit, 480 s by default).  The calls are plain functions with
no shared state, so the caller may also run them in a thread
(``amavisd.checks.virus.scan_deferred``) to overlap the spam check.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass

import pyclamd

log = logging.getLogger(__name__)

#: Seconds to connect and send a request, as amavis's "short timeout" (AV.pm, 10 s);
#: bounded further by the caller's deadline.
CONNECT_TIMEOUT = 10.0
#: INSTREAM chunk size: large, to keep system calls few; clamd accepts any chunk up
#: to StreamMaxLength (libraries.md 4.6).  amavis sends 32 KiB chunks.
INSTREAM_CHUNK = 1 << 20
#: amavis keeps at most about 100 kB of a generic daemon reply (AV.pm sanity limit).
MAX_REPLY = 100_000

Address = str | tuple[str, int]


class ClamdError(Exception):
    """clamd could not be reached, or did not answer as the protocol says."""


class ClamdTimeout(ClamdError):
    """The exchange did not finish before its deadline."""


@dataclass(frozen=True)
class ScanLine:
    """One reply line: ``path: OK``, ``path: Name FOUND`` or ``path: reason ERROR``."""

    path: str
    status: str            # 'OK', 'FOUND', 'ERROR' or '' (a line we do not understand)
    name: str              # the virus name (FOUND) or the reason (ERROR)


def parse_address(spec: str) -> tuple[str, Address]:
    """A socket spec as amavis writes it -> ``(protocol, address)``.

    ``/run/clamav/clamd.ctl`` and ``unix:/path`` are Unix sockets; ``host:port``,
    ``[v6addr]:port`` and ``inet:host:port`` are TCP.  A leading ``clamd:`` asks for
    the native session protocol, ``simple:`` for the generic one (section 9.3).
    """
    protocol = "simple"
    head, sep, rest = spec.partition(":")
    if sep and head.lower() in ("clamd", "simple") and not spec.startswith("/"):
        protocol, spec = head.lower(), rest
    if spec.startswith("unix:"):
        return protocol, spec[5:]
    if spec.startswith("inet:") or spec.startswith("inet6:"):
        spec = spec.partition(":")[2]
    if spec.startswith("/"):
        return protocol, spec
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a socket path or host:port: {spec!r}")
    return protocol, (host.strip("[]") or "127.0.0.1", int(port))


def parse_reply(text: str) -> list[ScanLine]:
    """Split a CONTSCAN/MULTISCAN/INSTREAM reply into lines (empty lines skipped)."""
    out = []
    for line in text.replace("\0", "\n").splitlines():
        line = line.strip()
        if not line:
            continue
        path, sep, result = line.partition(": ")
        if not sep:
            path, result = "", line
        for status in ("OK", "FOUND", "ERROR"):
            if result == status:
                out.append(ScanLine(path, status, ""))
                break
            if result.endswith(" " + status):
                out.append(ScanLine(path, status, result[: -len(status) - 1]))
                break
        else:
            out.append(ScanLine(path, "", result))
    return out


# ---------------------------------------------------------------- sockets
def _left(deadline: float, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ClamdTimeout(f"clamd: timed out {what}")
    return remaining


def describe(address: Address) -> str:
    return address if isinstance(address, str) else f"{address[0]}:{address[1]}"


def connect(address: Address, deadline: float) -> socket.socket:
    """A connected socket; connecting may take at most CONNECT_TIMEOUT (and the deadline)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    if not isinstance(address, str) and ":" in address[0]:
        family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(min(CONNECT_TIMEOUT, _left(deadline, "before connecting")))
        sock.connect(address)
    except TimeoutError as exc:
        sock.close()
        raise ClamdTimeout(f"clamd: timed out connecting to {describe(address)}") from exc
    except OSError as exc:
        sock.close()
        raise ClamdError(f"clamd: cannot connect to {describe(address)}: "
                         f"{exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _send(sock: socket.socket, data: bytes | memoryview, deadline: float) -> None:
    sock.settimeout(_left(deadline, "sending"))
    try:
        sock.sendall(data)
    except TimeoutError as exc:
        raise ClamdTimeout("clamd: timed out sending") from exc


def _recv(sock: socket.socket, deadline: float) -> bytes:
    sock.settimeout(_left(deadline, "waiting for the reply"))
    try:
        return sock.recv(65536)
    except TimeoutError as exc:
        raise ClamdTimeout("clamd: timed out waiting for the reply") from exc


def ask(address: Address, query: str | bytes, timeout: float) -> str:
    """The generic protocol: send ``query``, read until clamd closes (section 9.3).

    Raises ClamdError if clamd cannot be reached, closes without a word ("Empty
    result"), or the exchange outlasts ``timeout`` seconds (ClamdTimeout).
    """
    deadline = time.monotonic() + timeout
    data = query.encode("utf-8", "surrogateescape") if isinstance(query, str) else query
    sock = connect(address, deadline)
    try:
        try:
            _send(sock, data, deadline)
        except ClamdTimeout:
            raise
        except OSError as exc:
            raise ClamdError(f"clamd: error writing to {describe(address)}: {exc}") from exc
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = _recv(sock, deadline)
            except ClamdTimeout:
                raise
            except OSError as exc:
                raise ClamdError(f"clamd: error reading from {describe(address)}: "
                                 f"{exc}") from exc
            if not chunk:
                break
            if size < MAX_REPLY:
                chunks.append(chunk)
                size += len(chunk)
    finally:
        sock.close()
    if not size:
        raise ClamdError(f"clamd: empty result from {describe(address)}")
    return b"".join(chunks).decode("utf-8", "replace")


def contscan(address: Address, path: str, timeout: float) -> str:
    """``CONTSCAN <path>``: every file of a folder, not stopping at the first virus."""
    return ask(address, f"nCONTSCAN {path}\n", timeout)


def multiscan(address: Address, path: str, timeout: float) -> str:
    """``MULTISCAN <path>``: like CONTSCAN, the files spread over clamd's threads."""
    return ask(address, f"nMULTISCAN {path}\n", timeout)


# ---------------------------------------------------------------- INSTREAM
class Session:
    """One ``zIDSESSION`` connection: several INSTREAM requests, then ``zEND``.

    Requests are sent one after the other (each reply read before the next file),
    which keeps the client simple; amavis pipelines up to 8 (section 9.3).
    """

    def __init__(self, address: Address, deadline: float,
                 chunk_size: int = INSTREAM_CHUNK) -> None:
        self.address = address
        self.deadline = deadline
        self.buffer = bytearray(chunk_size)
        self.pending = b""
        self.next_id = 1
        self.sock = connect(address, deadline)
        try:
            _send(self.sock, b"zIDSESSION\0", deadline)
        except BaseException:
            self.sock.close()
            raise

    def _reply(self) -> bytes:
        while b"\0" not in self.pending:
            try:
                chunk = _recv(self.sock, self.deadline)
            except ClamdTimeout:
                raise
            except OSError as exc:
                raise ClamdError(f"clamd: error reading from {describe(self.address)}: "
                                 f"{exc}") from exc
            if not chunk:
                if self.pending:
                    break
                raise ClamdError(f"clamd: {describe(self.address)} closed the session")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\0")
        return line

    def instream(self, path: str | os.PathLike[str]) -> str:
        """Stream one file; returns clamd's result (``stream: OK``, ``stream: X FOUND``)."""
        request = self.next_id
        self.next_id += 1
        view = memoryview(self.buffer)
        try:
            with open(path, "rb", buffering=0) as fh:
                _send(self.sock, b"zINSTREAM\0", self.deadline)
                while True:
                    n = fh.readinto(self.buffer)
                    if not n:
                        break
                    _send(self.sock, struct.pack("!L", n), self.deadline)
                    _send(self.sock, view[:n], self.deadline)
                _send(self.sock, struct.pack("!L", 0), self.deadline)
        except ClamdTimeout:
            raise
        except OSError as exc:
            # clamd closes the connection after "INSTREAM size limit exceeded. ERROR";
            # what it said before closing is the answer
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                try:
                    return self._strip(self._reply(), request)
                except ClamdError:
                    pass
            raise ClamdError(f"clamd: streaming {path} to {describe(self.address)}: "
                             f"{exc}") from exc
        return self._strip(self._reply(), request)

    @staticmethod
    def _strip(line: bytes, request: int) -> str:
        text = line.decode("utf-8", "replace")
        prefix = f"{request}: "
        return text[len(prefix):] if text.startswith(prefix) else text

    def close(self) -> None:
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(b"zEND\0")
        except OSError:
            pass
        finally:
            self.sock.close()


def instream_files(address: Address, paths: list[str], timeout: float, *,
                   first_infected_stops_scan: bool = False,
                   chunk_size: int = INSTREAM_CHUNK) -> str:
    """Stream each file in one session; returns ``<path>: <result>`` lines (section 9.3).

    As amavis does, clean results are left out when something else was found, and
    one ``<path>: OK`` line stands for a clean set.  With
    ``first_infected_stops_scan`` no further file is sent after a detection.
    """
    deadline = time.monotonic() + timeout
    session = Session(address, deadline, chunk_size)
    lines: list[str] = []
    one_ok = None
    try:
        for path in paths:
            result = session.instream(path)
            result = result[len("stream: "):] if result.startswith("stream: ") else result
            line = f"{path}: {result}\n"
            if result.endswith("OK"):
                one_ok = one_ok or line
                continue
            lines.append(line)
            if result.endswith(" FOUND") and first_infected_stops_scan:
                break
    finally:
        session.close()
    return "".join(lines) or one_ok or ""


def instream_bytes(address: Address, path: str, timeout: float,
                   chunk_size: int = INSTREAM_CHUNK) -> str:
    """One INSTREAM of one file without a session (``zINSTREAM``, reply, close)."""
    deadline = time.monotonic() + timeout
    sock = connect(address, deadline)
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    try:
        with open(path, "rb", buffering=0) as fh:
            _send(sock, b"zINSTREAM\0", deadline)
            while n := fh.readinto(buffer):
                _send(sock, struct.pack("!L", n), deadline)
                _send(sock, view[:n], deadline)
        _send(sock, struct.pack("!L", 0), deadline)
        reply = b""
        while b"\0" not in reply:
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            reply += chunk
    finally:
        sock.close()
    return reply.partition(b"\0")[0].decode("utf-8", "replace")


# ---------------------------------------------------------------- pyclamd
def pyclamd_client(address: Address, timeout: float) -> pyclamd.pyclamd._ClamdGeneric:
    """pyclamd's client for ``address`` (its constructor connects once to test it)."""
    try:
        if isinstance(address, str):
            return pyclamd.ClamdUnixSocket(address, timeout)
        return pyclamd.ClamdNetworkSocket(address[0], address[1], timeout)
    except (pyclamd.ConnectionError, OSError) as exc:
        raise ClamdError(f"clamd: cannot connect to {describe(address)}: {exc}") from exc


def ping(address: Address, timeout: float = 5.0) -> bool:
    """True if clamd answers PING with PONG (pyclamd)."""
    try:
        return bool(pyclamd_client(address, timeout).ping())
    except (ClamdError, pyclamd.ConnectionError, OSError):
        return False


def version(address: Address, timeout: float = 5.0) -> str:
    """clamd's VERSION line, e.g. ``ClamAV 1.4.6/27000/...`` (pyclamd)."""
    try:
        return str(pyclamd_client(address, timeout).version())
    except (pyclamd.ConnectionError, OSError) as exc:
        raise ClamdError(f"clamd: VERSION failed on {describe(address)}: {exc}") from exc
