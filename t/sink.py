"""A small SMTP/LMTP sink for tests and the bench, independent of our Twisted code.

Plain ``socketserver`` threads, so it checks our client with a second
implementation.  It records every command line and every message byte-exactly.
Behaviour is chosen by the recipient's local part, like the sink used for the
observations in spec/protocols.md section 10:

* ``rej*``      -> ``550 5.1.1`` at RCPT
* ``tmp*``      -> ``450 4.2.0`` at RCPT
* ``many*``     -> ``452 4.5.3`` at RCPT (too many recipients)
* ``datarej*``  -> rejected at the data-dot (LMTP: only that recipient)

Use in-process (``Sink(...).start()`` runs in a daemon thread) or as a
subprocess: ``python -m t.sink --port P [--lmtp] [--dir D] [--tls]``.
The module also holds ``in_reactor``, the helper the tests use to run Twisted
code in a reactor thread and wait for its Deferred.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self

CERT_DIR = Path(__file__).parent / "certs"
CERT_FILE = CERT_DIR / "localhost.crt"
KEY_FILE = CERT_DIR / "localhost.key"
_ids = itertools.count(1)


@dataclass
class SinkMessage:
    """One completed transaction: envelope lines and the unstuffed data (CRLF kept)."""

    mail: bytes
    rcpts: list[bytes]
    data: bytes = b""               # empty when stored in a file
    path: Path | None = None
    size: int = 0
    queue_id: str = ""


@dataclass
class SinkSession:
    """Everything the client sent in one connection, line by line (without CRLF)."""

    commands: list[bytes] = field(default_factory=list)
    tls: bool = False
    closed: bool = False
    aborted_in_data: bool = False


@dataclass
class SinkConfig:
    lmtp: bool = False
    tls: bool = False
    pipelining: bool = True
    dsn: bool = True
    eightbit: bool = True
    smtputf8: bool = True
    xforward: bool = True
    greeting: str = "220 sink.test ESMTP sink"
    directory: Path | None = None
    data_delay: float = 0.0


class _Handler(socketserver.StreamRequestHandler):
    """One session; replies are written as soon as each command is read."""

    server: _Server

    def setup(self) -> None:
        super().setup()
        # replies go out at once: without this each forwarded message in the tests
        # waited ~40 ms for the delayed ACK (Nagle) before our daemon saw the 250
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.session = SinkSession()
        with self.server.lock:
            self.server.sessions.append(self.session)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        if self.session.tls:  # the wrapped socket is ours to close, not socketserver's
            self.connection.close()
        self.session.closed = True

    def handle(self) -> None:
        try:
            self.serve()
        except OSError:  # reset by the client (an aborted DATA phase sends RST)
            if self.in_data:
                self.session.aborted_in_data = True

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8") + b"\r\n")
        self.wfile.flush()

    in_data = False

    def serve(self) -> None:
        cfg = self.server.cfg
        self.reply(cfg.greeting)
        if not cfg.greeting.startswith("2"):
            return
        self.mail: bytes | None = None
        self.rcpts: list[bytes] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n")
            self.session.commands.append(cmd)
            if cfg.directory is not None:
                with self.server.lock, open(cfg.directory / "commands.log", "ab") as fh:
                    fh.write(cmd + b"\n")
            if not self.command(cmd):
                return

    def ehlo_lines(self) -> list[str]:
        cfg = self.server.cfg
        kws = ["SIZE"]
        kws += ["PIPELINING"] if cfg.pipelining else []
        kws += ["ENHANCEDSTATUSCODES"]
        kws += ["8BITMIME"] if cfg.eightbit else []
        kws += ["SMTPUTF8"] if cfg.smtputf8 else []
        kws += ["DSN"] if cfg.dsn else []
        kws += ["STARTTLS"] if cfg.tls and not self.session.tls else []
        kws += ["XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"] if cfg.xforward else []
        lines = ["sink.test", *kws]
        return [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    def command(self, cmd: bytes) -> bool:
        """Answer one command; False ends the session."""
        verb = cmd.split(b" ", 1)[0].upper().decode("ascii", "replace")
        if verb in ("EHLO", "LHLO"):
            self.wfile.write("".join(x + "\r\n" for x in self.ehlo_lines()).encode())
            self.wfile.flush()
        elif verb == "HELO":
            self.reply("250 sink.test")
        elif verb == "STARTTLS" and self.server.cfg.tls and not self.session.tls:
            self.reply("220 2.0.0 Ready to start TLS")
            self.start_tls()
        elif verb == "XFORWARD":
            self.reply("250 2.0.0 Ok")
        elif verb == "MAIL":
            self.mail, self.rcpts = cmd, []
            self.reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            self.rcpt(cmd)
        elif verb == "DATA":
            return self.data()
        elif verb == "RSET":
            self.mail, self.rcpts = None, []
            self.reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            self.reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.reply("221 2.0.0 Bye")
            return False
        else:
            self.reply("502 5.5.2 Error: command not recognized")
        return True

    def start_tls(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT_FILE, KEY_FILE)
        self.connection = ctx.wrap_socket(self.connection, server_side=True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        self.wfile = self.connection.makefile("wb", 0)
        self.session.tls = True

    def rcpt(self, cmd: bytes) -> None:
        addr = cmd.split(b"<", 1)[-1].split(b">", 1)[0].decode("utf-8", "replace")
        local = addr.split("@", 1)[0].lower()
        if self.mail is None:
            self.reply("503 5.5.1 Error: need MAIL command")
        elif local.startswith("rej"):
            self.reply(f"550 5.1.1 <{addr}>: Recipient address rejected: User unknown")
        elif local.startswith("tmp"):
            self.reply(f"450 4.2.0 <{addr}>: Recipient address rejected: try later")
        elif local.startswith("many"):
            self.reply("452 4.5.3 Error: too many recipients")
        else:
            self.rcpts.append(cmd)
            self.reply("250 2.1.5 Ok")

    def data(self) -> bool:
        if not self.rcpts:
            self.reply("554 5.5.1 Error: no valid recipients")
            return True
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        qid = f"Q{next(_ids):05d}"
        out, path = self.open_store(qid)
        size = 0
        self.in_data = True
        while True:
            try:
                line = self.rfile.readline()
            except OSError:
                line = b""
            if not line:
                self.session.aborted_in_data = True
                out.close()
                return False
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            out.write(line)
            size += len(line)
        self.in_data = False
        if self.server.cfg.data_delay:
            time.sleep(self.server.cfg.data_delay)
        data = b"" if path else out.getvalue()
        out.close()
        self.server.store(SinkMessage(self.mail or b"", list(self.rcpts), data, path, size, qid))
        self.dot_replies(qid)
        self.mail, self.rcpts = None, []
        return True

    def open_store(self, qid: str) -> tuple[Any, Path | None]:
        directory = self.server.cfg.directory
        if directory is None:
            import io
            return io.BytesIO(), None
        path = directory / f"{qid}.eml"
        out: BinaryIO = open(path, "wb")  # closed by data()
        return out, path

    def dot_replies(self, qid: str) -> None:
        def bad(rcpt: bytes) -> bool:
            return rcpt.split(b"<", 1)[-1].lower().startswith(b"datarej")
        if self.server.cfg.lmtp:
            for r in self.rcpts:
                addr = r.split(b"<", 1)[-1].split(b">", 1)[0].decode("utf-8", "replace")
                self.reply(f"552 5.2.2 <{addr}>: mailbox full" if bad(r)
                           else f"250 2.0.0 <{addr}> {qid} Saved")
        elif any(bad(r) for r in self.rcpts):
            self.reply("554 5.7.1 Rejected by sink policy")
        else:
            self.reply(f"250 2.0.0 Ok: queued as {qid}")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], cfg: SinkConfig):
        self.cfg = cfg
        self.lock = threading.Lock()
        self.sessions: list[SinkSession] = []
        self.messages: list[SinkMessage] = []
        super().__init__(addr, _Handler)

    def store(self, msg: SinkMessage) -> None:
        with self.lock:
            self.messages.append(msg)


class Sink:
    """The sink, run in a daemon thread: ``with Sink(lmtp=True) as sink: sink.port``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **cfg: Any):
        self.server = _Server((host, port), SinkConfig(**cfg))
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> Sink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def messages(self) -> list[SinkMessage]:
        return self.server.messages

    @property
    def sessions(self) -> list[SinkSession]:
        return self.server.sessions

    def commands(self) -> list[bytes]:
        """All command lines of all sessions, in order."""
        return [c for s in self.sessions for c in s.commands]

    def wait_closed(self, timeout: float = 5.0) -> None:
        """Wait until every session so far has ended (QUIT is sent off the critical path)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(s.closed for s in self.sessions):
                return
            time.sleep(0.01)
        raise TimeoutError("sink sessions still open")


# --------------------------------------------------------------------------- test helpers

_reactor_thread: threading.Thread | None = None


def in_reactor(fn: Any, *args: Any, timeout: float = 60.0, **kwargs: Any) -> Any:
    """Run ``fn`` in the (shared, threaded) global reactor and wait for its Deferred."""
    global _reactor_thread
    from twisted.internet import reactor

    if _reactor_thread is None:
        _reactor_thread = threading.Thread(target=reactor.run,
                                           kwargs={"installSignalHandlers": False},
                                           daemon=True)
        _reactor_thread.start()
        while not reactor.running:
            time.sleep(0.01)
    result: list[Any] = []
    done = threading.Event()

    def call() -> Any:
        from twisted.internet import defer
        d = defer.maybeDeferred(fn, *args, **kwargs)
        d.addBoth(lambda r: (result.append(r), done.set()))

    reactor.callFromThread(call)
    if not done.wait(timeout):
        raise TimeoutError(f"{fn!r} did not finish within {timeout}s")
    from twisted.python.failure import Failure
    if isinstance(result[0], Failure):
        result[0].raiseException()
    return result[0]


def free_port() -> int:
    """A port nothing listens on (for 'back end down' tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    """``python -m t.sink --port P [--lmtp] [--dir D] [--tls] [--no-pipelining] ...``"""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--lmtp", action="store_true")
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--tls", action="store_true")
    for kw in ("pipelining", "dsn", "8bitmime", "xforward", "smtputf8"):
        ap.add_argument(f"--no-{kw}", action="store_true")
    a = ap.parse_args(argv)
    if a.dir:
        a.dir.mkdir(parents=True, exist_ok=True)
    sink = Sink(a.host, a.port, lmtp=a.lmtp, tls=a.tls, directory=a.dir,
                pipelining=not a.no_pipelining, dsn=not a.no_dsn, eightbit=not a.no_8bitmime,
                xforward=not a.no_xforward, smtputf8=not a.no_smtputf8,
                greeting="220 sink.test LMTP sink" if a.lmtp else "220 sink.test ESMTP sink")
    print(f"listening on {a.host}:{sink.port}", flush=True)
    sink.server.serve_forever()


if __name__ == "__main__":
    main()
