"""SMTP/LMTP client: outgoing transactions to the back-end MTA.

Written step by step like Twisted's ``SMTPClient``: every command pushes an
expectation (label, section, handler) onto a queue, and each complete reply pops
the head.  That one mechanism serves both the lock-step dialogue and PIPELINING
(spec/protocols.md section 5.3 step 11), where MAIL, all RCPTs and DATA go out
in one write and the replies are collected afterwards.

The protocol never raises into its caller: ``ForwardClient.result`` always fires
with a ``TransactionOutcome`` that holds one ``RcptResult`` per recipient plus,
if the session broke, a ``SessionError``.  ``forward.py`` turns that into the
per-recipient replies (section 5.4).

A session can carry several transactions (connection caching, spec 5.6, managed
by ``smtp_cache.py``): with ``keep`` set, a transaction that ends cleanly leaves
the session ``IDLE`` instead of sending QUIT, and ``start`` runs the next one on
it without a new greeting or EHLO.  A session is kept only in a clean state
(after the dot reply, an RSET reply, or a refused MAIL), so the next MAIL needs
no RSET.  A reused session that fails before the data-dot went out marks its
outcome ``retry``: the message was not delivered there and the caller runs the
transaction again on a new connection; after the dot nothing is ever retried.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet import defer, interfaces, ssl
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from amavisd.errors import Reply
from amavisd.logline import quote_address
from amavisd.message import ClientInfo, Message, Recipient

log = logging.getLogger(__name__)

#: Stage timeouts in seconds (spec 5.7); each is used as max(60, min(X, deadline - now)).
TIMEOUTS: dict[str, float] = {
    "connect": 35, "greeting": 35, "ehlo": 300, "starttls": 300, "xforward": 300,
    "mail": 300, "rcpt": 300, "data": 120, "transfer": 180, "dot": 600, "rset": 20,
    "quit": 5, "quit-error": 1, "noop": 15, "rundown": 5,
}
#: Stages whose timeout is X itself, without the 60 s floor: a NOOP probe of a cached
#: session or a rundown QUIT that may take a minute would defeat their purpose.
UNFLOORED = frozenset({"noop", "rundown"})
#: A server line longer than this without a line end aborts the session (spec 5.7).
RUNAWAY_LINE = 500_000
#: Read size for streaming the spool file (never the whole file in memory).
CHUNK_SIZE = 256 * 1024
#: Attribute order for XFORWARD (spec 5.3 step 7).
XFORWARD_ORDER = ("ADDR", "NAME", "PORT", "PROTO", "HELO", "SOURCE", "IDENT")
#: Default enhanced-code suffix per stage when the MTA gives none (spec 5.4).
STAGE_SUFFIX = {"mail": "1.0", "rcpt": "1.0", "rcpt452": "5.3", "data": "5.0", "dot": "6.0"}

_ENHANCED_RE = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")
_XF_SANITIZE_RE = re.compile(r'[^\x21-\x7e]|[<>()\\";@]')
BAIL_OUT = "Bail out, DATA accepted but tempfailed recips, not an LMTP input"
BAIL_OUT_NOPIPE = "Bail out, tempfailed recips, not an LMTP input"


# --------------------------------------------------------------------------- helpers


def stage_timeout(stage: str, deadline: float | None, now: float) -> float:
    """Spec 5.7: ``max(60, min(X, deadline - now))``; without a deadline just ``max(60, X)``.

    The NOOP probe and the rundown QUIT (``UNFLOORED``) use X as is.
    """
    x = TIMEOUTS[stage]
    if stage in UNFLOORED:
        return x
    if deadline is not None:
        x = min(x, deadline - now)
    return max(60.0, x)


def xtext(value: str) -> str:
    """RFC 3461 xtext: '+', '=' and anything outside 0x21-0x7e become +HH."""
    out = []
    for ch in value:
        o = ord(ch)
        if ch in "+=" or o < 0x21 or o > 0x7E:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def xforward_value(value: str) -> str:
    """Spec 5.3 step 7: non-printables and ``<>()\\";@`` -> '?', xtext, cut to 255."""
    return xtext(_XF_SANITIZE_RE.sub("?", value))[:255]


def xforward_command(client: ClientInfo, offered: Sequence[str]) -> str | None:
    """Build XFORWARD from the original client, only with attributes the server listed.

    Returns None when the client address is unknown or nothing is left to send
    (spec 5.3 step 7).  Unknown values are left out rather than invented.
    """
    if not client.addr:
        return None
    addr = client.addr
    if ":" in addr and not addr.upper().startswith("IPV6:"):
        addr = "IPv6:" + addr
    values = {"ADDR": addr, "NAME": client.name, "PORT": client.port, "PROTO": client.proto,
              "HELO": client.helo, "SOURCE": client.source, "IDENT": client.ident}
    wanted = {a.upper() for a in offered}
    parts = [f"{k}={xforward_value(str(values[k]))}" for k in XFORWARD_ORDER
             if k in wanted and values[k] not in (None, "")]
    return "XFORWARD " + " ".join(parts) if parts else None


def _idn_to_ascii(addr: str) -> str:
    """Spec 5.3 step 6: ASCII local part + non-ASCII domain -> ACE domain."""
    local, at, domain = addr.rpartition("@")
    if not at or not local.isascii() or domain.isascii():
        return addr
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return addr


@dataclass
class Capabilities:
    """What the server announced in its EHLO/LHLO reply (keywords upper case)."""

    keywords: dict[str, list[str]] = field(default_factory=dict)
    esmtp: bool = True

    def has(self, kw: str) -> bool:
        return kw in self.keywords

    @classmethod
    def parse(cls, lines: Sequence[str]) -> Capabilities:
        """Parse the lines after the first; a malformed keyword line is logged and ignored."""
        caps = cls()
        for line in lines[1:]:
            words = line.split()
            if not words or not re.match(r"^[A-Za-z0-9][A-Za-z0-9-]*$", words[0]):
                log.info("ignoring malformed EHLO keyword line: %r", line)
                continue
            caps.keywords[words[0].upper()] = [w.upper() for w in words[1:]]
        return caps


def mail_command(msg: Message, caps: Capabilities, eight_bit: bool, dsn_capable: bool,
                 utf8: bool) -> str:
    """MAIL FROM with parameters in the order observed in spec section 10.

    Order: RET, BODY, ENVID, SMTPUTF8 (Perl's order is hash-random; we pick the
    one seen on the wire, ``RET=HDRS BODY=7BIT ENVID=...``).
    """
    sender = msg.sender_quoted if utf8 else _idn_to_ascii(msg.sender_quoted)
    params = []
    if dsn_capable and msg.dsn_ret:
        params.append(f"RET={msg.dsn_ret}")
    if caps.has("8BITMIME"):
        params.append("BODY=8BITMIME" if eight_bit else "BODY=7BIT")
    if dsn_capable and msg.dsn_envid:
        params.append(f"ENVID={msg.dsn_envid}")
    if utf8:
        params.append("SMTPUTF8")
    return " ".join([f"MAIL FROM:<{sender}>", *params])


def notify_value(msg: Message, rcpt: Recipient, terminate_on_success: bool) -> str | None:
    """NOTIFY only with a non-null sender and a given list (spec 5.3 step 10)."""
    if not msg.sender or not rcpt.notify:
        return None
    values = [v.upper() for v in rcpt.notify]
    if terminate_on_success:
        values = [v for v in values if v != "SUCCESS"]
    return ",".join(values) if values else "NEVER"


def rcpt_path(rcpt: Recipient) -> str:
    """The RCPT TO path: the client's form, or the quoted ``final_address`` (pipeline.md 20.9)."""
    if rcpt.final_address is None:
        return rcpt.quoted
    return quote_address(rcpt.final_address)[1:-1]


def rcpt_command(msg: Message, rcpt: Recipient, dsn_capable: bool, terminate_on_success: bool,
                 utf8: bool) -> str:
    """RCPT TO with ORCPT then NOTIFY (the order observed in spec section 10)."""
    path = rcpt_path(rcpt)
    addr = path if utf8 else _idn_to_ascii(path)
    params = []
    if dsn_capable:
        if rcpt.orcpt and ";" in rcpt.orcpt:
            kind, _, orig = rcpt.orcpt.partition(";")
            if not kind:     # synthesised at RCPT (spec 3.6): amavis's orcpt_encode default
                kind = "rfc822" if orig.isascii() else "utf-8"
            params.append(f"ORCPT={kind};{xtext(orig)}")
        notify = notify_value(msg, rcpt, terminate_on_success)
        if notify:
            params.append(f"NOTIFY={notify}")
    return " ".join([f"RCPT TO:<{addr}>", *params])


# --------------------------------------------------------------------------- replies


@dataclass
class MtaReply:
    """One complete (possibly multi-line) reply as the next hop sent it."""

    code: int
    texts: list[str]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def raw(self) -> str:
        """The complete reply, lines joined with LF, continuation lines without their code."""
        return f"{self.code} " + "\n".join(self.texts)

    @property
    def enhanced(self) -> str | None:
        first = self.texts[0].split(" ", 1)[0] if self.texts else ""
        m = _ENHANCED_RE.match(first)
        return first if m and m.group(1) == str(self.code)[0] else None


def enhance_reply(reply: MtaReply, stage: str, mta_id: str) -> Reply:
    """Spec 5.4: ``<ddd> <x.y.z> from MTA(<mta_id>): <the complete MTA reply>``."""
    if stage == "rcpt" and reply.code == 452:
        stage = "rcpt452"
    enhanced = reply.enhanced or f"{str(reply.code)[0]}.{STAGE_SUFFIX[stage]}"
    return Reply(reply.code, enhanced, f"from MTA({mta_id}): {reply.raw}")


@dataclass(eq=False)
class SessionError(Exception):
    """The session broke: ``kind`` is 'timeout', 'connect' or 'other' (spec 5.4)."""

    kind: str
    section: str
    err: str

    def __str__(self) -> str:
        return f"{self.kind} during {self.section}: {self.err}"

    def reply(self, mta_id: str, log_id: str) -> Reply:
        """The reply for every recipient not already decided (spec 5.4; 4.4.1 fixes bug 9.12)."""
        if self.kind == "timeout":
            return Reply(450, "4.4.2", f"Timed out during {self.section}, MTA({mta_id}), "
                                       f"id={log_id}")
        if self.kind == "connect":
            return Reply(450, "4.4.1", f"Can't connect to {mta_id}: {self.err}, MTA({mta_id}), "
                                       f"id={log_id}")
        return Reply(451, "4.5.0", f"From MTA({mta_id}) during {self.section} ({self.err}): "
                                   f"id={log_id}")


@dataclass
class RcptResult:
    """What happened to one recipient in this transaction."""

    reply: Reply | None = None   # final reply; None means undecided (gets the session error)
    mta_reply: str = ""          # the raw MTA reply behind ``reply`` (for queued_as)
    accepted: bool = False       # RCPT got 2xx
    tempfailed: bool = False     # RCPT got 4xx other than 452
    deferred: bool = False       # RCPT got 452: retry in a new transaction (spec 6.8)


@dataclass
class TransactionOutcome:
    """Result of one transaction; ``error`` is set when the session broke."""

    mta_id: str
    results: list[RcptResult]
    error: SessionError | None = None
    data_delivered: bool = False  # some recipient got 2xx to the data-dot
    #: A reused (cached) session broke before the data-dot was written: nothing was
    #: delivered there, the caller runs the transaction again on a new connection.
    retry: bool = False


# --------------------------------------------------------------------------- data path


class DotStuffer:
    """Converts spool bytes (LF line ends) to the wire, carrying state across chunks.

    Spec 5.3 step 13: every CR is stripped, LF -> ``eol``, NUL -> ``\\xC0\\x80``,
    a '.' at a line start is doubled, and ``finish`` adds the missing final line
    end and the lone dot.  Line-start state survives any chunk border.
    """

    def __init__(self, eol: bytes = b"\r\n"):
        self._eol = eol
        self._at_line_start = True

    def feed(self, data: bytes) -> bytes:
        if b"\r" in data:
            data = data.replace(b"\r", b"")
        if not data:
            return b""
        if b"\0" in data:
            data = data.replace(b"\0", b"\xc0\x80")
        data = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            data = b"." + data
        self._at_line_start = data[-1:] == b"\n"
        return data if self._eol == b"\n" else data.replace(b"\n", self._eol)

    def finish(self) -> bytes:
        return (b"" if self._at_line_start else self._eol) + b"." + self._eol


@implementer(interfaces.IPullProducer)
class SpoolProducer:
    """Pull producer: one 256 KiB chunk of the spool file per ``resumeProducing``.

    Starts at ``offset``: the body after the original header section, whose edited
    copy was already written (actions/headers.py, pipeline.md 20.2).
    """

    def __init__(self, path: Path, stuffer: DotStuffer, write: Callable[[bytes], None],
                 done: Callable[[], None], progress: Callable[[], None], offset: int = 0):
        self._fh: BinaryIO | None = open(path, "rb")
        if offset:
            self._fh.seek(offset)
        self._stuffer, self._write, self._done, self._progress = stuffer, write, done, progress

    def resumeProducing(self) -> None:
        if self._fh is None:
            return
        chunk = self._fh.read(CHUNK_SIZE)
        if chunk:
            self._progress()
            out = self._stuffer.feed(chunk)
            if out:
                self._write(out)
            return
        self._close()
        self._done()

    def stopProducing(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- settings


@dataclass
class ClientOptions:
    """The settings one transaction needs, copied from the policy bank."""

    localhost_name: str = "localhost"
    tls_security_level_out: str | None = None
    smtp_tls_client_options: dict[str, Any] = field(default_factory=dict)
    propagate_dsn_if_possible: bool = True
    terminate_dsn_on_notify_success: bool = False
    deadline: float | None = None

    @classmethod
    def from_settings(cls, settings: Any, deadline: float | None) -> ClientOptions:
        def get(name: str, default: Any) -> Any:
            value = getattr(settings, name, default)
            return default if value is None else value
        name = str(get("localhost_name", "localhost"))
        try:
            name = name.encode("idna").decode("ascii") if not name.isascii() else name
        except UnicodeError:
            pass
        return cls(name, getattr(settings, "tls_security_level_out", None),
                   dict(get("smtp_tls_client_options", {})),
                   bool(get("propagate_dsn_if_possible", True)),
                   bool(get("terminate_dsn_on_notify_success", False)), deadline)

    @property
    def tls_level(self) -> str:
        return (self.tls_security_level_out or "none").lower()

    def session_key(self) -> tuple[str, str, str]:
        """What a session's greeting phase depended on: a cached session is reused only
        by a transaction with the same EHLO name and TLS settings."""
        tls = repr(sorted((str(k), repr(v)) for k, v in self.smtp_tls_client_options.items()))
        return (self.localhost_name, self.tls_level, tls)


def tls_client_options(opts: ClientOptions, peer: str) -> Any:
    """Map ``%smtp_tls_client_options`` to a Twisted TLS context (spec 5.3 step 3).

    Verification happens only for levels 'verify'/'secure' or an explicit
    non-zero ``SSL_verify_mode``; the name checked is ``SSL_verifycn_name`` or the
    peer address.  Like Postfix's 'may'/'encrypt', other levels do not verify.
    """
    o = opts.smtp_tls_client_options
    mode = str(o.get("SSL_verify_mode", "0")).upper()
    verify = opts.tls_level in ("verify", "secure") or mode not in ("0", "SSL_VERIFY_NONE", "")
    client_cert = None
    if o.get("SSL_cert_file") and o.get("SSL_key_file"):
        pem = Path(o["SSL_cert_file"]).read_bytes() + Path(o["SSL_key_file"]).read_bytes()
        client_cert = ssl.PrivateCertificate.loadPEM(pem)
    if not verify:
        kwargs: dict[str, Any] = {"verify": False}
        if client_cert is not None:
            kwargs.update(privateKey=client_cert.privateKey.original,
                          certificate=client_cert.original)
        return ssl.CertificateOptions(**kwargs)
    trust = (ssl.Certificate.loadPEM(Path(o["SSL_ca_file"]).read_bytes())
             if o.get("SSL_ca_file") else ssl.platformTrust())
    name = str(o.get("SSL_verifycn_name") or peer)
    return ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=client_cert)


# --------------------------------------------------------------------------- the protocol


@dataclass
class _Expect:
    label: str       # the command, for 'No response to X'
    section: str     # fwd-* section name for error texts
    stage: str       # timeout key
    handler: Callable[[MtaReply], None]


class ForwardClient(LineOnlyReceiver):
    """An SMTP/LMTP session; each transaction's ``result`` fires with a ``TransactionOutcome``.

    The constructor sets up the first transaction, which runs once connected;
    ``start`` runs a further one on an ``IDLE`` session (connection caching).
    States: CONNECT, GREETING, HELLO, STARTTLS, XFORWARD, MAIL, RCPT, DATA,
    SENDING, DOT, IDLE, PROBE, QUIT, DONE.  Only ``_set_state`` writes ``self.state``.
    """

    delimiter = b"\n"
    MAX_LENGTH = RUNAWAY_LINE

    def __init__(self, msg: Message, recipients: Sequence[Recipient], header: bytes,
                 options: ClientOptions, *, lmtp: bool, per_recipient_capable: bool,
                 eight_bit: bool, mta_id: str, clock: Any, body_offset: int = 0,
                 keep: bool = False):
        self.lmtp, self.mta_id, self.clock = lmtp, mta_id, clock
        self.state = "CONNECT"
        self.caps = Capabilities()
        self.pipelining = False
        self.tls_active = False
        self.session_key = options.session_key()
        self.created: float | None = None       # connected at (clock seconds)
        self.idle_since: float | None = None    # when the session last became IDLE
        self.transactions = 0                   # transactions begun on this session
        #: Told when this session becomes IDLE or is lost (the connection cache).
        self.owner: Any = None
        self.cache_key: str | None = None       # the owner's key for it
        #: Fires (with None) once the connection is gone.
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._closing = False                   # QUIT sent, 421 seen, aborted or lost
        self._lost = False
        self._probe: defer.Deferred[bool] | None = None
        self._expected: deque[_Expect] = deque()
        self._lines: list[str] = []
        self._timer: Any = None
        self._producer: SpoolProducer | None = None
        self._new_transaction(msg, recipients, header, options, per_recipient_capable,
                              eight_bit, body_offset, keep)
        self.reused = False

    def _new_transaction(self, msg: Message, recipients: Sequence[Recipient], header: bytes,
                         options: ClientOptions, per_recipient_capable: bool, eight_bit: bool,
                         body_offset: int, keep: bool) -> None:
        """Per-transaction state; the session's (caps, TLS, timers) is left alone."""
        self.msg, self.recipients, self.header = msg, list(recipients), header
        self.body_offset = body_offset
        self.options, self.per_rcpt, self.eight_bit = options, per_recipient_capable, eight_bit
        self.keep = keep
        self.results = [RcptResult() for _ in self.recipients]
        self.result: defer.Deferred[TransactionOutcome] = defer.Deferred()
        self.section = "fwd-connect"
        self.transactions += 1
        self._finished = False
        self._mail_failed = False
        self._dot_sent = False                  # the data-dot (or a lone dot) was written
        self._sent: list[int] = []          # indexes of recipients whose RCPT was sent
        self._dot_waiting: list[int] = []   # LMTP: accepted recipients awaiting a dot reply
        self._data_delivered = False

    # -- the cache's side ------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """IDLE on an open connection that nobody asked to close."""
        return self.state == "IDLE" and not self._closing and not self._lost

    def start(self, msg: Message, recipients: Sequence[Recipient], header: bytes,
              options: ClientOptions, *, per_recipient_capable: bool, eight_bit: bool,
              body_offset: int = 0, keep: bool = False) -> defer.Deferred[TransactionOutcome]:
        """Run a further transaction on this IDLE session: no greeting, no EHLO again.

        The TLS layer, if any, stays as it is (spec 5.3 step 3 ran once per session).
        """
        if not self.reusable:
            raise RuntimeError(f"session to {self.mta_id} is not idle ({self.state})")
        self._new_transaction(msg, recipients, header, options, per_recipient_capable,
                              eight_bit, body_offset, keep)
        self.reused = True
        result = self.result
        self._begin()
        return result

    def probe(self) -> defer.Deferred[bool]:
        """NOOP on an IDLE session (spec 5.6): True if it answered 2xx within 15 s.

        On any other outcome the session is closed and False returned.
        """
        if not self.reusable:
            return defer.succeed(False)
        self._probe = defer.Deferred()
        self._set_state("PROBE")  # IDLE -> PROBE
        self._send(["NOOP"], [_Expect("NOOP", "fwd-connect", "noop", self._on_noop)])
        return self._probe

    def _on_noop(self, reply: MtaReply) -> None:
        d, self._probe = self._probe, None
        if reply.ok:
            self._set_state("IDLE")  # PROBE -> IDLE
            self.idle_since = self._now()
        else:
            log.info("cached session to %s failed its NOOP probe: %s", self.mta_id, reply.raw)
            self.close()
        if d is not None:
            d.callback(reply.ok)

    def close(self, wait_reply: bool = True) -> None:
        """Rundown: QUIT and close; an idle session only, else abort.

        ``wait_reply``: read the 221 first (5 s at most); without it the connection
        closes as soon as the QUIT is written (the child is exiting).
        """
        if self._lost:
            return
        self._closing = True
        if self.state not in ("IDLE", "PROBE"):
            self.transport.abortConnection()
            return
        self._set_state("QUIT")  # IDLE|PROBE -> QUIT
        self.section = "fwd-rundown-1"
        self._expected.clear()
        if not wait_reply:
            self._disarm()
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()
            return
        self._send(["QUIT"], [_Expect("QUIT", "fwd-rundown-1", "rundown",
                                      lambda r: self.transport.loseConnection())])

    # -- plumbing ---------------------------------------------------------

    def _set_state(self, state: str) -> None:
        log.debug("(%s) fwd %s: %s -> %s", self.msg.log_id, self.mta_id, self.state, state)
        self.state = state

    def _now(self) -> float:
        return float(self.clock.seconds())

    def _arm(self, stage: str) -> None:
        """(Re)start the one timer for what we wait on now (spec 5.7)."""
        self._disarm()
        self._timer = self.clock.callLater(
            stage_timeout(stage, self.options.deadline, self._now()), self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _send(self, lines: Sequence[str], expects: Sequence[_Expect]) -> None:
        """Write commands in one write and queue their expected replies."""
        utf8 = self.msg.smtputf8
        data = b"".join(ln.encode("utf-8" if utf8 else "ascii", "replace") + b"\r\n"
                        for ln in lines)
        was_idle = not self._expected
        self._expected.extend(expects)
        self.transport.write(data)
        if was_idle and self._expected:
            self._arm(self._expected[0].stage)

    def _command(self, line: str, section: str, stage: str,
                 handler: Callable[[MtaReply], None]) -> None:
        self.section = section
        self._send([line], [_Expect(line.split(" ", 1)[0], section, stage, handler)])

    # -- Twisted callbacks -----------------------------------------------

    def connectionMade(self) -> None:
        """Set TCP_NODELAY (Perl lost ~40 ms per message without it), await the greeting."""
        if hasattr(self.transport, "setTcpNoDelay"):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass
        self.created = self._now()
        peer = self.transport.getPeer()
        if isinstance(peer, (IPv4Address, IPv6Address)):
            scheme = "lmtp" if self.lmtp else "smtp"
            self.mta_id = f"{scheme}:[{peer.host}]:{peer.port}"
        self._set_state("GREETING")  # CONNECT -> GREETING
        self._expected.append(_Expect("greeting", "fwd-connect", "greeting", self._on_greeting))
        self._arm("greeting")

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
            label = self._expected[0].label if self._expected else "?"
            self._fail("other", f"Bad resp. to {label}: {text!r}")
            return
        self._lines.append(text[4:])
        if len(text) > 3 and text[3] == "-":
            return
        reply = MtaReply(int(text[:3]), self._lines)
        self._lines = []
        if not self._expected:
            self._unexpected(reply)
            return
        if reply.code == 421:
            self._closing = True               # the server is closing this session
            if self.reused and not self._dot_sent and not self._finished:
                self._fail("other", f"Service not available: {reply.raw}")
                return
        exp = self._expected.popleft()
        if self._expected:
            self._arm(self._expected[0].stage)
        elif self.state != "SENDING":
            self._disarm()
        try:
            exp.handler(reply)
        except Exception as exc:  # a bug must still end in a 4xx, never a lost message
            log.exception("(%s) error handling reply to %s", self.msg.log_id, exp.label)
            self._fail("other", f"{type(exc).__name__}: {exc}")

    def _unexpected(self, reply: MtaReply) -> None:
        """A reply nobody asked for; on an idle session (e.g. a 421 timeout) it ends it."""
        if self.state == "IDLE":
            log.info("cached session to %s closed by the server: %s", self.mta_id, reply.raw)
            self._closing = True
            self.transport.loseConnection()
            return
        log.warning("(%s) unexpected reply from %s: %s", self.msg.log_id, self.mta_id,
                    reply.raw)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail("other", f"Runaway server line, over {RUNAWAY_LINE} bytes without line end")

    def _stop_producer(self) -> None:
        if self._producer is not None:
            self._producer.stopProducing()
            self._producer = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._disarm()
        self._stop_producer()
        self._lost = self._closing = True
        if self._probe is not None:
            d, self._probe = self._probe, None
            log.info("cached session to %s lost during its NOOP probe", self.mta_id)
            d.callback(False)
        if not self._finished:
            if self.state == "GREETING":
                err = "No greeting"
            elif self._expected:
                err = f"No response to {self._expected[0].label}"
            else:
                err = f"Connection lost: {reason.getErrorMessage() if reason else 'closed'}"
            self._finish(SessionError("other", self._expected[0].section if self._expected
                                      else self.section, err))
        if self.owner is not None:
            self.owner.session_lost(self)
        if not self.closed.called:
            self.closed.callback(None)

    def _timed_out(self) -> None:
        self._timer = None
        if self._finished:       # a QUIT, RSET or NOOP reply is late: the session is done
            self._closing = True
            self.transport.abortConnection()
            return
        section = self._expected[0].section if self._expected else self.section
        self._fail("timeout", "timed out", section)

    # -- ending -------------------------------------------------------------

    def _fail(self, kind: str, err: str, section: str | None = None) -> None:
        """Break the session; in data-send mode close WITHOUT the dot (spec 6.4)."""
        self._closing = True
        if self._finished:
            self.transport.abortConnection()
            return
        section = section or (self._expected[0].section if self._expected else self.section)
        retry = self.reused and not self._dot_sent
        log.log(logging.INFO if retry else logging.WARNING,
                "(%s) forward to %s failed during %s: %s%s", self.msg.log_id, self.mta_id,
                section, err, " (cached session)" if retry else "")
        in_data = self.state in ("SENDING", "DOT")
        self._disarm()
        self._stop_producer()
        self._finish(SessionError(kind, section, err))
        self._expected.clear()
        if in_data or kind == "timeout":
            self.transport.abortConnection()
        else:
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()

    def _finish(self, error: SessionError | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        retry = error is not None and self.reused and not self._dot_sent
        self.result.callback(TransactionOutcome(self.mta_id, self.results, error,
                                                self._data_delivered, retry))

    def _end(self, quit_sent: bool = False) -> None:
        """The transaction is over: go IDLE when kept (once every reply is in), else QUIT.

        Spec 5.3 step 15: with caching off the QUIT went out right after the dot
        (``quit_sent``); with caching on the session stays open for the next one.
        """
        if not self.keep or self._closing or quit_sent:
            self._finish()
            self._quit(already_sent=quit_sent)
            return
        if self._expected:            # e.g. an RSET reply still to come: its handler ends
            self._finish()
            return
        self._disarm()
        self._set_state("IDLE")  # * -> IDLE
        self.idle_since = self._now()
        if self._finished:            # the outcome went out before the RSET reply came
            if self.owner is not None:
                self.owner.session_idle(self)
            return
        # IDLE before the outcome fires: its callbacks may hand the session back to the
        # cache and start the next transaction (a DSN right after the message) on it.
        self._finish()

    def _after_rset(self, reply: MtaReply) -> None:
        """An RSET reply: the session is clean again, or (not 2xx) closed."""
        if reply.ok:
            self._end()
        else:
            self._quit()

    def _quit(self, already_sent: bool = False) -> None:
        """QUIT off the critical path: the outcome is already final (spec 5.3 step 15)."""
        self._set_state("QUIT")  # * -> QUIT
        self._closing = True
        self._finish()
        self.section = "fwd-rundown-1"
        if not already_sent:  # else it went out right after the dot, its reply is queued
            self._send(["QUIT"], [_Expect("QUIT", "fwd-rundown-1", "quit",
                                          lambda r: self.transport.loseConnection())])

    # -- greeting and EHLO ----------------------------------------------

    def _on_greeting(self, reply: MtaReply) -> None:
        if not reply.ok:
            self._fail("other", f"Negative greeting: {reply.raw}")
            return
        self._hello()

    def _hello(self) -> None:
        self._set_state("HELLO")  # GREETING|STARTTLS -> HELLO
        verb = "LHLO" if self.lmtp else "EHLO"
        self._command(f"{verb} {self.options.localhost_name}", "fwd-connect", "ehlo",
                      self._on_ehlo)

    def _on_ehlo(self, reply: MtaReply) -> None:
        if reply.ok:
            self.caps = Capabilities.parse(reply.texts)
            self._after_hello()
        elif self.lmtp:
            self._fail("other", f"Negative LHLO response: {reply.raw}")
        else:
            self._command(f"HELO {self.options.localhost_name}", "fwd-connect", "ehlo",
                          self._on_helo)

    def _on_helo(self, reply: MtaReply) -> None:
        if not reply.ok:
            self._fail("other", f"Negative HELO response: {reply.raw}")
            return
        self.caps = Capabilities(esmtp=False)
        self._after_hello()

    def _after_hello(self) -> None:
        """STARTTLS policy, LMTP requirements, then the transaction (spec 5.3 steps 3-7)."""
        level = self.options.tls_level
        if not self.tls_active and level != "none":
            if self.caps.has("STARTTLS"):
                self._set_state("STARTTLS")  # HELLO -> STARTTLS
                self._command("STARTTLS", "fwd-connect", "starttls", self._on_starttls)
                return
            if level != "may":
                self._fail("other", "MTA does not offer STARTTLS, but TLS is required")
                return
        if self.lmtp and not (self.caps.has("PIPELINING") and
                              self.caps.has("ENHANCEDSTATUSCODES")):
            self._fail("other", "LMTP server does not announce PIPELINING and "
                                "ENHANCEDSTATUSCODES")
            return
        self.pipelining = self.caps.has("PIPELINING")
        self._begin()

    def _begin(self) -> None:
        """Checks known before MAIL, then XFORWARD (its own round trip) or MAIL."""
        if not self._precheck():
            self._end()
            return
        cmd = (xforward_command(self.msg.client, self.caps.keywords["XFORWARD"])
               if self.caps.has("XFORWARD") else None)
        if cmd:
            self._set_state("XFORWARD")  # HELLO|IDLE -> XFORWARD
            self._command(cmd, "fwd-xforward", "xforward", self._on_xforward)
        else:
            self._transaction()

    def _on_starttls(self, reply: MtaReply) -> None:
        if not reply.ok:
            if self.options.tls_level == "may":
                log.info("(%s) STARTTLS refused by %s, continuing in clear: %s",
                         self.msg.log_id, self.mta_id, reply.raw)
                self.tls_active = True  # do not ask again
                self._after_hello()
            else:
                self._fail("other", f"STARTTLS refused: {reply.raw}")
            return
        peer = self.transport.getPeer()
        ctx = tls_client_options(self.options, getattr(peer, "host", "localhost"))
        self.transport.startTLS(ctx)
        self.tls_active = True
        self._hello()  # EHLO again after TLS (spec 5.3 step 3)

    def _on_xforward(self, reply: MtaReply) -> None:
        if not reply.ok:
            log.info("(%s) XFORWARD refused by %s: %s", self.msg.log_id, self.mta_id, reply.raw)
        self._transaction()

    # -- the transaction ------------------------------------------------------

    @property
    def _utf8(self) -> bool:
        """SMTPUTF8 counts only if requested and announced together with 8BITMIME."""
        return bool(self.msg.smtputf8 and self.caps.has("SMTPUTF8")
                    and self.caps.has("8BITMIME"))

    @property
    def _dsn(self) -> bool:
        return self.options.propagate_dsn_if_possible and self.caps.has("DSN")

    def _decide_all(self, reply: Reply) -> None:
        for res in self.results:
            if res.reply is None:
                res.reply = reply

    def _precheck(self) -> bool:
        """Failures known before MAIL: 8-bit without 8BITMIME, non-ASCII without SMTPUTF8."""
        if self.eight_bit and not self.caps.has("8BITMIME"):
            self._decide_all(Reply(550, "5.6.3", "Conversion to 7BIT required but not supported"))
            return False
        if not self._utf8:
            if not _idn_to_ascii(self.msg.sender_quoted).isascii():
                self._decide_all(Reply(550, "5.6.7", "Non-ASCII addresses not permitted for "
                                                     "sender"))
                return False
            for rcpt, res in zip(self.recipients, self.results, strict=True):
                if not _idn_to_ascii(rcpt_path(rcpt)).isascii():
                    res.reply = Reply(553, "5.6.7", "Non-ASCII addresses not permitted for "
                                                    "recipient")
        return any(res.reply is None for res in self.results)

    def _transaction(self) -> None:
        """MAIL, RCPTs and DATA: in one write with PIPELINING, else one by one."""
        self._sent = [i for i, res in enumerate(self.results) if res.reply is None]
        mail = mail_command(self.msg, self.caps, self.eight_bit, self._dsn, self._utf8)
        self._set_state("MAIL")  # HELLO|XFORWARD -> MAIL
        if not self.pipelining:
            self._command(mail, "fwd-mail-from", "mail", self._on_mail)
            return
        lines = [mail]
        expects = [_Expect("MAIL", "fwd-mail-pip", "mail", self._on_mail)]
        for i in self._sent:
            lines.append(self._rcpt_line(i))
            expects.append(_Expect("RCPT", "fwd-rcpt-pip", "rcpt",
                                   lambda r, i=i: self._on_rcpt(i, r)))
        lines.append("DATA")
        expects.append(_Expect("DATA", "fwd-data-cmd", "data", self._on_data))
        self.section = "fwd-mail-pip"
        self._send(lines, expects)

    def _rcpt_line(self, i: int) -> str:
        return rcpt_command(self.msg, self.recipients[i], self._dsn,
                            self.options.terminate_dsn_on_notify_success, self._utf8)

    def _on_mail(self, reply: MtaReply) -> None:
        if reply.ok:
            if not self.pipelining:
                self._set_state("RCPT")  # MAIL -> RCPT
                self._next_rcpt(0)
            else:
                self._set_state("RCPT")  # MAIL -> RCPT (replies still arriving)
            return
        self._mail_failed = True
        enhanced = enhance_reply(reply, "mail", self.mta_id)
        for i in self._sent:
            self.results[i].reply = enhanced
            self.results[i].mta_reply = reply.raw
        if not self.pipelining:
            self._end()

    def _next_rcpt(self, pos: int) -> None:
        """Lock-step: send RCPT number ``pos`` of the sent list, or go on to DATA."""
        if pos >= len(self._sent):
            self._after_rcpts()
            return
        i = self._sent[pos]
        self._command(self._rcpt_line(i), "fwd-rcpt-to", "rcpt",
                      lambda r: self._on_rcpt(i, r, pos + 1))

    def _on_rcpt(self, i: int, reply: MtaReply, next_pos: int | None = None) -> None:
        """Classify one RCPT reply (spec 5.3 step 12); 452 defers the rest."""
        if self._mail_failed:
            return
        res = self.results[i]
        if reply.ok:
            res.accepted = True
        else:
            res.reply = enhance_reply(reply, "rcpt", self.mta_id)
            res.mta_reply = reply.raw
            res.deferred = reply.code == 452
            res.tempfailed = reply.code // 100 == 4 and reply.code != 452
        if next_pos is None:
            return
        if reply.code == 452:
            for j in self._sent[next_pos:]:
                self.results[j].reply, self.results[j].deferred = res.reply, True
                self.results[j].mta_reply = reply.raw
            self._sent = self._sent[:next_pos]
            self._after_rcpts()
            return
        self._next_rcpt(next_pos)

    def _must_bail(self) -> bool:
        return not self.per_rcpt and any(self.results[i].tempfailed for i in self._sent)

    def _bail_out(self, text: str) -> None:
        """Non-LMTP input with a tempfailed recipient: nobody gets the message (spec 6.2)."""
        log.warning("(%s) %s", self.msg.log_id, text)
        reply = SessionError("other", "fwd-data-chkpnt", text).reply(self.mta_id,
                                                                     self.msg.log_id)
        for res in self.results:
            res.reply = reply

    def _after_rcpts(self) -> None:
        """Lock-step only: RSET instead of DATA on a bail-out or with no accepted recipient."""
        accepted = [i for i in self._sent if self.results[i].accepted]
        if self._must_bail() or not accepted:
            if self._must_bail():
                self._bail_out(BAIL_OUT_NOPIPE)
            self._set_state("RSET")  # RCPT -> RSET
            self._command("RSET", "fwd-rundown-1", "rset", self._after_rset)
            self._finish()
            return
        self._set_state("DATA")  # RCPT -> DATA
        self._command("DATA", "fwd-data-cmd", "data", self._on_data)

    def _on_data(self, reply: MtaReply) -> None:
        accepted = [i for i in self._sent if self.results[i].accepted]
        if self._mail_failed and reply.code != 354:
            self._end()               # MAIL was refused: no transaction is open
            return
        if reply.code != 354:
            enhanced = enhance_reply(reply, "data", self.mta_id)
            for i in accepted:
                self.results[i].reply, self.results[i].mta_reply = enhanced, reply.raw
            self._set_state("RSET")  # DATA -> RSET
            self._command("RSET", "fwd-rundown-1", "rset", self._after_rset)
            self._finish()
            return
        if self._must_bail():
            # DATA -> DONE: the connection is dropped without the dot (observed, spec 5.3)
            self._set_state("DONE")
            self._bail_out(BAIL_OUT)
            self._closing = True
            self._finish()
            self.transport.abortConnection()
            return
        if not accepted or self._mail_failed:
            # RFC 2920: DATA accepted without a valid recipient -> empty body, lone dot
            self._set_state("DOT")  # DATA -> DOT
            self._dot_sent = True
            expects = [] if self.lmtp else [_Expect(".", "fwd-data-end", "dot",
                                                    lambda r: self._end())]
            self._send(["."], expects)
            if self.lmtp:
                self._quit()          # no reply is due: the LMTP state is uncertain
            return
        self._stream()

    # -- the message ------------------------------------------------------------

    def _stream(self) -> None:
        """``header``, then the spool file from ``body_offset`` through a pull producer.

        Spec 5.3 step 13.  ``header`` is the new header section (pipeline.md 20.2);
        with ``body_offset`` 0 it is a prefix to the whole spool file.
        """
        self._set_state("SENDING")  # DATA -> SENDING
        self.section = "fwd-data-hdr"
        self._arm("transfer")
        stuffer = DotStuffer(b"\r\n")
        head = stuffer.feed(self.header)
        if head:
            self.transport.write(head)
        self.section = "fwd-data-contents"
        try:
            self._producer = SpoolProducer(self.msg.spool_path, stuffer, self.transport.write,
                                           lambda: self._end_of_data(stuffer),
                                           lambda: self._arm("transfer"), self.body_offset)
        except OSError as exc:
            self._fail("other", f"Can't open {self.msg.spool_path}: {exc.strerror}")
            return
        self.transport.registerProducer(self._producer, False)

    def _end_of_data(self, stuffer: DotStuffer) -> None:
        """The dot (and QUIT when pipelining and not kept) in one write; await the replies."""
        self.transport.unregisterProducer()
        self._producer = None
        self._set_state("DOT")  # SENDING -> DOT
        self.section = "fwd-data-end"
        accepted = [i for i in self._sent if self.results[i].accepted]
        if self.lmtp:
            self._dot_waiting = list(accepted)
            expects = [_Expect(".", "fwd-data-end", "dot", self._on_lmtp_dot) for _ in accepted]
        else:
            expects = [_Expect(".", "fwd-data-end", "dot", self._on_smtp_dot)]
        tail = stuffer.finish()
        self._dot_sent = True
        if self.pipelining and not self.keep:
            tail += b"QUIT\r\n"
            expects.append(_Expect("QUIT", "fwd-rundown-1", "quit",
                                   lambda r: self.transport.loseConnection()))
        self._expected.extend(expects)
        self.transport.write(tail)
        self._arm("dot")

    def _record_dot(self, i: int, reply: MtaReply) -> None:
        self.results[i].reply = enhance_reply(reply, "dot", self.mta_id)
        self.results[i].mta_reply = reply.raw
        if reply.ok:
            self._data_delivered = True

    def _on_smtp_dot(self, reply: MtaReply) -> None:
        """SMTP: one reply for every accepted recipient."""
        for i in self._sent:
            if self.results[i].accepted:
                self._record_dot(i, reply)
        self._dot_done()

    def _on_lmtp_dot(self, reply: MtaReply) -> None:
        """LMTP: one reply per ACCEPTED recipient, never per RCPT sent (fixes bug 9.1)."""
        self._record_dot(self._dot_waiting.pop(0), reply)
        if not self._dot_waiting:
            self._dot_done()

    def _dot_done(self) -> None:
        self._end(quit_sent=self.pipelining and not self.keep)
