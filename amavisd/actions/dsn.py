# tests: t/actions/test_dsn.py
"""Delivery status notifications (bounces) built and sent by amavis itself.

Runs in the child after forwarding (spec/pipeline.md section 18, protocols.md 3.8).

* ``plan`` walks the recipients in section 18's order and says who goes into a
  DSN and who was suppressed (null sender, NOTIFY, DISCARD, sender-faking viruses,
  banned rules, spam cutoffs, bulk mail, p0f), and who is propagated to the MTA.
* ``build`` writes the DSN as a file in the message's temp folder: RFC 6522
  ``multipart/report; report-type=delivery-status`` with a text part, the RFC 3464
  ``message/delivery-status`` part, and the returned header section (or, with
  RET=FULL, the whole message).  The original is streamed from the spool, never
  read whole into memory.
* ``send`` hands it to ``forward`` at ``$notify_method`` with ``MAIL FROM:<>``,
  ``RCPT TO:<sender> ORCPT=rfc822;<sender>`` and an ``AM.<mail_id>.<time>@<host>``
  ENVID, and turns a 4xx into ``TempFail`` when nothing was forwarded yet
  (protocols.md 3.8).  It records ``dsn_sent`` (1 sent, 2 suppressed) in findings.

The text part is our own wording, following the fields of the Debian template
(subject by category, delivered / not delivered lists, reference id).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from amavisd import ids
from amavisd.actions.quarantine import (
    FactsFor,
    RecipientFacts,
    ccat_key,
    recipient_facts,
)
from amavisd.constants import (
    CC_BADH,
    CC_BANNED,
    CC_CLEAN,
    CC_MTA,
    CC_OVERSIZED,
    CC_SPAM,
    CC_SPAMMY,
    CC_UNCHECKED,
    CC_VIRUS,
    D_DISCARD,
    D_PASS,
    D_REJECT,
)
from amavisd.errors import Reply, TempFail
from amavisd.header import header_facts, read_header_block
from amavisd.message import Message, Recipient
from amavisd.received import rfc2822_date

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
SECTION = "delivery-notification"

#: Settings read here, with their upstream defaults (spec sections 18, 19, 5.1).
DEFAULTS: dict[str, Any] = {
    "myhostname": "localhost",
    "hdrfrom_notify_sender": '"Content-filter at ${myhostname_utf8}" '
                             "<postmaster@${myhostname_ascii}>",
    "notify_method": None,
    "forward_method": "smtp:[127.0.0.1]:10025",
    "viruses_that_fake_sender_maps": [1],
    "spam_dsn_cutoff_level_maps": None,            # None: [$sa_dsn_cutoff_level]
    "spam_dsn_cutoff_level_bysender_maps": None,   # None: [$sa_dsn_cutoff_level]
    "spam_crediblefrom_dsn_cutoff_level_maps": None,
    "spam_crediblefrom_dsn_cutoff_level_bysender_maps": None,
    "sa_dsn_cutoff_level": None,
    "sa_crediblefrom_dsn_cutoff_level": None,
    "dsn_bcc": None,
    "propagate_dsn_if_possible": True,
    "dsn_return_full_message": True,               # ours: RET=FULL returns the message
    "recipient_delimiter": None,
    "localpart_is_case_sensitive": False,
}


def setting(view: Any, name: str) -> Any:
    """Settings come from the view; names the registry lacks fall back to DEFAULTS."""
    return getattr(view, name, DEFAULTS.get(name))


# ------------------------------------------------------------------ who gets reported


@dataclass
class DsnEntry:
    """One recipient in the DSN: its RFC 3464 action and the reply being reported."""

    rcpt: Recipient
    action: str                     # failed | delivered | relayed
    reply: Reply


@dataclass
class DsnPlan:
    """The outcome of section 18's walk over the recipients."""

    entries: list[DsnEntry] = field(default_factory=list)
    suppressed: list[tuple[Recipient, str]] = field(default_factory=list)
    propagated: list[Recipient] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return bool(self.entries)

    @property
    def any_failed(self) -> bool:
        return any(e.action == "failed" for e in self.entries)


_MLIST_SENDER = re.compile(r"^(?:[^@]+-(?:request|bounces|owner|admin)|owner-[^@]+)(?:@|\Z)",
                           re.I | re.S)
_MLIST_FROM = re.compile(r"^(?:[^@]+-(?:request|bounces|owner)|owner-[^@]+)(?:@|\Z)", re.I | re.S)
_AUTO_ADDR = re.compile(r"^(?:mailer-daemon|double-bounce|mailer|autoreply)(?:@|\Z)", re.I | re.S)
_BULK_FROM = re.compile(r"^(?:[^@]+-relay|postmaster|uucp)(?:@|\Z)", re.I | re.S)


def bulk_kind(header_block: bytes, sender: str) -> str | None:
    """Section 4 'Bulk': mailing list, else auto-submitted, else Precedence bulk|junk, else From.

    Returns a short description (as amavis logs it) or None.  Reads only the header.
    """
    from email.parser import BytesHeaderParser
    from email.policy import compat32
    from email.utils import getaddresses

    hdr = BytesHeaderParser(policy=compat32).parsebytes(header_block)

    def body(name: str) -> str | None:
        value = hdr.get(name)
        return None if value is None else " ".join(str(value).split())

    author = ""
    froms = getaddresses([body("From") or ""])
    if froms:
        author = froms[0][1]
    mlist = None
    for name in ("List-Id", "List-Post", "List-Unsubscribe", "Mailing-List"):
        if (value := body(name)) is not None:
            mlist = value
            break
    else:
        if _MLIST_SENDER.match(sender):
            mlist = f"sender={sender}"
        elif _MLIST_FROM.match(author):
            mlist = f"From:{author}"
    auto = bulk = None
    if (prec := body("Precedence")) is not None:
        if mlist is None and (m := re.match(r"(list)", prec, re.I)):
            mlist = m.group(1)
        if m := re.match(r"(auto.?reply)\b", prec, re.I):
            auto = m.group(1)
        if m := re.match(r"(bulk|junk)\b", prec, re.I):
            bulk = m.group(1)
    if auto is None:
        if (value := body("Auto-Submitted")) is not None:
            value = re.sub(r"\([^)]*\)", "", value).strip()
            if value.lower() != "no":
                auto = f"Auto-Submitted:{value}"
        elif sender == "":
            auto = "sender=<>"
        elif _AUTO_ADDR.match(sender):
            auto = f"sender={sender}"
        elif _AUTO_ADDR.match(author):
            auto = f"From:{author}"
    if mlist is not None:
        if m := re.search(r"<(.*)>[^>]*\Z", mlist, re.S):
            mlist = m.group(1)
        mlist = re.sub(r"^mailto:", "", " ".join(mlist.split()), flags=re.I)
        return f"ml:{mlist}"
    if auto is not None:
        return auto
    if bulk is not None:
        return bulk
    if _BULK_FROM.match(author):
        return f"From:{author}"
    return None


def _notify_flags(rcpt: Recipient, sender: str) -> tuple[bool, bool, bool, bool]:
    """(on_failure, on_success, on_delay, never); no NOTIFY means FAILURE,DELAY (RFC 3461)."""
    if rcpt.notify is None:
        failure, success, delay, never = True, False, True, False
    else:
        values = {v.upper() for v in rcpt.notify}
        failure, success, delay, never = ("FAILURE" in values, "SUCCESS" in values,
                                          "DELAY" in values, "NEVER" in values)
    if never or sender == "":
        failure = success = delay = False
    return failure, success, delay, never


def _virus_fakes_sender(msg: Message, view: Any) -> bool:
    """``@viruses_that_fake_sender_maps`` asked with each virus name (section 18)."""
    tables = setting(view, "viruses_that_fake_sender_maps")
    tables = list(tables) if isinstance(tables, (list, tuple)) else [tables]
    return any(_ask(view, tables, name) for name in msg.findings.get("virus_names") or [])


def _maps(view: Any, name: str, scalar: str) -> list[Any]:
    tables = setting(view, name)
    if tables is None:
        tables = [setting(view, scalar)]
    return tables if isinstance(tables, (list, tuple)) else [tables]


def _ask(view: Any, tables: list[Any], key: str) -> Any:
    from amavisd.config.lookup import lookup
    return lookup(False, key, tables, recipient_delimiter=setting(view, "recipient_delimiter"),
                  localpart_is_case_sensitive=bool(setting(view, "localpart_is_case_sensitive")))


def plan(msg: Message, view: Any, *, per_recipient_capable: bool,
         facts_for: FactsFor = recipient_facts) -> DsnPlan:
    """Section 18: per recipient, the first rule that applies decides (order kept)."""
    result = DsnPlan()
    sender = msg.sender
    all_rejected = bool(msg.recipients) and all(
        r.destiny == D_REJECT and r.reply is not None and r.reply.is_permfail
        for r in msg.recipients)
    passed_on = msg.findings.get("dsn_passed_on",
                                 bool(setting(view, "propagate_dsn_if_possible")))
    credible = bool(msg.findings.get("sender_credible"))
    prefix = "spam_crediblefrom_dsn_cutoff_level" if credible else "spam_dsn_cutoff_level"
    scalar = "sa_crediblefrom_dsn_cutoff_level" if credible else "sa_dsn_cutoff_level"
    bysender_cutoff = None
    if sender:
        bysender_cutoff = _ask(view, _maps(view, f"{prefix}_bysender_maps", scalar), sender)
    byrecip_maps = _maps(view, f"{prefix}_maps", scalar)
    fakes = _virus_fakes_sender(msg, view)
    bulk = msg.findings.get("is_bulk")
    if bulk is None:
        try:
            bulk = bulk_kind(read_header_block(msg.spool_path), sender)
        except OSError:
            bulk = None
    p0f = str(msg.findings.get("os_fingerprint") or "")
    for rcpt in msg.recipients:
        facts = facts_for(msg, rcpt)
        reply = rcpt.reply
        if reply is None:
            if rcpt.delivery_method == "":
                reply = Reply(250, "2.5.0", "Ok, continue delivery")
            else:
                log.error("TROUBLE: recipient not done: <%s>", rcpt.address)
                continue
        klass = reply.code // 100
        failure, success, _delay, never = _notify_flags(rcpt, sender)
        level = facts.spam_level or 0.0
        why = None
        if klass == 4:
            continue                                  # 4xx: not reported
        if klass == 5 and rcpt.destiny == D_REJECT and (per_recipient_capable or all_rejected):
            result.propagated.append(rcpt)
            continue
        if klass == 5 and not failure:
            why = f"NOTIFY {'explicitly' if never else 'implicitly'} IGNORED"
        elif klass == 2 and not success:
            continue
        elif klass == 2 and success and passed_on:
            continue
        elif never or sender == "":
            why = "NEVER" if never else "null sender"
        elif rcpt.destiny == D_DISCARD:
            why = "destiny=DISCARD"
        elif reason := _suppress_reason(facts, fakes):
            why = f"suppress reason: {reason}"
        elif bysender_cutoff not in (None, "") and level >= float(bysender_cutoff):
            why = f"spam level {level:.3f} exceeds cutoff {bysender_cutoff}"
        elif _byrecip_cutoff(view, byrecip_maps, rcpt, facts, level):
            why = "spam level exceeds by-recipient cutoff"
        elif bulk and ccat_key(facts.ccats[0])[0] > CC_CLEAN:
            why = f"bulk mail ({bulk})"
        elif p0f.startswith("Windows") and not msg.findings.get("dkim_envsender_sig") and \
                level >= (5 if re.match(r"Windows XP(?![^(]*\b2000 SP)", p0f) else 8):
            why = f"mail from {' '.join(p0f.split()[:2])}"
        if why is not None:
            log.info("DSN: suppressed, %s: <%s> -> <%s>", why, sender, rcpt.address)
            result.suppressed.append((rcpt, why))
            continue
        if rcpt.done == 2:
            action = "failed" if klass == 5 else "relayed"
        elif rcpt.done == 1:
            action = "failed" if klass == 5 else "delivered"
        else:
            action = "relayed"
        result.entries.append(DsnEntry(rcpt, action, reply))
    return result


def _suppress_reason(facts: RecipientFacts, fakes: bool) -> str | None:
    if fakes:
        return "INFECTED" + (f", {facts.dsn_suppress_reason}" if facts.dsn_suppress_reason
                             else "")
    return facts.dsn_suppress_reason


def _byrecip_cutoff(view: Any, tables: list[Any], rcpt: Recipient, facts: RecipientFacts,
                    level: float) -> bool:
    cutoff = _ask(view, tables, rcpt.address)
    if cutoff in (None, ""):
        return False
    return level >= float(cutoff) or (facts.blacklisted and not facts.whitelisted)


# ------------------------------------------------------------------ the message


def expand_host(template: str, myhostname: str) -> str:
    """``${myhostname}``, ``${myhostname_utf8}``, ``${myhostname_ascii}`` (section 19)."""
    try:
        ascii_name = myhostname.encode("idna").decode("ascii") if not myhostname.isascii() \
            else myhostname
    except UnicodeError:
        ascii_name = myhostname
    return (template.replace("${myhostname_utf8}", myhostname)
            .replace("${myhostname_ascii}", ascii_name).replace("${myhostname}", myhostname))


def xtext_decode(value: str) -> str:
    """RFC 3461 xtext: ``+XX`` is a hex-coded byte."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _sanitize(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group(0)):02X}", text)


def wrap_words(text: str, first: int, width: int) -> list[str]:
    """Greedy word wrap: the first line holds ``first`` columns, the others ``width``."""
    lines: list[str] = []
    current = ""
    limit = first
    for word in text.split(" "):
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= limit:
            current += " " + word
        else:
            lines.append(current)
            current, limit = word, width
    lines.append(current)
    return lines


def diagnostic_code(reply: Reply) -> str:
    """``Diagnostic-Code: smtp; <reply>``; a long reply becomes a multi-line one (RFC 3461 9.2).

    As amavis does: words wrapped so each line fits 78 columns after the 23
    characters of ``Diagnostic-Code: smtp; ``, every line but the last ``ddd-x.y.z``.
    """
    text = str(reply)
    if len(text) > 78 - 23:
        lines = wrap_words(text, 78 - 23, 78 - 11)
        code = f"{reply.code}"
        enh = f"{reply.enhanced} " if reply.enhanced else ""
        lead = f"{code} {enh}"
        body = [lines[0][len(lead):] if lines[0].startswith(lead) else lines[0]] + lines[1:]
        out = [f"{code}-{enh}{b}" for b in body[:-1]] + [f"{code} {enh}{body[-1]}"]
        text = "\n ".join(out)
    return f"Diagnostic-Code: smtp; {text}\n"


def delivery_status(msg: Message, dsn_plan: DsnPlan, view: Any) -> str:
    """The ``message/delivery-status`` body (RFC 3464; fields as section 18 lists them)."""
    myhost = str(setting(view, "myhostname") or "localhost")
    date = rfc2822_date(msg.rx_time or time.time())
    text = f"Reporting-MTA: dns; {myhost}\n"
    if msg.client.mta_helo:
        text += f"Received-From-MTA: dns; {msg.client.mta_helo} ([{msg.client.mta_addr}])\n"
    text += f"Arrival-Date: {date}\n"
    if msg.dsn_envid:
        text += f"Original-Envelope-Id: {_sanitize(xtext_decode(msg.dsn_envid))}\n"
    final_log_id = msg.log_id + (f"/{msg.mail_id}" if msg.mail_id else "")
    for entry in dsn_plan.entries:
        rcpt, reply = entry.rcpt, entry.reply
        text += "\n"
        if rcpt.orcpt:
            kind, _, addr = rcpt.orcpt.partition(";")
            text += f"Original-Recipient: {kind};{addr}\n"
        text += f"Final-Recipient: rfc822;{rcpt.quoted}\n"
        text += f"Action: {entry.action}\n"
        text += f"Status: {reply.enhanced or f'{reply.code // 100}.0.0'}\n"
        text += diagnostic_code(reply)
        text += f"Last-Attempt-Date: {date}\n"
        text += f"Final-Log-ID: {final_log_id}\n"
    return text


def _main_ccat(msg: Message, facts_for: FactsFor) -> tuple[int, int]:
    blocking = [r.ccat_blocking for r in msg.recipients if r.ccat_blocking]
    if blocking:
        return max(ccat_key(c) for c in blocking)
    return ccat_key(msg.findings.get("ccat_main", "1"))


_BADH_DETAIL = {1: ": bad MIME", 2: ": unencoded 8-bit character",
                3: ": improper use of control char", 4: ": all-whitespace header line",
                5: ": header line longer than 998 characters", 6: ": header field syntax error",
                7: ": missing required header field", 8: ": duplicate header field"}


def subject(msg: Message, dsn_plan: DsnPlan, facts_for: FactsFor) -> str:
    """Subject by what was delivered and the blocking category (section 19.3's structure)."""
    delivered = any(r.destiny == D_PASS and (r.reply is None or r.reply.is_ok)
                    for r in msg.recipients)
    text = "Delivery status notification" if delivered else "Undeliverable mail"
    major, minor = _main_ccat(msg, facts_for)
    names = ", ".join(msg.findings.get("virus_names") or [])
    banned = _banned_reason(msg, facts_for)
    reason = {
        CC_MTA: ", MTA-BLOCKED",
        CC_OVERSIZED: ", OVERSIZED message",
        CC_BADH: ", invalid header section" + _BADH_DETAIL.get(minor, ""),
        CC_SPAMMY: ", UNSOLICITED BULK EMAIL apparently from you",
        CC_SPAM: ", UNSOLICITED BULK EMAIL apparently from you",
        CC_UNCHECKED: ", contents UNCHECKED",
        CC_BANNED: f", BANNED contents type ({banned})",
        CC_VIRUS: f", VIRUS in message apparently from you ({names})",
    }.get(major, "")
    return text + reason


def _banned_reason(msg: Message, facts_for: FactsFor) -> str:
    for rcpt in msg.recipients:
        reason = facts_for(msg, rcpt).banning_reason_short
        if reason:
            return reason
    return ""


def _message_id_prefix(msg: Message, facts_for: FactsFor) -> str:
    major = _main_ccat(msg, facts_for)[0]
    return "VS" if major in (CC_VIRUS, CC_BANNED) else "SS" if major == CC_SPAM else "DSN"


def report_text(msg: Message, dsn_plan: DsnPlan, view: Any, facts_for: FactsFor) -> str:
    """The human-readable first part: our wording, the template's fields."""
    myhost = str(setting(view, "myhostname") or "localhost")
    lines = [f"This is the mail system of the content filter at {myhost}.", ""]
    delivered = [r for r in msg.recipients
                 if r.destiny == D_PASS and (r.reply is None or r.reply.is_ok)]
    failed = [e for e in dsn_plan.entries if e.action == "failed"]
    if delivered:
        lines.append("Your message was delivered to:")
        lines += [f"  <{r.quoted}>" for r in delivered]
        lines.append("")
    if failed:
        lines.append("Your message could NOT be delivered to:")
        for e in failed:
            lines.append(f"  <{e.rcpt.quoted}>:")
            lines.append(f"    {_sanitize(str(e.reply))}")
        lines.append("")
    major = _main_ccat(msg, facts_for)[0]
    if major == CC_VIRUS:
        names = ", ".join(msg.findings.get("virus_names") or [])
        lines += [f"The message contains a virus: {names}", ""]
    elif major == CC_BANNED:
        lines += [f"The message contains content that is not accepted here: "
                  f"{_banned_reason(msg, facts_for)}", ""]
    elif major == CC_BADH:
        lines += ["The header section of the message does not follow the standards "
                  "(RFC 5322, RFC 2045).", ""]
    lines.append(f"Reference: {msg.log_id}/{msg.mail_id}")
    try:
        facts = header_facts(read_header_block(msg.spool_path))
    except OSError:
        facts = None
    lines += ["", "The returned message:", f"  Return-Path: <{msg.sender_quoted}>"]
    if facts is not None:
        for name, value in (("From", facts.from_), ("Message-ID", facts.message_id),
                            ("Subject", facts.subject)):
            if value:
                lines.append(f"  {name}: {_sanitize(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class BuiltDsn:
    """The DSN on disk and the facts ``send`` needs."""

    path: Path
    size: int                      # RFC 1870: CRLF counted
    eight_bit: bool
    mail_id: str
    full_message: bool


def _is_8bit_file(path: Path) -> bool:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            if not chunk.isascii():
                return True
    return False


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build(msg: Message, dsn_plan: DsnPlan, view: Any, out_path: Path, *,
          facts_for: FactsFor = recipient_facts, boundary: str | None = None,
          mail_id: str | None = None) -> BuiltDsn:
    """Write the DSN (LF line ends, as email.txt) to ``out_path``; stream the original.

    RET=FULL with a failure returns the whole message as ``message/rfc822`` unless
    ``$dsn_return_full_message`` is false (Perl amavis always returns only the
    header section there, section 18); otherwise ``text/rfc822-headers``.
    """
    myhost = str(setting(view, "myhostname") or "localhost")
    mail_id = mail_id or ids.generate_mail_id()[0]
    boundary = boundary or f"----------=_{int(msg.rx_time or time.time())}-{os.getpid()}-" \
                           f"{mail_id}"
    full = (msg.dsn_ret or "").upper() == "FULL" and dsn_plan.any_failed
    if full and not setting(view, "dsn_return_full_message"):
        log.info("DSN RET=%s requested, but we'll only attach a header section", msg.dsn_ret)
        full = False
    header_block = read_header_block(msg.spool_path)
    return_path = f"Return-Path: <{msg.sender_quoted}>\n".encode()
    hdr_8bit = not header_block.isascii() or not return_path.isascii()
    body_8bit = full and (hdr_8bit or _is_8bit_file(msg.spool_path))
    status = delivery_status(msg, dsn_plan, view)
    status_8bit = not status.isascii()
    status_type = "global-delivery-status" if (msg.smtputf8 or status_8bit) else \
        "delivery-status"
    text = report_text(msg, dsn_plan, view, facts_for)
    any_8bit = hdr_8bit or body_8bit or status_8bit or not text.isascii()
    hdr_from = expand_host(str(setting(view, "hdrfrom_notify_sender")), myhost)
    description = ("Delivery error report" if dsn_plan.any_failed else "Delivery report")
    prefix = _message_id_prefix(msg, facts_for)
    top = [
        f"Content-Type: multipart/report; report-type={status_type};\n"
        f' boundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if any_8bit else '7bit'}",
        "MIME-Version: 1.0",
        _fold_subject(subject(msg, dsn_plan, facts_for)),
        f"Message-ID: <{prefix}{msg.mail_id}@{myhost}>",
        f"From: {hdr_from}",
        f"To: <{msg.sender_quoted}>",
        f"Date: {rfc2822_date(msg.rx_time or time.time())}",
    ]
    with open(out_path, "wb") as out:
        w = out.write
        w(("\n".join(top) + "\n\nThis is a multi-part message in MIME format...\n\n").encode())
        w(f"--{boundary}\n".encode())
        if text.isascii():
            w(b'Content-Type: text/plain; charset="us-ascii"\nContent-Disposition: inline\n'
              b"Content-Transfer-Encoding: 7bit\n\n" + text.encode())
        else:
            import quopri
            w(b'Content-Type: text/plain; charset="UTF-8"\nContent-Disposition: inline\n'
              b"Content-Transfer-Encoding: quoted-printable\n\n"
              + quopri.encodestring(text.encode("utf-8")))
        name = "dsn_status.u8dsn" if status_type.startswith("global") else "dsn_status.dsn"
        charset = '; charset="UTF-8"' if status_type.startswith("global") else ""
        w(f"\n--{boundary}\n"
          f'Content-Type: message/{status_type}{charset}; name="{name}"\n'
          f'Content-Disposition: inline; filename="{name}"\n'
          f"Content-Transfer-Encoding: {'8bit' if status_8bit else '7bit'}\n"
          f"Content-Description: {description}\n\n".encode())
        w(status.encode("utf-8"))
        w(f"\n--{boundary}\n".encode())
        if full:
            mtype = "message/global" if msg.smtputf8 and hdr_8bit else "message/rfc822"
            w(f"Content-Type: {mtype}\n"
              f'Content-Disposition: attachment; filename="message"\n'
              f"Content-Transfer-Encoding: {'8bit' if body_8bit else '7bit'}\n"
              f"Content-Description: Original message\n\n".encode())
            w(return_path)
            last = _copy(msg.spool_path, out)
            if last != b"\n":
                w(b"\n")
        else:
            utf8 = hdr_8bit and _valid_utf8(header_block)
            mtype, fname = (("message/global-headers", "header.u8hdr") if utf8
                            else ("text/rfc822-headers", "header.hdr"))
            w(f'Content-Type: {mtype}; name="{fname}"\n'
              f'Content-Disposition: inline; filename="{fname}"\n'
              f"Content-Transfer-Encoding: {'8bit' if hdr_8bit else '7bit'}\n"
              f"Content-Description: Message header section\n\n".encode())
            w(return_path + header_block)
        w(f"\n--{boundary}--\n".encode())
    size = os.path.getsize(out_path) + _count_lf(out_path)
    return BuiltDsn(out_path, size, any_8bit, mail_id, full)


def _fold_subject(text: str) -> str:
    line = f"Subject: {text}"
    if len(line) <= 78:
        return line
    words = line.split(" ")
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= 78 or lines[-1] == "Subject:":
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return "\n".join(lines)


def _copy(src_path: Path, out: BinaryIO) -> bytes:
    """Stream the spool into the DSN; returns the last byte written."""
    last = b""
    with open(src_path, "rb") as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            last = chunk[-1:]
    return last


def _count_lf(path: Path) -> int:
    count = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            count += chunk.count(b"\n")
    return count


# ------------------------------------------------------------------ sending


@dataclass
class DsnOutcome:
    """What happened: ``dsn_sent`` 0 (none needed), 1 (sent), 2 (suppressed); the reply."""

    dsn_sent: int
    plan: DsnPlan
    reply: Reply | None = None
    message: Message | None = None


def envid(mail_id: str, when: float, myhostname: str) -> str:
    """``AM.<mail_id>.<YYYYMMDDTHHMMSSZ>@<myhostname>`` (protocols.md 5.3 step 9), xtext."""
    from amavisd.protocols.smtp_client import xtext
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    return xtext(f"AM.{mail_id}.{stamp}@{myhostname}")


def dsn_message(msg: Message, built: BuiltDsn, view: Any) -> Message:
    """The DSN's own envelope: MAIL FROM:<>, RCPT TO:<sender> ORCPT=rfc822;<sender> (+dsn_bcc)."""
    myhost = str(setting(view, "myhostname") or "localhost")
    rcpts = [Recipient(msg.sender, msg.sender_quoted, orcpt=f"rfc822;{msg.sender}")]
    bcc = setting(view, "dsn_bcc")
    if bcc:
        rcpts.append(Recipient(str(bcc), str(bcc), orcpt=f"rfc822;{bcc}"))
    when = msg.rx_time or time.time()
    return Message(sender="", sender_quoted="", recipients=rcpts, spool_path=built.path,
                   size=built.size, log_id=msg.log_id, mail_id=built.mail_id,
                   client=msg.client, body_type="8BITMIME" if built.eight_bit else "7BIT",
                   smtputf8=msg.smtputf8 and not msg.sender.isascii(),
                   dsn_envid=envid(built.mail_id, when, myhost), originating=True,
                   rx_time=when)


def send(msg: Message, view: Any, reactor: Any, *, per_recipient_capable: bool,
         deadline: float, forwarded_any: bool, facts_for: FactsFor = recipient_facts) -> Any:
    """Plan, build and deliver the DSN; a Deferred firing with a ``DsnOutcome``.

    Protocols.md 3.8: a 4xx on submission fails the Deferred with ``TempFail``
    when nothing was forwarded yet, else it is only logged; a 5xx is logged.
    """
    from twisted.internet import defer

    from amavisd.actions.forward import forward

    dsn_plan = plan(msg, view, per_recipient_capable=per_recipient_capable,
                    facts_for=facts_for)
    if not dsn_plan.needed:
        sent = 2 if dsn_plan.suppressed else 0
        if sent:
            msg.findings["dsn_sent"] = 2
        return defer.succeed(DsnOutcome(sent, dsn_plan))
    fd, name = tempfile.mkstemp(prefix="dsn-", suffix=".txt", dir=msg.spool_path.parent)
    os.close(fd)
    path = Path(name)
    try:
        built = build(msg, dsn_plan, view, path, facts_for=facts_for)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if forwarded_any:
            log.error("NOTICE: UNABLE TO SEND DSN to <%s>: %s", msg.sender, exc)
            return defer.succeed(DsnOutcome(0, dsn_plan))
        raise TempFail(SECTION, f"temporarily unable to send DSN to <{msg.sender}>: "
                                f"{exc}") from exc
    dmsg = dsn_message(msg, built, view)
    method = setting(view, "notify_method") or setting(view, "forward_method")

    def done(_: Any) -> DsnOutcome:
        path.unlink(missing_ok=True)
        replies = [r.reply for r in dmsg.recipients if r.reply is not None]
        reply = next((r for r in replies if not r.is_ok), replies[0] if replies else None)
        if reply is not None and reply.is_ok:
            msg.findings["dsn_sent"] = 1
            log.info("DSN sent to <%s>: %s", msg.sender, reply)
            return DsnOutcome(1, dsn_plan, reply, dmsg)
        if reply is not None and reply.is_tempfail and not forwarded_any:
            raise TempFail(SECTION, f"temporarily unable to send DSN to <{msg.sender}>: "
                                    f"{reply}")
        log.error("NOTICE: UNABLE TO SEND DSN to <%s>: %s", msg.sender, reply)
        return DsnOutcome(0, dsn_plan, reply, dmsg)

    d = forward(dmsg, dmsg.recipients, method, b"", 0, view, reactor, False, deadline,
                submit="Dsn")
    return d.addCallback(done)


def recipients_in(dsn_plan: DsnPlan) -> Sequence[Recipient]:
    """The original recipients that the DSN reports on (for LMTP 'DSN was sent')."""
    return [e.rcpt for e in dsn_plan.entries]
