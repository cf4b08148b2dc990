# tests: t/actions/test_quarantine.py
"""Quarantine and archiving: which copies to keep, and writing them (``local:``, ``bsmtp:``,
``sql:``).

Runs in the child, after ``decide`` and before forwarding (spec/pipeline.md section
19: "Sent in do_notify_and_quarantine, before forwarding, after quarantine").

* ``select`` is section 22.1: per recipient, its blocking category (or its category
  list top-down, then CATCHALL) picks a ``*_quarantine_method`` and a
  ``@*_quarantine_to_maps`` answer; equal methods collapse into one request.
* ``quarantine`` carries the requests out (section 22.2/22.3, protocols.md 5.8):
  one file per message under ``$QUARANTINEDIR`` (gzip for ``.gz``), or an mbox
  append under ``flock``, each with the header fields of section 20.4 on top.
  A write failure is our infrastructure failing: ``TempFail``, so the MTA keeps
  the message (section 22.2: "4xx -> die temporarily unable to quarantine").
  ``sql:`` stores the same copy as chunks of table ``quarantine``
  (amavisd/sql/quarantine_store.py); a database failure tempfails the same way.
* ``quarantine_async`` also handles methods that need the network (``smtp:``,
  ``lmtp:``, ``pipe:``, and ``local:`` redirected to ``$notify_method``) through
  ``forward``.

Facts the checks found are read from the ``Message``/``Recipient`` objects via
``RecipientFacts`` (attribute names listed there), so this module does not care
which check wrote them.  Nothing here decides a destiny (STYLE.md section 5).
"""

from __future__ import annotations

import fcntl
import gzip
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from amavisd import stats
from amavisd.config.lookup import lookup
from amavisd.constants import (
    CC_BADH,
    CC_BANNED,
    CC_CLEAN,
    CC_SPAM,
    CC_SPAMMY,
    CC_UNCHECKED,
    CC_VIRUS,
    CCAT_DISPLAY_NAMES_MAJOR,
)
from amavisd.errors import Reply, TempFail
from amavisd.header import read_header_block
from amavisd.message import Message, Recipient
from amavisd.received import received_field

log = logging.getLogger(__name__)

#: Bytes per read/write when copying the spooled message (bounded memory, DESIGN.md).
CHUNK = 64 * 1024
#: The section name of the 451 reply when quarantining fails (Perl's ``quar+notif``).
SECTION = "quar+notif"

# ------------------------------------------------------------------ settings and defaults

#: Section 22.1 / 22.3: upstream defaults (Amavis::Conf) of the settings read here.
DEFAULTS: dict[str, Any] = {
    "QUARANTINEDIR": None,
    "quarantine_subdir_levels": None,
    "virus_quarantine_method": "local:virus-%m",
    "banned_files_quarantine_method": "local:banned-%m",
    "unchecked_quarantine_method": None,
    "spam_quarantine_method": "local:spam-%m.gz",
    "bad_header_quarantine_method": "local:badh-%m",
    "clean_quarantine_method": None,
    "archive_quarantine_method": None,
    "virus_quarantine_to_maps": ["virus-quarantine"],
    "banned_quarantine_to_maps": ["banned-quarantine"],
    "unchecked_quarantine_to_maps": ["unchecked-quarantine"],
    "spam_quarantine_to_maps": ["spam-quarantine"],
    "bad_header_quarantine_to_maps": ["bad-header-quarantine"],
    "clean_quarantine_to_maps": ["clean-quarantine"],
    "archive_quarantine_to_maps": ["archive-quarantine"],
    "spam_quarantine_bysender_to_maps": [],
    "spam_quarantine_cutoff_level_maps": [],
    "quarantine_method_by_ccat": {},        # overrides, keyed like "9" or "7,3"
    "quarantine_to_maps_by_ccat": {},
    "local_delivery_aliases": None,         # None: the built-in aliases below
    "mailfrom_to_quarantine": None,
    "notify_method": None,
    "forward_method": "smtp:[127.0.0.1]:10025",
    "allowed_added_header_fields": {},      # laid over ALLOWED_ADDED_HEADER_FIELDS
    "prefer_our_added_header_fields": None,  # None: PREFER_OUR_HEADER_FIELDS
    "sa_spam_level_char": "*",
    "spam_tag_level_maps": [],
    "spam_tag2_level_maps": [],
    "spam_kill_level_maps": [],
    "recipient_delimiter": None,
    "localpart_is_case_sensitive": False,
    "myhostname": "localhost",
    "localhost_name": "localhost",
}

#: Section 20: header fields amavis may add by default (lower case).
ALLOWED_ADDED_HEADER_FIELDS = {
    name: True for name in (
        "received", "dkim-signature", "authentication-results", "vbr-info",
        "x-quarantine-id", "x-amavis-alert", "x-amavis-hold", "x-amavis-modified",
        "x-amavis-penpals", "x-amavis-os-fingerprint", "x-amavis-policybank",
        "x-spam-status", "x-spam-level", "x-spam-flag", "x-spam-score", "x-spam-tests",
        "x-crm114-status", "x-crm114-cacheid", "x-dspam-result", "x-dspam-signature",
        "x-bogosity")
} | {"x-spam-report": False, "x-spam-checker-version": False, "x-amavis-category": False}

#: Section 20: fields amavis writes itself rather than taking a scanner's.
PREFER_OUR_HEADER_FIELDS = frozenset((
    "x-spam-status", "x-spam-level", "x-spam-flag", "x-spam-score", "x-spam-report",
    "x-spam-checker-version", "x-crm114-status", "x-crm114-cacheid", "x-dspam-result",
    "x-dspam-signature"))

#: Section 22.3: the pseudo local parts that mean "$QUARANTINEDIR".
QUARANTINE_ALIASES = ("virus-quarantine", "banned-quarantine", "unchecked-quarantine",
                      "spam-quarantine", "bad-header-quarantine", "clean-quarantine",
                      "other-quarantine", "archive-quarantine")

#: Section 22.1: category key -> (method setting, quarantine_to maps setting).
_BY_CCAT: dict[str, tuple[str, str]] = {
    str(CC_VIRUS): ("virus_quarantine_method", "virus_quarantine_to_maps"),
    str(CC_BANNED): ("banned_files_quarantine_method", "banned_quarantine_to_maps"),
    str(CC_UNCHECKED): ("unchecked_quarantine_method", "unchecked_quarantine_to_maps"),
    str(CC_SPAM): ("spam_quarantine_method", "spam_quarantine_to_maps"),
    str(CC_BADH): ("bad_header_quarantine_method", "bad_header_quarantine_to_maps"),
    str(CC_CLEAN): ("clean_quarantine_method", "clean_quarantine_to_maps"),
}

_SUBDIR_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def setting(view: Any, name: str) -> Any:
    """The one place settings are read: the view's value, else the upstream default.

    The registry does not know most of these names yet; ``getattr`` with a default
    lets a config set them as soon as the registry does.
    """
    return getattr(view, name, DEFAULTS.get(name))


def lookup_setting(view: Any, name: str, key: Any) -> Any:
    """Ask the tables of ``@<name>`` about ``key`` (pipeline.md section 14)."""
    tables = setting(view, name)
    if tables is None:
        return None
    if not isinstance(tables, (list, tuple)):
        tables = [tables]
    return lookup(False, key, tables,
                  recipient_delimiter=setting(view, "recipient_delimiter"),
                  localpart_is_case_sensitive=bool(setting(view, "localpart_is_case_sensitive")),
                  label=name)


# ------------------------------------------------------------------ facts from the checks


@dataclass
class RecipientFacts:
    """What quarantine and DSN need to know about one recipient beyond ``Recipient``.

    ``recipient_facts`` fills it from attributes of the same name on the
    ``Recipient`` when the checks/decide set them (``ccats``, ``spam_level``,
    ``blacklisted``, ``whitelisted``, ``spam_tests``, ``bypass_spam_checks``,
    ``banning_reason_short``, ``dsn_suppress_reason``), else from defaults.
    """

    ccats: list[str] = field(default_factory=lambda: ["1"])   # sorted, highest first
    spam_level: float | None = None
    blacklisted: bool = False
    whitelisted: bool = False
    spam_tests: list[str] = field(default_factory=list)
    bypass_spam_checks: bool = False
    banning_reason_short: str | None = None
    dsn_suppress_reason: str | None = None


def ccat_key(ccat: str) -> tuple[int, int]:
    """``"7,3"`` -> (7, 3); the sort key of section 12.2."""
    major, _, minor = str(ccat).partition(",")
    return int(major), int(minor or 0)


def sorted_ccats(ccats: Iterable[str]) -> list[str]:
    """Section 12.2: descending, every ``maj,min`` also brings ``maj``, CLEAN always there."""
    out = set(str(c) for c in ccats) | {str(CC_CLEAN)}
    out |= {c.split(",")[0] for c in list(out)}
    return sorted(out, key=ccat_key, reverse=True)


def recipient_facts(msg: Message, rcpt: Recipient) -> RecipientFacts:
    """The default facts provider: attributes on ``rcpt``, then message findings."""
    ccats = getattr(rcpt, "ccats", None)
    if ccats is None:            # a Recipient without the field: the message's categories
        ccats = msg.findings.get("ccats") or [msg.findings.get("ccat_main", str(CC_CLEAN))]
    return RecipientFacts(
        ccats=sorted_ccats(ccats),
        spam_level=getattr(rcpt, "spam_level", None),
        blacklisted=bool(getattr(rcpt, "blacklisted", False)),
        whitelisted=bool(getattr(rcpt, "whitelisted", False)),
        spam_tests=list(getattr(rcpt, "spam_tests", None) or []),
        bypass_spam_checks=bool(getattr(rcpt, "bypass_spam_checks", False)),
        banning_reason_short=getattr(rcpt, "banning_reason_short", None),
        dsn_suppress_reason=getattr(rcpt, "dsn_suppress_reason", None),
    )


FactsFor = Callable[[Message, Recipient], RecipientFacts]


def candidates(rcpt: Recipient, facts: RecipientFacts) -> list[str]:
    """Section 12.2: ``[blocking, "0"]`` when blocked, else the category list and ``"0"``."""
    if rcpt.ccat_blocking:
        return [str(rcpt.ccat_blocking), "0"]
    return [*facts.ccats, "0"]


# ------------------------------------------------------------------ requests and results


@dataclass(frozen=True)
class QuarantineRequest:
    """One quarantine delivery: a method, where to (``to``) and why.

    ``to`` holds quarantine addresses (``virus-quarantine``, a mailbox, or an
    original recipient for ``%a``/``bsmtp:``); ``for_recipients`` the original
    recipients whose copy it is; ``categories`` the major category names (the
    SNMP ids ``Virus``, ``Banned``... or ``Arch``).  ``transparent`` archives with
    the original envelope recipients (section 22.1).
    """

    method: str
    to: tuple[str, ...]
    categories: tuple[str, ...]
    for_recipients: tuple[str, ...] = ()
    transparent: bool = False

    @property
    def is_archive(self) -> bool:
        return self.categories == ("Arch",)


@dataclass
class QuarantineResult:
    """The outcome of one request: reply, where the copies went, and the quar_type."""

    request: QuarantineRequest
    reply: Reply
    locations: list[str] = field(default_factory=list)    # full paths / mailbox names
    quar_type: str = "?"                                   # F Z M L B Q ? (section 22.3)

    @property
    def ok(self) -> bool:
        return self.reply.is_ok


def _scheme(method: str) -> str:
    return method.partition(":")[0].strip().lower()


def select(msg: Message, view_for: Callable[[Recipient], Any],
           facts_for: FactsFor = recipient_facts) -> list[QuarantineRequest]:
    """Section 22.1: the quarantine deliveries this message needs.

    ``view_for(rcpt)`` is the settings view (policy bank) for a recipient.  Returns
    one request per distinct method, in first-seen order; archiving comes last.
    """
    tuples: list[tuple[str, str, str, str]] = []     # method, q_to, category name, rcpt
    first_view = view_for(msg.recipients[0]) if msg.recipients else None
    archive_method = setting(first_view, "archive_quarantine_method") if first_view else None
    archive_any, archive_transparent = False, True
    if archive_method:
        for rcpt in msg.recipients:
            q = lookup_setting(view_for(rcpt), "archive_quarantine_to_maps", rcpt.address)
            archive_any = archive_any or (q is not None and q != "")
            archive_transparent = archive_transparent and q == "%a"
    for rcpt in msg.recipients:
        view = view_for(rcpt)
        facts = facts_for(msg, rcpt)
        picked = _method_for(rcpt, facts, view)
        if picked is not None:
            key, method, maps_name = picked
            q = lookup_setting(view, maps_name, rcpt.address)
            major = ccat_key(key)[0]
            if q not in (None, "") and major in (CC_SPAM, CC_SPAMMY):
                q = _spam_cutoff(view, rcpt, facts, q)
            if q not in (None, "") and (q == "%a" or _scheme(method) == "bsmtp"):
                q = rcpt.address
            if q not in (None, ""):
                name = CCAT_DISPLAY_NAMES_MAJOR.get(_display_major(rcpt, facts), "CatchAll")
                tuples.append((method, str(q), name, rcpt.address))
        if archive_any and not archive_transparent:
            q = lookup_setting(view, "archive_quarantine_to_maps", rcpt.address)
            if q not in (None, "") and (q == "%a" or _scheme(archive_method) == "bsmtp"):
                q = rcpt.address
            if q not in (None, ""):
                tuples.append((archive_method, str(q), "Arch", rcpt.address))
    main = msg.findings.get("ccat_main", str(CC_CLEAN))
    if first_view is not None and ccat_key(main)[0] == CC_SPAM:
        q = lookup_setting(first_view, "spam_quarantine_bysender_to_maps", msg.sender)
        method = setting(first_view, "spam_quarantine_method")
        if q not in (None, "") and method:
            tuples.append((method, str(q), "Spam", ""))
    notify = None
    if first_view is not None:
        notify = setting(first_view, "notify_method") or setting(first_view, "forward_method")
    requests: list[QuarantineRequest] = []
    grouped: dict[str, list[tuple[str, str, str, str]]] = {}
    for method, q, name, rcpt_addr in tuples:
        if _scheme(method) == "local" and "@" in q and notify:
            method = notify          # section 22.1: local: with an address -> $notify_method
        grouped.setdefault(method, []).append((method, q, name, rcpt_addr))
    for method, items in grouped.items():
        requests.append(QuarantineRequest(
            method, tuple(dict.fromkeys(i[1] for i in items)),
            tuple(dict.fromkeys(i[2] for i in items)),
            tuple(dict.fromkeys(i[3] for i in items if i[3]))))
    if archive_any and archive_transparent:
        requests.append(QuarantineRequest(archive_method, tuple(r.address for r in msg.recipients),
                                          ("Arch",), tuple(r.address for r in msg.recipients),
                                          transparent=True))
    return requests


def _display_major(rcpt: Recipient, facts: RecipientFacts) -> int:
    if rcpt.ccat_blocking:
        return ccat_key(rcpt.ccat_blocking)[0]
    return ccat_key(facts.ccats[0])[0]


def _method_for(rcpt: Recipient, facts: RecipientFacts,
                view: Any) -> tuple[str, str, str] | None:
    """The first candidate category with an entry (section 12.2), if its method is set."""
    override_m = setting(view, "quarantine_method_by_ccat") or {}
    override_t = setting(view, "quarantine_to_maps_by_ccat") or {}
    for key in candidates(rcpt, facts):
        if key in override_m or key in override_t or key in _BY_CCAT:
            method_name, maps_name = _BY_CCAT.get(key, ("", ""))
            method = override_m[key] if key in override_m else (
                setting(view, method_name) if method_name else None)
            if key in override_t:
                maps_name = override_t[key]
            if not method or not maps_name:
                return None
            return key, str(method), maps_name
    return None


def _spam_cutoff(view: Any, rcpt: Recipient, facts: RecipientFacts, q: Any) -> Any:
    """``@spam_quarantine_cutoff_level_maps``: blacklisted or over the level -> none."""
    cutoff = lookup_setting(view, "spam_quarantine_cutoff_level_maps", rcpt.address)
    if cutoff in (None, ""):
        return q
    if facts.blacklisted and not facts.whitelisted:
        return ""
    if (facts.spam_level or 0) >= float(cutoff):
        return ""
    return q


# ------------------------------------------------------------------ header fields (20.4)


def perl_number(value: float) -> str:
    """``0+sprintf("%.3f", x)`` as Perl prints it: 5.5, 6, 0, -1.25."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fold_structured(name: str, body: str, width: int = 78) -> str:
    """A field whose ``\\n`` marks fold points: pieces are packed up to ``width`` columns."""
    pieces = body.split("\n")
    head = f"{name}:" + (" " if pieces[0][:1] not in ("", " ", "\t") else "")
    lines = [head + pieces[0]]
    for piece in pieces[1:]:
        piece = piece if piece[:1] in (" ", "\t") else " " + piece
        if len(lines[-1]) + len(piece) <= width:
            lines[-1] += piece
        else:
            lines.append(piece)
    return "\n".join(lines) + "\n"


def fold_plain(name: str, body: str, width: int = 78) -> str:
    """An unstructured field: wrapped at spaces when longer than ``width`` (section 20.2)."""
    text = f"{name}:" + (" " + body if body else "")
    if len(text) <= width:
        return text + "\n"
    words = text.split(" ")
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= width or not lines[-1].strip():
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return "\n".join(lines) + "\n"


def _allowed(view: Any) -> dict[str, Any]:
    allowed = dict(ALLOWED_ADDED_HEADER_FIELDS)
    allowed.update({str(k).lower(): v for k, v in (setting(view, "allowed_added_header_fields")
                                                  or {}).items()})
    return allowed


def alert_and_spam_fields(msg: Message, view: Any,
                          facts_for: FactsFor = recipient_facts) -> list[str]:
    """The message-level fields of section 20.4 between X-Quarantine-ID and Received.

    X-Amavis-Alert (virus; first recipient's banned reason; bad header),
    X-Amavis-OS-Fingerprint, and the X-Spam-* set, written for every quarantined
    message even when no spam check ran (``score=x``, ``X-Spam-Score: 0``).
    """
    allowed = _allowed(view)
    prefer = setting(view, "prefer_our_added_header_fields")
    prefer = {str(k).lower() for k, v in prefer.items() if v} if isinstance(prefer, dict) \
        else set(prefer) if prefer is not None else PREFER_OUR_HEADER_FIELDS
    facts = [(r, facts_for(msg, r)) for r in msg.recipients]
    msg_ccats = {ccat_key(c)[0] for c in msg.findings.get("ccats")
                 or [msg.findings.get("ccat_main", "1")]}
    for _, f in facts:
        msg_ccats |= {ccat_key(c)[0] for c in f.ccats}
    out: list[str] = []
    if allowed.get("x-amavis-alert"):
        if CC_VIRUS in msg_ccats:
            names = ", ".join(msg.findings.get("virus_names") or [])
            out.append(fold_plain("X-Amavis-Alert", f"INFECTED, message contains virus: {names}"))
        if CC_BANNED in msg_ccats:
            for _, f in facts:
                if f.banning_reason_short is not None:
                    out.append(fold_plain("X-Amavis-Alert",
                                          f"BANNED, message contains {f.banning_reason_short}"))
                    break
        if CC_BADH in msg_ccats:
            bad = msg.findings.get("bad_headers") or [""]
            out.append(fold_plain("X-Amavis-Alert", f"BAD HEADER SECTION, {bad[0]}"))
    p0f = msg.findings.get("os_fingerprint")
    if p0f and allowed.get("x-amavis-os-fingerprint"):
        out.append(fold_plain("X-Amavis-OS-Fingerprint", str(p0f)))
    out += _spam_fields(msg, view, facts, allowed, prefer)
    return out


def _spam_fields(msg: Message, view: Any, facts: list[tuple[Recipient, RecipientFacts]],
                 allowed: dict[str, Any], prefer: set[str]) -> list[str]:
    levels = [f.spam_level for _, f in facts if f.spam_level is not None]
    min_level, max_level = (min(levels), max(levels)) if levels else (None, None)
    bl = any(f.blacklisted for _, f in facts)
    wl = any(f.whitelisted for _, f in facts)
    tag2_any = kill_any = False
    mins: dict[str, float | None] = {"tag": None, "tag2": None, "kill": None}
    tests: set[str] = set()
    for rcpt, f in facts:
        keys = set(f.ccats)
        do_tag, do_tag2, do_kill = f"{CC_CLEAN},1" in keys, str(CC_SPAMMY) in keys, \
            str(CC_SPAM) in keys
        tag2_any, kill_any = tag2_any or do_tag2, kill_any or do_kill
        if not f.bypass_spam_checks and (do_tag or do_tag2 or do_kill):
            for name in mins:
                value = lookup_setting(view, f"spam_{name}_level_maps", rcpt.address)
                if value not in (None, ""):
                    value = float(value)
                    current = mins[name]
                    mins[name] = value if current is None else min(current, value)
        for t in f.spam_tests:
            tests.update(x for x in t.split(",") if x)
    out: list[str] = []
    if not prefer:
        return out

    def want(name: str) -> bool:
        return bool(allowed.get(name.lower())) and name.lower() in prefer

    char = setting(view, "sa_spam_level_char")
    bar = None
    if char:
        length = 0 if wl else 64 if bl else 0 if max_level is None else min(64, max_level)
        bar = "" if length < 1 else str(char) * int(length)
    if min_level is None:
        score = "x"
    else:
        lo, hi = perl_number(min_level), perl_number(max_level or 0)
        score = lo if lo == hi else f"{lo}..{hi}"
    tests_text = ",\n ".join(sorted(tests))
    status = (f"{'Yes' if tag2_any or kill_any else 'No'},\n score={score}\n"
              + "".join(f" {n}={'x' if v is None else perl_number(v)}\n" for n, v in mins.items())
              + " " + ("BLACKLISTED\n " if bl else "") + ("WHITELISTED\n " if wl else "")
              + f"tests=[{tests_text}]"
              + f"\n autolearn={msg.findings.get('autolearn') or 'unavailable'}")
    if want("X-Spam-Flag"):
        out.append(fold_plain("X-Spam-Flag", "YES" if tag2_any else "NO"))
    if want("X-Spam-Score"):
        value = float(max_level or 0)
        value = max(64.0, value) if bl else value
        value = min(0.0, value) if wl else value
        out.append(fold_plain("X-Spam-Score", perl_number(value)))
    if want("X-Spam-Level") and bar is not None:
        out.append(fold_plain("X-Spam-Level", bar))
    if want("X-Spam-Status"):
        out.append(fold_structured("X-Spam-Status", status))
    report = msg.findings.get("spam_report")
    if want("X-Spam-Report") and report:
        out.append("X-Spam-Report: \n" + "".join(f" {line}\n" for line in
                                                  str(report).splitlines() if line.strip()))
    return out


def quarantine_header(msg: Message, request: QuarantineRequest, view: Any, *,
                      scheme: str = "local", delivered_to: Sequence[str] = (),
                      facts_for: FactsFor = recipient_facts) -> bytes:
    """The fields written above the original header, top to bottom (section 20.4), LF ends.

    ``local:`` adds Return-Path and Delivered-To (Out/Local); ``bsmtp:`` keeps the
    envelope, so it has no X-Envelope-To/-Blocked.
    """
    sender = f"<{msg.sender_quoted}>"
    fields: list[str] = []
    if scheme == "local":
        fields.append(fold_plain("Return-Path", sender))
        fields.append(fold_plain("Delivered-To", ", ".join(delivered_to)))
    fields.append(fold_plain("X-Envelope-From", sender))
    if scheme != "bsmtp":
        fields.append(fold_structured(
            "X-Envelope-To", ",\n ".join(f"<{r.quoted}>" for r in msg.recipients)))
        fields.append(fold_structured(
            "X-Envelope-To-Blocked",
            ",\n ".join(f"<{r.quoted}>" for r in msg.recipients if r.done)))
    if msg.mail_id:
        fields.append(fold_plain("X-Quarantine-ID", f"<{msg.mail_id}>"))
    fields += alert_and_spam_fields(msg, view, facts_for)
    fields.append(received_field(msg, view, msg.rx_time).decode("utf-8").replace("\r\n", "\n"))
    return "".join(fields).encode("utf-8")


# ------------------------------------------------------------------ file names and safety


def expand_name(template: str, msg: Message) -> str:
    """Section 22.3: %b body digest, %P partition, %m mail_id, %n log id, %i ISO time, %%."""
    digest = str(msg.findings.get("body_digest") or "")
    values = {"b": digest, "P": str(msg.findings.get("partition_tag") or ""),
              "m": msg.mail_id or "", "n": msg.log_id,
              "i": time.strftime("%Y%m%dT%H%M%S", time.localtime(msg.rx_time or time.time())),
              "%": "%"}
    return re.sub(r"%(.)", lambda m: values.get(m.group(1), m.group(0)), template, flags=re.S)


def _inside(base: Path, target: Path) -> bool:
    """Whether ``target`` (resolved through symlinks) lies inside ``base``."""
    base_real = os.path.realpath(base)
    real = os.path.realpath(target)
    return real == base_real or real.startswith(base_real.rstrip("/") + "/")


def safe_relative(name: str) -> str:
    """Refuse an absolute name or one with ``..``: a copy is never written outside QUARANTINEDIR."""
    if not name or name.startswith("/") or any(p in ("..",) for p in name.split("/")) \
            or "\0" in name:
        raise ValueError(f"unsafe quarantine file name {name!r}")
    return name


def _aliases(view: Any, quarantinedir: str | None) -> dict[str, Any]:
    configured = setting(view, "local_delivery_aliases")
    if configured is None:
        aliases = {a: (quarantinedir, None) for a in QUARANTINE_ALIASES}
        if quarantinedir:          # section 22.3: the archive examples amavis predefines
            aliases["archive-files"] = (quarantinedir, None)
            aliases["archive-mbox"] = (os.path.join(quarantinedir, "archive.mbox"), None)
        return aliases
    return dict(configured)


def _mailbox_for(q_to: str, view: Any, quarantinedir: str | None
                 ) -> tuple[str | None, str | None, int]:
    """Section 22.3: (mailbox, suggested file name, skip reason) for one quarantine address."""
    localpart = q_to.rpartition("@")[0] if "@" in q_to else q_to
    aliases = _aliases(view, quarantinedir)
    alias = aliases.get(localpart)
    if callable(alias):
        alias = alias()
    if isinstance(alias, (list, tuple)):
        mbx, suggested = (list(alias) + [None, None])[:2]
    elif alias not in (None, ""):
        mbx, suggested = str(alias), None
    elif localpart not in aliases:
        mbx, suggested = quarantinedir, None
    else:
        mbx, suggested = None, None
    if mbx in (None, "") or q_to == "":
        why = 1 if localpart not in aliases else 2 if alias == "" else 3
        return None, None, why
    return str(mbx), suggested, 0


# ------------------------------------------------------------------ writing


def quarantine(msg: Message, to_quarantine: Sequence[QuarantineRequest], settings: Any,
               facts_for: FactsFor = recipient_facts) -> list[QuarantineResult]:
    """Carry out ``local:``, ``bsmtp:`` and ``sql:`` requests (sections 22.2, 22.3;
    protocols.md 5.8); ``quarantine_async`` runs ``sql:`` in a worker thread instead.

    Raises ``TempFail`` when a copy could not be written (the message must then
    tempfail) and for methods that need the network (use ``quarantine_async``).
    On success records ``Quarantined``/``Archived`` in ``msg.actions_performed``
    and ``quar_type``/``quarantined_to`` in ``msg.findings``.
    """
    results = []
    for request in to_quarantine:
        scheme = _scheme(request.method)
        if scheme == "local":
            result = _local(msg, request, settings, facts_for)
        elif scheme == "bsmtp":
            result = _bsmtp(msg, request, settings, facts_for)
        elif scheme == "sql":
            result = sql_store(msg, request, settings, facts_for)
        else:
            raise TempFail(SECTION, f"quarantine method {request.method!r} needs "
                                    "quarantine_async")
        results.append(_settle(msg, scheme, result))
    return results


def _settle(msg: Message, scheme: str, result: QuarantineResult) -> QuarantineResult:
    """Counters, then ``TempFail`` on failure (22.2), else record the copy (22.2/22.3)."""
    from amavisd.actions.forward import count_dispatch

    count_dispatch(scheme, msg.size, "Quar", [result.reply])
    count_result(msg, result)
    _check(result)
    record(msg, result)
    return result


def count_result(msg: Message, result: QuarantineResult) -> None:
    """The quarantine counters of one attempt (monitoring.md 1.3 "Quarantine")."""
    stats.count("QuarMsgs")
    stats.count("QuarMsgsSize", msg.size)
    if result.reply.is_ok:
        cats = list(dict.fromkeys(result.request.categories))
        stats.count_many([f"QuarMsgs{c}" for c in cats])
        stats.count_many([f"QuarMsgsSize{c}" for c in cats], msg.size)
    elif result.reply.is_tempfail:
        stats.count("QuarAttemptTempFails")
    else:
        stats.count("QuarAttemptFails")


def _check(result: QuarantineResult) -> None:
    """Section 22.2: a 4xx is 'temporarily unable to quarantine', a 5xx 'Can't quarantine'."""
    if result.reply.is_ok:
        return
    word = "temporarily unable to quarantine" if result.reply.is_tempfail \
        else "Can't quarantine"
    raise TempFail(SECTION, f"{word}: {result.reply}")


def record(msg: Message, result: QuarantineResult) -> None:
    """Actions and locations for the log line, SQL and macro %q (section 22.2/22.3)."""
    word = "Archived" if result.request.is_archive else "Quarantined"
    if any(c != "Arch" for c in result.request.categories):
        word = "Quarantined"
    if word not in msg.actions_performed:
        msg.actions_performed.append(word)
    types = msg.findings.setdefault("quar_type", [])
    if result.quar_type not in types:
        types.append(result.quar_type)
    where = msg.findings.setdefault("quarantined_to", [])
    for loc in result.locations:
        if loc not in where:
            where.append(loc)


def log_locations(msg: Message, settings: Any) -> list[str]:
    """``quarantined_to`` with ``$QUARANTINEDIR/`` stripped: ``k/virus-kX3V0tN-vU4A``."""
    qdir = setting(settings, "QUARANTINEDIR")
    out = []
    for loc in msg.findings.get("quarantined_to", []):
        if qdir and loc.startswith(qdir.rstrip("/") + "/"):
            loc = loc[len(qdir.rstrip("/")) + 1:]
        out.append(loc)
    return out


def _local(msg: Message, request: QuarantineRequest, view: Any,
           facts_for: FactsFor) -> QuarantineResult:
    """``local:``: map each address to a mailbox, then write once per distinct mailbox."""
    qdir = setting(view, "QUARANTINEDIR")
    template = request.method.partition(":")[2]
    boxes: dict[str, tuple[bool, list[str]]] = {}
    skipped: list[int] = []
    for q_to in request.to:
        mbx, suggested, why = _mailbox_for(q_to, view, qdir)
        if mbx is None:
            log.info("skip local delivery(%d): <%s> -> <%s>", why, msg.sender, q_to)
            skipped.append(why)
            continue
        try:
            path, is_mbox = _target_path(msg, mbx, suggested, template, view, qdir)
        except (ValueError, OSError) as exc:
            return QuarantineResult(request, Reply(451, "4.5.0", f"Local delivery(1) to {mbx} "
                                                   f"failed: {exc}, id={msg.log_id}"))
        boxes.setdefault(path, (is_mbox, []))[1].append(q_to)
    if not boxes:
        why = skipped[0] if skipped else 1
        return QuarantineResult(request, Reply(250, "2.6.0", f"Ok, skip local delivery({why}), "
                                                             f"id={msg.log_id}"))
    locations: list[str] = []
    reply = Reply(250, "2.6.0", "")
    for path, (is_mbox, q_tos) in boxes.items():
        header = quarantine_header(msg, request, view, scheme="local",
                                   delivered_to=list(dict.fromkeys(q_tos)), facts_for=facts_for)
        reply = _write_local(msg, path, is_mbox, header)
        if not reply.is_ok:
            log.error("%s", reply)
            return QuarantineResult(request, reply, locations)
        locations.append(path)
    qtype = "Z" if locations[0].endswith(".gz") else "F"
    return QuarantineResult(request, reply, locations, qtype)


def _target_path(msg: Message, mbx: str, suggested: str | None, template: str, view: Any,
                 qdir: str | None) -> tuple[str, bool]:
    """The file to write and whether it is an mbox: in a directory the expanded name
    (plus subdirectory), else ``mbx`` itself as a Unix mbox (section 22.3).

    Refuses anything outside ``$QUARANTINEDIR``.
    """
    if not qdir:
        raise ValueError("$QUARANTINEDIR is not set")
    if not _inside(Path(qdir), Path(mbx)):
        raise ValueError(f"{mbx} is outside $QUARANTINEDIR")
    try:
        st = os.stat(mbx)
    except FileNotFoundError:
        return mbx, True                             # a new mbox file
    if stat.S_ISREG(st.st_mode):
        return mbx, True                             # an existing mbox file
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"Mailbox is neither a file nor a directory: {mbx}")
    explicit = bool(suggested)
    name = safe_relative(expand_name(suggested or template or "%m", msg))
    path = f"{mbx.rstrip('/')}/{name}"
    levels = setting(view, "quarantine_subdir_levels") or 0
    if int(levels) >= 1 and not explicit:
        first = (msg.mail_id or "")[:1]
        if not first or first not in _SUBDIR_CHARS:
            raise ValueError(f"Unexpected first char: {first}")
        head, _, fname = path.rpartition("/")
        subdir = f"{head}/{first}"
        if not os.path.exists(subdir):
            log.info("checking/creating quarantine subdirs under %s", head)
            for d in _SUBDIR_CHARS:
                try:
                    os.mkdir(f"{head}/{d}", 0o750)
                except FileExistsError:
                    pass
        path = f"{subdir}/{fname}"
    if not _inside(Path(qdir), Path(path).parent):
        raise ValueError(f"{path} is outside $QUARANTINEDIR")
    return path, False


def _write_local(msg: Message, path: str, is_mbox: bool, header: bytes) -> Reply:
    """One file (O_EXCL, 0640, gzip for ``.gz``) or an mbox append; the reply of 5.8."""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return Reply(451, "4.5.0", f"Local delivery(1) to {path} failed: File {path} not "
                                   f"accessible, refuse to write: {exc.strerror}, id={msg.log_id}")
    if is_mbox:
        return _append_mbox(msg, path, header, st)
    return _write_file(msg, path, header, st)


def _write_file(msg: Message, path: str, header: bytes,
                st: os.stat_result | None) -> Reply:
    if st is not None:
        reason = (f"File {path} already exists, refuse to overwrite" if stat.S_ISREG(st.st_mode)
                  else f"File {path} is not a regular file, refuse to write")
        return Reply(451, "4.5.0", f"Local delivery(1) to {path} failed: {reason}, "
                                   f"id={msg.log_id}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o640)
    except OSError as exc:
        return Reply(451, "4.5.0", f"Local delivery(1) to {path} failed: Can't create file "
                                   f"{path}: {exc.strerror or exc}, id={msg.log_id}")
    try:
        with _FdOut(fd) as raw:
            if path.endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                   mtime=int(msg.rx_time or 0)) as out:
                    _copy_message(msg, out, header, local=True, mbox=False)
            else:
                _copy_message(msg, raw, header, local=True, mbox=False)
    except OSError as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        return Reply(451, "4.5.0", f"Local delivery to mailbox {path} failed: "
                                   f"{exc.strerror or exc}, id={msg.log_id}")
    return Reply(250, "2.6.0", f"Ok, delivered to {path}, id={msg.log_id}")


def _append_mbox(msg: Message, path: str, header: bytes,
                 st: os.stat_result | None) -> Reply:
    """Unix mbox (mboxrd), appended under flock; truncated back on a failure."""
    fail = f"Local delivery(1) to {path} failed"
    try:
        if st is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        elif not stat.S_ISREG(st.st_mode):
            return Reply(451, "4.5.0", f"{fail}: Mailbox {path} is not a regular file, refuse "
                                       f"to deliver, id={msg.log_id}")
        elif st.st_mode & 0o111:
            return Reply(451, "4.5.0", f"{fail}: Mailbox file {path} is executable, refuse to "
                                       f"deliver, id={msg.log_id}")
        else:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))
        fcntl.flock(fd, fcntl.LOCK_EX)
        pos = os.lseek(fd, 0, os.SEEK_END)
    except OSError as exc:
        return Reply(451, "4.5.0", f"{fail}: {exc.strerror or exc}, id={msg.log_id}")
    raw = _FdOut(fd)
    try:
        try:
            sender = (f"<{msg.sender_quoted}>" if msg.sender else "MAILER-DAEMON")
            sender = re.sub(r"[ \t\n]", "-", sender)
            stamp = time.asctime(time.gmtime(msg.rx_time or time.time()))
            raw.write(f"From {sender} {stamp}\n".encode())
            _copy_message(msg, raw, header, local=True, mbox=True)
            raw.write(b"\n")
            raw.flush()
        except OSError as exc:
            try:
                raw.flush()
            except OSError:
                pass
            try:
                os.ftruncate(fd, pos)
            except OSError as trunc:
                log.error("Can't truncate file %s: %s", path, trunc)
            return Reply(451, "4.5.0", f"Local delivery to mailbox {path} failed: "
                                       f"{exc.strerror or exc}, id={msg.log_id}")
    finally:
        try:
            raw.close()
        except OSError:
            pass
    return Reply(250, "2.6.0", f"Ok, delivered to {path}, id={msg.log_id}")


_FROM_LINE = re.compile(rb">*From ")


class _FdOut:
    """Unbuffered writes straight to a descriptor with ``os.write``: a short write or
    ENOSPC shows up at once, where it happened, not at a later flush or close."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> _FdOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_message(msg: Message, out: BinaryIO | _FdOut, header: bytes, *, local: bool,
                  mbox: bool) -> None:
    """Our fields, the original header (minus Return-Path for local), then the body.

    Streams the spool in ``CHUNK`` pieces; for mbox, lines starting ``>*From `` get
    one more ``>`` (mboxrd), read with a bounded ``readline``.
    """
    out.write(header)
    block = read_header_block(msg.spool_path)
    if local:
        out.write(drop_fields(block, (b"return-path",)))
    else:
        out.write(block)
    with open(msg.spool_path, "rb") as src:
        src.seek(len(block))
        if not mbox:
            while chunk := src.read(CHUNK):
                out.write(chunk)
            return
        at_start = True
        while piece := src.readline(CHUNK):
            if at_start and _FROM_LINE.match(piece):
                out.write(b">")
            out.write(piece)
            at_start = piece.endswith(b"\n")


def drop_fields(block: bytes, names: Iterable[bytes]) -> bytes:
    """The header block without the fields named (with their continuation lines)."""
    wanted = tuple(n.lower() for n in names)
    out = []
    skipping = False
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = b":" in line and name in wanted
        if not skipping:
            out.append(line)
    return b"".join(out)


# ------------------------------------------------------------------ sql


def sql_store(msg: Message, request: QuarantineRequest, view: Any,
              facts_for: FactsFor = recipient_facts) -> QuarantineResult:
    """``sql:``: the copy as chunks of table ``quarantine``, one transaction (22.3).

    The copy is the header fields of section 20.4 (as for ``local:``, less
    Return-Path and Delivered-To, which belong to a mailbox delivery) over the
    original message, streamed from the spool file.  Blocks on the database: the
    pipeline calls it through ``quarantine_async`` in a worker thread.
    """
    from amavisd.sql import connection as sql_connection
    from amavisd.sql import quarantine_store
    from amavisd.sql.storage import partition_tag

    mail_id = msg.mail_id
    partition = msg.findings.get("partition_tag")
    if partition is None:
        partition = partition_tag(view, msg)

    def failed(why: str) -> QuarantineResult:
        log.error("writing mail text to SQL failed: %s", why)
        return QuarantineResult(request, Reply(
            451, "4.5.0", f"Storing to sql db as mail_id {mail_id} failed: {why}, "
                          f"id={msg.log_id}"), [], "Q")

    try:
        db = sql_connection.database(view, "storage")
    except ValueError as exc:                  # SQLConfigError: an unusable DSN
        return failed(str(exc))
    if db is None:
        return failed("@storage_sql_dsn is not set")
    header = quarantine_header(msg, request, view, scheme="sql", facts_for=facts_for)
    size = int(setting(view, "sql_quarantine_chunksize_max") or quarantine_store.CHUNK_SIZE)
    try:
        chunks, nbytes = quarantine_store.store(
            db, int(partition), mail_id,
            lambda out: _copy_message(msg, out, header, local=False, mbox=False),
            chunk_size=size, config=view)
    except Exception as exc:  # noqa: BLE001 - any failure: the message tempfails (22.2)
        return failed(" ".join(str(exc).split()) or type(exc).__name__)
    log.info("delivered to sql: %d chunks, %d bytes, mail_id %s", chunks, nbytes, mail_id)
    return QuarantineResult(request, Reply(250, "2.6.0", f"Ok, Stored to sql db as mail_id "
                                                         f"{mail_id}, id={msg.log_id}"),
                            [quarantine_store.location(mail_id, partition)], "Q")


# ------------------------------------------------------------------ bsmtp and network methods


def quarantine_message(msg: Message, request: QuarantineRequest, view: Any) -> Message:
    """Section 22.2: the envelope of the quarantine copy (same ids, times, size)."""
    scheme = _scheme(request.method)
    mftq = setting(view, "mailfrom_to_quarantine")
    keep_sender = mftq is None or scheme in ("bsmtp", "sql")
    sender = msg.sender if keep_sender else str(mftq)
    if request.transparent or scheme in ("bsmtp", "sql"):
        rcpts = [Recipient(r.address, r.quoted, notify=["NEVER"] if keep_sender else None,
                           orcpt=r.orcpt) for r in msg.recipients]
    else:
        rcpts = [Recipient(q, q, notify=["NEVER"] if keep_sender else None)
                 for q in request.to]
    return replace(msg, sender=sender, sender_quoted=sender, recipients=rcpts,
                   originating=False, actions_performed=[], findings=msg.findings)


def _bsmtp(msg: Message, request: QuarantineRequest, view: Any,
           facts_for: FactsFor) -> QuarantineResult:
    """``bsmtp:``: forward's BSMTP writer with the quarantine fields (protocols.md 5.8)."""
    from amavisd.actions.forward import _forward_bsmtp, parse_method

    template = request.method.partition(":")[2]
    qdir = setting(view, "QUARANTINEDIR")
    try:
        name = expand_name(template, msg)
        if not name.startswith("/"):
            if not qdir:
                raise ValueError("$QUARANTINEDIR is not set")
            safe_relative(name)
            if not _inside(Path(qdir), Path(qdir, name).parent):
                raise ValueError(f"{name} is outside $QUARANTINEDIR")
        elif not qdir or not _inside(Path(qdir), Path(name).parent):
            raise ValueError(f"{name} is outside $QUARANTINEDIR")
    except ValueError as exc:
        return QuarantineResult(request, Reply(451, "4.5.0", f"Writing {template} failed: {exc}, "
                                                             f"id={msg.log_id}"))
    qmsg = quarantine_message(msg, request, view)
    header = quarantine_header(msg, request, view, scheme="bsmtp", facts_for=facts_for)

    class _Clock:
        @staticmethod
        def seconds() -> float:
            return msg.rx_time or time.time()

    _forward_bsmtp(qmsg, qmsg.recipients, parse_method(request.method), (header, 0), view,
                   _Clock)
    reply = qmsg.recipients[0].reply if qmsg.recipients else Reply(250, "2.6.0", "Ok")
    assert reply is not None
    locations = list(dict.fromkeys(r.mailbox for r in qmsg.recipients if r.mailbox))
    return QuarantineResult(request, reply, locations, "B")


def quarantine_async(msg: Message, to_quarantine: Sequence[QuarantineRequest], settings: Any,
                     reactor: Any, deadline: float,
                     facts_for: FactsFor = recipient_facts) -> Any:
    """Like ``quarantine`` but also for smtp:/lmtp:/pipe: methods; a Deferred of results.

    The Deferred fails with ``TempFail`` as ``quarantine`` raises it.
    """
    from twisted.internet import defer

    from amavisd.actions.forward import forward

    @defer.inlineCallbacks
    def run() -> Any:
        results = []
        for request in to_quarantine:
            scheme = _scheme(request.method)
            if scheme in ("local", "bsmtp"):
                results += quarantine(msg, [request], settings, facts_for)
                continue
            if scheme == "sql":            # blocks on the database: in a worker thread
                from amavisd.sql.offload import run_blocking

                try:
                    result = yield run_blocking(reactor, deadline, sql_store, msg, request,
                                                settings, facts_for)
                except (defer.TimeoutError, defer.CancelledError):
                    result = QuarantineResult(request, Reply(
                        451, "4.5.0", f"Storing to sql db as mail_id {msg.mail_id} failed: "
                                      f"timed out, id={msg.log_id}"), [], "Q")
                results.append(_settle(msg, scheme, result))
                continue
            qmsg = quarantine_message(msg, request, settings)
            header = quarantine_header(msg, request, settings, scheme=scheme,
                                       facts_for=facts_for).replace(b"\n", b"\r\n")
            yield forward(qmsg, qmsg.recipients, request.method, header, 0, settings,
                          reactor, False, deadline, submit="Quar")
            replies = [r.reply for r in qmsg.recipients if r.reply is not None]
            bad = [r for r in replies if not r.is_ok]
            reply = bad[0] if bad else (replies[0] if replies else Reply(250, "2.6.0", "Ok"))
            qtype = {"smtp": "M", "lmtp": "L"}.get(scheme, "?")
            locations = [q for q in request.to] if not bad else []
            result = QuarantineResult(request, reply, locations, qtype)
            count_result(msg, result)
            _check(result)
            results.append(result)
            record(msg, result)
        return results

    return run()

