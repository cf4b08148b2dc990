"""Hand a checked message to the next hop: smtp:, lmtp:, bsmtp: and pipe: methods.

Spec: protocols.md sections 5.1 (method strings), 5.3/5.4 (SMTP/LMTP client and
reply texts), 5.8 (pipe and bsmtp), 6 (reliability).  ``forward`` sets on every
given recipient ``reply``, ``done`` (2: a delivery agent was involved, 1: we
decided without one) and ``queued_as``; its Deferred never fails, because an
unexpected error must end in a 4xx for the inbound MTA, never in a lost message.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, error, protocol
from twisted.internet.task import LoopingCall

from amavisd import stats
from amavisd.actions import dkim_sign
from amavisd.errors import Reply
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols import smtp_cache
from amavisd.protocols.smtp_client import (
    CHUNK_SIZE,
    Capabilities,
    ClientOptions,
    DotStuffer,
    ForwardClient,
    SessionError,
    TransactionOutcome,
    mail_command,
    rcpt_command,
    stage_timeout,
)

log = logging.getLogger(__name__)

SCHEMES = ("smtp", "lmtp", "bsmtp", "pipe", "local", "sql")
_QUEUED_AS_RE = re.compile(r"queued as ([0-9A-Za-z._-]+)", re.IGNORECASE)
#: Failover memory: the method list (as a tuple) -> the entry that worked last.
_last_good: dict[tuple[str, ...], str] = {}


# --------------------------------------------------------------------------- method strings


@dataclass(frozen=True)
class Method:
    """A parsed delivery method string (spec 5.1).  ``arg`` is the text after the scheme."""

    scheme: str
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None
    raw: str = ""
    arg: str = ""

    @property
    def mta_id(self) -> str:
        """``smtp:[127.0.0.1]:10025``, ``lmtp:[::1]:24`` or ``lmtp:/path/sock`` (spec 5.4)."""
        if self.unix_path:
            return f"{self.scheme}:{self.unix_path}"
        if self.host is not None:
            return f"{self.scheme}:[{self.host}]:{self.port}"
        return self.raw


def _split_host_port(rest: str) -> tuple[str, str]:
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            raise ValueError(f"bad bracketed host in {rest!r}")
        return host, tail[1:]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"host:port required, got {rest!r}")
    return host, port


def parse_method(method: str, client: ClientInfo | None = None) -> Method:
    """Parse ``smtp:[host]:port``, ``lmtp:/path``, ``pipe:...``, ``bsmtp:...`` etc.

    A '*' host means the IP of the MTA connected to us, a '*' port our listening
    port + 1 (spec 5.1); both need ``client``.  Any error raises ValueError.
    """
    scheme, sep, rest = method.strip().partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"unknown delivery method: {method!r}")
    if scheme not in ("smtp", "lmtp"):
        return Method(scheme, raw=method, arg=rest)
    if rest.startswith("/"):
        return Method(scheme, unix_path=rest, raw=method, arg=rest)
    host, port_s = _split_host_port(rest)
    if host == "*":
        if client is None or not client.mta_addr:
            raise ValueError(f"dynamic host '*' but the MTA address is unknown: {method!r}")
        host = client.mta_addr
    if port_s == "*":
        if client is None or not client.local_port:
            raise ValueError(f"dynamic port '*' but our port is unknown: {method!r}")
        port = client.local_port + 1
    elif port_s.isdigit() and 1 <= int(port_s) <= 65535:
        port = int(port_s)
    else:
        raise ValueError(f"bad port {port_s!r} in {method!r}")
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return Method(scheme, host=host, port=port, raw=method, arg=rest)


def failover_order(methods: Sequence[str], rng: random.Random | None = None) -> list[str]:
    """Spec 5.1: one random pick moves to the front; the last working one goes first."""
    order = list(methods)
    if len(order) > 1:
        pick = (rng or random).randrange(len(order))
        order.insert(0, order.pop(pick))
        good = _last_good.get(tuple(methods))
        if good in order:
            order.remove(good)
            order.insert(0, good)
    return order


# --------------------------------------------------------------------------- helpers


def _apply(rcpt: Recipient, reply: Reply, done: int, queued_as: str | None = None,
           mailbox: str | None = None) -> None:
    rcpt.reply, rcpt.done = reply, done
    if queued_as is not None:
        rcpt.queued_as = queued_as
    if mailbox is not None:
        rcpt.mailbox = mailbox


def _fail_all(recipients: Sequence[Recipient], reply: Reply, done: int) -> None:
    for rcpt in recipients:
        _apply(rcpt, reply, done)


def is_8bit(path: Path, header: bytes, body_offset: int = 0) -> bool:
    """Whether any byte sent is >= 0x80 (decides BODY=, spec 5.3 step 9); read in chunks."""
    if not header.isascii():
        return True
    with open(path, "rb") as fh:
        fh.seek(body_offset)
        while chunk := fh.read(CHUNK_SIZE):
            if not chunk.isascii():
                return True
    return False


def queued_as_from(mta_reply: str) -> str:
    """The queue id from 'queued as XXXX', else the whole reply (as amavis logs it)."""
    m = _QUEUED_AS_RE.search(mta_reply)
    return m.group(1) if m else mta_reply


# --------------------------------------------------------------------------- counters

#: ``<P>`` of ``OutMsgsProto<P>*`` by delivery-method scheme (monitoring.md 1.3).
_PROTO = {"smtp": "SMTP", "lmtp": "LMTP", "bsmtp": "BSMTP", "pipe": "Pipe",
          "local": "Local", "sql": "SQL"}


def count_dispatch(scheme: str, size: int, submit: str | None,
                   replies: Sequence[Reply | None]) -> None:
    """The counters of one dispatch call (monitoring.md 1.3 "Outgoing mail").

    ``submit`` is None for forwarded mail, else the ``<T>`` of mail amavis
    originates (``Quar``, ``Dsn``...).  The outcome counters move once per
    recipient reply of the call (2xx, 4xx, 5xx), as the relay path always did.
    """
    proto = _PROTO.get(scheme.lower(), scheme.capitalize())
    if submit is None:
        variants = ("", "Relay", f"Proto{proto}", f"Proto{proto}Relay")
    else:
        variants = ("", "Submit", f"Proto{proto}", f"Proto{proto}Submit", f"Submit{submit}")
    stats.count_many([f"OutMsgs{v}" for v in variants])
    stats.count_many([f"OutMsgsSize{v}" for v in variants], size)
    for reply in replies:
        if reply is None:
            continue
        if reply.is_ok:
            stats.count("OutMsgsDelivers")
        elif reply.is_tempfail:
            stats.count("OutMsgsAttemptFails")
        else:
            stats.count("OutMsgsRejects")


# --------------------------------------------------------------------------- entry point


def forward(msg: Message, recipients: list[Recipient], method: str | list[str],
            header: bytes, body_offset: int, settings: Any, reactor: Any,
            per_recipient_capable: bool, deadline: float, *, clock: Any = None,
            rng: random.Random | None = None, submit: str | None = None
            ) -> defer.Deferred[None]:
    """Deliver ``msg`` to ``recipients`` by ``method``; set reply/done/queued_as on each.

    What is sent is ``header`` (the complete new header section from
    ``actions.headers.render_header``, CRLF, ending with the empty line), then the
    spool file from ``body_offset`` on (where the body starts), streamed in chunks.
    With ``body_offset`` 0, ``header`` is a prefix to the whole file (as
    actions/dsn.py uses it for a DSN it wrote itself).

    An empty method (or list of empties) means the AM.PDP client delivers: the
    recipients stay undone (spec 5.1).  Never fails: any bug becomes a 451.
    ``submit`` names mail amavis originates (``Quar``, ``Dsn``) for the OutMsgs
    counters; None is forwarded mail (``count_dispatch``).
    """
    methods = [method] if isinstance(method, str) else [m for m in method if m]
    if not recipients or not any(m.strip() for m in methods):
        return defer.succeed(None)
    clock = clock or reactor
    # DKIM signing at dispatch (pipeline.md 24.3): the header is final here, per cluster
    header, body_offset = dkim_sign.signed_content(msg, header, body_offset, settings, submit)
    d = defer.maybeDeferred(_dispatch, msg, recipients, methods, (header, body_offset),
                            settings, reactor, per_recipient_capable, deadline, clock, rng)

    def trouble(failure: Any) -> None:
        log.error("TROUBLE in forward: %s", failure.getErrorMessage(),
                  exc_info=(failure.type, failure.value, failure.getTracebackObject()))
        reply = Reply(451, "4.5.0", f"Error in processing, id={msg.log_id}, forwarding "
                                    f"FAILED: {failure.getErrorMessage()}")
        _fail_all([r for r in recipients if r.reply is None], reply, 1)

    def counted(_: Any) -> None:
        scheme = methods[0].strip().partition(":")[0]
        count_dispatch(scheme, msg.size, submit, [r.reply for r in recipients])

    return d.addErrback(trouble).addCallback(counted)


#: The new header section and the spool offset of the body (see ``forward``).
Content = tuple[bytes, int]


def _dispatch(msg: Message, recipients: list[Recipient], methods: list[str],
              content: Content, settings: Any, reactor: Any, per_rcpt: bool,
              deadline: float, clock: Any, rng: random.Random | None) -> Any:
    try:
        parsed = [parse_method(m, msg.client) for m in methods]
    except ValueError as exc:
        log.error("forward: %s", exc)
        _fail_all(recipients, Reply(451, "4.5.0", f"Bad delivery method: {exc}, "
                                                  f"id={msg.log_id}"), 1)
        return None
    scheme = parsed[0].scheme
    if scheme in ("smtp", "lmtp"):
        return _forward_smtp(msg, recipients, methods, content, settings, reactor,
                             per_rcpt, deadline, clock, rng)
    if scheme == "bsmtp":
        _forward_bsmtp(msg, recipients, parsed[0], content, settings, clock)
        return None
    if scheme == "pipe":
        return _forward_pipe(msg, recipients, parsed[0], content, settings, reactor,
                             deadline, clock)
    log.error("forward: delivery method %s: is not handled by forward()", scheme)
    _fail_all(recipients, Reply(451, "4.5.0", f"Delivery method {scheme}: not supported for "
                                              f"forwarding, id={msg.log_id}"), 1)
    return None


# --------------------------------------------------------------------------- smtp / lmtp


def _endpoint(reactor: Any, m: Method, timeout: float, bind: str | None) -> Any:
    if m.unix_path:
        return endpoints.UNIXClientEndpoint(reactor, m.unix_path, timeout=timeout)
    bind_addr = (bind.strip("[]"), 0) if bind else None
    assert m.host is not None and m.port is not None
    if ":" in m.host:
        return endpoints.TCP6ClientEndpoint(reactor, m.host, m.port, timeout, bind_addr)
    if all(p.isdigit() for p in m.host.split(".")):
        return endpoints.TCP4ClientEndpoint(reactor, m.host, m.port, timeout, bind_addr)
    return endpoints.HostnameEndpoint(reactor, m.host, m.port, timeout, bind_addr)


@defer.inlineCallbacks
def _one_session(msg: Message, recipients: list[Recipient], methods: list[str],
                 content: Content, opts: ClientOptions, settings: Any, reactor: Any,
                 per_rcpt: bool, eight_bit: bool, clock: Any,
                 rng: random.Random | None) -> Any:
    """Try the failover list until a session works, then run one transaction on it.

    Per entry: the cached session for its ``proto:[host]:port`` if there is one
    (spec 5.6), else a new connection.  A cached session that broke before the
    data-dot (``outcome.retry``) delivered nothing: the transaction runs again on
    a new connection, so a dead cached session never costs the message a 4xx.
    """
    cache = smtp_cache.current()
    keep = cache.begin_task(msg.log_id) if cache is not None else False
    last: TransactionOutcome | None = None
    order = failover_order(methods, rng)
    for raw in order:
        m = parse_method(raw, msg.client)
        outcome = None
        if cache is not None:
            outcome = yield _on_cached(cache, m.mta_id, msg, recipients, content, opts,
                                       per_rcpt, eight_bit, keep)
        if outcome is None:
            outcome = yield _on_new(cache, m, msg, recipients, content, opts, settings,
                                    reactor, per_rcpt, eight_bit, clock, keep)
            if outcome.error is not None and outcome.error.kind == "connect":
                last = outcome
                continue
        if len(order) > 1:
            _last_good[tuple(methods)] = raw
        return outcome
    return last


@defer.inlineCallbacks
def _on_cached(cache: smtp_cache.SessionCache, key: str, msg: Message,
               recipients: list[Recipient], content: Content, opts: ClientOptions,
               per_rcpt: bool, eight_bit: bool, keep: bool) -> Any:
    """The transaction on the cached session for ``key``; None: there is none, or it broke
    before the data-dot (then nothing was delivered and a new connection must do it)."""
    proto = yield cache.checkout(key, opts.session_key())
    if proto is None:
        return None
    outcome = yield proto.start(msg, recipients, content[0], opts,
                                per_recipient_capable=per_rcpt, eight_bit=eight_bit,
                                body_offset=content[1], keep=keep)
    stats.count("OutConnTransact")
    cache.transaction_ended()
    if outcome.retry:
        stats.count("OutConnReuseFail")
        log.info("(%s) cached session to %s failed before the data (%s), retrying on a new "
                 "connection", msg.log_id, key, outcome.error)
        return None
    _session_done(cache, key, proto, outcome, keep)
    return outcome


@defer.inlineCallbacks
def _on_new(cache: smtp_cache.SessionCache | None, m: Method, msg: Message,
            recipients: list[Recipient], content: Content, opts: ClientOptions,
            settings: Any, reactor: Any, per_rcpt: bool, eight_bit: bool, clock: Any,
            keep: bool) -> Any:
    """Connect to ``m`` and run the transaction; a connect failure is a 'connect' error."""
    proto = ForwardClient(msg, recipients, content[0], opts, lmtp=m.scheme == "lmtp",
                          per_recipient_capable=per_rcpt, eight_bit=eight_bit,
                          mta_id=m.mta_id, clock=clock, body_offset=content[1], keep=keep)
    ep = _endpoint(reactor, m, stage_timeout("connect", opts.deadline, clock.seconds()),
                   getattr(settings, "local_client_bind_address", None))
    try:
        yield endpoints.connectProtocol(ep, proto)
    except (error.ConnectError, error.DNSLookupError, OSError) as exc:
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        log.warning("Can't connect to %s: %s", m.mta_id, reason)
        return TransactionOutcome(m.mta_id, [r for r in proto.results],
                                  SessionError("connect", "fwd-connect", reason))
    stats.count("OutConnNew")
    outcome = yield proto.result
    stats.count("OutConnTransact")
    if cache is not None:
        cache.transaction_ended()
    _session_done(cache, m.mta_id, proto, outcome, keep)
    return outcome


def _session_done(cache: smtp_cache.SessionCache | None, key: str, proto: ForwardClient,
                  outcome: TransactionOutcome, keep: bool) -> None:
    """A kept session goes back to the cache; else it ended with our QUIT (if it was clean)."""
    if keep and cache is not None and outcome.error is None:
        cache.checkin(key, proto)
    elif outcome.error is None:
        stats.count("OutConnQuit")


@defer.inlineCallbacks
def _forward_smtp(msg: Message, recipients: list[Recipient], methods: list[str],
                  content: Content, settings: Any, reactor: Any, per_rcpt: bool,
                  deadline: float, clock: Any, rng: random.Random | None) -> Any:
    """One transaction, plus further ones for 452-deferred recipients (spec 5.3, 6.8)."""
    opts = ClientOptions.from_settings(settings, deadline)
    eight_bit = is_8bit(msg.spool_path, *content)
    pending = list(recipients)
    while pending:
        outcome = yield _one_session(msg, pending, methods, content, opts, settings,
                                     reactor, per_rcpt, eight_bit, clock, rng)
        _apply_outcome(msg, pending, outcome)
        deferred = [r for r, res in zip(pending, outcome.results, strict=True) if res.deferred]
        if not deferred or not outcome.data_delivered or len(deferred) == len(pending):
            break
        log.info("%d recipients deferred by 452, new transaction", len(deferred))
        pending = deferred
    return None


def _apply_outcome(msg: Message, recipients: list[Recipient],
                   outcome: TransactionOutcome) -> None:
    """Per-recipient replies; undecided ones get the session failure (spec 5.4)."""
    fallback = outcome.error or SessionError("other", "fwd-rundown-1", "no reply")
    for rcpt, res in zip(recipients, outcome.results, strict=True):
        reply = res.reply or fallback.reply(outcome.mta_id, msg.log_id)
        ok = reply.is_ok
        done = 1 if reply.enhanced in ("5.6.3", "5.6.7") and not res.mta_reply else 2
        _apply(rcpt, reply, done, queued_as_from(res.mta_reply) if ok else None,
               outcome.mta_id if ok else None)


# --------------------------------------------------------------------------- bsmtp


def expand_template(template: str, msg: Message, now: float) -> str:
    """Spec 5.8: %m mail_id, %n log_id, %i timestamp, %b body digest, %P pid, %s sender."""
    digest = str(msg.findings.get("body_digest") or msg.mail_id or msg.log_id)
    values = {"m": msg.mail_id or msg.log_id, "n": msg.log_id,
              "i": time.strftime("%Y%m%dT%H%M%S", time.localtime(now)), "b": digest,
              "P": str(os.getpid()), "s": msg.sender.replace("/", "_"), "%": "%"}
    return re.sub(r"%(.)", lambda m: values.get(m.group(1), m.group(0)), template)


def bsmtp_envelope(msg: Message, recipients: Sequence[Recipient], settings: Any,
                   eight_bit: bool) -> bytes:
    """EHLO, MAIL, RCPTs and DATA as an SMTP server offering 8BITMIME and DSN would see."""
    opts = ClientOptions.from_settings(settings, None)
    caps = Capabilities({"8BITMIME": [], "DSN": []})
    utf8 = bool(msg.smtputf8)
    lines = [f"EHLO {opts.localhost_name}",
             mail_command(msg, caps, eight_bit, opts.propagate_dsn_if_possible, utf8)]
    lines += [rcpt_command(msg, r, opts.propagate_dsn_if_possible,
                           opts.terminate_dsn_on_notify_success, utf8) for r in recipients]
    lines.append("DATA")
    return "".join(f"{ln}\n" for ln in lines).encode("utf-8")


def _forward_bsmtp(msg: Message, recipients: list[Recipient], m: Method, content: Content,
                   settings: Any, clock: Any) -> None:
    """Write ``<file>.tmp`` (O_EXCL, 0640), then rename (spec 5.8)."""
    name = expand_template(m.arg, msg, clock.seconds())
    path = Path(name)
    if not path.is_absolute():
        path = Path(getattr(settings, "QUARANTINEDIR", None) or ".") / path
    tmp = Path(f"{path}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except OSError as exc:
        _bsmtp_failed(msg, recipients, tmp, exc, remove=False)
        return
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(bsmtp_envelope(msg, recipients, settings,
                                     is_8bit(msg.spool_path, *content)))
            stuffer = DotStuffer(b"\n")
            out.write(stuffer.feed(content[0]))
            with open(msg.spool_path, "rb") as src:
                src.seek(content[1])
                while chunk := src.read(CHUNK_SIZE):
                    out.write(stuffer.feed(chunk))
            out.write(stuffer.finish())
        os.rename(tmp, path)
    except OSError as exc:
        _bsmtp_failed(msg, recipients, tmp, exc, remove=True)
        return
    reply = Reply(250, "2.6.0", f"Ok, queued as BSMTP {path}, id={msg.log_id}")
    for rcpt in recipients:
        _apply(rcpt, reply, 2, mailbox=str(path))


def _bsmtp_failed(msg: Message, recipients: list[Recipient], tmp: Path, exc: OSError,
                  remove: bool) -> None:
    log.error("bsmtp: writing %s failed: %s", tmp, exc)
    if remove:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    _fail_all(recipients, Reply(451, "4.5.0", f"Writing {tmp} failed: "
                                              f"{exc.strerror or exc}"), 2)


# --------------------------------------------------------------------------- pipe

PIPE_REPLIES = {
    0: Reply(250, "2.6.0", "Ok"),
    75: Reply(450, "4.5.0", "Temporary failure submitting message"),
    67: Reply(554, "5.1.1", "Recipient unknown"),
    69: Reply(554, "5.5.0", "Mail submission service unavailable"),
}


def pipe_argv(m: Method, msg: Message, recipients: Sequence[Recipient],
              settings: Any) -> list[str]:
    """Spec 5.8: argv split on whitespace, no shell; ${recipient} -> one item per recipient."""
    _, sep, argv_text = m.arg.partition("argv=")
    if not sep:
        raise ValueError(f"pipe method without argv=: {m.raw!r}")
    sender = msg.sender or "<>"
    argv: list[str] = []
    for item in argv_text.split():
        if "${recipient}" in item:
            argv += [item.replace("${recipient}", r.address) for r in recipients]
        else:
            argv.append(item.replace("${sender}", sender))
    if not argv:
        raise ValueError(f"pipe method with an empty argv: {m.raw!r}")
    if "sendmail" in argv[0] and getattr(settings, "propagate_dsn_if_possible", True):
        extra: list[str] = []
        if msg.dsn_envid:
            extra += ["-V", msg.dsn_envid]
        notifies = {",".join(r.notify) if r.notify else "DELAY,FAILURE" for r in recipients}
        if len(notifies) == 1 and (only := notifies.pop()) != "DELAY,FAILURE":
            extra += ["-N", only]
        argv[1:1] = extra
    return argv


class _PipeProtocol(protocol.ProcessProtocol):
    """Feeds header + body (LF line ends) to stdin; ``done`` fires with the exit status."""

    def __init__(self, msg: Message, content: Content, clock: Any):
        self.msg, self.clock = msg, clock
        self.header, self.body_offset = content
        self.done: defer.Deferred[str | int] = defer.Deferred()
        self._fh: Any = None
        self._reaper: LoopingCall | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.header.replace(b"\r\n", b"\n"))
        self._fh = open(self.msg.spool_path, "rb")
        self._fh.seek(self.body_offset)
        self.transport.registerProducer(self, False)
        # Without a SIGCHLD handler (children run installSignalHandlers=False) Twisted
        # only reaps when the pipes close; poll so a late exit is still noticed.
        self._reaper = LoopingCall(self._reap)
        self._reaper.clock = self.clock
        self._reaper.start(0.05, now=False)

    def resumeProducing(self) -> None:
        chunk = self._fh.read(CHUNK_SIZE) if self._fh else b""
        if chunk:
            self.transport.write(chunk)
            return
        self.stopProducing()
        self.transport.unregisterProducer()
        self.transport.closeStdin()

    def stopProducing(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def outReceived(self, data: bytes) -> None:
        log.info("pipe stdout: %s", data[:500].decode("utf-8", "replace"))

    errReceived = outReceived

    def _reap(self) -> None:
        if not self.transport.pipes:
            self.transport.reapProcess()

    def processEnded(self, reason: Any) -> None:
        self.stopProducing()
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        code, sig = getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None)
        self.done.callback(code if code is not None else f"killed by signal {sig}")


def _kill(proto: _PipeProtocol, log_id: str) -> None:
    """The child deadline passed: the program gets KILL, its status then says so."""
    log.warning("pipe: program still running at the deadline, killing it (%s)", log_id)
    try:
        proto.transport.signalProcess("KILL")
    except error.ProcessExitedAlready:
        pass


@defer.inlineCallbacks
def _forward_pipe(msg: Message, recipients: list[Recipient], m: Method, content: Content,
                  settings: Any, reactor: Any, deadline: float, clock: Any) -> Any:
    """Run the program with no shell and map its exit status to a reply (spec 5.8)."""
    try:
        argv = pipe_argv(m, msg, recipients, settings)
    except ValueError as exc:
        log.error("%s", exc)
        _fail_all(recipients, Reply(451, "4.5.0", f"{exc}, id={msg.log_id}"), 1)
        return None
    proto = _PipeProtocol(msg, content, clock)
    try:
        reactor.spawnProcess(proto, argv[0], argv, env=dict(os.environ))
    except OSError as exc:
        _fail_all(recipients, Reply(451, "4.5.0", f"Failed to submit a message: {exc}, "
                                                  f"id={msg.log_id}"), 2)
        return None
    timer = clock.callLater(max(60.0, deadline - clock.seconds()), _kill, proto, msg.log_id)
    status = yield proto.done
    if timer.active():
        timer.cancel()
    base = PIPE_REPLIES.get(status) if isinstance(status, int) else None
    if base is None:
        what = f"exit {status}" if isinstance(status, int) else status
        base = Reply(451, "4.5.0", f"Failed to submit a message: {what}")
    log.info("pipe %s: %s", argv[0], status)
    _fail_all(recipients, Reply(base.code, base.enhanced, f"{base.text}, id={msg.log_id}"), 2)
    return None
