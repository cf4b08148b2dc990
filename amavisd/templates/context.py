# tests: t/templates/test_engine.py
"""What a template can know about one message: the data behind the built-in macros.

The callers (notifications, DSN, release, the log line) fill a ``TemplateContext``
from the Message, its recipients, the settings in force and the findings; the
macros of spec/pipeline.md 19.2 (``builtins``) read only this.  Every field has the
value amavis has when the fact is absent (no virus scan: ``virus_names`` None, no
DKIM: no signatures, ...), so a macro whose data is missing expands exactly as it
does in the Perl daemon in the same situation.

``TemplateContext.from_message`` fills what the Message itself carries (envelope,
ids, client, header section, recipients' outcomes); the caller adds the findings.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from amavisd.constants import D_PASS
from amavisd.templates.mailfmt import decode_octets
from amavisd.templates.trace import TraceHop, build_trace, client_addr_from_trace


@dataclass
class DkimSignature:
    """A DKIM signature (valid, or newly made by us): ``d=``, ``s=``, ``i=``."""

    domain: str
    selector: str
    identity: str = ""


@dataclass
class ScannerResult:
    """One virus scanner's verdict, for ``[:W|...]``: name, infected?, its virus names."""

    name: str
    infected: bool
    virus_names: list[str] = field(default_factory=list)


@dataclass
class RecipientFacts:
    """One envelope recipient as the macros see it (amavis's per_recip_data)."""

    address: str                           # internal, unquoted form
    is_local: bool = False
    destiny: int = D_PASS
    done: bool = False                     # decided (by us or the next hop)
    smtp_response: str = ""                # our reply or the next hop's, as text
    remote_mta: str | None = None
    remote_mta_smtp_response: str | None = None
    dsn_notify: list[str] | None = None    # NOTIFY values; None: not given
    #: contents categories, most important first ("9", "8", "1,1", "1", ...)
    contents_category: list[str] = field(default_factory=lambda: ["1"])
    blocking_ccat: str | None = None
    spam_level: float | None = None
    #: SpamAssassin-style test lists, each "NAME=score,NAME=score" (amavis's spam_tests)
    spam_tests: list[str] = field(default_factory=list)
    bypass_spam_checks: bool = False
    tag_level: float | None = None         # spam_tag_level_maps for this recipient
    tag2_level: float | None = None
    kill_level: float | None = None
    banning_reason_short: str | None = None
    banning_rule_key: list[str] | None = None
    banning_rule_comment: list[str] | None = None
    banning_rule_rhs: list[str] | None = None
    banned_parts: list[str] | None = None
    banned_parts_as_attr: list[str] | None = None


@dataclass
class TemplateContext:
    """Everything the built-in macros read, for one message (see module doc)."""

    # -- identity and time
    log_id: str = ""
    mail_id: str | None = None
    secret_id: str | None = None
    parent_mail_id: str | None = None
    partition_tag: str = "0"               # amavis stores 0 when $partition_tag is undef
    myhostname: str = "localhost"
    smtputf8: bool = False
    policy_bank_path: str = ""
    rx_time: float = 0.0
    tz: tzinfo | None = None               # None: the local zone (amavis's localtime)
    elapsed: Callable[[], float] | None = None   # seconds so far (``%y``)
    # -- envelope
    sender: str = ""                       # internal, unquoted; '' is the null sender
    #: ``%o``; None means "the sender" (amavis's default), '' an unknown faked sender
    sender_source: str | None = None
    recipients: list[RecipientFacts] = field(default_factory=list)
    originating: bool = False
    queue_id: str | None = None
    size: int = 0
    # -- the original header section: one entry per field, folded, with its LF
    header: list[bytes] = field(default_factory=list)
    body_digest: str | None = None         # hex
    # -- connection and client
    client_addr: str | None = None         # XFORWARD ADDR / AM.PDP (None: from the trace)
    client_port: str | None = None
    client_name: str | None = None
    client_helo: str | None = None
    client_protocol: str | None = None
    mta_addr: str | None = None            # the MTA that connected to us
    mta_port: int | None = None
    mta_helo: str | None = None
    protocol: str | None = None            # our side: ESMTP, LMTP, ... (None: no connection)
    localhost_name: str = "localhost"
    tls_cipher: str | None = None
    trace: list[TraceHop] | None = None    # None: built from the header and the above
    # -- findings
    contents_category: list[str] = field(default_factory=lambda: ["1"])
    blocking_ccat: str | None = None
    virus_names: list[str] | None = None   # None: no virus found (or no scan)
    av_output: str | None = None
    detecting_scanners: list[str] = field(default_factory=list)
    av_results: list[ScannerResult] = field(default_factory=list)
    bad_headers: list[str] = field(default_factory=list)
    spam_summary: str | None = None
    spam_report: str | None = None
    supplementary_info: dict[str, str] = field(default_factory=dict)
    dkim_valid: list[DkimSignature] = field(default_factory=list)
    dkim_new: list[DkimSignature] = field(default_factory=list)
    dkim_author_sig: str | None = None
    dkim_sender_sig: str | None = None
    dkim_thirdparty_sig: str | None = None
    dkim_envsender_sig: str | None = None
    quarantined_to: list[str] | None = None
    quarantine_dir: str | None = None      # $QUARANTINEDIR, stripped from ``%q``
    actions_performed: list[str] | None = None
    # -- the notice being built (f T C B, report_format, feedback_type)
    notify_from: str | None = None
    notify_to: list[str] | None = None
    notify_cc: list[str] | None = None
    notify_bcc: list[str] | None = None
    report_format: str | None = None
    feedback_type: str | None = None
    #: the ``$attachment_password`` setting: a string, a callable, or None (a 4-digit PIN)
    attachment_password_setting: Any = None
    attachment_password: str | None = None  # made on first use, then kept
    # -- settings the macros read
    macro_tests_sanity_limit: int = 50
    sa_spam_level_char: str = "*"
    #: the structured report (spec 26) for ``[:report_json]``, and how to encode it
    structured_report: Callable[[], Mapping[str, Any] | None] | None = None
    json_encode: Callable[[Mapping[str, Any]], str] | None = None
    #: resource usage by ``ru_*`` name (self + children); None: read it from the OS
    rusage: Callable[[str], float | int | None] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- derived facts (computed once) -------------------------------------------------
    def header_fields(self, name: str) -> list[bytes]:
        """The fields named ``name`` (any case), top-down, as whole folded fields."""
        key = ("fields", name.lower())
        cached = self._cache.get(key)
        if cached is None:
            index = self._cache.get("index")
            if index is None:
                index = {}
                for raw in self.header:
                    m = re.match(rb"([^: \t]+)[ \t]*:", raw)
                    if m:
                        index.setdefault(m.group(1).decode("latin-1").lower(), []).append(raw)
                self._cache["index"] = index
            cached = index.get(name.lower(), [])
            self._cache[key] = cached
        return cached

    def header_body(self, name: str, index: int | None = None) -> str | None:
        """amavis's get_header_field_body: the text after the colon, folding kept.

        Without an index it is the first (topmost) occurrence; negative ones count
        from the bottom.
        """
        fields = self.header_fields(name)
        if not fields:
            return None
        if index is None:
            index = 0
        if len(fields) == 1 and index not in (0, -1):
            return None
        try:
            raw = fields[index]
        except IndexError:
            return None
        colon = raw.find(b":")
        return decode_octets(raw[colon + 1:] if colon >= 0 else raw)

    def received(self) -> list[str]:
        """The Received field bodies, top-down."""
        return [decode_octets(f.split(b":", 1)[1]) for f in self.header_fields("received")]

    def get_trace(self) -> list[TraceHop]:
        """The Received trace, our hop first (``trace.build_trace``)."""
        if self.trace is None:
            self.trace = build_trace(
                self.received(), client_addr=self.client_addr, client_port=self.client_port,
                client_proto=self.client_protocol, mta_addr=self.mta_addr,
                mta_port=self.mta_port, mta_helo=self.mta_helo,
                our_helo=self.localhost_name or "localhost", protocol=self.protocol)
        return self.trace

    def effective_client_addr(self) -> str | None:
        """``%a``: the given client address, else the first address of the trace."""
        if self.client_addr is not None:
            return self.client_addr
        return client_addr_from_trace(self.get_trace())

    def now_elapsed(self) -> float:
        return self.elapsed() if self.elapsed is not None else 0.0

    # -- construction from the pipeline's model ----------------------------------------
    @classmethod
    def from_message(cls, msg: Any, header_block: bytes = b"", **extra: Any) -> TemplateContext:
        """The facts a ``Message`` carries; ``extra`` overrides or adds (findings, settings).

        ``header_block`` is the original header section (``header.read_header_block``).
        """
        client = msg.client
        recipients = [RecipientFacts(
            address=r.address, destiny=r.destiny if r.destiny is not None else D_PASS,
            done=bool(r.done), smtp_response=str(r.reply) if r.reply is not None else "",
            dsn_notify=list(r.notify) if r.notify else None,
            contents_category=list(r.ccats) if r.ccats else ["1"],
            blocking_ccat=r.ccat_blocking, spam_level=r.spam_level,
            bypass_spam_checks=bool(r.bypass_spam_checks),
            banning_reason_short=getattr(r, "banning_reason_short", None))
            for r in msg.recipients]
        blocking = [r.ccat_blocking for r in msg.recipients if r.ccat_blocking]
        categories = list(msg.findings.get("ccats") or []) or ["1"]
        if "1" not in categories:
            categories.append("1")                     # CC_CLEAN is always present
        values: dict[str, Any] = dict(
            contents_category=categories,
            blocking_ccat=max(blocking, key=_ccat_key) if blocking else None,
            log_id=msg.log_id, mail_id=msg.mail_id or None, secret_id=msg.secret_id or None,
            smtputf8=bool(msg.smtputf8), policy_bank_path=msg.policy_bank_path,
            rx_time=msg.rx_time, sender=msg.sender, recipients=recipients,
            originating=bool(msg.originating), queue_id=client.ident, size=msg.size,
            header=split_header_fields(header_block), client_addr=client.addr,
            client_port=client.port, client_name=client.name, client_helo=client.helo,
            client_protocol=client.proto, mta_addr=client.mta_addr or None,
            mta_port=client.mta_port or None, mta_helo=client.mta_helo,
            protocol=msg.protocol, tls_cipher=msg.tls_cipher,
            actions_performed=list(msg.actions_performed) or None)
        if msg.rx_start:                     # %y: since the transaction timing started
            values["elapsed"] = lambda: time.monotonic() - msg.rx_start
        values.update(extra)
        return cls(**values)


def _ccat_key(ccat: str) -> tuple[int, int]:
    major, _, minor = ccat.partition(",")
    return int(major or 0), int(minor or 0)


def split_header_fields(block: bytes) -> list[bytes]:
    """A header section as amavis keeps it: one entry per field, folding and LF kept.

    Continuation lines join the field before them; the empty separator line ends it.
    """
    fields: list[bytes] = []
    for line in block.replace(b"\r\n", b"\n").splitlines(keepends=True):
        if line in (b"\n", b""):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line if line.endswith(b"\n") else line + b"\n")
    return fields


def read_header_fields(path: Path, limit: int = 4 * 1024 * 1024) -> list[bytes]:
    """``split_header_fields`` of a spooled message's header section."""
    from amavisd.header import read_header_block

    return split_header_fields(read_header_block(path, limit))
