"""AM.PDP server: the amavis policy delegation protocol (spec/protocols.md section 4).

A client (amavisd-milter, amavisd-submit) writes the message into a file, then
sends ``name=value`` lines ending with an empty line (4.1).  We check the file in
place, and answer with the verdict and the edits the client should apply (4.4).
Several requests may follow on one connection; the session ends when the client
closes or times out.

The protocol knows nothing of policy: it hands a ``Message`` and a bank view to
an ``AmpdpHandler`` (child_session.AmpdpSession in the daemon) and turns the
recipients' outcomes into the response.  ``release``/``requeue``/``report``
requests (4.5) become a ``ReleaseRequest`` for the handler, whose per-recipient
replies are written as one ``setreply`` line each (actions/release.py does the work).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from amavisd.actions.dkim_sign import FINDING_CLIENT_FIELDS
from amavisd.actions.headers import plan_edits, split_header, tag_subject
from amavisd.actions.release import ReleaseError, ReleaseRequest
from amavisd.config.model import BankView
from amavisd.constants import D_PASS
from amavisd.digest import BodyDigest
from amavisd.errors import Reply
from amavisd.final_reply import one_response_for_all
from amavisd.log import do_log
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.protocols.smtp_server import quote_address, unquote_address

log = logging.getLogger(__name__)

#: 4.1: the name runs up to the first ``=`` or ``:`` (then optional blanks).
_LINE = re.compile(rb"\A([^=:\x00\n]+)(?:=|:[ \t]*)(.*)\Z", re.S)
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_NAME_SAFE = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._+-")
#: 4.3: ``^($TEMPBASE|$MYHOME)(/safe)*/safe$``.
_SAFE = r"/(?!\.\.(?:/|\Z))[A-Za-z0-9_.-]+"
_KNOWN = frozenset({
    "request", "version_client", "tempdir", "tempdir_removed_by", "mail_file", "sender",
    "recipient", "delivery_care_of", "queue_id", "protocol_name", "helo_name",
    "client_address", "client_port", "client_name", "client_source", "policy_bank",
    "log_id", "partition_tag", "mail_id", "secret_id", "quar_type", "requested_by",
    "protocol_state",
})
#: Postfix policy attributes (4.2, smtpd_access_policy): accepted and ignored.
_POSTFIX = frozenset({
    "protocol_state", "instance", "reverse_client_name", "size", "ccert_subject",
    "ccert_issuer", "ccert_fingerprint", "ccert_pubkey_fingerprint", "encryption_protocol",
    "encryption_cipher", "encryption_keysize", "etrn_domain", "stress", "sasl_method",
    "sasl_username", "sasl_sender", "policy_context", "server_address", "server_port",
    "compatibility_level", "mail_version",
})
#: Bounds on hostile input: one attribute line, and all lines of one request.  A
#: request over either is read to its end and answered with the failure reply.
MAX_LINE = 64 * 1024
MAX_REQUEST = 4 * 1024 * 1024
EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL, EX_DISCARD = 0, 69, 75, 99


class RequestError(Exception):
    """A request refused before processing: answered with the failure reply (4.4)."""


class AmpdpHandler(TypingProtocol):
    """What the server needs from the daemon (child_session.AmpdpSession)."""

    tempbase: str
    myhome: str
    #: the daemon's own folders (quarantine, db, ...): never a client's tempdir
    protected: list[str]
    timeout: float

    def request_started(self, tempdir: str | None) -> str:
        """Count the task and return its log id (from the tempdir name, section 1.8)."""

    def request_view(self, client_addr: str | None, banks: list[str]) -> BankView:
        """The bank view of one request: client-IP banks, then ``banks`` (4.3)."""

    def process(self, msg: Message, view: BankView) -> defer.Deferred:
        """Run the pipeline on ``msg``."""

    def pdp_release(self, request: ReleaseRequest) -> defer.Deferred:
        """Release, requeue or report a quarantined message (4.5).

        Counts the task and sets its log id (``rel-<new mail_id>``) itself; fires
        with one ``Reply`` per recipient, or fails (``ReleaseError`` when refused)
        when nothing was sent.
        """

    def request_ended(self) -> None:
        """The response was written."""

    def session_ended(self) -> None:
        """The connection is gone."""


# --------------------------------------------------------------------- wire format
def decode(raw: bytes) -> str:
    """``%XX`` (either case) to the byte, then UTF-8 (undecodable bytes kept) (4.1)."""
    return _PCT.sub(lambda m: bytes([int(m.group(1), 16)]), raw).decode(
        "utf-8", "surrogateescape")


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def encode_name(name: str) -> str:
    """Every byte outside ``[0-9A-Za-z._+-]`` becomes lowercase ``%xx`` (4.1)."""
    return "".join(chr(b) if b in _NAME_SAFE else f"%{b:02x}" for b in _octets(name))


def encode_field(text: str) -> str:
    """Every byte outside 0x21-0x7E, and ``%``, becomes lowercase ``%xx`` (4.1)."""
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02x}"
                   for b in _octets(text))


def encode_line(name: str, *fields: str) -> bytes:
    """``name=f1 f2 ...`` CRLF: each field encoded on its own, joined by spaces (4.1)."""
    return (encode_name(name) + "=" + " ".join(encode_field(f) for f in fields)
            + "\r\n").encode("ascii")


def parse_line(line: bytes) -> tuple[str, str] | None:
    """``name=value`` or ``name: value``, both decoded; None for an invalid line (4.1)."""
    m = _LINE.match(line)
    if m is None:
        return None
    return decode(m.group(1)), decode(m.group(2))


def failure_reply(reason: str) -> bytes:
    """The failure triple of 4.4, without Perl's `` at file line N.``."""
    return (encode_line("setreply", "450", "4.5.0", f"Failure: {reason}")
            + encode_line("return_value", "tempfail")
            + encode_line("exit_code", str(EX_TEMPFAIL)) + b"\r\n")


def log_id_prefix(tempdir: str | None) -> str | None:
    """``amavis-pdp1`` or ``amavis-milter-pdp1`` gives ``pdp1`` (section 1.8)."""
    if not tempdir:
        return None
    m = re.fullmatch(r"amavis-(?:milter-)?([A-Za-z0-9_.+-]+)", tempdir.rstrip("/").rsplit("/")[-1])
    return m.group(1) if m else None


def _strip_brackets(addr: str) -> str:
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        return addr[1:-1]
    return addr


def safe_path(path: str, roots: list[str]) -> bool:
    """4.3: ``^(root)(/safe)*/safe$``, safe is ``[A-Za-z0-9_.-]+`` and not ``..``.

    Also, with symlinks resolved, the path must lie strictly below that root: a
    symlink inside $TEMPBASE must not lead the server to read or delete files
    elsewhere, and neither ``$TEMPBASE/.`` nor ``$MYHOME/tmp`` may make it remove
    $TEMPBASE itself (no root, nor a folder holding one, is a client's tempdir).
    """
    bases = [b for b in ((r or "").rstrip("/") for r in roots) if b]
    if not any(re.fullmatch(re.escape(b) + f"(?:{_SAFE})+", path) for b in bases):
        return False
    real = os.path.realpath(path)
    real_bases = [os.path.realpath(b) for b in bases]
    if any(rb == real or rb.startswith(real.rstrip("/") + "/") for rb in real_bases):
        return False
    return any(real.startswith(rb.rstrip("/") + "/") for rb in real_bases)


def overlaps(path: str, folders: list[str]) -> bool:
    """Whether ``path`` is, holds or lies inside one of ``folders`` (symlinks resolved).

    $MYHOME is an allowed root for client files, but it also holds the
    quarantine and the database folders: a client's ``tempdir`` there would
    have the server read and remove them (``tempdir_removed_by=server``).
    """
    real = os.path.realpath(path).rstrip("/") + "/"
    for folder in filter(None, folders):
        other = os.path.realpath(folder).rstrip("/") + "/"
        if real.startswith(other) or other.startswith(real):
            return True
    return False


# --------------------------------------------------------------------- the request
@dataclass
class Request:
    """The attributes of one request; ``recipient`` (and any repeat) are lists (4.1)."""

    attrs: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, value: str) -> None:
        self.attrs.setdefault(name, []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.attrs.get(name)
        return values[-1] if values else default

    def all(self, name: str) -> list[str]:
        return list(self.attrs.get(name, []))


def _file_facts(path: Path, digest: BodyDigest | None = None) -> tuple[int, bool]:
    """RFC 1870 size (LF counted as CRLF) and 8-bit content, read in chunks (never whole);
    the body digest (pipeline.md 5) is fed on the way."""
    size, eight_bit, last = 0, False, b""
    with path.open("rb") as fh:
        while chunk := fh.read(65536):
            if digest is not None:
                digest.feed(chunk)
            size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
            if last == b"\r" and chunk.startswith(b"\n"):
                size -= 1
            last = chunk[-1:]
            if not eight_bit and not chunk.isascii():
                eight_bit = True
    return size, eight_bit


def release_request(kind: str, request: Request) -> ReleaseRequest:
    """The attributes of a release/requeue/report request (4.5), not yet checked."""
    return ReleaseRequest(
        kind=kind, mail_id=request.get("mail_id") or "",
        secret_id=request.get("secret_id") or "",
        partition_tag=request.get("partition_tag"), quar_type=request.get("quar_type"),
        mail_file=request.get("mail_file"), requested_by=request.get("requested_by"),
        sender=request.get("sender"), recipients=tuple(request.all("recipient")))


def release_response(replies: list[Reply]) -> bytes:
    """One ``setreply`` per recipient and no return_value/exit_code (4.5, observed)."""
    lines = []
    for reply in replies:
        enhanced = reply.enhanced or f"{reply.code // 100}.0.0"
        lines.append(encode_line("setreply", str(reply.code), enhanced, reply.text))
    return b"".join(lines) + b"\r\n"


def header_field_edits(msg: Message, view: Any) -> list[tuple[str, ...]]:
    """The header edit lines of the response (4.4): ``planned_header_edits``, then the
    DKIM-Signature the pipeline made for them (pipeline.md 24.3), last so that it ends
    up topmost."""
    out = planned_header_edits(msg, view)
    for name, body in reversed(msg.findings.get(FINDING_CLIENT_FIELDS) or []):
        out.append(("insheader", "0", name, body))
    return out


def planned_header_edits(msg: Message, view: Any) -> list[tuple[str, ...]]:
    """delheader/chgheader/insheader lines the pipeline would apply when forwarding (4.4).

    The edits of the first recipient cluster (AM.PDP is not per-recipient capable);
    our Received field is left out, as amavis adds it only when it forwards itself.
    Only the first occurrence of a deleted or changed field is named, index 1.
    """
    passed = [r for r in msg.recipients if not r.done and r.destiny == D_PASS]
    if not passed:
        return []
    split = split_header(msg.spool_path)
    clusters = plan_edits(msg, passed, view, msg.findings, msg.rx_time, split.block)
    if not clusters:
        return []
    edit = clusters[0].edit
    fields = _header_fields(split.block)
    out: list[tuple[str, ...]] = []
    deleted: set[str] = set()
    for name, body in fields:
        low = name.lower()
        if low in deleted:
            continue
        hit = low in edit.delete or any(n == low and pred(body) for n, pred in edit.delete_if)
        if hit:
            deleted.add(low)
            out.append(("delheader", "1", name))
    if edit.subject_tag:
        for name, body in fields:
            if name.lower() == "subject":
                raw = tag_subject(_octets(name), body, edit.subject_tag, edit)
                new = raw[len(name) + 1:].rstrip(b"\n")
                new = new[1:] if new.startswith(b" ") else new
                out.append(("chgheader", "1", name, new.decode("utf-8", "surrogateescape")))
                break
    for added in reversed(edit.add):        # topmost last: each goes in at the index
        if added.name.lower() == "received":
            continue
        body = added.raw[len(added.name) + 1:].rstrip(b"\n")
        body = body[1:] if body.startswith(b" ") else body
        out.append(("insheader", "0", added.name, body.decode("utf-8", "surrogateescape")))
    return out


def _header_fields(block: bytes) -> list[tuple[str, bytes]]:
    """(name, body after the colon) of each field of the header section, in order."""
    out: list[tuple[str, bytes]] = []
    for raw in re.split(rb"\n(?![ \t])", block.replace(b"\r\n", b"\n")):
        name, colon, body = raw.partition(b":")
        if colon and name and not name[:1].isspace():
            out.append((name.strip().decode("latin-1"), body))
    return out


def verdict(msg: Message) -> tuple[str, int]:
    """return_value and exit_code from the combined reply (4.4; section 9 item 8 fixed).

    Any 4xx is tempfail/75 (Perl says discard/99 there); 5xx is reject/69; every
    recipient handled by us is discard/99; otherwise continue/0.
    """
    reply = one_response_for_all(msg)
    klass = reply.code // 100
    if klass == 4:
        return "tempfail", EX_TEMPFAIL
    if klass == 5:
        return "reject", EX_UNAVAILABLE
    if msg.recipients and all(r.done for r in msg.recipients):
        return "discard", EX_DISCARD
    if klass != 2:
        return "tempfail", EX_TEMPFAIL
    return "continue", EX_OK


def response(msg: Message, view: Any) -> bytes:
    """The AM.PDP response in the order of 4.4."""
    reply = one_response_for_all(msg)
    lines = [encode_line("version_server", "2"), encode_line("log_id", msg.log_id)]
    if reply.enhanced:
        lines.append(encode_line("setreply", str(reply.code), reply.enhanced, reply.text))
    value, code = verdict(msg)
    if value == "continue":
        for r in msg.recipients:
            if r.done:
                lines.append(encode_line("delrcpt", f"<{r.quoted}>"))
        try:
            edits = header_field_edits(msg, view)
        except Exception as exc:   # never lose the verdict over an edit (4.4)
            log.error("(%s) AM.PDP: header edits not computed: %s", msg.log_id, exc,
                      exc_info=exc)
            edits = []
        lines.extend(encode_line(name, *rest) for name, *rest in edits)
    lines.append(encode_line("return_value", value))
    lines.append(encode_line("exit_code", str(code)))
    return b"".join(lines) + b"\r\n"


# --------------------------------------------------------------------- the server
class AMPDPServer(Protocol):
    """One AM.PDP connection: read requests, process one at a time, answer each."""

    def __init__(self, handler: AmpdpHandler, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.handler = handler
        self._reactor = reactor
        self._buf = b""
        self._request = Request()
        self._busy = False
        self._closed = False
        self._timer: Any = None
        self._shutdown = False
        self._skipping = False              # inside an overlong line: drop up to its LF
        self._refused: str | None = None    # why the request being read gets a failure
        self._request_size = 0

    # -- connection -----------------------------------------------------------------
    def connectionMade(self) -> None:
        """No greeting: the client speaks first (4.1)."""
        self._arm_timer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._disarm_timer()
        try:
            self.handler.session_ended()
        except Exception:
            log.exception("TROUBLE in session_ended")

    def graceful_shutdown(self, reason: str = "") -> None:
        """Close when idle; a request in progress is answered first."""
        self._shutdown = True
        if not self._busy:
            self.transport.loseConnection()

    def _arm_timer(self) -> None:
        self._disarm_timer()
        timeout = float(getattr(self.handler, "timeout", 0) or 0)
        if timeout > 0:
            self._timer = self._reactor.callLater(timeout, self._on_timeout)

    def _disarm_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        log.warning("AM.PDP: timed out waiting for the client")
        self.transport.loseConnection()

    # -- input ----------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        self._arm_timer()
        self._process_input()

    def _process_input(self) -> None:
        while not self._busy and not self._closed:
            nl = self._buf.find(b"\n")
            if self._skipping:                  # the rest of an overlong line
                self._buf = b"" if nl < 0 else self._buf[nl + 1:]
                if nl < 0:
                    return
                self._skipping = False
                continue
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._overlong(len(self._buf))
                    self._buf, self._skipping = b"", True
                return
            line, self._buf = self._buf[:nl], self._buf[nl + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE:
                self._overlong(len(line))
            elif line:
                self._attribute(line)
            else:
                request, self._request = self._request, Request()
                refused, self._refused, self._request_size = self._refused, None, 0
                if refused is not None:
                    self._write(failure_reply(refused))
                else:
                    self._handle(request)

    def _overlong(self, size: int) -> None:
        """A line over MAX_LINE is dropped unread; its request is answered with a failure.

        Ignoring it like an invalid line could silently lose a recipient or a path, so
        the client gets a tempfail; the rest of the request is read to keep in step.
        """
        log.warning("INVALID AM.PDP ATTRIBUTE LINE: longer than %d bytes (%d read)",
                    MAX_LINE, size)
        self._refused = self._refused or "AM.PDP attribute line too long"

    def _attribute(self, line: bytes) -> None:
        """Store one line; invalid lines are logged and ignored, unknown names too (4.1)."""
        parsed = parse_line(line)
        if parsed is None:
            log.warning("INVALID AM.PDP ATTRIBUTE LINE: %s",
                        line[:200].decode("utf-8", "backslashreplace"))
            return
        self._request_size += len(line) + 1
        if self._request_size > MAX_REQUEST:
            if self._refused is None:
                log.warning("AM.PDP request larger than %d bytes, refused", MAX_REQUEST)
            self._refused = self._refused or "AM.PDP request too large"
            return
        name, value = parsed
        if name not in _KNOWN and name not in _POSTFIX:
            do_log(1, "AM.PDP: unknown attribute ignored: %s=%s", name, value[:100])
            return
        self._request.add(name, value)

    # -- requests -------------------------------------------------------------------
    def _handle(self, request: Request) -> None:
        kind = (request.get("request") or "").lower()
        if not kind:
            self._write(failure_reply("Missing 'request' field"))
        elif kind == "smtpd_access_policy":
            self._write(b"action=DUNNO\n\n")        # Postfix reads LF lines (4.2)
        elif kind in ("release", "requeue", "report"):
            self._release(kind, request)
        elif kind in ("am.pdp", "am.cl"):
            self._am_pdp(request)
        else:
            self._write(failure_reply(f"Unknown request '{request.get('request')}'"))

    def _am_pdp(self, request: Request) -> None:
        try:
            log_id = self.handler.request_started(request.get("tempdir"))
        except Exception as exc:
            log.exception("TROUBLE starting an AM.PDP request")
            self._write(failure_reply(str(exc)))
            return
        try:
            msg, view, cleanup = self._prepare(request, log_id)
        except RequestError as exc:
            log.warning("(%s) AM.PDP request refused: %s", log_id, exc)
            self._write(failure_reply(str(exc)))
            self._request_ended()
            return
        except Exception as exc:
            log.exception("(%s) TROUBLE preparing an AM.PDP request", log_id)
            self._write(failure_reply(str(exc) or type(exc).__name__))
            self._request_ended()
            return
        if msg is None:
            self._write(encode_line("version_server", "2") + encode_line("log_id", log_id)
                        + encode_line("setreply", "450", "4.5.0", "Incomplete request")
                        + encode_line("return_value", "tempfail")
                        + encode_line("exit_code", str(EX_TEMPFAIL)) + b"\r\n")
            self._request_ended()
            return
        self._busy = True
        self._disarm_timer()
        self.transport.pauseProducing()
        d = defer.maybeDeferred(self.handler.process, msg, view)
        d.addCallback(lambda _r: response(msg, view))
        d.addErrback(self._failed, log_id)
        d.addCallback(self._answered, cleanup)

    def _release(self, kind: str, request: Request) -> None:
        """4.5: the handler does the work; the answer is written when it is done."""
        self._busy = True
        self._disarm_timer()
        self.transport.pauseProducing()
        d = defer.maybeDeferred(lambda: self.handler.pdp_release(release_request(kind, request)))
        d.addCallback(release_response)
        d.addErrback(self._release_failed, kind)
        d.addCallback(self._answered, [])

    def _release_failed(self, failure: Failure, kind: str) -> bytes:
        """Refused or failed before dispatch: the generic failure triple (4.4, 4.5)."""
        reason = failure.getErrorMessage() or failure.type.__name__
        if failure.check(ReleaseError):
            log.warning("AM.PDP %s request refused: %s", kind, reason)
        else:
            log.error("TROUBLE in AM.PDP %s: %s", kind, reason, exc_info=failure.value)
        return failure_reply(reason)

    def _failed(self, failure: Failure, log_id: str) -> bytes:
        log.error("(%s) TROUBLE in check_mail: %s", log_id, failure.getErrorMessage(),
                  exc_info=failure.value)
        return failure_reply(failure.getErrorMessage() or failure.type.__name__)

    def _answered(self, data: bytes, cleanup: list[Path]) -> None:
        self._busy = False
        for path in cleanup:
            try:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            except OSError as exc:
                log.warning("AM.PDP: could not remove %s: %s", path, exc)
        if self._closed:
            self._request_ended()
            return
        self._write(data)
        self._request_ended()
        if self._shutdown:
            self.transport.loseConnection()
            return
        self.transport.resumeProducing()
        self._arm_timer()
        self._process_input()

    def _request_ended(self) -> None:
        try:
            self.handler.request_ended()
        except Exception:
            log.exception("TROUBLE in request_ended")

    def _write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    def _prepare(self, request: Request,
                 log_id: str) -> tuple[Message | None, BankView | None, list[Path]]:
        """Check the paths, read the envelope, load the banks (4.3)."""
        roots = [self.handler.tempbase, self.handler.myhome]
        tempdir = request.get("tempdir")
        if tempdir is not None and (not safe_path(tempdir, roots)
                                    or overlaps(tempdir, self.handler.protected)):
            raise RequestError(f"Suspicious temporary directory name '{tempdir}'")
        mail_file = request.get("mail_file")
        if mail_file is None:
            if tempdir is None:
                raise RequestError("Missing 'tempdir' or 'mail_file' attribute")
            mail_file = tempdir + "/email.txt"
        if not safe_path(mail_file, roots) or overlaps(mail_file, self.handler.protected):
            # never read or delete a file elsewhere
            raise RequestError(f"Suspicious mail file name '{mail_file}'")
        rcpts = request.all("recipient")
        if not rcpts:
            return None, None, []
        path = Path(mail_file)
        try:
            st = path.stat()
        except OSError:
            raise RequestError(f"File {mail_file} does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(f"File {mail_file} is not a plain file")
        if mail_file.endswith(".gz"):
            raise RequestError(f"Compressed mail file {mail_file} is not supported")
        baseline = getattr(self.handler, "baseline", None)     # the connection's view
        digest = BodyDigest(getattr(baseline, "mail_digest_algorithm", None) or "MD5")
        size, eight_bit = _file_facts(path, digest)
        source = request.get("client_source")
        client = ClientInfo(
            addr=request.get("client_address"), name=request.get("client_name"),
            port=request.get("client_port"), proto=request.get("protocol_name"),
            helo=request.get("helo_name"), ident=request.get("queue_id"),
            source=None if source == "[UNAVAILABLE]" else source)
        banks = [b.strip() for v in request.all("policy_bank") for b in v.split(",")]
        view = self.handler.request_view(client.addr, [b for b in banks if b])
        if (request.get("delivery_care_of") or "client").lower() != "server":
            view.set("forward_method", "")     # the client delivers (4.3)
            view.set("forward_method_maps", [])
        sender = _strip_brackets(request.get("sender") or "")
        recipients = []
        for value in rcpts:
            quoted = _strip_brackets(value)
            address = unquote_address(quoted)
            orcpt = None if quote_address(address) == quoted else f";{quoted}"
            recipients.append(Recipient(address=address, quoted=quoted, orcpt=orcpt))
        msg = Message(sender=unquote_address(sender), sender_quoted=sender,
                      recipients=recipients, spool_path=path, size=size, log_id=log_id,
                      client=client, protocol=request.get("protocol_name") or "SMTP",
                      rx_time=self._reactor.seconds())
        msg.findings["eight_bit"] = eight_bit
        msg.findings["body_digest"] = digest.hexdigest()
        cleanup: list[Path] = []
        if (request.get("tempdir_removed_by") or "server").lower() == "server":
            cleanup.append(path)
            if tempdir is not None:
                cleanup.append(Path(tempdir))
        return msg, view, cleanup

