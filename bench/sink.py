#!/usr/bin/env python3
"""Fast SMTP/LMTP sink for benchmarks: accepts every message and writes it to a file.

Why our own sink: the project must run its benchmarks without the Perl harness, and the
load generator needs a place where it can check that every message arrived exactly once.
Each accepted message becomes one file ``<hex id>.eml`` in ``--dir``: first the envelope
as header-like lines (``X-Sink-*``), then the message data exactly as received (CRLF line
ends, dot-unstuffed).  Files are written under a temporary name and renamed, so a reader
never sees half a message; the 250 reply is sent only after the rename, so "acknowledged"
implies "on disk" (page cache).

The server is a single asyncio ``Protocol`` state machine (no per-line coroutines) so that it
is far faster than the filter under test; see bench/README.md for its measured rate.

    python bench/sink.py --port 31025 --dir /tmp/amavisd-bench-sink          # foreground
    python bench/sink.py --port 31025 --dir /tmp/x --daemon --pidfile P      # background
    python bench/sink.py --stop --pidfile P
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path

DEFAULT_DIR = "/tmp/amavisd-bench-sink"
MAX_LINE = 4096
_TERM = b"\r\n.\r\n"


class SinkState:
    """State shared by all connections of one server (counter, output dir, options)."""

    def __init__(self, out_dir: str, hostname: str, lmtp: bool, fsync: bool) -> None:
        self.out_dir = out_dir
        self.hostname = hostname
        self.lmtp = lmtp
        self.fsync = fsync
        # ids: process-unique prefix + counter, so restarts never overwrite older files
        self.prefix = f"{int(time.time()) & 0xFFFFFFFF:08x}{os.getpid() & 0xFFFF:04x}"
        self.counter = itertools.count(1)
        self.received = 0

    def next_id(self) -> str:
        return f"{self.prefix}{next(self.counter):06x}"

    def store(self, envelope: list[bytes], data: bytes) -> str:
        """Write one message atomically; returns its queue id."""
        qid = self.next_id()
        final = os.path.join(self.out_dir, qid + ".eml")
        tmp = os.path.join(self.out_dir, "." + qid + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\r\n" for line in envelope))
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, final)
        self.received += 1
        return qid


class SinkProtocol(asyncio.Protocol):
    """One SMTP (or LMTP) session.  Pipelining works because every complete line in the
    buffer is handled in order before waiting for more input."""

    def __init__(self, state: SinkState) -> None:
        self.st = state
        self.buf = bytearray()
        self.in_data = False
        self.scan_from = 0  # where to resume looking for the DATA terminator
        self.helo = b""
        self.mail_from: bytes | None = None
        self.rcpts: list[bytes] = []
        self.xforward: list[bytes] = []
        self.peer = ""
        self.transport: asyncio.Transport | None = None  # type: ignore[assignment]

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        kind = "LMTP" if self.st.lmtp else "ESMTP"
        self.reply(f"220 {self.st.hostname} {kind} bench sink ready")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                if not self._try_finish_data():
                    return
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    self.reply("500 5.5.2 Line too long")
                    self.transport.close()
                return
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[: nl + 1]
            self._command(line)

    # -- helpers -----------------------------------------------------------------------
    def reply(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text.encode() + b"\r\n")

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpts = []
        self.xforward = []

    def _command(self, line: bytes) -> None:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        lmtp = self.st.lmtp
        if verb == (b"LHLO" if lmtp else b"EHLO"):
            self.helo = arg
            self._reset()
            self.reply(
                f"250-{self.st.hostname}\r\n250-PIPELINING\r\n250-SIZE 0\r\n"
                "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n"
                "250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
            )
        elif verb == b"HELO" and not lmtp:
            self.helo = arg
            self._reset()
            self.reply(f"250 {self.st.hostname}")
        elif verb == b"MAIL":
            if self.mail_from is not None:
                self.reply("503 5.5.1 Error: nested MAIL command")
                return
            self.mail_from = arg[5:].strip() if arg[:5].upper() == b"FROM:" else arg
            self.reply("250 2.1.0 Ok")
        elif verb == b"RCPT":
            if self.mail_from is None:
                self.reply("503 5.5.1 Error: need MAIL command")
                return
            self.rcpts.append(arg[3:].strip() if arg[:3].upper() == b"TO:" else arg)
            self.reply("250 2.1.5 Ok")
        elif verb == b"DATA":
            if not self.rcpts:
                self.reply("503 5.5.1 Error: need RCPT command")
                return
            self.in_data = True
            self.reply("354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"XFORWARD":
            self.xforward.append(arg)
            self.reply("250 2.0.0 Ok")
        elif verb == b"RSET":
            self._reset()
            self.reply("250 2.0.0 Ok")
        elif verb == b"NOOP":
            self.reply("250 2.0.0 Ok")
        elif verb == b"QUIT":
            self.reply("221 2.0.0 Bye")
            assert self.transport is not None
            self.transport.close()
        elif verb == b"VRFY":
            self.reply("252 2.0.0 Send some mail, I'll try my best")
        else:
            self.reply("502 5.5.2 Error: command not recognized")

    def _try_finish_data(self) -> bool:
        """Complete the DATA phase if the terminator is in the buffer; True if done."""
        if self.buf[:3] == b".\r\n":  # empty message
            end, skip = 0, 3
        else:
            end = self.buf.find(_TERM, self.scan_from)
            if end < 0:
                # rescan only the tail next time: keeps large messages O(n)
                self.scan_from = max(0, len(self.buf) - len(_TERM))
                return False
            end, skip = end + 2, end + len(_TERM)  # keep the CRLF of the last line
        raw = bytes(self.buf[:end])
        del self.buf[:skip]
        self.in_data = False
        self.scan_from = 0
        # dot-unstuffing (RFC 5321 4.5.2): drop the first '.' of every line starting with one
        data = raw.replace(b"\r\n.", b"\r\n")
        if data[:1] == b".":
            data = data[1:]
        env = [
            b"X-Sink-Client: " + self.peer.encode(),
            b"X-Sink-Helo: " + self.helo,
            b"X-Sink-Mail-From: " + (self.mail_from or b""),
        ]
        env += [b"X-Sink-Rcpt-To: " + r for r in self.rcpts]
        env += [b"X-Sink-Xforward: " + x for x in self.xforward]
        try:
            qid = self.st.store(env, data)
        except OSError as e:
            replies = [f"451 4.3.0 Error: cannot store message: {e.strerror}"]
        else:
            replies = [f"250 2.0.0 Ok: queued as {qid}"]
        if self.st.lmtp:  # one reply per accepted recipient (RFC 2033)
            replies = replies * len(self.rcpts)
        for r in replies:
            self.reply(r)
        self._reset()
        return True


def _serve(args: argparse.Namespace) -> int:
    os.makedirs(args.dir, exist_ok=True)
    state = SinkState(args.dir, args.hostname, args.lmtp, args.fsync)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SinkProtocol(state), args.host, args.port, backlog=512, reuse_address=True
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.pidfile:
            Path(args.pidfile).write_text(f"{os.getpid()}\n")
        kind = "LMTP" if args.lmtp else "SMTP"
        print(f"sink listening on {args.host}:{args.port} ({kind}), writing to {args.dir}",
              flush=True)
        await stop.wait()
        server.close()
        await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    print(f"sink stopped after {state.received} messages", flush=True)
    return 0


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), 0.5) as s:
                s.settimeout(1)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def _start_background(args: argparse.Namespace) -> int:
    """Re-run ourselves detached (new session) and wait until the port answers 220."""
    import subprocess

    if not args.pidfile:
        args.pidfile = os.path.join(args.dir, "..", "sink.pid")
        args.pidfile = os.path.normpath(args.pidfile)
    argv = [sys.executable, os.path.abspath(__file__), "--host", args.host,
            "--port", str(args.port), "--dir", args.dir, "--hostname", args.hostname,
            "--pidfile", args.pidfile]
    argv += ["--lmtp"] if args.lmtp else []
    argv += ["--fsync"] if args.fsync else []
    os.makedirs(args.dir, exist_ok=True)
    with open(args.log or os.devnull, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    if not _wait_port(args.host, args.port, 10):
        proc.kill()
        print(f"sink did not start on {args.host}:{args.port}", file=sys.stderr)
        return 1
    print(f"sink started pid {proc.pid} on {args.host}:{args.port}, writing to {args.dir}")
    return 0


def _stop(pidfile: str) -> int:
    try:
        pid = int(Path(pidfile).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        print(f"sink not running (no pidfile {pidfile})")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print("sink not running (stale pidfile)")
        os.unlink(pidfile)
        return 0
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"sink stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    print(f"sink killed (pid {pid})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=31025)
    ap.add_argument("--dir", default=DEFAULT_DIR, help="one file per message goes here")
    ap.add_argument("--hostname", default="sink.anchor.test")
    ap.add_argument("--lmtp", action="store_true", help="speak LMTP (LHLO, reply per rcpt)")
    ap.add_argument("--fsync", action="store_true", help="fsync each file before replying")
    ap.add_argument("--pidfile", help="write our pid here (removed at exit)")
    ap.add_argument("--daemon", action="store_true", help="start in the background")
    ap.add_argument("--log", help="with --daemon: stdout/stderr of the sink")
    ap.add_argument("--stop", action="store_true", help="stop the sink named by --pidfile")
    args = ap.parse_args(argv)
    if args.stop:
        if not args.pidfile:
            ap.error("--stop needs --pidfile")
        return _stop(args.pidfile)
    if args.daemon:
        return _start_background(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
