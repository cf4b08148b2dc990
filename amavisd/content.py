"""Content checks of one message, in amavis's order, then the per-recipient decision.

Runs in the child, from the pipeline, before forwarding (spec/pipeline.md section
2): decode MIME and archives into ``<tempdir>/parts``, check the header section,
check banned names and types per recipient group, compare the size with each
recipient's limit (section 13 step 2), then ``decide`` each recipient.
Checks only record findings here; ``amavisd.decide`` turns them into destinies.
Virus and spam scanning plug in beside the banned check (their own issue).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amavisd import decide as decider
from amavisd.checks import badheader, banned, dkim, spam, virus
from amavisd.config.lookup import Lookups, lookup
from amavisd.errors import TempFail
from amavisd.log import do_log
from amavisd.message import Message
from amavisd.mime.walk import PARTS_DIR_MODE
from amavisd.parts import PartsTree
from amavisd.sizelimit import recipient_size_limit
from amavisd.unpack import decode_message
from amavisd.unpack.context import DecodeLimits

log = logging.getLogger(__name__)


@dataclass
class ContentResult:
    """What the checks found, kept on ``msg.findings['content']`` for headers, logs, SQL."""

    tree: PartsTree
    header_faults: list[badheader.HeaderFault]
    banned_hits: list[banned.BannedHit]
    banned: dict[str, banned.BannedVerdict]
    categories: dict[str, list[str]] = field(default_factory=dict)
    main_ccat: str = decider.CCAT_CLEAN


def decode_limits(config: Any) -> DecodeLimits:
    """The section 6.5 bounds from the settings (undef quotas count as 0, as in Perl)."""
    return DecodeLimits(
        max_levels=config.MAXLEVELS, max_files=config.MAXFILES,
        min_expansion_quota=config.MIN_EXPANSION_QUOTA,
        max_expansion_quota=config.MAX_EXPANSION_QUOTA,
        min_expansion_factor=config.MIN_EXPANSION_FACTOR,
        max_expansion_factor=config.MAX_EXPANSION_FACTOR,
        time_limit=float(config.decoding_time_limit))


def fresh_parts_dir(tempdir: str) -> Path:
    """``<tempdir>/parts``, emptied: the previous message's parts never linger."""
    parts = Path(tempdir) / "parts"
    if parts.is_symlink():
        raise TempFail("mkdir parts", f"{parts} is a symbolic link")
    if parts.exists():
        shutil.rmtree(parts)
    os.mkdir(parts, PARTS_DIR_MODE)
    os.chmod(parts, PARTS_DIR_MODE)               # whatever the umask (clamd reads it)
    return parts


def banned_rules(config: Any) -> dict[str, Any]:
    """``%banned_rules`` with its after-default ``DEFAULT => $banned_filename_re``."""
    rules = dict(config.banned_rules or {})
    if "DEFAULT" not in rules:
        rules["DEFAULT"] = config.banned_filename_re
    return rules


def oversized_recipients(msg: Message, view: Any) -> dict[str, int]:
    """Open recipients whose ``@message_size_limit_maps`` limit the message exceeds.

    pipeline.md section 13 step 2 and 12.3: each such recipient gets CC_OVERSIZED;
    the first one is logged (level 1) as ``OVERSIZED from <s> to <r>: size N B,
    limit M B``.  Returns address -> limit (``ContentFindings.oversized``).
    """
    oversized: dict[str, int] = {}
    if not getattr(view, "message_size_limit_maps", None):
        return oversized
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        limit = recipient_size_limit(view, rcpt.address)
        if limit is None or msg.size <= limit:
            continue
        if not oversized:
            do_log(1, "OVERSIZED from <%s> to <%s>: size %s B, limit %s B",
                   msg.sender_quoted, rcpt.quoted, msg.size, limit)
        oversized[rcpt.address] = limit
    return oversized


def message_categories(result: ContentResult,
                       findings: decider.ContentFindings) -> decider.Categories:
    """The message's own category list (section 12.3): every recipient's, plus the
    UNCHECKED and BAD-HEADER findings whatever the recipients bypass."""
    cats = decider.Categories()
    for recipient_cats in result.categories.values():
        for ccat in recipient_cats:
            cats.add(ccat)
    if findings.undecipherable or findings.encrypted or findings.over_limits \
            or findings.ambiguous or findings.virus_check_failed:
        cats.add("7")
    for flag, ccat in ((findings.encrypted, "7,1"), (findings.over_limits, "7,2"),
                       (findings.ambiguous, "7,3")):
        if flag:
            cats.add(ccat)
    for minor in findings.badh_minors:
        cats.add(f"4,{minor}" if minor else "4")
    return cats


def apply_av_spam(spam_result: spam.SpamResult | None,
                  virus_result: virus.VirusResult | None) -> None:
    """Section 9.5: a virus scanner's detection made only of spam names (per
    ``@virus_name_to_spam_score_maps``) raises each recipient's spam level by the
    highest of their scores and adds ``AV:<name>=<score>`` to the spam tests.

    Only where a spam check exists: without one there are no levels to raise, and
    the detection was already turned clean by the virus check.
    """
    if spam_result is None or virus_result is None or not virus_result.av_spam:
        return
    for av in virus_result.av_spam:
        for entry in spam_result.recipients.values():
            if entry.bypassed:
                continue
            entry.level = (entry.level or 0.0) + av.score
            entry.tests.append(av.tests)


def add_spam_findings(msg: Message, view: Any, findings: decider.ContentFindings,
                      spam_result: spam.SpamResult | None, bulk: bool) -> None:
    """Lay the spam check's result on ``findings`` and the recipients (section 2 step 19).

    amavis skips the spam scan when a preliminary decision shows that no
    recipient would get the mail anyway (virus, banned); a check that ran
    concurrently with the virus check is therefore dropped here in that case, so
    the log says ``Hits: -`` as amavis's does.  Levels still count for tagging.
    """
    if spam_result is None:
        spam.apply(msg, None)
        return
    if spam_result.performed and not _any_recipient_passes(msg, view, findings, bulk):
        spam_result.performed = False
        spam_result.skipped = "message will be blocked anyway"
        for entry in spam_result.recipients.values():
            entry.level, entry.tests = None, []
    findings.spam = spam_result.recipients
    spam.apply(msg, spam_result)


def _any_recipient_passes(msg: Message, view: Any, findings: decider.ContentFindings,
                          bulk: bool) -> bool:
    lookups = Lookups(view)
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        cats = decider.categorize(findings, rcpt, lambda kind, a=rcpt.address: bool(
            lookups.per_recipient(f"bypass_{kind}_checks_maps", a)))
        verdict = decider.decide_recipient(
            rcpt, cats, view=view,
            is_lover=lambda c, a=rcpt.address: bool(
                (s := decider.LOVERS_BY_CCAT.get(c.split(",")[0]))
                and lookups.per_recipient(s, a)),
            destiny_for=lambda v, a=rcpt.address: lookup(False, a, v)
            if isinstance(v, (list, tuple)) else v,
            sender=msg.sender, bulk=bulk, log_id=msg.log_id, macros={})
        if verdict.blocking_ccat is None:
            return True
    return False


def virus_check(msg: Message, view: Any, tree: PartsTree, parts_dir: Path,
                bypass: Any, stats: Any = None) -> virus.VirusResult | None:
    """Section 2 step 15: scan unless no scanner is configured or every recipient bypasses.

    Returns None when no scan was due.  A failure of every scanner comes back as
    a result with ``failed`` (CC_UNCHECKED), or raises TempFail when
    ``virus_scanners_failure_is_fatal`` (amavisd.checks.virus.run).
    """
    if not virus.configured(view):
        return None
    if all(bypass(r.address, "virus") for r in msg.recipients if not r.done):
        return None
    return virus.run(msg, tree, parts_dir, view, stats)


@dataclass
class Examined:
    """What decoding and the checks that need the parts found (before the spam verdict)."""

    tree: PartsTree
    faults: list[badheader.HeaderFault]
    hits: list[banned.BannedHit]
    verdicts: dict[str, banned.BannedVerdict]
    virus_result: virus.VirusResult | None
    lookups: Lookups
    decode_ms: float = 0.0                  # TimeElapsedDecoding
    virus_ms: float = 0.0                   # TimeElapsedVirusCheck (0: no scan ran)


def examine(msg: Message, view: Any, config: Any, tempdir: str, header_block: bytes,
            stats: Any = None) -> Examined:
    """Decode, check the header, banned names and viruses (section 2 steps 10-15).

    Runs on the reactor thread; the spam check, which needs only the spool file,
    may run meanwhile in a worker thread (amavisd.checks.spam.check with a reactor).
    Our own faults (disk, all virus scanners down) raise TempFail; bad mail never does.
    """
    t0 = time.monotonic()
    try:
        parts_dir = fresh_parts_dir(tempdir)
        tree = decode_message(msg, parts_dir, decode_limits(config))
    except OSError as exc:
        raise TempFail("parts_decode", str(exc)) from exc
    decode_ms = (time.monotonic() - t0) * 1000.0
    if stats is not None:
        stats.add("OpsDec")
    if tree.hold:
        log.info("decoding stopped: %s", tree.hold)
    allowed = {**badheader.ALLOWED_HEADER_TESTS, **(config.allowed_header_tests or {})}
    faults = badheader.run(header_block, smtputf8=msg.smtputf8, allowed_tests=allowed,
                           mime_errors=tree.mime_errors)
    lookups = Lookups(view)

    def bypass(address: str, kind: str) -> bool:
        return bool(lookups.per_recipient(f"bypass_{kind}_checks_maps", address))

    rules: dict[str, Any] = {}
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        rules[rcpt.address] = None if bypass(rcpt.address, "banned") else \
            lookups.per_recipient("banned_filename_maps", rcpt.address, get_all=True)
    hits = banned.run(tree, rules, config.banned_namepath_re, banned_rules=banned_rules(config))
    verdicts = banned.per_recipient(hits)
    t0 = time.monotonic()
    virus_result = virus_check(msg, view, tree, parts_dir, bypass, stats)
    virus_ms = (time.monotonic() - t0) * 1000.0 if virus_result is not None else 0.0
    return Examined(tree, faults, hits, verdicts, virus_result, lookups, decode_ms, virus_ms)


def conclude(msg: Message, view: Any, examined: Examined, bulk: bool,
             spam_result: spam.SpamResult | None = None) -> ContentResult:
    """Categories and the per-recipient decision (sections 12, 13), from all findings.

    ``spam_result`` is what ``amavisd.checks.spam.check`` found (None: no spam check).
    """
    tree, faults, hits, verdicts = examined.tree, examined.faults, examined.hits, \
        examined.verdicts
    virus_result, lookups = examined.virus_result, examined.lookups

    def bypass(address: str, kind: str) -> bool:
        return bool(lookups.per_recipient(f"bypass_{kind}_checks_maps", address))

    findings = decider.ContentFindings(
        banned_recipients={addr: v.banning_reason_short or "" for addr, v in verdicts.items()
                           if v.banning_rule_rhs and any(v.banning_rule_rhs)},
        badh_minors=badheader.badh_minors(faults),
        undecipherable=tree.any_undecipherable,
        encrypted=tree.any_encrypted,
        over_limits=tree.over_levels,
        ambiguous=tree.ambiguous,
        oversized=oversized_recipients(msg, view),
        virus_names=list(virus_result.virus_names) if virus_result else [],
        virus_check_failed=bool(virus_result and virus_result.failed))
    apply_av_spam(spam_result, virus_result)
    add_spam_findings(msg, view, findings, spam_result, bulk)
    dkim.adjust_spam_levels(msg, view)      # signer reputation (pipeline.md 11.2)
    result = ContentResult(tree, faults, hits, verdicts)
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        cats = decider.categorize(findings, rcpt, lambda kind, a=rcpt.address: bypass(a, kind))
        result.categories[rcpt.address] = list(cats.items)

        def lover(ccat: str, address: str = rcpt.address) -> bool:
            setting = decider.LOVERS_BY_CCAT.get(ccat.split(",")[0])
            return bool(setting and lookups.per_recipient(setting, address))

        def destiny_for(value: Any, address: str = rcpt.address) -> Any:
            if isinstance(value, (list, tuple)):
                return lookup(False, address, value)
            return value

        macros = {"F": findings.banned_recipients.get(rcpt.address, ""),
                  "V": ", ".join(findings.virus_names)}
        verdict = decider.decide_recipient(
            rcpt, cats, view=view, is_lover=lover, destiny_for=destiny_for,
            sender=msg.sender, bulk=bulk, log_id=msg.log_id, macros=macros)
        decider.apply_verdict(rcpt, verdict)
        rcpt.ccats = list(cats.items)
        banned_verdict = verdicts.get(rcpt.address)
        if banned_verdict is not None and rcpt.address in findings.banned_recipients:
            rcpt.banning_reason_short = banned_verdict.banning_reason_short
            rcpt.dsn_suppress_reason = banned_verdict.dsn_suppress_reason
        if decider.ccat_key(cats.main) > decider.ccat_key(result.main_ccat):
            result.main_ccat = cats.main
    result.main_ccat = message_categories(result, findings).main
    msg.findings["content"] = result
    msg.findings["ccat_main"] = result.main_ccat
    # the keys the header, quarantine and DSN actions read
    msg.findings["hold"] = tree.hold
    msg.findings["bad_headers"] = faults
    msg.findings["banned"] = hits
    msg.findings["ccats"] = sorted({c for cats in result.categories.values() for c in cats},
                                   key=decider.ccat_key, reverse=True)
    return result


def check_content(msg: Message, view: Any, config: Any, tempdir: str,
                  header_block: bytes, bulk: bool, stats: Any = None,
                  spam_result: spam.SpamResult | None = None) -> ContentResult:
    """``examine`` then ``conclude`` in one call (no spam check running meanwhile)."""
    examined = examine(msg, view, config, tempdir, header_block, stats)
    return conclude(msg, view, examined, bulk, spam_result)
