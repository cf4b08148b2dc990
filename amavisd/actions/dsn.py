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

The text part and the Subject/Message-ID come from the template of the message's
category (``$notify_virus_sender_templ`` for VIRUS and BANNED, ``$notify_spam_
sender_templ`` for SPAM, else ``$notify_sender_templ``; spec 18), expanded by
amavisd/templates with ``%T`` the sender and ``report_format`` ``dsn``; From,
To and Date are forced to ``$hdrfrom_notify_sender``, the sender and the
reception time (actions/notice_mime.py writes the fields and the text part).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from amavisd import ids
from amavisd.actions import notice_mime
from amavisd.actions.notice_context import notice_context
from amavisd.actions.quarantine import (
    FactsFor,
    RecipientFacts,
    ccat_key,
    recipient_facts,
)
from amavisd.constants import (
    CC_CLEAN,
    D_DISCARD,
    D_REJECT,
)
from amavisd.errors import Reply, TempFail
from amavisd.header import read_header_block
from amavisd.message import Message, Recipient
from amavisd.received import rfc2822_date
from amavisd.templates import (
    Notice,
    TemplateError,
    render,
    split_notice,
    template_setting_for,
    template_text,
)

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


def virus_fakes_sender(msg: Message, view: Any) -> bool:
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
    fakes = virus_fakes_sender(msg, view)
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


def message_ccats(msg: Message) -> list[str]:
    """The message's blocking category, else its categories (amavis's message-level
    ``setting_by_contents_category``)."""
    blocking = [r.ccat_blocking for r in msg.recipients if r.ccat_blocking]
    if blocking:
        return [max(blocking, key=ccat_key)]
    return list(msg.findings.get("ccats") or []) or [str(msg.findings.get("ccat_main", "1"))]


def report_notice(msg: Message, view: Any, header_block: bytes, *,
                  is_local: Any = None) -> Notice:
    """The DSN's template expanded: header fields (Subject, Message-ID...) and text.

    Section 18: the template by the message's category; ``%T`` is the sender,
    ``%f`` the DSN's From, ``report_format`` ``dsn``.
    """
    name = template_setting_for("sender", message_ccats(msg)) or "notify_sender_templ"
    ctx = notice_context(msg, view, header_block, is_local=is_local,
                         fakes_sender=virus_fakes_sender(msg, view))
    ctx = replace(ctx, notify_from=hdrfrom_sender(view), notify_to=[f"<{msg.sender_quoted}>"],
                  report_format="dsn")
    return split_notice(render(template_text(view, name), ctx))


def hdrfrom_sender(view: Any) -> str:
    """``$hdrfrom_notify_sender`` with ``${myhostname...}`` expanded (section 19)."""
    return expand_host(str(setting(view, "hdrfrom_notify_sender") or
                           DEFAULTS["hdrfrom_notify_sender"]),
                       str(setting(view, "myhostname") or "localhost"))


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


def build(msg: Message, dsn_plan: DsnPlan, view: Any, out_path: Path, *,
          boundary: str | None = None, mail_id: str | None = None,
          is_local: Any = None) -> BuiltDsn:
    """Write the DSN (LF line ends, as email.txt) to ``out_path``; stream the original.

    RET=FULL with a failure returns the whole message as ``message/rfc822`` unless
    ``$dsn_return_full_message`` is false (Perl amavis always returns only the
    header section there, section 18); otherwise ``text/rfc822-headers``.
    ``is_local`` answers ``@local_domains_maps`` for the template's macros.
    """
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
    notice = report_notice(msg, view, header_block, is_local=is_local)
    text_head, text_body = notice_mime.text_part(notice.body,
                                                 str(setting(view, "bdy_encoding") or "UTF-8"))
    forced = [("From", hdrfrom_sender(view)), ("To", f"<{msg.sender_quoted}>"),
              ("Date", rfc2822_date(msg.rx_time or time.time()))]
    fields = notice_mime.encode_fields(
        notice_mime.merged_fields(notice, forced), smtputf8=msg.smtputf8,
        hdr_encoding=str(setting(view, "hdr_encoding") or "UTF-8"),
        qb=str(setting(view, "hdr_encoding_qb") or "Q"))
    any_8bit = hdr_8bit or body_8bit or status_8bit or not text_body.isascii() or \
        not fields.isascii()
    description = ("Delivery error report" if dsn_plan.any_failed else "Delivery report")
    top = (f"Content-Type: multipart/report; report-type={status_type};\n"
           f' boundary="{boundary}"\n'
           f"Content-Transfer-Encoding: {'8bit' if any_8bit else '7bit'}\n"
           "MIME-Version: 1.0\n").encode()
    with open(out_path, "wb") as out:
        w = out.write
        w(top + fields + b"\n" + notice_mime.PREAMBLE + b"\n")
        w(f"--{boundary}\n".encode())
        w(text_head + b"\n" + text_body)
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
            w(notice_mime.header_part(msg.sender_quoted, header_block))
        w(f"\n--{boundary}--\n".encode())
    size = os.path.getsize(out_path) + _count_lf(out_path)
    return BuiltDsn(out_path, size, any_8bit, mail_id, full)


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
         deadline: float, forwarded_any: bool, facts_for: FactsFor = recipient_facts,
         is_local: Any = None) -> Any:
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
        built = build(msg, dsn_plan, view, path, is_local=is_local)
    except (OSError, TemplateError) as exc:     # a disk fault, or a template over its bounds
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
