"""The inbound SMTP/LMTP server: a Twisted protocol, one session at a time.

Runs in the child.  It speaks the protocol of spec/protocols.md section 3 and
nothing else: policy (ids, tempdirs, banks, the content checks) comes from a
``SessionHandler``.  Commands are read in line mode (lines end only at CRLF,
section 3.2), dispatched to ``smtp_<VERB>``; DATA switches to raw mode and
streams into a ``DataSpool``.  LMTP is a session mode, not a subclass: LHLO is
accepted on any port, HELO/EHLO turn it off (section 3.3, quirk 9.6).

Deliberate differences from Perl amavisd (docs/differences.md):

* a command line longer than 64 KiB gets ``500 5.5.2 Error: command line too
  long`` and is discarded (Perl has no limit, section 3.2);
* the message size limit is enforced: ``$smtpd_message_size_limit`` and the
  per-recipient limits, at RCPT against a declared SIZE and during DATA
  (Perl only advertises the global limit, sections 3.7 and 9.2);
* the first DATA line is dot-unstuffed (quirk 9.3), see ``spool.py``;
* STARTTLS and the 530 "STARTTLS first" rule also let LHLO through.

The module never imports ``twisted.internet.reactor`` at import time (the
master imports our code before forking, DESIGN.md "Fork safety").
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from amavisd import constants
from amavisd.constants import D_PASS, D_TEMPFAIL, ST_DATA, ST_MAIL
from amavisd.digest import BodyDigest
from amavisd.errors import Refusal, Reply, TempFail
from amavisd.final_reply import lmtp_replies, one_response_for_all, wrap_reply
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols.spool import DataSpool, SpoolResult

log = logging.getLogger(__name__)

#: Our cap on a command line (Perl has none, spec 3.2).  RFC 5321 section
#: 4.5.3.1.4 asks for 512 octets; 64 KiB leaves room for long XFORWARD/AUTH lines.
COMMAND_LINE_LIMIT = 64 * 1024
#: An AUTH exchange line over this gets ``500 5.5.6`` (spec 3.11).
AUTH_LINE_LIMIT = 12288
#: A PROXY v1 header is at most 107 octets including its CRLF (HAProxy spec 2.1).
PROXY_LINE_LIMIT = 107 - 2
#: Replies are flushed at the end of each input batch, or at this many lines (spec 3.9).
FORCE_FLUSH_LINES = 200
#: Per-recipient limits are raised to at least this (spec 3.6), as is the global
#: one when ``enforce_smtpd_message_size_limit_64kb_min`` (spec 3.4).
MIN_SIZE_LIMIT = 65536

XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE", "LOGIN")
NOT_IMPLEMENTED = ("EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML")
#: Verbs allowed before STARTTLS when TLS is mandatory (spec 3.2, plus LHLO).
ALLOWED_BEFORE_TLS = frozenset({"NOOP", "EHLO", "LHLO", "STARTTLS", "QUIT"})
AUTH_MECHS_SUPPORTED = ("ANONYMOUS", "PLAIN", "LOGIN")

_COMMAND_RE = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9]*)(?:[ \t]+(.*?))?[ \t]*\Z")
#: ``<path>``: quoted strings and domain literals may hold what is otherwise special.
_PATH = r'<((?:"(?:[^"\\\n]|\\.)*"|\[[^\]\n]*\]|[^<>"\[\]\s])*)>'
_MAIL_RE = re.compile(r"FROM:[ \t]*" + _PATH + r"(?:[ \t]+(.*))?\Z", re.I)
_RCPT_RE = re.compile(r"TO:[ \t]*" + _PATH + r"(?:[ \t]+(.*))?\Z", re.I)
_PARAM_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([^=\x00-\x20\x7f]+))?\Z")
_XFORWARD_RE = re.compile(r"([A-Za-z0-9-]+)=([^\x00-\x20\x7f]*)\Z")
_SIZE_RE = re.compile(r"[0-9]{1,20}\Z")
_AUTH_RE = re.compile(r"([A-Za-z0-9_-]+)(?:[ \t]+(\S+))?\Z")
_PROXY_RE = re.compile(r"PROXY (TCP4|TCP6) (\S+) (\S+) (0|[1-9][0-9]{0,4}) (0|[1-9][0-9]{0,4})\Z")
_SOURCE_ROUTE = re.compile(r"\A@[^:,]+(?:,@[^:,]+)*:")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
_XTEXT_HEX = re.compile(rb"\+([0-9A-Fa-f]{2})")
_UNITEXT = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_BANNER_VAR = re.compile(
    r"\$\{([A-Za-z-]+)\}|\$(helo-name|myhostname|version-id|version-date|version|product"
    r"|protocol)")


class Mode(enum.Enum):
    """What the bytes we receive next mean."""

    PROXY = "proxy"            # the HAProxy PROXY v1 line; no greeting sent yet
    COMMAND = "command"        # command lines
    AUTH = "auth"              # an AUTH continuation line
    DATA = "data"              # message text, into the DataSpool
    PROCESSING = "processing"  # the message is being handled; input is held back
    CLOSED = "closed"


class SizePolicy(NamedTuple):
    """A recipient's size limit and what happens to a message over it (spec 3.6)."""

    limit: int
    destiny: int               # D_PASS for oversized-lovers


class SessionHandler(TypingProtocol):
    """The policy side of a session; implemented by the child (DESIGN.md).

    ``settings`` is read anew for every decision because banks may change it
    between transactions.  Optional: ``recipient_size_policy(rcpt) -> SizePolicy |
    None`` gives the per-recipient limit of ``@message_size_limit_maps``.
    """

    settings: Any

    def session_started(self, client: ClientInfo) -> None:
        """A connection (or a proxied one) arrived; raising closes it without a word."""

    def transaction_started(self) -> tuple[str, Path]:
        """At MAIL: the log_id of this transaction and the email.txt path to spool into."""

    def client_info_at_mail(self, client: ClientInfo) -> None:
        """At MAIL, with XFORWARD data copied in (banks by client IP)."""

    def state(self, letter: str) -> None:
        """Nanny state letter (ST_MAIL, ST_DATA)."""

    def process(self, msg: Message) -> defer.Deferred:
        """Fires once every recipient has reply/destiny/done set."""

    def transaction_ended(self, msg: Message | None) -> None:
        """The transaction is over (final reply sent, RSET, abort...)."""

    def session_ended(self) -> None:
        """Called exactly once, after the connection is gone."""


TLSContextFactory = Callable[[Mapping[str, Any]], Any]


def default_tls_context_factory(options: Mapping[str, Any]) -> Any:
    """A server ``CertificateOptions`` from the PEM files named in
    ``smtpd_tls_server_options`` (``SSL_cert_file``, ``SSL_key_file``; spec 3.11).

    Extra certificates in the cert file are sent as the chain.
    """
    from OpenSSL import crypto
    from twisted.internet import ssl

    cert_pem = Path(options["SSL_cert_file"]).read_bytes()
    key_pem = Path(options["SSL_key_file"]).read_bytes()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                        cert_pem, re.S)
    if not blocks:
        raise ValueError(f"no certificate in {options['SSL_cert_file']}")
    certs = [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    return ssl.CertificateOptions(privateKey=key, certificate=certs[0],
                                  extraCertChain=certs[1:] or None)


def reply_for(exc: BaseException, task_id: str, section: str) -> Reply:
    """The one place that turns an exception into wire text (STYLE.md section 6)."""
    if isinstance(exc, Refusal):
        return exc.reply
    if isinstance(exc, TempFail):
        section, reason = exc.section, exc.reason
        log.error("(%s) TROUBLE in %s: %s", task_id, section, reason)
    else:
        reason = str(exc) or type(exc).__name__
        log.error("(%s) TROUBLE in %s: %s", task_id, section, reason, exc_info=exc)
    return Reply(451, "4.5.0", f"Error in processing, id={task_id}, {section} FAILED: {reason}")


# --- address and parameter helpers (spec 3.5, 3.6, 3.11) -------------------------------

def unquote_address(path: str) -> str:
    """The internal form of an RFC 5321 path: source route dropped, local part unquoted."""
    path = _SOURCE_ROUTE.sub("", path)
    m = re.match(r'"((?:[^"\\]|\\.)*)"(.*)\Z', path, re.S)
    if m:
        return re.sub(r"\\(.)", r"\1", m.group(1), flags=re.S) + m.group(2)
    return path


def quote_address(address: str) -> str:
    """The canonical RFC 5321 form: the local part quoted only when it is no dot-atom."""
    if address == "":
        return ""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not _DOT_ATOM.match(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return local + at + domain


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: ``+XX`` is a hex-coded octet (UTF-8 kept, bad bytes escaped)."""
    raw = value.encode("utf-8", "surrogateescape")
    decoded = _XTEXT_HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return decoded.decode("utf-8", "surrogateescape")


def orcpt_decode(value: str) -> str | None:
    """``addr-type;xtext`` -> ``type;address``: xtext and RFC 6533 ``\\x{HHHH}``."""
    addr_type, sep, addr = value.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", addr_type):
        return None
    text = _UNITEXT.sub(lambda m: chr(int(m.group(1), 16)), xtext_decode(addr))
    return f"{addr_type};{text}"


def expand_banner(template: str, values: Mapping[str, str]) -> str:
    """``${name}``/``$name`` banner variables (spec 3.1); unknown names stay as written."""
    def one(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), m.group(0))
    return _BANNER_VAR.sub(one, template)


def _split_params(text: str | None) -> list[tuple[str, str | None, str]] | None:
    """``NAME[=VALUE]`` tokens as (upper name, value, token); None if one is malformed."""
    result = []
    for token in (text or "").split():
        m = _PARAM_RE.match(token)
        if not m:
            return None
        result.append((m.group(1).upper(), m.group(2), token))
    return result


def _r(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text)


# --- the session state ---------------------------------------------------------------

@dataclass
class Transaction:
    """One MAIL ... DATA transaction; reset at RSET, HELO/EHLO/LHLO and after DATA."""

    log_id: str
    spool_path: Path
    sender: str
    sender_quoted: str
    client: ClientInfo
    protocol: str
    tls_cipher: str | None
    rx_start: float
    declared_size: int | None = None
    body_type: str | None = None
    smtputf8: bool = False
    dsn_ret: str | None = None
    dsn_envid: str | None = None
    auth_submitter: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    size_policies: list[SizePolicy] = field(default_factory=list)
    attempts: int = 0          # every RCPT counts, rejected ones too (spec 3.6)


@dataclass
class _AuthExchange:
    """An AUTH dialogue in progress (spec 3.11); credentials are never verified."""

    mech: str
    user: str | None = None


_TOO_LONG = object()


class SMTPServer(Protocol):
    """One inbound SMTP/LMTP session (spec/protocols.md sections 3.1-3.11)."""

    def __init__(self, handler: SessionHandler, reactor: Any = None,
                 tls_context_factory: TLSContextFactory | None = None):
        if reactor is None:
            from twisted.internet import reactor as global_reactor
            reactor = global_reactor
        self.handler = handler
        self._reactor = reactor
        self._tls_factory = tls_context_factory or default_tls_context_factory
        self.mode = Mode.COMMAND
        self.client = ClientInfo()
        self.lmtp = False
        self.helo_kind: str | None = None      # HELO, EHLO or LHLO
        self.tls_active = False
        self.auth_user: str | None = None
        self.auth_password: str | None = None
        self.timed_out = False
        self.txn: Transaction | None = None
        self._buffer = bytearray()
        self._scanned = 0                      # no CRLF in _buffer before this offset
        self._discarding = False               # inside an over-long line
        self._out: list[bytes] = []
        self._looping = False
        self._timer: Any = None
        self._utf8_proto = False               # sticky, quirk 9.4
        self._xforward: dict[str, str | None] = {}
        self._auth: _AuthExchange | None = None
        self._spool: DataSpool | None = None
        self._in_flight: Message | None = None
        self._greeted = False
        self._quit = False
        self._lost = False
        self._session_ended = False

    # --- settings ----------------------------------------------------------------------

    @property
    def settings(self) -> Any:
        """The current view; banks may change it between transactions."""
        return self.handler.settings

    def _setting(self, name: str, default: Any = None) -> Any:
        return getattr(self.settings, name, default)

    # --- connection --------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Fill ClientInfo from the socket; greet, or wait for a PROXY line (spec 3.1)."""
        self._set_nodelay()
        self.client = self._client_from_transport()
        if self._setting("haproxy_target_enabled"):
            self.mode = Mode.PROXY
            self._arm_timer()
            return
        self._start_session()

    def _set_nodelay(self) -> None:
        """Replies are small and the client waits for them: no Nagle delay."""
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:        # a Unix socket
                pass

    def _client_from_transport(self) -> ClientInfo:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        info = ClientInfo()
        if isinstance(host, UNIXAddress):
            name = host.name
            info.unix_socket = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        else:
            info.local_addr = getattr(host, "host", "") or ""
            info.local_port = int(getattr(host, "port", 0) or 0)
        if not isinstance(peer, UNIXAddress):
            info.mta_addr = getattr(peer, "host", "") or ""
            info.mta_port = int(getattr(peer, "port", 0) or 0)
        return info

    def _start_session(self) -> None:
        """Tell the handler (it may refuse: close with no bytes, spec 2.3), then greet."""
        try:
            self.handler.session_started(self.client)
        except Exception as exc:  # noqa: BLE001 - any refusal closes without a word
            log.warning("session refused for [%s]: %s", self.client.mta_addr, exc)
            self._close()
            return
        self.mode = Mode.COMMAND
        self.lmtp = self._setting("protocol") == "LMTP"
        self._greeted = True
        self._send(f"220 {self._banner(self._setting('smtpd_greeting_banner', ''))}")
        self._flush()
        self._arm_timer()

    def dataReceived(self, data: bytes) -> None:
        """Feed DATA straight to the spool, or buffer and run the command loop."""
        if self.mode is Mode.CLOSED:
            return
        if self._in_flight is None:
            self._arm_timer()
        try:
            if self.mode is Mode.DATA and not self._buffer:
                self._feed_data(data)          # no copy of big DATA chunks
            else:
                self._buffer += data
            self._process_input()
        except Exception:
            log.exception("TROUBLE in the SMTP session")
            self._close_with(_r(421, "4.3.2", "Service shutting down, closing channel"))

    def connectionLost(self, reason: Failure | None = None) -> None:
        """End the transaction and the session; while a message is being processed
        the session ends only once processing has finished."""
        self._disarm_timer()
        self.mode = Mode.CLOSED
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if not self._quit:
            log.debug("client broke the connection without a QUIT")
        if self._in_flight is not None:
            self._lost = True
            return
        self._end_transaction(None)
        self._end_session()

    def graceful_shutdown(self, reason: str = "") -> None:
        """TERM: ``421 4.3.2`` to an open session, then close (spec 3.9, section 10)."""
        if self.mode is Mode.CLOSED:
            return
        log.info("shutting down the session: %s", reason or "requested")
        if not self._greeted:
            self._close()
            return
        text = "Service shutting down, closing channel"
        if self._in_flight is None:
            text += ", during waiting for input from client"
        self._close_with(_r(421, "4.3.2", text))

    # --- output ------------------------------------------------------------------------

    def _send(self, line: str) -> None:
        self._out.append(line.encode("utf-8", "surrogateescape") + b"\r\n")

    def _reply(self, reply: Reply, final: bool = False) -> None:
        """Queue a reply, sanitized and wrapped (spec 3.8 last paragraph).

        Command replies keep backslashes (they echo the client's address as given);
        final replies get the full ``sanitize_str`` treatment.
        """
        if reply.code >= 500:
            log.info("reply to [%s]: %s", self.client.mta_addr, reply)
        for line in wrap_reply(reply, escape_backslash=final):
            self._send(line)
        if len(self._out) >= FORCE_FLUSH_LINES:
            self._flush()

    def _flush(self) -> None:
        """One transport.write per batch of replies (spec 3.9)."""
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.transport.write(data)

    def _close(self) -> None:
        self.mode = Mode.CLOSED
        self._disarm_timer()
        self.transport.loseConnection()

    def _close_with(self, reply: Reply) -> None:
        self._reply(reply)
        self._flush()
        self._close()

    # --- timers ------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        timeout = self._setting("smtpd_timeout", 480)
        if self._timer is not None and self._timer.active():
            self._timer.reset(timeout)
        else:
            self._timer = self._reactor.callLater(timeout, self._on_timeout)

    def _disarm_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _on_timeout(self) -> None:
        """``$smtpd_timeout`` expired while waiting for the client (spec 3.7, 3.9)."""
        self._timer = None
        self.timed_out = True
        if self.mode is Mode.DATA:
            text = "Service shutting down, timed out during waiting for input from client"
        else:
            text = "Service shutting down, closing channel, during waiting for input from client"
        log.warning("Requesting process rundown, task exceeded allowed time during "
                    "waiting for input from client")
        if self.mode is Mode.PROXY:
            self._close()
        else:
            self._close_with(_r(421, "4.3.2", text))

    # --- input loop --------------------------------------------------------------------

    def _process_input(self) -> None:
        """Handle buffered input in order; stops while a message is processed (spec 3.9)."""
        if self._looping:
            return
        self._looping = True
        try:
            while self.mode not in (Mode.PROCESSING, Mode.CLOSED):
                if self.mode is Mode.DATA:
                    if not self._buffer:
                        break
                    chunk = bytes(self._buffer)
                    self._buffer.clear()
                    self._scanned = 0
                    self._feed_data(chunk)
                    continue
                line = self._next_line()
                if line is None:
                    break
                self._dispatch(line)
        finally:
            self._looping = False
        if self.mode is not Mode.CLOSED:
            self._flush()

    def _line_limit(self) -> int:
        if self.mode is Mode.AUTH:
            return AUTH_LINE_LIMIT
        if self.mode is Mode.PROXY:
            return PROXY_LINE_LIMIT
        return COMMAND_LINE_LIMIT

    def _next_line(self) -> bytes | object | None:
        """The next CRLF-terminated line, ``_TOO_LONG`` after an over-long one, or None."""
        buf = self._buffer
        while True:
            end = buf.find(b"\r\n", self._scanned)
            if end < 0:
                self._scanned = max(len(buf) - 1, 0)
                if self._discarding:
                    keep = 1 if buf.endswith(b"\r") else 0
                    del buf[:len(buf) - keep]
                    self._scanned = 0
                elif len(buf) > self._line_limit() + 1:
                    self._discarding = True
                    continue
                return None
            self._scanned = 0
            line = bytes(buf[:end])
            del buf[:end + 2]
            if self._discarding or len(line) > self._line_limit():
                self._discarding = False
                return _TOO_LONG
            return line

    def _dispatch(self, line: bytes | object) -> None:
        if self.mode is Mode.PROXY:
            self._proxy_line(line)
        elif self.mode is Mode.AUTH:
            self._auth_line(line)
        elif line is _TOO_LONG:
            self._reply(_r(500, "5.5.2", "Error: command line too long"))
        else:
            self._command(line)  # type: ignore[arg-type]

    def _command(self, raw: bytes) -> None:
        """Parse and dispatch one command line (spec 3.2)."""
        m = _COMMAND_RE.match(raw.decode("utf-8", "surrogateescape"))
        if not m:
            self._reply(_r(500, "5.5.2", "Error: bad syntax"))
            return
        verb, args = m.group(1).upper(), m.group(2) or ""
        if self._tls_required() and not self.tls_active and verb not in ALLOWED_BEFORE_TLS:
            self._reply(_r(530, "5.7.0", "Must issue a STARTTLS command first"))
            return
        if verb in NOT_IMPLEMENTED:
            self._reply(_r(502, "5.5.1", f"Error: command {verb} not implemented"))
            return
        method = getattr(self, f"smtp_{verb}", None)
        if method is None:
            self._reply(_r(500, "5.5.2", f"Error: command {verb} not recognized"))
            return
        method(args)

    # --- HAProxy (spec 3.11) -------------------------------------------------------------

    def _proxy_line(self, line: bytes | object) -> None:
        """``PROXY TCP4|TCP6 src dst sport dport``; anything else closes the connection."""
        parsed = _parse_proxy(line) if isinstance(line, bytes) else None
        if parsed is None:
            log.error("PROXY protocol header expected")
            self._close()
            return
        src, dst, sport, dport = parsed
        self.client = replace(self.client, mta_addr=src, mta_port=sport,
                              local_addr=dst, local_port=dport, unix_socket=None)
        self._start_session()

    # --- simple commands (spec 3.3) ------------------------------------------------------

    def smtp_NOOP(self, args: str) -> None:
        self._reply(_r(250, "2.0.0", "Ok NOOP"))

    def smtp_QUIT(self, args: str) -> None:
        if args:
            self._reply(_r(501, "5.5.4", "Error: QUIT does not accept arguments"))
            return
        self._quit = True
        self._close_with(_r(221, "2.0.0", self._banner(self._setting("smtpd_quit_banner", ""))))

    def smtp_RSET(self, args: str) -> None:
        if args:
            self._reply(_r(501, "5.5.4", "Error: RSET does not accept arguments"))
            return
        self._xforward = {}
        self._end_transaction(None)
        self._reply(_r(250, "2.0.0", "Ok RSET"))

    def smtp_HELP(self, args: str) -> None:
        self._send("214-2.0.0 See amavis home page at:")
        self._send("214 2.0.0 http://www.ijs.si/software/amavisd/")

    def smtp_VRFY(self, args: str) -> None:
        if not args:
            self._reply(_r(501, "5.5.2", "Syntax: VRFY address"))
        else:
            self._reply(_r(252, "2.0.0", "Argument not checked"))

    def smtp_AUTH(self, args: str) -> None:
        """Start an AUTH exchange; credentials are recorded, never verified (spec 3.11)."""
        mechs = [m.upper() for m in self._setting("auth_mech_avail") or []]
        if not mechs:
            self._reply(_r(500, "5.5.2", "Error: command AUTH not recognized"))
            return
        if self.auth_user is not None:
            self._reply(_r(503, "5.5.1", "Error: session already authenticated"))
            return
        if self.txn is not None:
            self._reply(_r(503, "5.5.1", "Error: AUTH not allowed within transaction"))
            return
        m = _AUTH_RE.match(args)
        if not m:
            self._reply(_r(501, "5.5.2", "Syntax: AUTH mech [initresp]"))
            return
        mech, initial = m.group(1).upper(), m.group(2)
        if mech not in mechs or mech not in AUTH_MECHS_SUPPORTED:
            self._reply(_r(504, "5.5.4", "Error: requested authentication mechanism not supported"))
            return
        if initial is not None and len(initial) > AUTH_LINE_LIMIT:
            self._reply(_r(500, "5.5.6", "Authentication exchange line is too long"))
            return
        self._auth = _AuthExchange(mech)
        if initial is None:
            self.mode = Mode.AUTH
            self._send("334 VXNlcm5hbWU6" if mech == "LOGIN" else "334 ")
        else:
            self._auth_response(b"" if initial == "=" else initial.encode("ascii", "replace"))

    # --- HELO/EHLO/LHLO (spec 3.3, 3.4) ---------------------------------------------------

    def smtp_HELO(self, args: str) -> None:
        self._greet("HELO", args)
        self._reply(Reply(250, "", self._helo_name()))

    def smtp_EHLO(self, args: str) -> None:
        self._greet("EHLO", args)
        self._send_ehlo_lines()

    def smtp_LHLO(self, args: str) -> None:
        self._greet("LHLO", args)
        self._send_ehlo_lines()

    def _greet(self, kind: str, args: str) -> None:
        """HELO/EHLO turn LMTP off, LHLO on; each resets the transaction and XFORWARD."""
        self.helo_kind = kind
        self.lmtp = kind == "LHLO"
        self._utf8_proto = False
        self.client.mta_helo = args or None
        self._xforward = {}
        self._end_transaction(None)

    def _send_ehlo_lines(self) -> None:
        words = [self._helo_name(), *self._ehlo_keywords()]
        for word in words[:-1]:
            self._send(f"250-{word}")
        self._send(f"250 {words[-1]}")

    def _ehlo_keywords(self) -> list[str]:
        """The keyword list in spec 3.4 order, minus ``smtpd_discard_ehlo_keywords``."""
        limit = self._global_size_limit()
        keywords = ["VRFY", "PIPELINING", f"SIZE {limit}" if limit else "SIZE",
                    "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "DSN"]
        if self._starttls_configured() and not self.tls_active:
            keywords.append("STARTTLS")
        mechs = self._setting("auth_mech_avail") or []
        if mechs:
            keywords.append("AUTH " + " ".join(mechs))
        keywords.append("XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE")
        discard = self._setting("smtpd_discard_ehlo_keywords") or []
        if isinstance(discard, str):
            discard = discard.split()
        dropped = {str(k).split()[0].upper() for k in discard if str(k).split()}
        if "8BITMIME" in dropped:
            dropped.add("SMTPUTF8")
        return [k for k in keywords if k.split()[0] not in dropped]

    # --- STARTTLS (spec 3.11) ---------------------------------------------------------------

    def _starttls_configured(self) -> bool:
        level = self._setting("tls_security_level_in")
        options = self._setting("smtpd_tls_server_options") or {}
        return (level not in (None, "", "none") and bool(options.get("SSL_cert_file"))
                and bool(options.get("SSL_key_file")))

    def _tls_required(self) -> bool:
        return self._setting("tls_security_level_in") not in (None, "", "none", "may")

    def smtp_STARTTLS(self, args: str) -> None:
        if not self._starttls_configured():
            self._reply(_r(502, "5.5.1", "Error: command not available"))
            return
        if self.tls_active:
            self._reply(_r(554, "5.5.1", "Error: TLS already active"))
            return
        if args:
            self._reply(_r(501, "5.5.4", "Error: STARTTLS does not accept arguments"))
            return
        try:
            context = self._tls_factory(self._setting("smtpd_tls_server_options"))
        except Exception as exc:
            log.error("TLS setup failed: %s", exc, exc_info=exc)
            self._reply(_r(454, "4.7.0", "TLS not available due to local problem"))
            return
        self._reply(_r(220, "2.0.0", "Ready to start TLS"))
        self._flush()
        if self._buffer:
            log.warning("STARTTLS pipelining violation attempt, sanitized")
            self._buffer.clear()
            self._scanned = 0
        self.transport.startTLS(context)
        self.tls_active = True
        self.helo_kind = None
        self._xforward = {}
        self._end_transaction(None)

    def _tls_cipher(self) -> str | None:
        """The negotiated cipher's name, read from the TLS connection at MAIL."""
        if not self.tls_active:
            return None
        try:
            name = self.transport.getHandle().get_cipher_name()
        except Exception:  # noqa: BLE001 - a cipher name is nice to have, never fatal
            return None
        return name.decode() if isinstance(name, bytes) else name

    # --- XFORWARD (spec 3.11) ---------------------------------------------------------------

    def smtp_XFORWARD(self, args: str) -> None:
        if self.txn is not None:
            self._reply(_r(503, "5.5.1", "Error: XFORWARD not allowed within transaction"))
            return
        attrs: dict[str, str | None] = {}
        tokens = args.split()
        for token in tokens:
            m = _XFORWARD_RE.match(token)
            if not m or len(m.group(2).encode("utf-8", "surrogateescape")) > 255:
                self._reply(_r(501, "5.5.4", "Syntax error in XFORWARD parameters"))
                return
            name, value = m.group(1).upper(), m.group(2)
            if name not in XFORWARD_ATTRS:
                self._reply(_r(501, "5.5.4", f"XFORWARD command parameter error: {token}"))
                return
            attrs[name] = None if value.upper() == "[UNAVAILABLE]" else xtext_decode(value)
        if not tokens:
            self._reply(_r(501, "5.5.4", "Syntax error in XFORWARD parameters"))
            return
        self._xforward.update(attrs)
        self._reply(_r(250, "2.5.0", "Ok XFORWARD"))

    # --- MAIL (spec 3.5) --------------------------------------------------------------------

    def smtp_MAIL(self, args: str) -> None:
        if self.txn is not None:
            self._reply(_r(503, "5.5.1", "Error: nested MAIL command"))
            return
        if (self._setting("auth_required_inp") and self._setting("auth_mech_avail")
                and self.auth_user is None):
            self._reply(_r(530, "5.7.0", "Authentication required"))
            return
        m = _MAIL_RE.match(args)
        if not m:
            self._reply(_r(501, "5.5.2", "Syntax: MAIL FROM:<address>"))
            return
        params = self._mail_params(m.group(2))
        if isinstance(params, Reply):
            self._reply(params)
            return
        if params["smtputf8"]:
            self._utf8_proto = True
        txn = self._begin_transaction(m.group(1), params)
        if txn is not None:
            self._reply(_r(250, "2.1.0", f"Sender <{m.group(1)}> OK"))

    def _mail_params(self, text: str | None) -> dict[str, Any] | Reply:
        """MAIL parameters; the first error is returned as its reply (spec 3.5)."""
        tokens = _split_params(text)
        if tokens is None:
            return _r(501, "5.5.4", "Syntax error in MAIL FROM parameters")
        p: dict[str, Any] = {"size": None, "body": None, "smtputf8": False, "ret": None,
                             "envid": None, "auth": None}
        for name, value, token in tokens:
            error = _mail_param(p, name, value, token, bool(self._setting("auth_mech_avail")))
            if error is not None:
                return error
        return p

    def _begin_transaction(self, path: str, params: dict[str, Any]) -> Transaction | None:
        """MAIL side effects (spec 3.5): ids and email.txt, XFORWARD into ClientInfo."""
        try:
            self.handler.state(ST_MAIL)
            log_id, spool_path = self.handler.transaction_started()
        except Exception as exc:  # noqa: BLE001 - our trouble becomes a 4xx (STYLE 6)
            self._reply(reply_for(exc, "", "MAIL"))
            return None
        xf = self._xforward
        self._xforward = {}
        client = replace(self.client, **{k.lower(): xf.get(k) for k in XFORWARD_ATTRS})
        self.txn = Transaction(
            log_id=log_id, spool_path=Path(spool_path), sender=unquote_address(path),
            sender_quoted=path, client=client, protocol=self.protocol_name(),
            tls_cipher=self._tls_cipher(), rx_start=time.monotonic(),
            declared_size=params["size"], body_type=params["body"],
            smtputf8=params["smtputf8"], dsn_ret=params["ret"], dsn_envid=params["envid"],
            auth_submitter=params["auth"])
        try:
            self.handler.client_info_at_mail(client)
        except Exception as exc:  # noqa: BLE001 - our trouble becomes a 4xx (STYLE 6)
            self._reply(reply_for(exc, log_id, "MAIL"))
            self._end_transaction(None)
            return None
        return self.txn

    def protocol_name(self) -> str:
        """RFC 3848/6531 name for the Received header (spec 3.10)."""
        if self._utf8_proto:
            name = "UTF8LMTP" if self.lmtp else "UTF8SMTP"
        elif self.lmtp:
            name = "LMTP"
        else:
            name = "SMTP" if self.helo_kind == "HELO" else "ESMTP"
        return name + ("S" if self.tls_active else "") + ("A" if self.auth_user else "")

    # --- RCPT (spec 3.6) --------------------------------------------------------------------

    def smtp_RCPT(self, args: str) -> None:
        txn = self.txn
        if txn is None:
            self._reply(_r(503, "5.5.1", "Need MAIL command before RCPT"))
            return
        txn.attempts += 1
        limit = self._setting("smtpd_recipient_limit")
        if limit and txn.attempts > limit:
            self._reply(_r(452, "4.5.3", "Too many recipients"))
            return
        m = _RCPT_RE.match(args)
        if not m:
            self._reply(_r(501, "5.5.2", "Syntax: RCPT TO:<address>"))
            return
        rcpt = _rcpt_from(m.group(1), m.group(2))
        if isinstance(rcpt, Reply):
            self._reply(rcpt)
            return
        accepted, reply = self._check_declared_size(txn, rcpt)
        if accepted:
            txn.recipients.append(rcpt)
        self._reply(reply or _r(250, "2.1.5", f"Recipient <{rcpt.quoted}> OK"))

    def _check_declared_size(self, txn: Transaction,
                             rcpt: Recipient) -> tuple[bool, Reply | None]:
        """Declared SIZE against the global and the recipient's limit (spec 3.6).

        Returns whether the recipient is accepted and a non-default reply.
        """
        policy = self._size_policy(rcpt)
        if policy is not None:
            txn.size_policies.append(policy)
        declared = txn.declared_size
        if declared is None:
            return True, None
        text = (f"Declared message size ({declared} B) exceeds size limit "
                f"for recipient <{rcpt.quoted}>")
        glob = self._global_size_limit()
        if glob and declared > glob:
            self._drop_policy(txn, policy)
            return False, _r(552, "5.3.4", text)
        if policy is None or declared <= policy.limit:
            return True, None
        if policy.destiny == D_PASS:
            return True, _r(250, "2.3.4", text)
        self._drop_policy(txn, policy)
        if policy.destiny == D_TEMPFAIL:
            return False, _r(452, "4.3.4", text)
        return False, _r(552, "5.3.4", text)

    @staticmethod
    def _drop_policy(txn: Transaction, policy: SizePolicy | None) -> None:
        if policy is not None:
            txn.size_policies.remove(policy)

    def _size_policy(self, rcpt: Recipient) -> SizePolicy | None:
        lookup = getattr(self.handler, "recipient_size_policy", None)
        policy = lookup(rcpt) if lookup is not None else None
        if policy is None or not policy.limit:
            return None
        return SizePolicy(max(policy.limit, MIN_SIZE_LIMIT), policy.destiny)

    def _global_size_limit(self) -> int | None:
        """``$smtpd_message_size_limit``, raised to 64 KiB when so configured (spec 3.4)."""
        limit = self._setting("smtpd_message_size_limit")
        if not limit:
            return None
        if self._setting("enforce_smtpd_message_size_limit_64kb_min", 1):
            limit = max(limit, MIN_SIZE_LIMIT)
        return int(limit)

    def _data_size_limit(self, txn: Transaction) -> int | None:
        """The DATA limit: the largest non-PASS per-recipient limit capped by the
        global one (spec 3.7), or the global one alone (our enforcement, spec 9.2)."""
        glob = self._global_size_limit()
        per_rcpt = [p.limit for p in txn.size_policies if p.destiny != D_PASS]
        if per_rcpt:
            return min(max(per_rcpt), glob) if glob else max(per_rcpt)
        return glob

    # --- DATA (spec 3.7) --------------------------------------------------------------------

    def smtp_DATA(self, args: str) -> None:
        txn = self.txn
        if txn is None:
            self._reply(_r(503, "5.5.1", "Need MAIL command before DATA"))
            return
        if txn.attempts == 0:
            self._reply(_r(503, "5.5.1", "Need RCPT command before DATA"))
            return
        if not txn.recipients:
            code = 503 if self.lmtp else 554
            self._reply(_r(code, "5.1.1", "Error (DATA): no valid recipients"))
            return
        if args:
            self._reply(_r(501, "5.5.4", "Error: DATA does not accept arguments"))
            return
        try:
            self.handler.state(ST_DATA)
            self._spool = DataSpool(txn.spool_path, self._data_size_limit(txn),
                                    BodyDigest(self._setting("mail_digest_algorithm", "MD5")))
        except Exception as exc:  # noqa: BLE001 - our trouble becomes a 4xx (STYLE 6)
            log.error("(%s) cannot spool to %s: %s", txn.log_id, txn.spool_path, exc)
            self._reply(_r(451, "4.5.0", f"Error in processing: {exc}"))
            return
        self.mode = Mode.DATA
        self._reply(_r(354, "", "End data with <CR><LF>.<CR><LF>"))
        self._flush()

    def _feed_data(self, chunk: bytes) -> None:
        rest = self._spool.feed(chunk)   # type: ignore[union-attr]
        if rest is None:
            return
        self._buffer += rest
        self._end_of_data()

    def _end_of_data(self) -> None:
        """The final dot arrived: reply at once on failure, else hand the message over."""
        result = self._spool.close()     # type: ignore[union-attr]
        self._spool = None
        self.mode = Mode.COMMAND
        txn = self.txn
        assert txn is not None
        if result.too_big:
            log.info("(%s) message size %d B exceeds size limit", txn.log_id, result.size)
            self._reply_to_transaction(
                _r(552, "5.3.4", f"Message size ({result.size} B) exceeds size limit"))
            self._end_transaction(None)
            return
        if result.error:
            self._reply_to_transaction(_r(451, "4.5.0", f"Error in processing: {result.error}"))
            self._end_transaction(None)
            return
        self._start_processing(self._build_message(txn, result))

    def _reply_to_transaction(self, reply: Reply) -> None:
        """One reply in SMTP, one per accepted recipient in LMTP (RFC 2033 section 4.2)."""
        for _ in range(len(self.txn.recipients) if self.lmtp else 1):   # type: ignore
            self._reply(reply)

    def _build_message(self, txn: Transaction, result: SpoolResult) -> Message:
        msg = Message(
            sender=txn.sender, sender_quoted=txn.sender_quoted, recipients=txn.recipients,
            spool_path=result.path, size=result.size, log_id=txn.log_id, client=txn.client,
            body_type=txn.body_type, smtputf8=txn.smtputf8, dsn_ret=txn.dsn_ret,
            dsn_envid=txn.dsn_envid, declared_size=txn.declared_size,
            auth_submitter=txn.auth_submitter, protocol=txn.protocol,
            tls_cipher=txn.tls_cipher, lmtp=self.lmtp, rx_time=self._reactor.seconds(),
            rx_start=txn.rx_start)
        msg.findings["eight_bit"] = result.eight_bit
        if result.body_digest:
            msg.findings["body_digest"] = result.body_digest
        return msg

    # --- processing and the final reply (spec 3.8) -----------------------------------------

    def _start_processing(self, msg: Message) -> None:
        """Hold further input until the message is handled and replied (spec 3.9)."""
        self.mode = Mode.PROCESSING
        self._in_flight = msg
        self._disarm_timer()
        self._flush()
        self.transport.pauseProducing()
        d = defer.maybeDeferred(self.handler.process, msg)
        d.addCallbacks(self._processed, self._process_failed,
                       callbackArgs=(msg,), errbackArgs=(msg,))
        d.addErrback(self._reply_failed, msg)

    def _processed(self, _result: object, msg: Message) -> None:
        replies = lmtp_replies(msg) if msg.lmtp else [one_response_for_all(msg)]
        self._finish_processing(msg, replies)

    def _process_failed(self, failure: Failure, msg: Message) -> None:
        """Internal trouble: 451 to every recipient, so the MTA retries (spec 3.8)."""
        reply = reply_for(failure.value, msg.log_id, "check_mail")
        self._finish_processing(msg, [reply] * (len(msg.recipients) if msg.lmtp else 1))

    def _reply_failed(self, failure: Failure, msg: Message) -> None:
        """A bug while computing or sending the final reply; never lose the session."""
        log.error("(%s) TROUBLE sending the final reply: %s", msg.log_id,
                  failure.getErrorMessage(), exc_info=failure.value)
        if self._in_flight is msg:
            reply = _r(451, "4.5.0", f"Error in processing, id={msg.log_id}, "
                                     f"final reply FAILED: {failure.getErrorMessage()}")
            self._finish_processing(msg, [reply] * (len(msg.recipients) if msg.lmtp else 1))

    def _finish_processing(self, msg: Message, replies: list[Reply]) -> None:
        """Send the final replies, end the transaction, then resume reading input."""
        self._in_flight = None
        if self.mode is Mode.CLOSED:
            log.info("(%s) session closed before the final reply", msg.log_id)
            self._end_transaction(msg)
            if self._lost:
                self._end_session()
            return
        for reply in replies:
            self._reply(reply, final=True)
        self._flush()
        self._end_transaction(msg)
        self.mode = Mode.COMMAND
        self._arm_timer()
        self.transport.resumeProducing()
        self._process_input()

    def _end_transaction(self, msg: Message | None) -> None:
        if self.txn is None:
            return
        self.txn = None
        try:
            self.handler.transaction_ended(msg)
        except Exception:
            log.exception("TROUBLE in transaction_ended")

    def _end_session(self) -> None:
        if self._session_ended:
            return
        self._session_ended = True
        try:
            self.handler.session_ended()
        except Exception:
            log.exception("TROUBLE in session_ended")

    # --- AUTH continuation (spec 3.11) ----------------------------------------------------

    def _auth_line(self, line: bytes | object) -> None:
        if line is _TOO_LONG:
            self._auth_done(_r(500, "5.5.6", "Authentication exchange line is too long"))
            return
        assert isinstance(line, bytes)
        if line.strip() == b"*":
            self._auth_done(_r(501, "5.7.1", "Authentication aborted"))
            return
        self._auth_response(line.strip())

    def _auth_response(self, b64: bytes) -> None:
        """One client response of the exchange in progress (base64)."""
        exchange = self._auth
        assert exchange is not None
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            self._auth_done(_r(501, "5.5.2",
                               "Authentication failed: malformed authentication response"))
            return
        text = data.decode("utf-8", "surrogateescape")
        if exchange.mech == "PLAIN":
            parts = text.split("\0")
            if len(parts) != 3:
                self._auth_done(_r(501, "5.5.2",
                                   "Authentication failed: malformed authentication response"))
                return
            self._auth_succeeded(parts[1], parts[2])
        elif exchange.mech == "LOGIN" and exchange.user is None:
            exchange.user = text
            self.mode = Mode.AUTH
            self._send("334 UGFzc3dvcmQ6")
        elif exchange.mech == "LOGIN":
            self._auth_succeeded(exchange.user or "", text)
        else:                                       # ANONYMOUS: trace information only
            self._auth_succeeded("anonymous", None)

    def _auth_succeeded(self, user: str, password: str | None) -> None:
        self.auth_user, self.auth_password = user, password
        log.info("AUTH %s user %r accepted (never verified)", self._auth.mech, user)  # type: ignore
        self._auth_done(_r(235, "2.7.0", "Authentication succeeded"))

    def _auth_done(self, reply: Reply) -> None:
        self._auth = None
        self.mode = Mode.COMMAND
        self._reply(reply)

    # --- banner helpers -------------------------------------------------------------------

    def _helo_name(self) -> str:
        """``[socket ip]``, or ``[localhost]`` on a Unix socket; never $myhostname (3.1)."""
        if self.client.unix_socket is not None or not self.client.local_addr:
            return "[localhost]"
        return f"[{self.client.local_addr}]"

    def _banner(self, template: str) -> str:
        protocol = "LMTP" if self.lmtp else "ESMTP"    # the bank's, until a HELO/EHLO/LHLO
        return expand_banner(template or "", {
            "helo-name": self._helo_name(),
            "myhostname": self._setting("myhostname") or "localhost",
            "version": constants.VERSION,
            "version-id": constants.VERSION_ID,
            "version-date": constants.VERSION_DATE,
            "product": constants.PRODUCT,
            "protocol": protocol,
        })


# --- parameter checks kept out of the class (spec 3.5, 3.6) ------------------------------

def _mail_param(p: dict[str, Any], name: str, value: str | None, token: str,
                auth_configured: bool) -> Reply | None:
    """Apply one MAIL parameter to ``p``; return the error reply, if any."""
    if name in ("BODY", "RET", "ENVID", "AUTH") and value is None:
        return _r(501, "5.5.4", f"Syntax error in MAIL parameter, value is required: {name}")
    if name == "SIZE":
        if value is None or not _SIZE_RE.match(value):
            return _r(501, "5.5.4", "Syntax error in MAIL parameter: SIZE")
        if p["size"] is None:                       # the first one wins
            p["size"] = int(value)
    elif name == "BODY":
        if value.upper() not in ("7BIT", "8BITMIME"):  # type: ignore[union-attr]
            return _r(501, "5.5.4", "Syntax error in MAIL parameter: BODY")
        p["body"] = p["body"] or value
    elif name == "SMTPUTF8":
        if value is not None:
            return _r(501, "5.5.4", "Syntax error in MAIL parameter: SMTPUTF8")
        p["smtputf8"] = True
    elif name == "RET":
        if p["ret"] is not None:
            return _r(501, "5.5.4", "Syntax error in MAIL parameter: RET")
        if value.upper() not in ("FULL", "HDRS"):   # type: ignore[union-attr]
            return _r(501, "5.5.4", f"Syntax error in MAIL parameter RET: {value}")
        p["ret"] = value.upper()                    # type: ignore[union-attr]
    elif name == "ENVID":
        if p["envid"] is not None:
            return _r(501, "5.5.4", "Syntax error in MAIL parameter: ENVID")
        p["envid"] = value                          # kept xtext-encoded
    elif name == "AUTH":
        if p["auth"] is not None:
            return _r(504, "5.5.4", f"MAIL command duplicate param.: {token}")
        p["auth"] = xtext_decode(value) if auth_configured else "<>"  # type: ignore[arg-type]
    else:
        return _r(504, "5.5.4", f"MAIL command parameter error: {token}")
    return None


_NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def _rcpt_from(path: str, text: str | None) -> Recipient | Reply:
    """A Recipient from the RCPT path and parameters, or the error reply (spec 3.6)."""
    tokens = _split_params(text)
    if tokens is None:
        return _r(501, "5.5.4", "Syntax error in RCPT TO parameters")
    notify: list[str] | None = None
    orcpt: str | None = None
    for name, value, token in tokens:
        if name not in ("NOTIFY", "ORCPT"):
            given = token.split("=", 1)[0]
            return _r(555, "5.5.4", f"RCPT command parameter unrecognized: {given}")
        if value is None:
            return _r(501, "5.5.4", f"Syntax error in RCPT parameter, value is required: {name}")
        if name == "NOTIFY":
            if notify is not None:
                return _r(501, "5.5.4", "Syntax error in RCPT parameter NOTIFY")
            parsed = _parse_notify(value)
            if isinstance(parsed, Reply):
                return parsed
            notify = parsed
        else:
            decoded = orcpt_decode(value)
            if orcpt is not None or decoded is None:
                return _r(501, "5.5.4", "Syntax error in RCPT parameter ORCPT")
            orcpt = decoded
    address = unquote_address(path)
    if orcpt is None and quote_address(address) != path:
        orcpt = f";{path}"                          # keep the client's form (spec 3.6)
    return Recipient(address=address, quoted=path, notify=notify, orcpt=orcpt)


def _parse_notify(value: str) -> list[str] | Reply:
    items = [item.upper() for item in value.split(",")]
    if "" in items:
        return _r(501, "5.5.4", f"Error in RCPT parameter NOTIFY, missing value: {value}")
    if any(item not in _NOTIFY_VALUES for item in items):
        return _r(501, "5.5.4", f"Error in RCPT parameter NOTIFY, illegal value: {value}")
    if "NEVER" in items and len(items) > 1:
        return _r(501, "5.5.4",
                  f"Error in RCPT parameter NOTIFY, illegal combination of values: {value}")
    return items


def _parse_proxy(line: bytes) -> tuple[str, str, int, int] | None:
    """A PROXY v1 TCP4/TCP6 header: (src, dst, sport, dport), or None (spec 3.11)."""
    m = _PROXY_RE.match(line.decode("ascii", "replace"))
    if not m:
        return None
    family, src, dst = m.group(1), m.group(2), m.group(3)
    sport, dport = int(m.group(4)), int(m.group(5))
    version = 4 if family == "TCP4" else 6
    try:
        if (ipaddress.ip_address(src).version != version
                or ipaddress.ip_address(dst).version != version):
            return None
    except ValueError:
        return None
    if sport > 65535 or dport > 65535:
        return None
    return src, dst, sport, dport
