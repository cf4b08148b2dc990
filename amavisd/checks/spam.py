# tests: t/checks/test_spam.py
"""The spam check: white/blacklists, soft scores, spam scanners, per-recipient levels.

Runs in the child, after decoding and before ``decide`` (spec/pipeline.md
section 2 step 19; section 10).  It records facts only (STYLE.md section 5): each
recipient's spam level, tests, white/blacklisting and tag levels
(``RecipientSpam``); ``amavisd.decide.categorize`` turns them into CC_CLEAN,1 /
CC_SPAMMY / CC_SPAMMY,1 / CC_SPAM (section 12.3) and the header, quarantine and
DSN actions read them from the recipients (``apply``).

Scanners (``@spam_scanners``, section 10.2), each entry ``[name, module,
options...]`` with the options as key/value pairs or one dict:

* ``Amavis::SpamControl::SpamdClient`` (or ``spamd``): spamd, ``SYMBOLS``
  (section 10.4); options ``address`` (default ``$spamd_address``),
  ``mail_body_size_limit``, ``score_factor``, ``timeout``, ``command``.
* ``Amavis::SpamControl::SpamAssassin`` (or ``spamassassin``): amavis runs
  SpamAssassin in-process; we have no Perl inside, so the entry is served by
  spamd (``REPORT``, which also gives each rule's points, as in-process SA
  writes them: ``tests=[ALL_TRUSTED=-1, GTUBE=1000]``); one startup notice says so.
* ``Amavis::SpamControl::RspamdClient`` (or ``rspamd``): section 10.5; options
  ``url``, ``timeout``, ``credentials``, ``ssl_opts``, ``mta_name``,
  ``mail_body_size_limit``, ``score_factor``, ``pass_all``.
* ``Amavis::SpamControl::ExtProg`` (DSPAM, CRM114, Bogofilter): not implemented;
  the entry is skipped with the startup notice.

A scanner that fails is logged ``<name> client failed: <reason>`` (level -1)
and adds nothing, exactly as amavis's spamd and rspamd clients: the message is
scored 0 by it and passes.  ``check`` returns a Deferred so the pipeline can run
it beside the virus check; the blocking client calls run in the reactor's
thread pool when a reactor is given.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads

from amavisd.config.lookup import Lookups, lookup, without_implied_sql
from amavisd.header import read_header_block
from amavisd.log import do_log
from amavisd.message import Message
from amavisd.scanners import rspamd as rspamd_client
from amavisd.scanners import spamd as spamd_client
from amavisd.sql import lookup as sql_lookup

log = logging.getLogger(__name__)

SPAMD = "spamd"
SPAMASSASSIN = "spamassassin"
RSPAMD = "rspamd"
MODULES = {
    "amavis::spamcontrol::spamdclient": SPAMD, "spamdclient": SPAMD, "spamd": SPAMD,
    "amavis::spamcontrol::spamassassin": SPAMASSASSIN, "spamassassin": SPAMASSASSIN,
    "amavis::spamcontrol::rspamdclient": RSPAMD, "rspamdclient": RSPAMD, "rspamd": RSPAMD,
}
_noticed: set[str] = set()


# ---------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Scanner:
    """One usable ``@spam_scanners`` entry."""

    name: str
    kind: str                       # SPAMD, SPAMASSASSIN or RSPAMD
    options: dict[str, Any] = field(default_factory=dict)


def _options(rest: Sequence[Any]) -> dict[str, Any]:
    if len(rest) == 1 and isinstance(rest[0], dict):
        return dict(rest[0])
    return {str(rest[i]): rest[i + 1] for i in range(0, len(rest) - 1, 2)}


def scanners(config: Any) -> list[Scanner]:
    """The entries of ``@spam_scanners`` we can run, in order (section 10.2).

    An in-process SpamAssassin entry becomes a spamd one and an entry we cannot
    run is left out; either is said once per process, at level 0 (NOTICE).
    """
    out: list[Scanner] = []
    for entry in getattr(config, "spam_scanners", None) or []:
        if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not entry[1]:
            continue
        name, module = str(entry[0]), str(entry[1])
        kind = MODULES.get(module.lower())
        if kind is None:
            _notice(f"NOTICE: spam scanner {name} ({module}) is not implemented, skipped")
            continue
        if kind == SPAMASSASSIN:
            where = ", ".join(_addresses_text(config, {}))
            _notice(f"NOTICE: spam scanner {name} ({module}): SpamAssassin is not run "
                    f"in-process, asking spamd at {where} instead")
        out.append(Scanner(name, kind, _options(entry[2:])))
    return out


def _notice(text: str) -> None:
    if text not in _noticed:
        _noticed.add(text)
        do_log(0, "%s", text)


def _addresses_text(config: Any, options: dict[str, Any]) -> list[str]:
    value = options.get("address") or getattr(config, "spamd_address", None) \
        or list(spamd_client.DEFAULT_ADDRESSES)
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _first_is_true_constant(tables: Any) -> bool:
    if not isinstance(tables, (list, tuple)) or not tables:
        return False
    first = tables[0]
    if isinstance(first, bool) or isinstance(first, (int, float)):
        return bool(first)
    return isinstance(first, str) and first not in ("", "0")


def spam_code_loaded(config: Any) -> bool:
    """Amavis loads its spam code unless ``@spam_scanners`` is empty or
    ``@bypass_spam_checks_maps`` starts with a plain true value (section 0)."""
    return bool(getattr(config, "spam_scanners", None)) and \
        not _first_is_true_constant(without_implied_sql(   # decided before SQL goes first
            getattr(config, "bypass_spam_checks_maps", None)))


# ---------------------------------------------------------------- results
@dataclass
class RecipientSpam:
    """One recipient's spam facts (sections 10.1, 12.3, 13 step 1)."""

    address: str
    bypassed: bool = False
    level: float | None = None              # None: no spam check touched it
    tests: list[str] = field(default_factory=list)   # AM.WBL=..., then each scanner's
    blacklisted: bool = False
    whitelisted: bool = False
    tag_level: float | str | None = None    # '' counts as "tag everyone", like undef
    tag2_level: float | None = None
    tag3_level: float | None = None
    kill_level: float | None = None


@dataclass
class ScannerResult:
    """What one scanner contributed: SCORE-<name> and VERDICT-<name> (section 10.2)."""

    name: str
    score: float | None
    tests: str
    verdict: str
    error: str | None = None
    report: str | None = None


@dataclass
class SpamResult:
    """The spam check's findings for the message."""

    code_loaded: bool
    performed: bool = False               # scanners ran (checks_performed 'S')
    recipients: dict[str, RecipientSpam] = field(default_factory=dict)
    scanners: list[ScannerResult] = field(default_factory=list)
    skipped: str | None = None            # why the scanners did not run
    report: str | None = None

    def levels(self) -> list[float | None]:
        return [r.level for r in self.recipients.values()]

    @property
    def hits(self) -> str:
        return hits_text(self.levels())


def perl_num(value: float) -> str:
    """``0+sprintf("%.3f", x)``: three decimals, trailing zeros (and the dot) dropped."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def hits_text(levels: Iterable[float | None]) -> str:
    """``Hits:`` of the main log line (monitoring.md 5.3, amavis's ``%c``)."""
    known = [x for x in levels if x is not None]
    if not known:
        return "-"
    low, high = min(known), max(known)
    if abs(low - high) < 0.1:
        return perl_num(low)
    return f"{perl_num(low)}..{perl_num(high)}"


# ---------------------------------------------------------------- lookups
def _level(value: Any) -> float | str | None:
    if value is None or value == "":
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def recipient_levels(lookups: Lookups, address: str, entry: RecipientSpam) -> None:
    """``@spam_tag{,2,3}_level_maps`` and ``@spam_kill_level_maps`` (section 13 step 1)."""
    entry.tag_level = _level(lookups.per_recipient("spam_tag_level_maps", address))
    for name in ("tag2", "tag3", "kill"):
        value = _level(lookups.per_recipient(f"spam_{name}_level_maps", address))
        setattr(entry, f"{name}_level", None if value == "" else value)


def senders(msg: Message, header_block: bytes) -> list[str]:
    """The envelope sender and every From: address, without duplicates (section 10.1)."""
    out = [msg.sender]
    text = header_block.decode("utf-8", "surrogateescape")
    values = [m.group(1) for m in re.finditer(r"(?mi)^From[ \t]*:((?:.*)(?:\n[ \t].*)*)",
                                              text)]
    for _, addr in getaddresses(values):
        if addr and addr not in out:
            out.append(addr)
    return out


def white_black_list(lookups: Lookups, view: Any, msg: Message, sender_list: list[str],
                     result: SpamResult) -> tuple[int, bool]:
    """Hard white/blacklists and soft scores, per open recipient (section 10.1).

    For each sender address (envelope sender, then From:), in this order: SQL
    (``sel_wblist`` for each ``users.id`` matching the recipient; the first
    decisive ``wb`` stops, numeric ones add a soft score and go on), then the
    static per-recipient and global tables; while no soft score has been found,
    ``@score_sender_maps``.  The first sender found in a list ends the search.
    Returns (number of recipients w/b listed, whether all of them are).
    """
    def table(name: str) -> list[Any]:
        value = getattr(view, name, None)
        return [] if value is None else list(value) if isinstance(value, (list, tuple)) \
            else [value]

    engine = sql_lookup.active()
    delimiter = getattr(view, "recipient_delimiter", None)
    case_sensitive = bool(getattr(view, "localpart_is_case_sensitive", False))
    per_recip_bl = getattr(view, "per_recip_blacklist_sender_lookup_tables", None)
    per_recip_wl = getattr(view, "per_recip_whitelist_sender_lookup_tables", None)
    any_wb, all_wb = 0, True
    for rcpt in msg.recipients:
        entry = result.recipients.get(rcpt.address)
        if rcpt.done or entry is None:
            continue
        wb = 0
        boost: float | None = None
        user_ids = engine.user_ids(rcpt.address, delimiter, case_sensitive) \
            if engine is not None else []
        for sender in sender_list:
            found = False
            for user_id in user_ids:
                value = engine.wb(user_id, sender, delimiter, case_sensitive)
                do_log(4, 'wbl: (SQL) recip <%s>, rid=%s, got: "%s"', rcpt.address, user_id,
                       "" if value is None else value)
                if value is None:
                    continue
                verdict, score = sql_lookup.wb_verdict(value)
                if verdict == "score":
                    boost = (boost or 0.0) + score
                    do_log(2, "wbl: (SQL) soft-%slisted (%s) sender <%s> => <%s> (rid=%s)",
                           "white" if score < 0 else "black", perl_num(score), sender,
                           rcpt.address, user_id)
                    continue
                found = True
                if verdict == "black":
                    wb, entry.blacklisted = -1, True
                elif verdict == "white":
                    wb, entry.whitelisted = 1, True
                    if not re.fullmatch(r"[WwYyTt] *", str(value)):
                        do_log(-1, 'wbl: (SQL) recip <%s> whitelisted sender <%s>, '
                               'unexpected wb field value: "%s"', rcpt.address, sender, value)
                do_log(5, "wbl: (SQL) recip <%s> %s sender <%s>", rcpt.address,
                       {"black": "blacklisted", "white": "whitelisted"}.get(verdict,
                                                                            "is neutral to"),
                       sender)
                break
            if not found:
                for kind, per_recip, maps in (("black", per_recip_bl, "blacklist_sender_maps"),
                                              ("white", per_recip_wl, "whitelist_sender_maps")):
                    tables = table(maps)
                    if per_recip:
                        own = lookup(False, rcpt.address, [per_recip])
                        if own is not None:
                            tables.insert(0, own)
                    if tables and lookup(False, sender, tables, label=maps):
                        found = True
                        if kind == "black":
                            wb, entry.blacklisted = -1, True
                        else:
                            wb, entry.whitelisted = 1, True
                        do_log(5, "wbl: recip <%s> %slisted sender <%s>", rcpt.address, kind,
                               sender)
            if boost is None:           # no soft score yet (SQL numeric ones count)
                matching = lookups.per_recipient("score_sender_maps", rcpt.address,
                                                 get_all=True) or []
                for recip_table in matching:
                    tables = list(recip_table) if isinstance(recip_table, (list, tuple)) \
                        else [recip_table]       # a recipient's value is a list of tables
                    value = lookup(False, sender, tables, label="score_sender")
                    try:
                        value = float(value) if value is not None else 0.0
                    except (TypeError, ValueError):
                        value = 0.0
                    if value:
                        boost = (boost or 0.0) + value
                        do_log(2, "wbl: soft-%slisted (%s) sender <%s> => <%s>",
                               "white" if value < 0 else "black", perl_num(value), sender,
                               rcpt.address)
            if found:
                break
        if boost:
            entry.level = (entry.level or 0.0) + boost
            entry.tests.insert(0, f"AM.WBL={perl_num(boost)}")
        if wb:
            any_wb += 1
        else:
            all_wb = False
    return any_wb, all_wb


# ---------------------------------------------------------------- scanning
def pseudo_header(msg: Message, view: Any, limit: int | None) -> bytes:
    """Lines amavis puts before the message for spamd (sections 10.3, 10.4), CRLF ends."""
    rcpts = ",\r\n ".join(f"<{r.quoted}>" for r in msg.recipients)
    size = f"{msg.size}" + ("" if limit is None else f", TRUNCATED to {limit}")
    lines = [f"Return-Path: <{msg.sender_quoted}>", f"X-Envelope-To: {rcpts}"]
    fingerprint = msg.findings.get("os_fingerprint")
    if fingerprint:
        lines.append(f"X-Amavis-OS-Fingerprint: {fingerprint}")
    lines.append(f"X-Amavis-PolicyBank: {getattr(view, 'policy_bank_path', '')}")
    lines.append(f"X-Amavis-MessageSize: {size}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _header_size(path: Path) -> tuple[int, int]:
    """(header size, body size) of the spool file, in bytes as stored."""
    block = read_header_block(path)
    total = os.path.getsize(path)
    header = min(total, len(block) + 1)
    return header, total - header


def _float(value: Any, default: float | None = None) -> float | None:
    try:
        return default if value is None else float(value)
    except (TypeError, ValueError):
        return default


def run_scanner(scanner: Scanner, msg: Message, view: Any) -> ScannerResult:
    """Ask one scanner about the message (blocking); failures become ``error``."""
    opts = scanner.options
    mbsl = opts.get("mail_body_size_limit")
    if scanner.kind != RSPAMD and mbsl is None:
        mbsl = getattr(view, "sa_mail_body_size_limit", None)
    header_size, body_size = _header_size(msg.spool_path)
    timeout = _float(opts.get("timeout"), None)
    try:
        if scanner.kind == RSPAMD:
            limit = rspamd_client.size_limit(msg.size, header_size, body_size, mbsl)
            meta = [("Helo", msg.client.helo), ("Hostname", msg.client.name),
                    ("IP", msg.client.addr), ("MTA-Name", opts.get("mta_name")),
                    ("From", f"<{msg.sender_quoted}>"), ("Queue-Id", msg.client.ident)]
            meta += [("Rcpt", f"<{r.quoted}>") for r in msg.recipients]
            if opts.get("pass_all"):
                meta.append(("Pass", "all"))
            ssl_opts = opts.get("ssl_opts") or {}
            reply = rspamd_client.check_file(
                msg.spool_path, url=str(opts.get("url") or rspamd_client.DEFAULT_URL),
                meta=meta, limit=limit, credentials=opts.get("credentials"),
                timeout=timeout or float(getattr(view, "rspamd_timeout", None)
                                         or rspamd_client.DEFAULT_TIMEOUT),
                verify_hostname=bool(ssl_opts.get("verify_hostname", 1)))
            score = reply.score
            tests, verdict = ",".join(reply.tests), reply.verdict
            do_log(2, "%s rspamd %sscore %.2f/%.2f (%s) %s", scanner.name,
                   "skipped/" if reply.is_skipped else "", score,
                   reply.required_score or 0.0, reply.action, tests)
            report = None
        else:
            limit = spamd_client.size_limit(msg.size, header_size, body_size, mbsl)
            command = str(opts.get("command") or
                          ("REPORT" if scanner.kind == SPAMASSASSIN else "SYMBOLS")).upper()
            addresses = [spamd_client.parse_address(a)
                         for a in _addresses_text(view, opts)]
            reply_s = spamd_client.check_file(
                msg.spool_path, prefix=pseudo_header(msg, view, limit), addresses=addresses,
                limit=limit, command=command,
                timeout=timeout or float(getattr(view, "spamd_timeout", None) or 60),
                connect_timeout=float(getattr(view, "spamd_connect_timeout", None)
                                      or spamd_client.CONNECT_TIMEOUT))
            score = reply_s.score if reply_s.score is not None else 0.0
            tests = ",".join(reply_s.tests)
            verdict = "Spam" if reply_s.is_spam else "Ham" if reply_s.is_spam is False \
                else "Unknown"
            report = reply_s.report
            do_log(2, "%s spamd score=%s, tests=%s", scanner.name, perl_num(score), tests)
    except (spamd_client.SpamdError, rspamd_client.RspamdError, OSError, ValueError) as exc:
        do_log(-1, "%s client failed: %s", scanner.name, exc)
        return ScannerResult(scanner.name, None, "", "Unknown", error=str(exc))
    factor = _float(opts.get("score_factor"))
    if factor is not None:
        score *= factor
    return ScannerResult(scanner.name, score, tests, verdict, report=report)


def scan_all(scanner_list: list[Scanner], msg: Message, view: Any) -> list[ScannerResult]:
    """Every scanner in order (blocking; the check may run this in a thread)."""
    return [run_scanner(s, msg, view) for s in scanner_list]


def check(msg: Message, view: Any, config: Any = None, *, reactor: Any = None,
          blocked: Collection[str] = (), header_block: bytes | None = None,
          scanner_list: list[Scanner] | None = None,
          scan: Callable[[list[Scanner], Message, Any], list[ScannerResult]] = scan_all,
          ) -> defer.Deferred[SpamResult]:
    """The spam check of section 2 step 19, as a Deferred ``SpamResult``.

    ``view`` is the message's policy-bank view and ``config`` the global settings
    (default: the view).  ``blocked`` names recipients already blocked (virus,
    banned): when every open recipient is, or bypasses spam checks, the scanners
    are skipped.  With ``reactor`` the scanners run in its thread pool; without,
    in the caller's thread.  ``scan`` is injectable for tests.
    """
    config = view if config is None else config
    result = SpamResult(code_loaded=spam_code_loaded(config))
    lookups = Lookups(view)
    for rcpt in msg.recipients:
        entry = RecipientSpam(rcpt.address)
        entry.bypassed = bool(lookups.per_recipient("bypass_spam_checks_maps", rcpt.address))
        if not entry.bypassed:
            recipient_levels(lookups, rcpt.address, entry)
        result.recipients[rcpt.address] = entry
    if not result.code_loaded:
        result.skipped = "spam code not loaded"
        return defer.succeed(result)
    open_rcpts = [r for r in msg.recipients if not r.done]
    if all(result.recipients[r.address].bypassed for r in open_rcpts):
        result.skipped = "all recipients bypass spam checks"
        return defer.succeed(result)
    if all(r.address in blocked for r in open_rcpts):
        result.skipped = "message will be blocked anyway"
        do_log(5, "bypassing of spam checks, message will be blocked anyway")
        return defer.succeed(result)
    if header_block is None:
        header_block = read_header_block(msg.spool_path)
    _, all_wb = white_black_list(lookups, view, msg, senders(msg, header_block), result)
    if all_wb:
        result.skipped = "sender white/blacklisted"
        do_log(5, "sender white/blacklisted, skipping spam_scan")
        return defer.succeed(result)
    chosen = scanners(config) if scanner_list is None else scanner_list
    if not chosen:
        result.skipped = "no spam scanner"
        return defer.succeed(result)
    if reactor is not None:
        d = threads.deferToThreadPool(reactor, reactor.getThreadPool(), scan, chosen, msg,
                                      view)
    else:
        d = defer.maybeDeferred(scan, chosen, msg, view)
    d.addCallback(_merge, result)
    return d


def _merge(outcomes: list[ScannerResult], result: SpamResult) -> SpamResult:
    """Each scanner's score goes to every recipient, its tests appended (section 10.2)."""
    result.performed = True
    result.scanners = outcomes
    for outcome in outcomes:
        for entry in result.recipients.values():
            entry.level = (entry.level or 0.0) + (outcome.score or 0.0)
            if outcome.tests:
                entry.tests.append(outcome.tests)
        if outcome.report and result.report is None:
            result.report = outcome.report
    return result


# ---------------------------------------------------------------- results on the message
def apply(msg: Message, result: SpamResult | None) -> None:
    """Put the facts where actions read them: recipients, ``msg.findings``.

    ``rcpt.spam_level``/``spam_tests``/``blacklisted``/``whitelisted``/
    ``bypass_spam_checks`` (quarantine, DSN, headers) and ``msg.findings``
    ``hits`` (main log line), ``spam`` (the result), ``spam_report``.
    """
    if result is None:
        msg.findings["hits"] = "-"
        return
    for rcpt in msg.recipients:
        entry = result.recipients.get(rcpt.address)
        if entry is None:
            continue
        rcpt.spam_level = entry.level
        rcpt.spam_tests = list(entry.tests)
        rcpt.blacklisted = entry.blacklisted
        rcpt.whitelisted = entry.whitelisted
        rcpt.bypass_spam_checks = entry.bypassed
    msg.findings["spam"] = result
    msg.findings["hits"] = result.hits
    if result.report:
        msg.findings["spam_report"] = result.report
    if result.performed:
        performed = msg.findings.setdefault("checks_performed", [])
        if "S" not in performed:
            performed.append("S")
