# tests: t/integration/test_release.py, t/actions/test_release.py
"""``amavisd-release``, ``amavisd-requeue``, ``amavisd-report``: the AM.PDP release client.

Runs as a command line tool, apart from the daemon (spec/protocols.md 7.2).  Same
arguments as Debian's Perl script::

    amavisd-release [--socket S] mail_file [secret_id [alt_recip1 alt_recip2 ...]]
    amavisd-release [--socket S] -        (lines "mail_file [secret_id [alt_recips]]")

``mail_file`` is ``[path/][prefix-]<mail_id>[.gz][[partition_tag]]`` as the log's
``quarantine:`` field or ``msgs.quar_loc`` shows it.  The request type comes from
the program name (``...requeue``, ``...report``, else release), as in Perl.  Every
``setreply`` the daemon answers is printed to stderr.

Differences from the Perl script (docs/differences.md): ``--socket`` instead of a
path edited into the script, and the exit status says how it went: 0 only when
every reply is 2xx, 75 (EX_TEMPFAIL) when some reply is 4xx, 1 for a 5xx or any
other error, 64 (EX_USAGE) for a usage error.  Perl exits 0 even on a failure.

Kept free of Twisted and of the daemon's modules, so it starts fast.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

DEFAULT_SOCKET = "/var/lib/amavis/amavisd.sock"
TIMEOUT = 600.0
EX_OK, EX_ERROR, EX_USAGE, EX_TEMPFAIL = 0, 1, 64, 75
#: Spec 7.2: ``[path/][prefix-]<mail_id>[.gz]``, mail_id 12-16 characters.
_NEW_STYLE = re.compile(r"([^/].*/)?([A-Z0-9][A-Z0-9._-]*[_-])?"
                        r"([A-Z0-9][A-Z0-9_+-]{10,14}[A-Z0-9])(\.gz)?", re.I | re.S)
_OLD_STYLE = re.compile(r"([^/].*/)?()([A-Za-z0-9$._=+-]+?)(\.gz)?", re.S)
_RESPONSE_LINE = re.compile(rb"([^=\x00\n]*?)(?:=|:[ \t]*)([^\n]*?)\r\n", re.S)


class UsageError(Exception):
    """Bad arguments: the usage text and exit status 64."""


@dataclass(frozen=True)
class Target:
    """One quarantined message named on the command line or a stdin line (spec 7.2)."""

    mail_file: str
    mail_id: str
    quar_type: str = ""
    partition_tag: str = ""


def parse_mail_file(text: str) -> Target:
    """``S/banned-kX3V0tN-vU4A``, ``spam-AbC....gz``, ``AbCdEf012345[27]`` -> a Target.

    ``quar_type`` is ``Z`` for ``.gz``, ``F`` with a directory part, else empty so
    that the daemon picks its default (spec 7.2).
    """
    tag = ""
    m = re.search(r"\[([^\]]*)\]\Z", text)
    if m:
        tag, text = m.group(1), text[:m.start()]
    m = _NEW_STYLE.fullmatch(text) or _OLD_STYLE.fullmatch(text)
    if m is None:
        raise UsageError(f"Invalid quarantine ID: {text}")
    path, _prefix, mail_id, gz = m.groups()
    quar_type = "Z" if gz else "F" if path else ""
    return Target(text, mail_id, quar_type, tag)


def encode_name(name: str) -> str:
    """Every byte but ``[0-9A-Za-z_-]`` as lowercase ``%xx`` (the Perl client's rule)."""
    return "".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "_-")
                   else f"%{b:02x}" for b in name.encode("utf-8"))


def encode_value(value: str) -> str:
    """``%`` and every byte outside 0x21-0x7E as lowercase ``%xx`` (protocols.md 4.1)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02x}"
                   for b in value.encode("utf-8", "surrogateescape"))


def decode(raw: bytes) -> str:
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  raw).decode("utf-8", "replace")


def request_lines(kind: str, target: Target, secret_id: str,
                  recipients: Sequence[str]) -> list[tuple[str, str]]:
    """The attributes in the Perl client's order (spec 7.2)."""
    attrs = [("request", kind), ("mail_id", target.mail_id)]
    if target.quar_type:
        attrs.append(("quar_type", target.quar_type))
    if secret_id:
        attrs.append(("secret_id", secret_id))
    attrs.append(("mail_file", target.mail_file))
    if target.partition_tag:
        attrs.append(("partition_tag", target.partition_tag))
    attrs += [("recipient", r) for r in recipients]
    return attrs


def connect(where: str, timeout: float = TIMEOUT) -> socket.socket:
    """``/path`` or ``unix:/path``; ``inet:host:port``, ``host:port`` or ``[v6]:port``."""
    if where.startswith("unix:"):
        where = where[5:]
    if where.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"Can't connect to UNIX socket {where}: "
                                  f"{exc.strerror or exc}") from None
        return sock
    rest = where[5:] if where.startswith("inet:") else where
    m = re.fullmatch(r"\[([^\]]*)\]:(\d+)|([^:\[\]]*):(\d+)", rest)
    if m is None:
        raise UsageError(f"Bad socket {where!r}: use /path, inet:host:port or [host]:port")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    try:
        return socket.create_connection((host or "127.0.0.1", port), timeout=timeout)
    except OSError as exc:
        raise ConnectionError(f"Can't connect to socket {where}: "
                              f"{exc.strerror or exc}") from None


class Session:
    """One connection; several requests may follow each other on it (spec 7.2)."""

    def __init__(self, sock: socket.socket, trace: TextIO | None = None):
        self.sock = sock
        self.trace = trace
        self.buf = b""

    def ask(self, attrs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        lines = [f"{encode_name(n)}={encode_value(v)}" for n, v in attrs]
        if self.trace:
            for line in lines:
                print(f"> {line}", file=self.trace)
        self.sock.sendall("".join(x + "\r\n" for x in lines).encode("ascii") + b"\r\n")
        reply: dict[str, list[str]] = {}
        while True:
            line = self._line()
            if line == b"\r\n":
                return reply
            m = _RESPONSE_LINE.fullmatch(line)
            if m:
                name, value = decode(m.group(1)), decode(m.group(2))
                reply.setdefault(name, []).append(value)
                if self.trace:
                    print(f"< {name}={value}", file=self.trace)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection without a response")
            self.buf += chunk
            if len(self.buf) > 1024 * 1024:
                raise ConnectionError("response line too long")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line + b"\r\n"


def status_of(replies: Sequence[str]) -> int:
    """0 if every reply is 2xx, 75 if some are 4xx (and none worse), else 1."""
    if not replies:
        return EX_ERROR
    worst = EX_OK
    for reply in replies:
        code = reply[:1]
        if code == "2":
            continue
        if code == "4" and worst == EX_OK:
            worst = EX_TEMPFAIL
        elif code != "4":
            worst = EX_ERROR
    return worst


def worse(a: int, b: int) -> int:
    """Combine two statuses: an error beats a tempfail beats success."""
    order = {EX_OK: 0, EX_TEMPFAIL: 1, EX_ERROR: 2, EX_USAGE: 3}
    return a if order.get(a, 2) >= order.get(b, 2) else b


def release_one(session: Session, kind: str, fields: Sequence[str], *, err: TextIO) -> int:
    """One request from ``mail_file [secret_id [alt_recips...]]``; its exit status.

    A second field with ``@`` is a recipient, not a secret_id (Perl does this on
    the command line only; a secret_id never holds ``@``, so stdin lines get it too).
    """
    target = parse_mail_file(fields[0])
    rest = list(fields[1:])
    secret_id = ""
    if rest and "@" not in rest[0]:
        secret_id = rest.pop(0)
    reply = session.ask(request_lines(kind, target, secret_id, rest))
    if not reply:
        print("Invalid response received", file=err)
        return EX_ERROR
    setreplies = reply.get("setreply", [])
    for line in setreplies:
        print(line, file=err)
    if not setreplies:
        print("Error, missing 'setreply' attribute", file=err)
    return status_of(setreplies)


def request_kind(program: str) -> str:
    """Spec 7.2: the program name picks the request type."""
    name = Path(program).name.lower()
    if name.endswith("report"):
        return "report"
    if name.endswith("requeue"):
        return "requeue"
    return "release"


def usage(program: str) -> str:
    prog = Path(program).name
    return (f"Usage:  $ {prog} [--socket PATH|inet:host:port] mail_file "
            f"[secret_id [alt_recip1 alt_recip2 ...]]\n"
            f"  or to read request lines from stdin:  $ {prog} [--socket ...] -\n")


def parse_args(argv: Sequence[str]) -> tuple[str, bool, list[str]]:
    """Options only before the first argument (a secret_id may start with ``-``)."""
    where, verbose, args = DEFAULT_SOCKET, False, list(argv)
    while args and (args[0].startswith("--") or args[0] in ("-h", "-v")):
        opt = args.pop(0)
        if opt == "--":
            break
        if opt in ("-h", "--help"):
            raise UsageError("")
        if opt in ("-v", "--verbose"):
            verbose = True
        elif opt == "--socket":
            if not args:
                raise UsageError("--socket needs a value")
            where = args.pop(0)
        elif opt.startswith("--socket="):
            where = opt.split("=", 1)[1]
        else:
            raise UsageError(f"Unknown option {opt}")
    if not args:
        raise UsageError("Not enough arguments")
    if args[0] == "-" and len(args) > 1:
        raise UsageError("Extra arguments after '-'")
    return where, verbose, args


def run(argv: Sequence[str], kind: str, program: str, *, stdin: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """The whole tool; returns the exit status."""
    err = err or sys.stderr
    stdin = stdin or sys.stdin
    try:
        where, verbose, args = parse_args(argv)
        if args[0] != "-":
            parse_mail_file(args[0])          # a usage error before connecting
        sock = connect(where)
    except UsageError as exc:
        if str(exc):
            print(f"{exc}\n", file=err)
        print(usage(program), file=err, end="")
        return EX_USAGE
    except ConnectionError as exc:
        print(exc, file=err)
        return EX_ERROR
    status = EX_OK
    session = Session(sock, err if verbose else None)
    try:
        if args[0] == "-":
            for line in stdin:
                if re.fullmatch(r"[ \t]*(#.*)?", line.rstrip("\r\n")):
                    continue
                status = worse(status, release_one(session, kind, line.split(), err=err))
        else:
            status = release_one(session, kind, args, err=err)
    except UsageError as exc:
        print(f"{exc}\n", file=err)
        print(usage(program), file=err, end="")
        return worse(status, EX_USAGE)
    except (OSError, ConnectionError) as exc:
        print(f"AM.PDP exchange failed: {exc}", file=err)
        return EX_ERROR
    finally:
        sock.close()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """``amavisd-release`` (or a link named ``...-requeue``/``...-report``)."""
    program = sys.argv[0]
    return run(sys.argv[1:] if argv is None else argv, request_kind(program), program)


def main_requeue(argv: Sequence[str] | None = None) -> int:
    """``amavisd-requeue``: back to the MTA through ``$requeue_method``."""
    return run(sys.argv[1:] if argv is None else argv, "requeue", "amavisd-requeue")


def main_report(argv: Sequence[str] | None = None) -> int:
    """``amavisd-report``: a report (``$report_format``, default ARF)."""
    return run(sys.argv[1:] if argv is None else argv, "report", "amavisd-report")


if __name__ == "__main__":
    sys.exit(main())
