"""Content categories and per-recipient destiny: pure functions, no I/O, no clock.

spec/pipeline.md sections 12, 13 and 17.  ``categorize`` turns the findings of the
checks into each recipient's sorted category list; ``decide`` walks that list with
``%final_destiny_maps_by_ccat`` and ``%lovers_maps_by_ccat`` and either lets the
recipient pass or blocks it with a destiny and the reply amavis would give.
After forwarding, ``apply_mta_failure`` turns a next-hop refusal into CC_MTA.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amavisd.constants import (
    CC_BADH,
    CC_BANNED,
    CC_CATCHALL,
    CC_CLEAN,
    CC_MTA,
    CC_OVERSIZED,
    CC_SPAM,
    CC_SPAMMY,
    CC_UNCHECKED,
    CC_VIRUS,
    D_BOUNCE,
    D_DISCARD,
    D_PASS,
    D_REJECT,
    D_TEMPFAIL,
)
from amavisd.errors import Reply
from amavisd.message import Message, Recipient

log = logging.getLogger(__name__)

CCAT_CLEAN = str(CC_CLEAN)
CCAT_MTA_TEMPFAILED = f"{CC_MTA},1"
CCAT_MTA_REJECTED = f"{CC_MTA},2"

#: %smtp_reason_by_ccat defaults (section 13 step 6).
SMTP_REASON_BY_CCAT = {
    f"{CC_VIRUS}": "id=%n - INFECTED: %V",
    f"{CC_BANNED}": "id=%n - BANNED: %F",
    f"{CC_UNCHECKED},1": "id=%n - UNCHECKED: encrypted",
    f"{CC_UNCHECKED},2": "id=%n - UNCHECKED: over limits",
    f"{CC_UNCHECKED},3": "id=%n - UNCHECKED: ambiguous content",
    f"{CC_UNCHECKED}": "id=%n - UNCHECKED",
    f"{CC_SPAM}": "id=%n - spam",
    f"{CC_SPAMMY},1": "id=%n - spammy (tag3)",
    f"{CC_SPAMMY}": "id=%n - spammy",
    f"{CC_BADH},1": "id=%n - BAD HEADER: MIME error",
    f"{CC_BADH},2": "id=%n - BAD HEADER: nonencoded 8-bit character",
    f"{CC_BADH},3": "id=%n - BAD HEADER: contains invalid control character",
    f"{CC_BADH},4": "id=%n - BAD HEADER: line made up entirely of whitespace",
    f"{CC_BADH},5": "id=%n - BAD HEADER: line longer than RFC 5322 limit",
    f"{CC_BADH},6": "id=%n - BAD HEADER: syntax error",
    f"{CC_BADH},7": "id=%n - BAD HEADER: missing required header field",
    f"{CC_BADH},8": "id=%n - BAD HEADER: duplicate header field",
    f"{CC_BADH}": "id=%n - BAD HEADER",
    f"{CC_OVERSIZED}": "id=%n - Message size exceeds recipient's size limit",
    f"{CC_MTA},1": "id=%n - Temporary MTA failure on relaying",
    f"{CC_MTA},2": "id=%n - Rejected by next-hop MTA on relaying",
    f"{CC_MTA}": "id=%n - Unable to relay message back to MTA",
    f"{CC_CLEAN}": "id=%n - CLEAN",
    f"{CC_CATCHALL}": "id=%n - OTHER",
}

#: %lovers_maps_by_ccat: the *_lovers_maps setting consulted per major category.
LOVERS_BY_CCAT = {
    str(CC_VIRUS): "virus_lovers_maps",
    str(CC_BANNED): "banned_files_lovers_maps",
    str(CC_UNCHECKED): "unchecked_lovers_maps",
    str(CC_SPAM): "spam_lovers_maps",
    str(CC_SPAMMY): "spam_lovers_maps",
    str(CC_BADH): "bad_header_lovers_maps",
}

#: The status of a blocked recipient's reply, by blocking category (section 13 step 6).
_STATUS_BY_MAJOR = {CC_BADH: (554, "5.6.0"), CC_OVERSIZED: (552, "5.3.4"), CC_MTA: (550, "5.3.5")}
_WORDS = {D_DISCARD: "Ok, discarded", D_REJECT: "Reject", D_BOUNCE: "Bounce",
          D_TEMPFAIL: "Temporary failure"}
REASON_MAX = 450


def ccat_key(ccat: str) -> tuple[int, int]:
    major, _, minor = ccat.partition(",")
    return int(major), int(minor or 0)


@dataclass
class Categories:
    """A sorted, descending list of ``'maj'``/``'maj,min'`` strings; always holds CLEAN."""

    items: list[str] = field(default_factory=lambda: [CCAT_CLEAN])

    def add(self, ccat: str) -> None:
        for item in (ccat, ccat.split(",")[0]):
            if item not in self.items:
                self.items.append(item)
        self.items.sort(key=ccat_key, reverse=True)

    @property
    def main(self) -> str:
        return self.items[0]


@dataclass
class ContentFindings:
    """What the checks found, in the form ``categorize`` needs."""

    banned_recipients: dict[str, str] = field(default_factory=dict)   # address -> %F text
    badh_minors: list[int] = field(default_factory=list)
    undecipherable: bool = False
    encrypted: bool = False
    over_limits: bool = False
    ambiguous: bool = False
    oversized: dict[str, int] = field(default_factory=dict)           # address -> limit
    virus_names: list[str] = field(default_factory=list)
    #: every virus scanner failed (pipeline.md 2 step 15): CC_UNCHECKED,0
    virus_check_failed: bool = False
    #: address -> ``amavisd.checks.spam.RecipientSpam`` (level, tag levels, w/b listing).
    spam: dict[str, Any] = field(default_factory=dict)


def categorize(findings: ContentFindings, rcpt: Recipient,
               bypass: Callable[[str], bool]) -> Categories:
    """The recipient's categories from the findings (section 12.3).

    ``bypass(kind)`` answers the recipient's ``bypass_<kind>_checks_maps``.
    """
    cats = Categories()
    if not bypass("virus"):
        if findings.virus_names:
            cats.add(str(CC_VIRUS))
        if findings.undecipherable or findings.encrypted or findings.over_limits \
                or findings.virus_check_failed:
            cats.add(str(CC_UNCHECKED))
        if findings.encrypted:
            cats.add(f"{CC_UNCHECKED},1")
        if findings.over_limits:
            cats.add(f"{CC_UNCHECKED},2")
    if findings.ambiguous:
        cats.add(f"{CC_UNCHECKED},3")
    if findings.badh_minors and not bypass("header"):
        for minor in findings.badh_minors:
            cats.add(f"{CC_BADH},{minor}" if minor else str(CC_BADH))
    if rcpt.address in findings.banned_recipients and not bypass("banned"):
        cats.add(str(CC_BANNED))
    if rcpt.address in findings.oversized:
        cats.add(str(CC_OVERSIZED))
    spam = findings.spam.get(rcpt.address)
    if spam is not None and not bypass("spam"):
        for ccat in spam_categories(spam):
            cats.add(ccat)
    return cats


def spam_categories(spam: Any) -> list[str]:
    """CC_CLEAN,1 / CC_SPAMMY / CC_SPAMMY,1 / CC_SPAM from one recipient's level
    (section 12.3, section 13 step 1).

    A whitelisted sender is tagged at ``level - 10 >= tag`` and never reaches
    tag2/tag3/kill; a blacklisted one reaches tag, tag2 and kill whatever the
    level.  An undefined (or empty) tag level tags everyone; a level no spam check
    set counts as 0, as in Perl.
    """
    level = spam.level or 0.0
    bl, wl = spam.blacklisted, spam.whitelisted
    tag = spam.tag_level
    out = []
    if bl or tag is None or tag == "" or level + (-10 if wl else 0) >= float(tag):
        out.append(f"{CC_CLEAN},1")

    def reached(threshold: Any) -> bool:
        return not wl and (bl or (threshold is not None and level >= float(threshold)))

    tag3 = reached(spam.tag3_level)
    if reached(spam.tag2_level) or tag3:
        out.append(str(CC_SPAMMY))
    if tag3:
        out.append(f"{CC_SPAMMY},1")
    if reached(spam.kill_level):
        out.append(str(CC_SPAM))
    return out


def final_destiny_map(view: Any) -> dict[str, Any]:
    """The effective %final_destiny_maps_by_ccat: the final_*_destiny settings, then overrides."""
    effective: dict[str, Any] = {
        str(CC_VIRUS): view.final_virus_destiny,
        str(CC_BANNED): view.final_banned_destiny,
        str(CC_UNCHECKED): view.final_unchecked_destiny,
        str(CC_SPAM): view.final_spam_destiny,
        str(CC_BADH): view.final_bad_header_destiny,
        CCAT_MTA_TEMPFAILED: D_TEMPFAIL,
        CCAT_MTA_REJECTED: D_REJECT,
        str(CC_MTA): D_TEMPFAIL,
        str(CC_OVERSIZED): D_BOUNCE,
        str(CC_CATCHALL): D_PASS,
    }
    for key, value in (view.final_destiny_maps_by_ccat or {}).items():
        if type(value).__name__ == "PerlCode":
            continue          # amavis's own default subs: the settings above say the same
        effective[str(key)] = value
    return effective


@dataclass
class Verdict:
    """The decision for one recipient."""

    destiny: int
    blocking_ccat: str | None
    categories: Categories
    reply: Reply | None = None


def decide_recipient(rcpt: Recipient, cats: Categories, *, view: Any,
                     is_lover: Callable[[str], bool],
                     destiny_for: Callable[[Any], Any], sender: str, bulk: bool,
                     log_id: str, macros: dict[str, str]) -> Verdict:
    """Section 13 step 3: walk the categories top-down (plus CATCHALL) until one blocks."""
    destinies = final_destiny_map(view)
    for ccat in [*cats.items, str(CC_CATCHALL)]:
        if ccat not in destinies:
            continue
        destiny = destiny_for(destinies[ccat])
        if destiny is None or destiny == D_PASS:
            continue
        if is_lover(ccat):
            continue
        if destiny == D_BOUNCE and ccat_key(ccat)[0] == CC_BADH and (sender == "" or bulk):
            log.info("allow bad header section from %s", sender or "<>")
            continue
        reply = blocked_reply(ccat, int(destiny), view, log_id, macros)
        return Verdict(int(destiny), ccat, cats, reply)
    return Verdict(D_PASS, None, cats)


def blocked_reply(ccat: str, destiny: int, view: Any, log_id: str,
                  macros: dict[str, str]) -> Reply:
    """``<code> <enh> <word>[ (soft_bounce)], <reason>`` (section 13 step 6)."""
    major = ccat_key(ccat)[0]
    code, enhanced = _STATUS_BY_MAJOR.get(major, (554, "5.7.0"))
    if ccat == f"{CC_BADH},2":
        code, enhanced = 554, "5.6.3"
    word = _WORDS.get(destiny, "Reject")
    if destiny == D_DISCARD:
        code, enhanced = 250, "2" + enhanced[1:]
    elif destiny == D_TEMPFAIL:
        code, enhanced = 450, "4" + enhanced[1:]
    elif view.soft_bounce and code >= 500:
        code, enhanced = 450, "4" + enhanced[1:]
        word += " (soft_bounce)"
    reasons = dict(SMTP_REASON_BY_CCAT)
    reasons.update({str(k): v for k, v in (view.smtp_reason_by_ccat or {}).items()})
    template = reasons.get(ccat) or reasons.get(str(major)) or reasons[str(CC_CATCHALL)]
    reason = expand(template, {"n": log_id, **macros})[:REASON_MAX]
    return Reply(code, enhanced, f"{word}, {reason}")


def expand(template: str, macros: dict[str, str]) -> str:
    """The few macros a reply reason uses: %n log id, %F banned part, %V virus names."""
    return re.sub(r"%(.)", lambda m: macros.get(m.group(1), m.group(0)), template)


def decide(msg: Message) -> None:
    """Every open recipient passes as CLEAN: the relay path without content checks."""
    msg.findings.setdefault("ccat_main", CCAT_CLEAN)
    for rcpt in msg.recipients:
        if rcpt.done:
            continue
        rcpt.destiny = D_PASS
        rcpt.ccat_blocking = None


def apply_verdict(rcpt: Recipient, verdict: Verdict) -> None:
    """Record the decision on the recipient; a blocked one is done (decided by us)."""
    rcpt.destiny = verdict.destiny
    rcpt.ccat_blocking = verdict.blocking_ccat
    if verdict.blocking_ccat is not None:
        rcpt.reply = verdict.reply
        rcpt.done = 1


def apply_mta_failure(rcpt: Recipient, log_id: str) -> None:
    """After forwarding: a non-2xx reply from the next hop becomes CC_MTA (section 5.4).

    The reply keeps the next hop's code and enhanced code and gains amavis's reason:
    ``550 5.1.1 id=<log_id> - Rejected by next-hop MTA on relaying, from MTA(...): ...``.
    """
    reply = rcpt.reply
    if reply is None or reply.is_ok:
        return
    if reply.is_tempfail:
        rcpt.destiny = D_TEMPFAIL
        rcpt.ccat_blocking = CCAT_MTA_TEMPFAILED
        reason = "Temporary MTA failure on relaying"
    else:
        rcpt.destiny = D_REJECT
        rcpt.ccat_blocking = CCAT_MTA_REJECTED
        reason = "Rejected by next-hop MTA on relaying"
    rcpt.reply = Reply(reply.code, reply.enhanced, f"id={log_id} - {reason}, {reply.text}")
