# tests: t/actions/test_headers.py
"""Header edits on forwarded mail, per recipient, and the clusters that share them.

spec/pipeline.md section 20 (20.1 removals and sanitation, 20.2 placement, 20.3
the fields and their order, 20.8 subject tagging, 20.10 clustering); the content
categories of section 12 decide which fields a recipient gets.  Runs in the child,
after ``decide`` and before ``forward``; it reads findings and decisions, never
re-runs a check and never talks to an MTA (STYLE.md section 5).

Two steps, so the message body never passes through here (DESIGN.md "Memory"):

* ``plan_edits`` groups the recipients that need identical edits into ``Cluster``s,
  each with one ``HeaderEdit``: fields to add above the original header (in
  insertion order, already rendered), fields to delete, and a subject tag;
* ``render_header`` applies one ``HeaderEdit`` to the original header block and
  returns the new header section (CRLF, ending with the empty line).  The body is
  then streamed from the spool file at ``HeaderSplit.body_offset``.

What is covered: X-Amavis-Hold (and removal of existing ones), X-Quarantine-ID,
``$X_HEADER_TAG: $X_HEADER_LINE``, X-Amavis-Alert (virus, banned, bad header),
subject tags for VIRUS/UNCHECKED (and whatever ``%subject_tag_maps_by_ccat`` maps),
Authentication-Results removal, Received, the ``%allowed_added_header_fields``
gate, sanitation when re-sending, and the > 100 Received refusal.  Spam fields
(X-Spam-*, 20.3 item 7) come from ``spam_edits``.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amavisd.checks.banned import per_recipient as banned_per_recipient
from amavisd.config.lookup import lookup, without_implied_sql
from amavisd.constants import (
    CC_BADH,
    CC_BANNED,
    CC_CATCHALL,
    CC_CLEAN,
    CC_SPAMMY,
    CC_UNCHECKED,
    CC_VIRUS,
)
from amavisd.errors import Reply
from amavisd.header import HEADER_LIMIT, read_header_block
from amavisd.log import do_log
from amavisd.message import Message, Recipient
from amavisd.received import received_field, rfc2822_date

#: RFC 5321 section 6.3 loop detection: forwarding refuses more Received fields than
#: this (pipeline.md 20.1; Amavis::Out::SMTP, ::Pipe and ::BSMTP use 100).
MAX_HOPS = 100
#: RFC 5322 section 2.1.1: a line is at most 998 characters; longer ones are cut to
#: 995 + '...' (pipeline.md 20.1, ``$allow_fixing_long_header_lines``).
MAX_LINE = 998
#: Added fields are wrapped at 78 columns (pipeline.md 20.2, RFC 5322 2.1.1 SHOULD).
WRAP_WIDTH = 78

#: ``%allowed_added_header_fields`` as amavis ships it (Amavis::Conf, pipeline.md 20):
#: used only when the view has no such setting (then with ``$X_HEADER_TAG`` added, as
#: amavis adds it at config time; see ``HeaderSettings.allowed``).
AMAVIS_ALLOWED_ADDED_HEADER_FIELDS: dict[str, bool] = {
    name.lower(): True for name in (
        "Received DKIM-Signature Authentication-Results VBR-Info X-Quarantine-ID "
        "X-Amavis-Alert X-Amavis-Hold X-Amavis-Modified X-Amavis-PenPals "
        "X-Amavis-OS-Fingerprint X-Amavis-PolicyBank X-Spam-Status X-Spam-Level "
        "X-Spam-Flag X-Spam-Score X-Spam-Tests X-CRM114-Status X-CRM114-CacheID "
        "X-CRM114-Notice X-CRM114-Action X-DSPAM-Result X-DSPAM-Class X-DSPAM-Signature "
        "X-DSPAM-Processed X-DSPAM-Confidence X-DSPAM-Probability X-DSPAM-User "
        "X-DSPAM-Factors X-Bogosity").split()
} | {"x-spam-report": False, "x-spam-checker-version": False, "x-amavis-category": False}

#: Keys of ``msg.findings`` this module reads (written by checks, quarantine, decode).
FINDING_HOLD = "hold"                       # str: why the message is held (decode bomb...)
FINDING_QUARANTINED_TO = "quarantined_to"   # list of quarantine locations, if quarantined
FINDING_VIRUSNAMES = "virus_names"          # list[str] (checks/virus.py)
FINDING_BAD_HEADERS = "bad_headers"         # list[HeaderFault] (or texts), amavis order
FINDING_BANNED = "banned"                   # list[BannedHit]
FINDING_SUBJPREFIX = "SUBJPREFIX"           # SpamAssassin's subject prefix, if any
FINDING_DKIM_SIGS = "dkim_signatures_all"   # list of checks.dkim.SignatureResult

_FIELD_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*)\Z", re.S)
_VALID_NAME = re.compile(r"^[!-9;-~]+\Z")
_CONT = (b" ", b"\t")


# ---------------------------------------------------------------- settings
@dataclass(frozen=True)
class HeaderSettings:
    """Every setting header edits read, taken from the policy-bank view in one place.

    Names not (yet) in the registry fall back to amavis's defaults (Amavis::Conf),
    so the lead can register them later without touching this module.
    """

    x_header_tag: str = "X-Virus-Scanned"
    x_header_line: str | None = None
    remove_existing_x_scanned_headers: bool = False
    allowed_added_header_fields: Mapping[str, Any] | None = None
    undecipherable_subject_tag: str | None = "***UNCHECKED*** "
    subject_tag_maps_by_ccat: Mapping[str, Any] | None = None
    spam_subject_tag_maps: Sequence[Any] = ()
    spam_subject_tag2_maps: Sequence[Any] = ()
    spam_subject_tag3_maps: Sequence[Any] = ()
    allow_fixing_improper_header: bool = True
    allow_fixing_improper_header_folding: bool = True
    allow_fixing_long_header_lines: bool = True
    hdr_encoding: str = "UTF-8"
    hdr_encoding_qb: str = "Q"
    bypass_virus_checks_maps: Sequence[Any] = ()
    local_domains_maps: Sequence[Any] = ()
    av_code_loaded: bool = False
    enable_dkim_verification: bool = False
    myauthservid: str | None = None
    myhostname: str = "localhost"
    recipient_delimiter: str | None = None
    localpart_is_case_sensitive: bool = False
    view: Any = None                 # for received_field (localhost_name, myhostname)

    @classmethod
    def from_view(cls, view: Any) -> HeaderSettings:
        """Read the settings with ``getattr(view, name, default)`` (defaults: Amavis::Conf)."""
        def get(name: str, default: Any) -> Any:
            value = getattr(view, name, default)
            return default if value is None else value

        mydomain = get("mydomain", "") or get("myhostname", "localhost")
        bypass_v = _tables(get("bypass_virus_checks_maps", []))
        scanners = list(get("av_scanners", []) or []) + list(get("av_scanners_backup", []) or [])
        # Amavis.pm: AV code is loaded when scanners are configured, unless the first
        # bypass_virus_checks_maps entry is a plain true constant.
        static_v = without_implied_sql(bypass_v)    # decided before SQL fields go first
        simple_bypass = bool(static_v) and _is_true_constant(static_v[0])
        return cls(
            x_header_tag=get("X_HEADER_TAG", "X-Virus-Scanned"),
            x_header_line=get("X_HEADER_LINE", f"amavis at {_hostname(mydomain, False)}"),
            remove_existing_x_scanned_headers=bool(get("remove_existing_x_scanned_headers",
                                                       False)),
            allowed_added_header_fields=get("allowed_added_header_fields",
                                            AMAVIS_ALLOWED_ADDED_HEADER_FIELDS),
            undecipherable_subject_tag=get("undecipherable_subject_tag", "***UNCHECKED*** "),
            subject_tag_maps_by_ccat=get("subject_tag_maps_by_ccat", {}),
            spam_subject_tag_maps=_tables(get("spam_subject_tag_maps",
                                              [get("sa_spam_subject_tag1", None)])),
            spam_subject_tag2_maps=_tables(get("spam_subject_tag2_maps",
                                               [get("sa_spam_subject_tag", None)])),
            spam_subject_tag3_maps=_tables(get("spam_subject_tag3_maps", [])),
            allow_fixing_improper_header=bool(get("allow_fixing_improper_header", True)),
            allow_fixing_improper_header_folding=bool(
                get("allow_fixing_improper_header_folding", True)),
            allow_fixing_long_header_lines=bool(get("allow_fixing_long_header_lines", True)),
            hdr_encoding=get("hdr_encoding", "UTF-8"),
            hdr_encoding_qb=get("hdr_encoding_qb", "Q"),
            bypass_virus_checks_maps=bypass_v,
            local_domains_maps=_tables(get("local_domains_maps", [])),
            av_code_loaded=bool(scanners) and not simple_bypass,
            enable_dkim_verification=bool(get("enable_dkim_verification", False)),
            myauthservid=get("myauthservid", None),
            myhostname=get("myhostname", "localhost"),
            recipient_delimiter=get("recipient_delimiter", None),
            localpart_is_case_sensitive=bool(get("localpart_is_case_sensitive", False)),
            view=view,
        )

    def allowed(self, name: str) -> bool:
        """The gate of pipeline.md 20: ``%allowed_added_header_fields{lc name}``.

        The configured hash is taken as it is.  Amavis adds ``lc $X_HEADER_TAG`` to
        it while reading the config (Amavis::Conf, unless the key exists); that
        belongs to config finishing, so it is done here only for amavis's own
        default, used when the view has no such setting.
        """
        fields = self.allowed_added_header_fields
        if fields is None or fields is AMAVIS_ALLOWED_ADDED_HEADER_FIELDS:
            fields = {self.x_header_tag.lower(): True} | AMAVIS_ALLOWED_ADDED_HEADER_FIELDS
        key = name.lower()
        return any(_perl_true(v) for k, v in fields.items() if str(k).lower() == key)

    def ask(self, tables: Any, address: str) -> Any:
        """``lookup2(0, address, tables)`` with this bank's address options (section 14)."""
        return lookup(False, address, _tables(tables),
                      recipient_delimiter=self.recipient_delimiter,
                      localpart_is_case_sensitive=self.localpart_is_case_sensitive)


def _tables(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def _perl_true(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


def _is_true_constant(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and _perl_true(value)


# ---------------------------------------------------------------- the plan
@dataclass(frozen=True)
class AddedField:
    """One field we add: its name and its rendered bytes (folded, LF line ends)."""

    name: str
    raw: bytes


@dataclass(frozen=True)
class HeaderEdit:
    """What one cluster's header section needs (pipeline.md 20.1-20.3, 20.8).

    ``add`` goes above the original header in this order (20.2); ``delete`` names
    (lower case) lose every instance; ``delete_if`` holds (name, predicate on the
    field body) pairs; ``subject_tag`` is prefixed to every existing Subject.
    """

    add: tuple[AddedField, ...] = ()
    delete: frozenset[str] = frozenset()
    delete_if: tuple[tuple[str, Callable[[bytes], bool]], ...] = ()
    subject_tag: str | None = None
    smtputf8: bool = False
    hdr_encoding: str = "UTF-8"
    hdr_encoding_qb: str = "Q"
    fix_bare_cr: bool = True
    fix_folding: bool = True
    fix_long_lines: bool = True


@dataclass
class Cluster:
    """Recipients forwarded in one transaction because their edits are identical (20.10).

    ``tagged`` is amavis's ``recip_tagged``: an alert or a subject tag was added.
    """

    recipients: list[Recipient]
    edit: HeaderEdit
    key: tuple[Any, ...]
    tagged: bool = False


@dataclass(frozen=True)
class SpamEdits:
    """What the spam check contributes per recipient (20.3 item 7; 20.1 removals).

    Empty (no fields, no removals) when amavis would have no spam code loaded
    (``@bypass_spam_checks_maps = (1)`` or no ``@spam_scanners``), for non-local
    recipients and below the tag level.
    """

    fields: tuple[AddedField, ...] = ()
    delete: frozenset[str] = frozenset()
    key: tuple[Any, ...] = ()
    score: float | None = None
    tag2_level: float | None = None
    do_tag2: bool = False


#: Existing fields removed for recipients of ``@remove_existing_spam_headers_maps``
#: when the spam code is loaded (pipeline.md 20.1).
SPAM_FIELDS = ("X-Spam-Status", "X-Spam-Level", "X-Spam-Flag", "X-Spam-Score",
               "X-Spam-Report", "X-Spam-Checker-Version", "X-Spam-Tests")
#: ``%prefer_our_added_header_fields`` that concern us (amavis's default: all true).
_PREFERRED = frozenset(n.lower() for n in SPAM_FIELDS)


def _level_text(value: Any) -> str:
    """A tag level as Perl prints the number (2.0 -> 2, 6.31 -> 6.31)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number == int(number) else format(number, ".15g")


def spam_edits(msg: Message, rcpt: Recipient, settings: HeaderSettings,
               is_local: bool) -> SpamEdits:
    """X-Spam-Flag/-Score/-Level/-Status/-Report for one recipient (pipeline.md 20.3
    item 7), the removal of existing X-Spam-* fields (20.1), and the score behind the
    subject tag's ``_SCORE_``/``_REQD_``/``_YESNO_`` (20.8).

    Fields only for local recipients in CC_CLEAN,1 (at or above their tag level,
    ``do_tag``); Yes/YES from CC_SPAMMY (``do_tag2``).  The values come from the
    recipient (``amavisd.checks.spam.apply``) and its tag levels.
    """
    from amavisd.checks.spam import perl_num, spam_code_loaded

    view = settings.view
    if view is None or not spam_code_loaded(view):
        return SpamEdits()
    lookups = _lookups(settings)
    address = rcpt.address
    bypassed = bool(lookups("bypass_spam_checks_maps", address))
    ccats = categories(rcpt)
    do_tag = f"{CC_CLEAN},1" in ccats
    do_tag2 = str(CC_SPAMMY) in ccats
    level = rcpt.spam_level
    bl, wl = rcpt.blacklisted, rcpt.whitelisted
    tag_level = tag2_level = None
    if not bypassed:
        tag_level = lookups("spam_tag_level_maps", address)
        tag2_level = lookups("spam_tag2_level_maps", address)
    remove = _perl_true(lookups("remove_existing_spam_headers_maps", address))
    delete = frozenset(n.lower() for n in SPAM_FIELDS) if remove else frozenset()
    fields: list[AddedField] = []
    bar = status = None
    if is_local and (do_tag or do_tag2):
        char = getattr(view, "sa_spam_level_char", "*")
        if char:
            length = 0 if wl or bypassed else 64 if bl else 0 if level is None \
                else min(64.0, level)
            bar = "" if length < 1 else str(char) * int(length)
        tests = ",".join(t for t in rcpt.spam_tests if t).replace(",", ",\n ")
        status = "{},\n score={}\n {}{}{}tests=[{}]\n autolearn={}".format(
            "Yes" if do_tag2 else "No",
            "x" if level is None else perl_num(level),
            "" if tag_level is None or tag_level == "" else
            f"tagged_above={_level_text(tag_level)}\n ",
            "" if tag2_level is None else f"required={_level_text(tag2_level)}\n ",
            ("BLACKLISTED\n " if bl else "") + ("WHITELISTED\n " if wl else ""),
            tests, msg.findings.get("autolearn") or "unavailable")
        preferred = getattr(view, "prefer_our_added_header_fields", None)
        preferred = _PREFERRED if preferred is None else \
            {str(k).lower() for k, v in dict(preferred).items() if _perl_true(v)}

        def put(name: str, body: str, structured: int = 0) -> None:
            if settings.allowed(name) and name.lower() in preferred:
                fields.append(AddedField(name, hdr(name, body, structured,
                                                   smtputf8=msg.smtputf8,
                                                   encoding=settings.hdr_encoding,
                                                   qb=settings.hdr_encoding_qb)))

        if do_tag:
            put("X-Spam-Flag", "YES" if do_tag2 else "NO")
            score = float(level or 0.0)
            score = max(64.0, score) if bl else score
            score = min(0.0, score) if wl else score
            put("X-Spam-Score", perl_num(score))
            if bar is not None:
                put("X-Spam-Level", bar)
            put("X-Spam-Status", status, 1)
        report = msg.findings.get("spam_report")
        if do_tag2 and report:
            put("X-Spam-Report", "\n" + _sanitize_report(str(report)), 2)
    key = (bool(do_tag and is_local), bool(do_tag2 and is_local), remove, bar, status)
    return SpamEdits(fields=tuple(fields), delete=delete, key=key, score=level,
                     tag2_level=None if tag2_level in (None, "") else float(tag2_level),
                     do_tag2=do_tag2)


def _sanitize_report(report: str) -> str:
    """Control characters other than TAB/LF shown as ``\\xHH`` (amavis's sanitize_str)."""
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}",
                  report.strip("\n"))


def _lookups(settings: HeaderSettings) -> Callable[[str, str], Any]:
    def ask(name: str, address: str) -> Any:
        return settings.ask(getattr(settings.view, name, None), address)
    return ask


@dataclass(frozen=True)
class _RecipPlan:
    key: tuple[Any, ...]
    is_local: bool
    x_scanned: bool
    virus: bool
    banned_reason: str | None
    badh: bool
    subject_tag: str
    quarantine_id: bool
    spam: SpamEdits
    dkim_ar: bool = False            # 20.3 item 11: A-R with the DKIM results


def categories(rcpt: Recipient) -> list[str]:
    """The recipient's content categories, highest first; CLEAN when none (section 12.2)."""
    ccats = list(getattr(rcpt, "ccats", None) or [])
    if "1" not in ccats:
        ccats.append("1")
    return sorted(set(ccats), key=_ccat_order, reverse=True)


def _ccat_order(ccat: str) -> tuple[int, int]:
    major, _, minor = str(ccat).partition(",")
    return int(major), int(minor or 0)


def _majors(ccats: Iterable[str]) -> set[int]:
    return {_ccat_order(c)[0] for c in ccats}


def _finding(findings: Any, name: str, default: Any = None) -> Any:
    """A finding by name, from a dict or an object with attributes."""
    if isinstance(findings, Mapping):
        value = findings.get(name, default)
    else:
        value = getattr(findings, name, default)
    return default if value is None else value


def subject_tag_maps(settings: HeaderSettings) -> dict[str, Any]:
    """``%subject_tag_maps_by_ccat``: amavis's defaults with the configured keys over them.

    Values are lists of lookup tables; None means "no tag for this category" (20.8).
    """
    maps: dict[str, Any] = {
        str(CC_VIRUS): ["***INFECTED*** "],
        str(CC_BANNED): None,
        str(CC_UNCHECKED): [settings.undecipherable_subject_tag],   # not by recipient
        "6": None,
        "5,1": list(settings.spam_subject_tag3_maps),
        "5": list(settings.spam_subject_tag2_maps),
        "1,1": list(settings.spam_subject_tag_maps),
    }
    for key, value in (settings.subject_tag_maps_by_ccat or {}).items():
        maps[str(key)] = value
    return maps


def _subject_tag(settings: HeaderSettings, rcpt: Recipient, ccats: list[str]) -> str:
    """The first non-empty tag walking the categories top-down, CATCHALL last (12.2, 20.8)."""
    maps = subject_tag_maps(settings)
    blocking = rcpt.ccat_blocking
    candidates = [blocking, str(CC_CATCHALL)] if blocking else [*ccats, str(CC_CATCHALL)]
    for cc in candidates:
        if cc not in maps or maps[cc] is None:
            continue
        tables = maps[cc]
        if isinstance(tables, str):     # a plain string is not a table list in amavis
            continue
        tag = settings.ask(tables, rcpt.address)
        if tag is not None and str(tag) != "":
            return str(tag)
    return ""


def _num(value: float) -> str:
    """Perl's ``0+sprintf("%.3f", x)``: three decimals, trailing zeros dropped."""
    text = format(float(f"{value:.3f}"), ".15g")
    return "0" if text == "-0" else text


def expand_subject_tag(tag: str, msg: Message, settings: HeaderSettings, spam: SpamEdits,
                       findings: Any) -> str:
    """Replace amavis's placeholders in a subject tag (pipeline.md 20.8)."""
    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "SCORE":
            return _num(spam.score or 0.0)
        if name == "REQD":
            return "-" if spam.tag2_level is None else _num(spam.tag2_level)
        if name == "YESNO":
            return "Yes" if spam.do_tag2 else "No"
        if name == "YESNOCAPS":
            return "YES" if spam.do_tag2 else "NO"
        if name == "HOSTNAME":
            return _hostname(settings.myhostname, msg.smtputf8)
        if name == "DATE":
            return rfc2822_date(msg.rx_time)
        if name == "U":
            return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(int(msg.rx_time)))
        if name == "LOGID":
            return msg.log_id
        if name == "MAILID":
            return msg.mail_id or ""
        return str(_finding(findings, FINDING_SUBJPREFIX, ""))
    return re.sub(r"_(SCORE|REQD|YESNO|YESNOCAPS|HOSTNAME|DATE|U|LOGID|MAILID|SUBJPREFIX)_",
                  value, tag)


def _hostname(name: str, smtputf8: bool) -> str:
    try:
        return name.encode("idna").decode("ascii") if not smtputf8 and not name.isascii() \
            else name
    except UnicodeError:
        return name


def has_field(header_block: bytes, name: str) -> bool:
    """Whether the original header section has a field ``name`` (case-insensitive)."""
    want = name.lower().encode()
    for head in _fields(header_block):
        m = _FIELD_RE.match(head)
        if m and m.group(1).lower() == want:
            return True
    return False


def _plan_recipient(msg: Message, rcpt: Recipient, settings: HeaderSettings, findings: Any,
                    verdicts: Mapping[str, Any]) -> _RecipPlan:
    """Everything of 20.3 that depends on the recipient, and its cluster key (20.10)."""
    ccats = categories(rcpt)
    majors = _majors(ccats)
    is_local = bool(settings.ask(settings.local_domains_maps, rcpt.address))
    bypass_v = bool(settings.ask(settings.bypass_virus_checks_maps, rcpt.address))
    x_line = settings.x_header_line
    x_scanned = (bool(_VALID_NAME.match(settings.x_header_tag)) and bool(x_line)
                 and settings.allowed(settings.x_header_tag) and not bypass_v)
    virus = CC_VIRUS in majors
    banned_reason = None
    if CC_BANNED in majors:
        verdict = verdicts.get(rcpt.address)
        banned_reason = (verdict.banning_reason_short if verdict is not None else None) or ""
    badh = CC_BADH in majors
    spam = spam_edits(msg, rcpt, settings, is_local)
    tag = _subject_tag(settings, rcpt, ccats) if is_local else ""
    if tag:
        tag = expand_subject_tag(tag, msg, settings, spam, findings)
    quarantine_id = is_local and bool(_finding(findings, FINDING_QUARANTINED_TO)) \
        and bool(msg.mail_id)
    dkim_ar = is_local and settings.enable_dkim_verification \
        and bool(_finding(findings, FINDING_DKIM_SIGS, []))
    key = (x_scanned, virus, banned_reason, badh, tag, quarantine_id, spam.key, dkim_ar)
    return _RecipPlan(key, is_local, x_scanned, virus, banned_reason, badh, tag,
                      quarantine_id, spam, dkim_ar)


def plan_edits(msg: Message, recipients: Sequence[Recipient], view: Any, findings: Any,
               now: float, header_block: bytes) -> list[Cluster]:
    """Cluster ``recipients`` by the header edits they need, in recipient order (20.10).

    ``view`` is the message's policy-bank view: per-recipient differences come from
    its ``*_maps`` lookups, as amavis has one bank set per message.  ``findings``
    is ``msg.findings``; categories come from each recipient (``Recipient.ccats``).
    ``header_block`` is the original header section (to know if Subject exists).
    ``now`` dates our Received field (amavis uses the reception time).
    """
    settings = HeaderSettings.from_view(view)
    verdicts = banned_per_recipient(_finding(findings, FINDING_BANNED, []))
    clusters: dict[tuple[Any, ...], tuple[list[Recipient], _RecipPlan]] = {}
    for rcpt in recipients:
        plan = _plan_recipient(msg, rcpt, settings, findings, verdicts)
        clusters.setdefault(plan.key, ([], plan))[0].append(rcpt)
    result = []
    for key, (rcpts, plan) in clusters.items():
        edit, tagged = _cluster_edit(msg, plan, settings, findings, now, header_block)
        do_log(4, "headers CLUSTERING: NEW CLUSTER <%s>: local=%s, s=%s, recips=%d",
               rcpts[0].address, int(plan.is_local), plan.subject_tag, len(rcpts))
        result.append(Cluster(rcpts, edit, key, tagged))
    return result


def _cluster_edit(msg: Message, plan: _RecipPlan, settings: HeaderSettings, findings: Any,
                  now: float, header_block: bytes) -> tuple[HeaderEdit, bool]:
    """The fields in the order of 20.3 (common ones first), and the deletions of 20.1."""
    add: list[AddedField] = []
    delete: set[str] = set(plan.spam.delete)
    delete_if: list[tuple[str, Callable[[bytes], bool]]] = []
    tagged = False
    utf8 = msg.smtputf8

    def put(name: str, body: str, structured: int = 0) -> None:
        add.append(AddedField(name, hdr(name, body, structured, smtputf8=utf8,
                                        encoding=settings.hdr_encoding,
                                        qb=settings.hdr_encoding_qb)))

    # -- common edits (add_forwarding_header_edits_common) --
    if settings.allowed("X-Amavis-Hold"):
        delete.add("x-amavis-hold")
        hold = _finding(findings, FINDING_HOLD, "")
        if hold:
            put("X-Amavis-Hold", str(hold))
            do_log(0, "Inserting header field: X-Amavis-Hold: %s", hold)
    if settings.enable_dkim_verification and settings.allowed("Authentication-Results"):
        ours = settings.myauthservid or settings.myhostname
        delete_if.append(("authentication-results", _authservid_is(ours)))
    if (settings.av_code_loaded and settings.remove_existing_x_scanned_headers
            and settings.x_header_line and _VALID_NAME.match(settings.x_header_tag)):
        delete.add(settings.x_header_tag.lower())
    # -- per cluster (add_forwarding_header_edits_per_recip) --
    if plan.quarantine_id and settings.allowed("X-Quarantine-ID"):
        put("X-Quarantine-ID", f"<{msg.mail_id}>")
    if plan.x_scanned:
        put(settings.x_header_tag, settings.x_header_line or "")
    if settings.allowed("X-Amavis-Alert"):
        if plan.virus:
            names = _finding(findings, FINDING_VIRUSNAMES, [])
            put("X-Amavis-Alert", "INFECTED, message contains virus: " + ", ".join(names))
            tagged = True
        if plan.banned_reason is not None:
            put("X-Amavis-Alert", "BANNED, message contains " + plan.banned_reason)
            tagged = True
        if plan.badh:
            faults = _finding(findings, FINDING_BAD_HEADERS, [])
            first = faults[0] if faults else ""
            put("X-Amavis-Alert", "BAD HEADER SECTION, " + str(getattr(first, "text", first)))
    add.extend(plan.spam.fields)
    tagged = tagged or (plan.is_local and plan.spam.do_tag2)
    if plan.dkim_ar and settings.allowed("Authentication-Results"):
        from amavisd.actions.authres import authentication_results

        servid = _hostname(settings.myauthservid or settings.myhostname, False)
        for body in authentication_results(_finding(findings, FINDING_DKIM_SIGS, []), servid,
                                           msg.rx_time):
            put("Authentication-Results", body, 1)
    subject_tag = None
    if plan.subject_tag:
        if has_field(header_block, "Subject"):
            subject_tag = plan.subject_tag
        else:
            put("Subject", plan.subject_tag.rstrip(" \t"))
            do_log(0, "INFO: no existing header field 'Subject', inserting it")
        tagged = True
    if settings.allowed("Received"):
        raw = received_field(msg, settings.view, now).replace(b"\r\n", b"\n")
        add.append(AddedField("Received", raw))
    edit = HeaderEdit(
        add=tuple(add), delete=frozenset(delete), delete_if=tuple(delete_if),
        subject_tag=subject_tag, smtputf8=utf8, hdr_encoding=settings.hdr_encoding,
        hdr_encoding_qb=settings.hdr_encoding_qb,
        fix_bare_cr=settings.allow_fixing_improper_header,
        fix_folding=settings.allow_fixing_improper_header
        and settings.allow_fixing_improper_header_folding,
        fix_long_lines=settings.allow_fixing_improper_header
        and settings.allow_fixing_long_header_lines)
    return edit, tagged


# ---------------------------------------------------------------- authserv-id
def parse_authservid(body: str) -> str | None:
    """The authserv-id of an Authentication-Results body: a token or quoted string.

    Comments are skipped; anything else first is a syntax error (None), as amavis
    treats it (RFC 8601 section 2.2).
    """
    s = body.replace("\n", "")
    i, depth = 0, 0
    while i < len(s):
        c = s[i]
        if c == "(":
            depth += 1
            i += 1
        elif depth and c == ")":
            depth -= 1
            i += 1
        elif depth:
            i += 2 if c == "\\" else 1
        elif c in " \t":
            i += 1
        else:
            m = re.match(r'[^\x00-\x20\x7f()<>,;:"/?=\[\]@\\]+', s[i:])
            if m:
                return m.group(0)
            m = re.match(r'"((?:\\[\t\x20-\x7e]|[\t\x20\x21\x23-\x5b\x5d-\x7e]|'
                         r'[\xc0-\xf4][\x80-\xbf]{1,3})*)"', s[i:])
            if m:
                return re.sub(r"\\(.)", r"\1", m.group(1))
            return None
    return None


def _authservid_is(ours: str) -> Callable[[bytes], bool]:
    """Predicate for 20.1: delete an A-R whose authserv-id is ours or unparseable."""
    mine = _hostname(ours, False).split("/", 1)[0].lower()

    def predicate(body: bytes) -> bool:
        aid = parse_authservid(body.decode("latin-1"))
        return aid is None or aid.split("/", 1)[0].lower() == mine
    return predicate


# ---------------------------------------------------------------- field rendering
def displayed_length(text: str, start: int) -> int:
    """Column after ``text`` starting at column ``start``; TAB advances to a multiple of 8."""
    col = start
    for ch in text:
        col = col + 8 - col % 8 if ch == "\t" else col + 1
    return col


_CHUNK_RE = re.compile(r"((?:^.*?|[ \t])[^ \t]+[ \t]*)(?=\Z|[ \t][^ \t])", re.S)
_ALL_WHITE = re.compile(r"[ \t]*\Z")


def wrap_string(text: str, max_len: int = WRAP_WIDTH, structured: bool = False) -> str:
    """Fold a field (name included) into lines of at most ``max_len`` columns.

    Unstructured: breaks only inside whitespace, never making an all-whitespace line,
    even if a line then stays too long; structured: breaks only where ``\\n`` marks it
    (pipeline.md 20.2).  Continuation lines keep their leading space or TAB.
    """
    if structured:
        while True:
            new = re.sub(r"^([ \t]*)\n", r"\1", text, count=1)
            if new == text:
                break
            text = new
        text = re.sub(r"\n(?=[ \t]*(\n|\Z))", "", text)
        text = re.sub(r"\n(?![ \t])", "\n ", text)
        chunks = text.split("\n")
    else:
        text = re.sub(r"\n(?![ \t])", "\n ", text).replace("\n", "")
        chunks = []
        pos = 0
        while pos < len(text):
            m = _CHUNK_RE.match(text, pos)
            if not m or m.end() == pos:
                break
            chunks.append(m.group(1))
            pos = m.end()
    lines: list[str] = []
    s, col = "", 0
    while chunks:
        chunk = chunks.pop(0)
        end = displayed_length(chunk, col)
        if end <= max_len or (not chunks and _ALL_WHITE.match(s)):
            s, col = s + chunk, end
            continue
        m = re.match(r"(.*[^ \t])([ \t]*)\Z", chunk, re.S)
        solid, white = (m.group(1), m.group(2)) if m else (chunk, "")
        solid_end = displayed_length(solid, col)
        if chunks and (solid_end <= max_len or _ALL_WHITE.match(s)):
            s, col = s + solid, solid_end
            while white:
                next_col = displayed_length(white[0], col)
                if next_col > max_len:
                    break
                s, col, white = s + white[0], next_col, white[1:]
            if white:
                chunks[0] = white + chunks[0]
        else:
            lines.append(s)
            s, col = "", 0
            chunks.insert(0, chunk)
    if not _ALL_WHITE.match(s):
        lines.append(s)
    return "\n".join(lines)


_ENCODED_NAMES = re.compile(r"^(?:Subject|Comments|(?:Resent-)?(?:From|Sender|To|Cc))\Z",
                            re.I)
_PLAIN_OCTETS = re.compile(r"^[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")


_PLAIN = r"[\x01-\x09\x0b\x0c\x0e-\x7f]"
_Q_SPLIT = re.compile(rf"^({_PLAIN}*[ \t])?(.*?)([ \t]{_PLAIN}*)?\Z", re.S)


def q_encode(octets: str, charset: str) -> str:
    """RFC 2047 Q encoding of one line, encoded words of at most 75 characters.

    ``octets`` is a byte string held as Latin-1 text.  Leading and trailing plain
    words stay as they are; the middle is encoded, split without breaking ``=XX``.
    """
    prefix, suffix = f"=?{charset}?Q?", "?="
    m = _Q_SPLIT.match(octets)
    assert m is not None
    head, rest, tail = m.group(1) or "", m.group(2), m.group(3) or ""
    rest = re.sub(r"[\x00-\x1f\x7f-\xff=?_]", lambda c: f"={ord(c.group(0)):02X}", rest)
    rest = rest.replace(" ", "_")
    room = 75 - (len(prefix) + len(suffix)) - 2
    out = head
    piece = re.compile(rf"^(.{{0,{room}}}[^=](?:[^=]|\Z))(.*)\Z", re.S)
    while rest:
        if not re.search(r"[ \t]\Z", out):
            out += " "
        pm = piece.match(rest)
        if pm is None:              # cannot happen with =XX triplets; never loop forever
            out += prefix + rest + suffix
            break
        out += prefix + pm.group(1) + suffix
        rest = pm.group(2)
    return out + tail


def _b_encode(octets: str, charset: str) -> str:
    data = base64.b64encode(octets.encode("latin-1")).decode("ascii")
    return f"=?{charset}?B?{data}?="


def hdr(name: str, body: str, structured: int = 0, *, smtputf8: bool = False,
        encoding: str = "UTF-8", qb: str = "Q") -> bytes:
    """One header field as amavis builds it (pipeline.md 20.2), LF line ends.

    ``body`` is text.  Non-ASCII goes out as UTF-8 with SMTPUTF8, RFC 2047 encoded in
    Subject/Comments/From/Sender/To/Cc (and Resent-), raw UTF-8 elsewhere.  A space
    follows the colon; ``structured`` 0 wraps at 78 columns when longer, 1 folds at
    the ``\\n`` marks, 2 keeps the given folding.  Lines over 998 octets are cut.
    """
    name = re.sub(r"[^\x21-\x39\x3b-\x7e]", "?", name)
    if body.isascii() or smtputf8:
        text = body.encode("utf-8").decode("latin-1")
    elif _ENCODED_NAMES.match(name) and not re.match(r"^[\t\n\x20-\x7f]*\Z", body):
        unfolded = re.sub(r"\n(?=[ \t])", "", body)
        if unfolded.endswith("\n"):
            unfolded = unfolded[:-1]
        octets = unfolded.encode(_codec(encoding), "replace").decode("latin-1")
        enc = _b_encode if qb.upper() != "Q" else q_encode
        text = "\n".join(line if _PLAIN_OCTETS.match(line) else enc(line, encoding)
                         for line in octets.split("\n"))
    else:
        text = body.encode("utf-8").decode("latin-1")
    out = name + ":"
    if re.match(r"[^ \t]", text):
        out += " "
    out += text
    if structured == 2:
        while True:
            new = re.sub(r"^([ \t]*)\n", r"\1", out, count=1)
            if new == out:
                break
            out = new
        out = re.sub(r"\n(?=[ \t]*(\n|\Z))", "", out)
        out = re.sub(r"\n(?![ \t])", "\n ", out)
    elif structured == 1 or len(out) > WRAP_WIDTH:
        out = wrap_string(out, WRAP_WIDTH, structured == 1)
    if len(out) > MAX_LINE:
        lines = out.split("\n")
        cut = [ln[:MAX_LINE - 3] + "..." if len(ln) > MAX_LINE else ln for ln in lines]
        if cut != lines:
            do_log(0, "INFO: truncating long header field (len=%d): %s[...]",
                   len(out), out[:100])
            out = "\n".join(cut)
    out = out.rstrip("\n") + "\n"
    return out.encode("latin-1")


def _codec(charset: str) -> str:
    try:
        import codecs
        return codecs.lookup(charset).name
    except LookupError:
        return "utf-8"


# ---------------------------------------------------------------- subject (RFC 2047)
_EW_RE = re.compile(r"=\?([!\"#$%&'+\-0-9A-Z\\^_`a-z{|}~]+)((?:\*[A-Za-z]{1,8}(?:-[0-9A-Za-z]"
                    r"{1,8})*)?)\?([QqBb])\?([^?]*)\?=")
_EW_RUN = re.compile(rf"(?:{_EW_RE.pattern}\s*)*{_EW_RE.pattern}")
_HAS_EW_ASCII = re.compile(r"=\?[^?]*\?(?:[Bb]\?[A-Za-z0-9+/=]*?|[Qq]\?.*?)\?=", re.S)
_HAS_EW_8BIT = re.compile(r"=\?[^?]*\?(?:[Bb]\?[A-Za-z0-9+/=]*|[Qq]\?[\x20-\x3e\x40-\x7f]*)\?=",
                          re.S)
_KOI8_TAIL = re.compile(r"[\x80-\xa2\xa5\xa8-\xac\xae-\xb2\xb5\xb8-\xbc\xbe-\xbf]")
_KOI8_LETTER = re.compile(r"[\xa3\xa4\xa6\xa7\xad\xb3\xb4\xb6\xb7\xbd\xc0-\xff]")


def _decode_word_text(charset: str, enc: str, text: str) -> str | None:
    try:
        codec = _codec_or_none(charset)
        if codec is None:
            return None
        if enc.upper() == "B":
            parts = re.split(r"(?<==)(?=[^=])", text)
            raw = b"".join(base64.b64decode(p + "=" * (-len(p) % 4)) for p in parts if p)
        else:
            raw = re.sub(r"=([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)),
                         text.replace("_", " ")).encode("latin-1")
        return raw.decode(codec, "replace")
    except (ValueError, UnicodeError):
        return None


def _codec_or_none(charset: str) -> str | None:
    import codecs
    name = "utf-8" if charset.lower() == "utf8" else charset
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_mime_words(text: str) -> str:
    """Encode::MIME::Header's decoding, as amavis uses it: encoded words become text.

    Line breaks go, whitespace between adjacent encoded words goes, adjacent words
    with one charset and encoding are joined before decoding (so a character split
    over two words survives); an unknown charset leaves the word as it is.
    """
    text = text.replace("\r", "").replace("\n", "")

    def run(m: re.Match[str]) -> str:
        words = [(w.group(1), w.group(2), w.group(3), w.group(4))
                 for w in _EW_RE.finditer(m.group(0))]
        merged: list[list[str]] = []
        for cs, lang, enc, txt in words:
            if merged and (merged[-1][0], merged[-1][1], merged[-1][2].upper()) == \
                    (cs, lang, enc.upper()):
                merged[-1][3] += txt
            else:
                merged.append([cs, lang, enc, txt])
        out = ""
        for cs, lang, enc, txt in merged:
            decoded = _decode_word_text(cs, enc, txt)
            if decoded is None:
                orig = f"=?{cs}{lang}?{enc}?{txt}?="
                out += ("" if out == "" or out[-1] in " \t" else " ") + orig
            else:
                out += decoded
        return out
    return _EW_RUN.sub(run, text)


def safe_decode_mime(octets: bytes) -> str:
    """A field body (octets) as text, as amavis's ``safe_decode_mime`` guesses it."""
    s = octets.decode("latin-1")
    if octets.isascii():
        return decode_mime_words(s) if _HAS_EW_ASCII.search(s) else s
    if _HAS_EW_8BIT.search(s):
        pieces = re.split(f"({_HAS_EW_8BIT.pattern})", s, flags=re.S)
        return "".join(decode_mime_words(p) if i % 2 else _decode_8bit(p.encode("latin-1"))
                       for i, p in enumerate(pieces))
    if (len(octets) >= 4 and not _KOI8_TAIL.search(s)
            and len(_KOI8_LETTER.findall(s)) >= len(s) * 2 / 3
            and len(re.findall(r"[A-Za-z]", s)) <= 5 and not _valid_utf8(octets)):
        return octets.decode("koi8-u", "replace")
    return _decode_8bit(octets)


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_8bit(data: bytes) -> str:
    """Strict UTF-8, else Windows-1252 (bytes it leaves undefined as Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = []
    for b in data:
        try:
            out.append(bytes([b]).decode("cp1252"))
        except UnicodeDecodeError:
            out.append(chr(b))
    return "".join(out)


def tag_subject(name: bytes, body: bytes, tag: str, edit: HeaderEdit) -> bytes:
    """A new Subject field: existing tags removed, ``tag`` in front (pipeline.md 20.8).

    ``name`` is the field name as the message spells it; ``body`` the field body
    after the colon (folding kept, no final LF).  The result is re-encoded and
    re-wrapped like any field we add.
    """
    m = re.match(rb"^[ \t]?(.*)\Z", body, re.S)
    assert m is not None
    subject = safe_decode_mime(m.group(1))
    if len(tag) >= 3:
        subject = subject.replace(tag, "")
    return hdr(name.decode("latin-1"), " " + tag + subject, 0, smtputf8=edit.smtputf8,
               encoding=edit.hdr_encoding, qb=edit.hdr_encoding_qb)


# ---------------------------------------------------------------- the header section
@dataclass(frozen=True)
class HeaderSplit:
    """The original header section of a spool file and where its body starts.

    ``block`` holds whole lines (LF ends) without the empty separator line;
    ``body_offset`` is the spool offset the body is streamed from.  ``complete`` is
    False only when the header is longer than the 4 MiB read limit: then the rest
    of the header follows in the stream unedited and no separator is inserted.
    """

    block: bytes
    body_offset: int
    complete: bool = True


def split_header(path: Path, limit: int = HEADER_LIMIT) -> HeaderSplit:
    """Find the end of the header section as amavis's ``write_header`` does.

    It ends at the first empty line, at a line starting with ``--`` (a MIME boundary
    where the separator is missing: unlike amavis we keep that line in the body), or
    at the end of the file.  Reads at most ``limit`` bytes (header.read_header_block).
    """
    block = read_header_block(path, limit)
    size = os.path.getsize(path)
    if len(block) >= size:                      # the whole file is header (or empty)
        complete, offset = True, len(block)
    elif block.endswith(b"\n") and _byte_at(path, len(block)) == b"\n":
        complete, offset = True, len(block) + 1
    elif not block:                             # the file starts with the empty line
        complete, offset = True, 1 if _byte_at(path, 0) == b"\n" else 0
    else:                                       # limit reached inside the header
        cut = block.rfind(b"\n") + 1
        block, complete, offset = block[:cut], False, cut
    pos = 0
    for line in _lines(block):
        if line.startswith(b"--"):
            return HeaderSplit(block[:pos], pos, True)
        pos += len(line)
    return HeaderSplit(block, offset, complete)


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(1)


def _lines(block: bytes) -> list[bytes]:
    """Lines split at LF only (a bare CR is data, not a line end)."""
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", block)


def _fields(block: bytes) -> list[bytes]:
    """Header fields with their continuation lines (LF ends kept); stray lines too."""
    fields: list[bytes] = []
    for line in _lines(block):
        if not line.endswith(b"\n"):
            line += b"\n"
        if line.startswith(_CONT) and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields


def count_received(block: bytes) -> int:
    """How many ``Received`` fields the original header has (RFC 5321 6.3 loop count)."""
    return sum(1 for head in _fields(block)
               if (m := _FIELD_RE.match(head)) and m.group(1).lower() == b"received")


def hops_refusal(block: bytes, log_id: str, limit: int = MAX_HOPS) -> Reply | None:
    """``554 5.4.6`` when the message has more than ``limit`` Received fields (20.1)."""
    n = count_received(block)
    if n <= limit:
        return None
    return Reply(554, "5.4.6", f"Reject: Too many hops: {n} 'Received:' header fields, "
                               f"id={log_id}")


_WHITE_LINE = re.compile(rb"\n(?=[ \t]*\n)")
_LONG_LINE = re.compile(rb"^(.{995}).{4,}$", re.M)


def render_header(original_header_block: bytes, edit: HeaderEdit, *,
                  complete: bool = True) -> bytes:
    """The new header section: our fields, then the edited original, then the empty line.

    CRLF line ends, ready for ``forward``.  Sanitation of 20.1 applies to every
    original field written: bare CR removed, all-whitespace continuation lines
    unfolded, lines over 998 characters cut to 995 + '...'.
    """
    out = [f.raw for f in edit.add]
    bare_cr = white = long_lines = 0
    predicates: dict[bytes, list[Callable[[bytes], bool]]] = {}
    for name, pred in edit.delete_if:
        predicates.setdefault(name.lower().encode(), []).append(pred)
    deleted = {name.encode() for name in edit.delete}
    for head in _fields(original_header_block):
        m = _FIELD_RE.match(head)
        if m:
            key = m.group(1).lower()
            body = m.group(2)[:-1] if m.group(2).endswith(b"\n") else m.group(2)
            if key in deleted or any(p(body) for p in predicates.get(key, ())):
                continue
            if key == b"subject" and edit.subject_tag:
                head = tag_subject(m.group(1), body, edit.subject_tag, edit)
        if edit.fix_bare_cr and b"\r" in head:
            head = head.replace(b"\r", b"")
            bare_cr += 1
        if edit.fix_folding:
            head, n = _WHITE_LINE.subn(b"", head)
            white += bool(n)
        if edit.fix_long_lines:
            head, n = _LONG_LINE.subn(rb"\1...", head)
            long_lines += bool(n)
        out.append(head)
    if white:
        do_log(0, "INFO: unfolded %d illegal all-whitespace continuation lines", white)
    if long_lines:
        do_log(0, "INFO: truncated %d header line(s) longer than 998 characters", long_lines)
    if bare_cr:
        do_log(0, "INFO: removed bare CR from %d header line(s)", bare_cr)
    if complete:
        out.append(b"\n")
    return b"".join(out).replace(b"\n", b"\r\n")
