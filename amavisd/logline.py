"""The main per-message log line and the TIMING report (spec/monitoring.md 5.3, 5.4).

``Passed CLEAN {RelayedInbound}, [127.0.0.1] <alice@x> -> <bob@y>, Message-ID: <..>,
mail_id: .., Hits: -, size: 4090, queued_as: .., 71 ms`` - one line for the
delivered recipients and one for the blocked ones.  Built from the decision and
the outcomes only; checks never log it.

The daemon writes it through ``$log_templ`` / ``$log_recip_templ`` (``log_entries``:
our defaults in conf/templates/log-*.txt are amavis's built-in log templates);
``main_log_lines`` builds the same line by hand.  It is the reference the
template output is tested against, and the fallback when an admin's template
fails to expand.
"""

from __future__ import annotations

import re

from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS, D_REJECT, D_TEMPFAIL
from amavisd.message import Message, Recipient

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATOM}(\.{_ATOM})*")
_CCAT_LOG_NAMES = {0: "OTHER", 1: "CLEAN", 2: "MTA-BLOCKED", 3: "OVERSIZED", 5: "SPAMMY",
                   6: "SPAM"}


def ccat_log_name(ccat: str, banned_reason: str | None = None,
                  virus_names: list[str] | None = None) -> str:
    """The category word of the main log line (monitoring.md section 5.3)."""
    major, _, minor = ccat.partition(",")
    number = int(major)
    if number == 4:
        return f"BAD-HEADER-{minor or 0}"
    if number == 7:
        return "UNCHECKED-ENCRYPTED" if minor == "1" else "UNCHECKED"
    if number == 8:
        return f"BANNED ({banned_reason or ''})"
    if number == 9:
        return f"INFECTED ({', '.join(dict.fromkeys(virus_names or []))})"
    return _CCAT_LOG_NAMES.get(number, "OTHER")


def status_word(rcpt: Recipient) -> str:
    """Per-recipient status (InMsgsStatus*): Relayed, Rejected, TempFailed, ..."""
    if rcpt.reply is not None and rcpt.reply.is_tempfail:
        return "TempFailed"
    if rcpt.destiny == D_PASS and rcpt.reply is not None and rcpt.reply.is_ok:
        return "RelayedTagged" if rcpt.tagged else "Relayed"
    if rcpt.destiny == D_DISCARD:
        return "Discarded"
    if rcpt.destiny == D_BOUNCE:
        return "NoBounce" if getattr(rcpt, "dsn_suppressed", False) else "Bounced"
    if rcpt.destiny in (D_REJECT,) or (rcpt.reply is not None and rcpt.reply.is_permfail):
        return "Rejected"
    if rcpt.destiny == D_TEMPFAIL:
        return "TempFailed"
    return "Unknown"


def direction(is_local: bool, originating: bool) -> str:
    """monitoring.md section 1.3: Inbound/Internal for local, OpenRelay/Outbound otherwise."""
    if is_local:
        return "Internal" if originating else "Inbound"
    return "Outbound" if originating else "OpenRelay"


def quote_address(addr: str) -> str:
    """``<addr>``, quoting the local part when RFC 5321 needs it; ``<>`` for null."""
    if addr == "":
        return "<>"
    local, at, domain = addr.rpartition("@")
    if not at:
        local, domain = addr, ""
    if local and not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>" if at else f"<{local}>"


def actions_performed(msg: Message, local: list[bool] | tuple[bool, ...]) -> list[str]:
    """``%actions_performed``: the recipients' status words with their direction, once
    each and sorted by their InMsgsStatus counter name (``RelayedTagged`` before
    ``RelayedUntagged``, shown as ``Relayed``), then what the actions added
    (``Quarantined``, ``Archived``); the same list on the Passed and the Blocked line
    (spec monitoring.md 5.3)."""
    names = set()
    for rcpt, is_local in zip(msg.recipients, local, strict=True):
        word = status_word(rcpt)
        names.add(("RelayedUntagged" if word == "Relayed" else word)
                  + direction(bool(is_local), msg.originating))
    actions = [re.sub(r"\ARelayedUntagged", "Relayed", n) for n in sorted(names)]
    return actions + [a for a in msg.actions_performed if a not in actions]


def _queued_as(rcpts: list[Recipient]) -> str | None:
    ids: list[str] = []
    for rcpt in rcpts:
        if rcpt.queued_as and rcpt.queued_as not in ids:
            ids.append(rcpt.queued_as)
    return "/".join(ids) if ids else None


def main_log_lines(msg: Message, facts, local_of, elapsed_ms: float,
                   origin_ip: str | None, quarantined: list[str] | None = None) -> list[str]:
    """The Passed line and/or the Blocked line for one message."""
    passed = [r for r in msg.recipients if r.destiny == D_PASS and r.reply and r.reply.is_ok]
    blocked = [r for r in msg.recipients if r not in passed]
    lines = []
    for word, group in (("Passed", passed), ("Blocked", blocked)):
        if not group:
            continue
        ccat = _category(msg, group, word)
        content = msg.findings.get("content")
        reason = None
        if content is not None:
            reason = next((content.banned[r.address].banning_reason_short for r in group
                           if r.address in content.banned), None) or next(
                (v.banning_reason_short for v in content.banned.values()), None)
        actions = actions_performed(msg, [bool(local_of(r.address)) for r in msg.recipients])
        name = ccat_log_name(ccat, reason, msg.findings.get("virus_names"))
        parts = [f"{word} {name} {{{','.join(actions)}}},"]
        if msg.policy_bank_path:
            parts.append(msg.policy_bank_path)
        client = msg.client
        if client.addr:
            if msg.originating:
                parts.append("LOCAL")
            parts.append(f"[{client.addr}]:{client.port}" if client.port else f"[{client.addr}]")
        if origin_ip:
            parts.append(f"[{origin_ip}]")
        recips = ",".join(quote_address(r.address) for r in group)
        line = " ".join(parts) + f" {quote_address(msg.sender)} -> {recips}"
        extras = []
        if quarantined:
            extras.append(f"quarantine: {', '.join(quarantined)}")
        if client.ident:
            extras.append(f"Queue-ID: {client.ident}")
        if facts.message_id:
            extras.append(f"Message-ID: {facts.message_id}")
        if facts.resent_message_id:
            extras.append(f"Resent-Message-ID: {facts.resent_message_id}")
        if msg.mail_id:
            extras.append(f"mail_id: {msg.mail_id}")
        extras.append(f"Hits: {msg.findings.get('hits', '-')}")
        extras.append(f"size: {msg.size}")
        partition = msg.findings.get("partition_tag")
        if partition not in (None, "", 0, "0"):
            extras.append(f"pt: {partition}")
        if word == "Passed":
            queued = _queued_as(group)
            if queued:
                extras.append(f"queued_as: {queued}")
        for label in ("dkim_sd", "dkim_new"):     # valid / our new signatures, s:d
            if msg.findings.get(label):
                extras.append(f"{label}={','.join(msg.findings[label])}")
        extras.append(f"{elapsed_ms:.0f} ms")
        lines.append(line + ", " + ", ".join(extras))
    return lines


def _category(msg: Message, group: list[Recipient], word: str) -> str:
    """Blocked: the blocking category; Passed: the blocking one if any, else the main one
    of the passed recipients."""
    blocking = [r.ccat_blocking for r in group if r.ccat_blocking]
    if blocking:
        return max(blocking, key=lambda c: tuple(int(x) for x in c.split(",")))
    content = msg.findings.get("content")
    if content is not None:
        mains = [content.categories[r.address][0] for r in group
                 if r.address in content.categories]
        if mains:
            mains.append(msg.findings.get("ccat_main", "1"))
            return max(mains, key=lambda c: tuple(int(x) for x in c.split(",")))
    return msg.findings.get("ccat_main", "1")


def timing_report(size: int, sections: list[tuple[str, float]], total_ms: float) -> str:
    """``size: N, TIMING [total T ms] - name: ms (pct%)cum, ...`` (monitoring.md 5.4)."""
    parts = []
    cumulative = 0.0
    for name, ms in sections:
        cumulative += ms
        pct = 100.0 * ms / total_ms if total_ms else 0.0
        cum = 100.0 * cumulative / total_ms if total_ms else 0.0
        value = f"{ms:.0f}" if ms >= 5 else f"{ms:.1f}"
        parts.append(f"{name}: {value} ({pct:.0f}%){cum:.0f}")
    return f"size: {size}, TIMING [total {total_ms:.0f} ms] - " + ", ".join(parts)
