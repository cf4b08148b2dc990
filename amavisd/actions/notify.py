# tests: t/actions/test_notify.py t/integration/test_notify.py
"""Notifications to administrators and recipients (spec/pipeline.md 19).

Runs in the child after quarantine and before forwarding (section 2 step 26,
"quar+notif"), so a notice can name the quarantine location and the recipients
still to be delivered.

* ``admin_addresses``: per recipient, its blocking category (else its category
  list, most important first) picks ``%admin_maps_by_ccat`` (VIRUS and
  UNCHECKED ``@virus_admin_maps``, BANNED ``@banned_admin_maps``, SPAM
  ``@spam_admin_maps``, BAD-HEADER ``@bad_header_admin_maps``), asked with the
  recipient's address; spam notices stop at ``@spam_notifyadmin_cutoff_level_maps``
  (or a blacklisted, not whitelisted sender); ``@newvirus_admin_maps`` adds its
  answer for a virus no counter of the stats segment has seen before.  One
  notice goes to the union of the answers.
* ``recipient_notices``: per recipient, ``%warnrecip_maps_by_ccat`` (VIRUS
  ``@warnvirusrecip_maps``, BANNED ``@warnbannedrecip_maps``, BAD-HEADER
  ``@warnbadhrecip_maps``, SPAM none) must say yes, the template must not be
  empty, and the recipient must be local unless ``$warn_offsite``.
* ``build_admin`` / ``build_recipient`` expand the template (admin:
  ``$notify_virus_admin_templ``, spam ``$notify_spam_admin_templ``; recipient:
  ``$notify_virus_recips_templ``, spam ``$notify_spam_recips_templ``) and write
  a private temp file: the admin notice is ``multipart/mixed`` with the text and
  the original header section, a recipient notice one text part.
* ``send`` delivers each through ``forward`` at ``$notify_method`` (counted as
  ``OutMsgsSubmitNotif``), envelope sender ``$mailfrom_notify_admin`` /
  ``_spamadmin`` / ``_recip`` or the address of the From.  As in amavis a 4xx
  fails the Deferred with ``TempFail`` (the message is then tempfailed and the
  MTA keeps it: nothing is lost), a 5xx is logged ``FAILED to notify ...``; so
  is a template that cannot be expanded (it would fail again on every retry).

Sender notifications are the DSNs of actions/dsn.py (section 19: the old
``$warnvirussender`` and friends are retired).
"""

from __future__ import annotations

import email.utils
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from amavisd import ids
from amavisd.actions import notice_mime
from amavisd.actions.dsn import envid, expand_host, message_ccats, virus_fakes_sender
from amavisd.actions.notice_context import notice_context
from amavisd.actions.quarantine import candidates, ccat_key, recipient_facts
from amavisd.config.lookup import lookup
from amavisd.constants import CC_SPAM, CC_SPAMMY, CC_VIRUS
from amavisd.errors import Reply, TempFail
from amavisd.header import read_header_block
from amavisd.log import do_log
from amavisd.message import Message, Recipient
from amavisd.templates import (
    TemplateContext,
    TemplateError,
    render,
    split_notice,
    template_setting_for,
    template_text,
)
from amavisd.templates.builtins import (
    idn_to_ascii,
    message_macros,
    recipient_log_macros,
)
from amavisd.templates.engine import DEFAULT_LIMITS, expand
from amavisd.templates.mailfmt import qquote_rfc2821_local, quote_rfc2821_local, split_address

log = logging.getLogger(__name__)

#: The section name of a 451 when a notice cannot be sent (amavis's ``quar+notif``).
SECTION = "quar+notif"
#: ``%admin_maps_by_ccat`` and ``%warnrecip_maps_by_ccat`` (None: the key exists, no
#: tables), by contents category; CLEAN, SPAMMY, OVERSIZED and MTA have no entry.
ADMIN_MAPS_BY_CCAT: dict[str, str | None] = {
    "9": "virus_admin_maps", "8": "banned_admin_maps", "7": "virus_admin_maps",
    "6": "spam_admin_maps", "4": "bad_header_admin_maps"}
WARNRECIP_MAPS_BY_CCAT: dict[str, str | None] = {
    "9": "warnvirusrecip_maps", "8": "warnbannedrecip_maps", "6": None,
    "4": "warnbadhrecip_maps"}
#: ``$hdrfrom_notify_*`` of Amavis::Conf's after-defaults (``${myhostname...}`` at use).
PNAME = '"Content-filter at ${myhostname_utf8}"'
HDRFROM_SENDER = PNAME + " <postmaster@${myhostname_ascii}>"
IsLocal = Callable[[str], bool]


def setting(view: Any, name: str, default: Any = None) -> Any:
    """A setting of the view, or ``default`` when the view lacks it (a test namespace)."""
    return getattr(view, name, default)


def _tables(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def ask(view: Any, tables: Any, key: str, label: str = "") -> Any:
    """One lookup (pipeline.md 14) with the view's delimiter and case rules."""
    tables = _tables(tables)
    if not tables:
        return None
    return lookup(False, key, tables,
                  recipient_delimiter=setting(view, "recipient_delimiter"),
                  localpart_is_case_sensitive=bool(setting(view, "localpart_is_case_sensitive")),
                  label=label)


def _by_ccat(view: Any, override: str, builtin: dict[str, str | None],
             ccats: Sequence[str]) -> tuple[bool, Any]:
    """Walk ``ccats`` (then CATCHALL) through a ``*_by_ccat`` hash: (found, tables).

    The config's hash (``%admin_maps_by_ccat``...) is laid over the built-in one,
    key by key, as a policy bank merges hashes.
    """
    over = setting(view, override) or {}
    for ccat in [*ccats, "0"]:
        if ccat in over:
            return True, over[ccat]
        if ccat in builtin:
            name = builtin[ccat]
            return True, None if name is None else setting(view, name)
    return False, None


def _major(rcpt: Recipient, facts_ccats: Sequence[str]) -> int:
    return ccat_key(rcpt.ccat_blocking or facts_ccats[0])[0]


# ------------------------------------------------------------------ who gets what


def virus_seen_before(stats: Any, names: Sequence[str]) -> bool:
    """amavis's "déjà vu": every virus name already has a counter (monitoring.md 1.2).

    The virus check counted this message already, so a name was seen before when
    its ``virus.byname.<name>`` total is above 1.  Without a stats segment
    nothing was seen (as amavis without its database).
    """
    segment = getattr(stats, "segment", None)
    if segment is None or not names:
        return False
    try:
        counters = segment.snapshot().counters
    except (OSError, ValueError):
        return False
    return all(counters.get(f"virus.byname.{name}", 0) > 1 for name in names)


def admin_addresses(msg: Message, view: Any, *, new_virus: bool = False) -> list[str]:
    """The administrators to notify, in recipient order, each once (section 19)."""
    admins: list[str] = []
    newvirus_maps = setting(view, "newvirus_admin_maps") if new_virus else None
    for rcpt in msg.recipients:
        facts = recipient_facts(msg, rcpt)
        _found, tables = _by_ccat(view, "admin_maps_by_ccat", ADMIN_MAPS_BY_CCAT,
                                  candidates(rcpt, facts)[:-1])
        admin = ask(view, tables, rcpt.address, "admin_maps") if tables else None
        if admin not in (None, "") and _major(rcpt, facts.ccats) in (CC_SPAM, CC_SPAMMY):
            cutoff = ask(view, setting(view, "spam_notifyadmin_cutoff_level_maps"),
                         rcpt.address, "spam_notifyadmin_cutoff_level_maps")
            if cutoff not in (None, ""):
                if facts.blacklisted and not facts.whitelisted:
                    do_log(2, "do_notify_and_quarantine: spam admin cutoff, blacklisted")
                    admin = None
                elif (facts.spam_level or 0.0) >= float(cutoff):
                    do_log(2, "do_notify_and_quarantine: spam level exceeds spam admin "
                              "cutoff level %s", cutoff)
                    admin = None
        _add(admins, admin)
        if newvirus_maps and ccat_key(facts.ccats[0])[0] == CC_VIRUS:
            _add(admins, ask(view, newvirus_maps, rcpt.address, "newvirus_admin_maps"))
    return admins


def _add(admins: list[str], address: Any) -> None:
    if address is None or address is False or address == "":
        return
    text = str(address)
    if text not in admins:
        admins.append(text)


@dataclass
class RecipientNotice:
    """One recipient to warn, and the template setting its notice uses."""

    rcpt: Recipient
    template: str


def recipient_notices(msg: Message, view: Any, is_local: IsLocal) -> list[RecipientNotice]:
    """Recipients to warn about mail held for them (section 19, recipient notices)."""
    out = []
    for rcpt in msg.recipients:
        facts = recipient_facts(msg, rcpt)
        cats = candidates(rcpt, facts)[:-1]
        _found, tables = _by_ccat(view, "warnrecip_maps_by_ccat", WARNRECIP_MAPS_BY_CCAT, cats)
        if not tables or not _perl_true(ask(view, tables, rcpt.address, "warnrecip_maps")):
            continue
        name = template_setting_for("recips", cats)
        if not name or not template_text(view, name):
            do_log(5, "skip recipient notifications - empty template")
            continue
        if not setting(view, "warn_offsite") and not is_local(rcpt.address):
            do_log(5, "skip recipient notifications - nonlocal recipient")
            continue
        out.append(RecipientNotice(rcpt, name))
    return out


def _perl_true(value: Any) -> bool:
    if isinstance(value, str):
        return value not in ("", "0")
    return bool(value)


# ------------------------------------------------------------------ from fields


def hdrfrom(view: Any, who: str) -> str:
    """``$hdrfrom_notify_<who>`` with Amavis::Conf's after-default and ``${myhostname}``."""
    value = setting(view, f"hdrfrom_notify_{who}")
    if value is None:
        mailfrom = setting(view, f"mailfrom_notify_{who}") if who != "sender" else None
        if mailfrom:
            value = f"{PNAME} <{_addr_to_ascii(str(mailfrom))}>"
        else:
            value = setting(view, "hdrfrom_notify_sender") or HDRFROM_SENDER
    return expand_host(str(value), str(setting(view, "myhostname") or "localhost"))


def mailfrom(view: Any, who: str, hdr_from: str) -> str:
    """``$mailfrom_notify_<who>``, else the address of the From (an empty one: ``<>``)."""
    value = setting(view, f"mailfrom_notify_{who}")
    if value is not None:
        return str(value)
    found = email.utils.getaddresses([hdr_from])
    return found[0][1] if found else ""


def _addr_to_ascii(address: str) -> str:
    local, domain = split_address(address)
    return local + ("@" + idn_to_ascii(domain[1:]) if domain.startswith("@") else domain)


def _needs_smtputf8(addresses: Sequence[str]) -> bool:
    """A non-ASCII local part needs SMTPUTF8; a domain can go as IDNA instead."""
    return any(not split_address(a)[0].isascii() for a in addresses)


# ------------------------------------------------------------------ building


@dataclass
class BuiltNotice:
    """A notice on disk and its envelope."""

    kind: str                          # admin | recipient
    path: Path
    sender: str
    recipients: list[str]
    mail_id: str
    size: int                          # RFC 1870: CRLF counted
    eight_bit: bool
    smtputf8: bool


def _write(msg: Message, data: bytes, prefix: str) -> Path:
    """A private (0600) temp file beside the spool, which the child cleans up."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".txt", dir=msg.spool_path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _fields(view: Any, msg: Message, notice: Any) -> bytes:
    return notice_mime.encode_fields(notice_mime.merged_fields(notice), smtputf8=msg.smtputf8,
                                     hdr_encoding=str(setting(view, "hdr_encoding") or "UTF-8"),
                                     qb=str(setting(view, "hdr_encoding_qb") or "Q"))


def build_admin(msg: Message, view: Any, ctx: TemplateContext, admins: Sequence[str],
                header_block: bytes, *, boundary: str | None = None) -> BuiltNotice | None:
    """The administrator notice, written to a temp file; None when its template is empty."""
    cats = message_ccats(msg)
    who = "spamadmin" if cats and cats[0] == str(CC_SPAM) else "admin"
    name = template_setting_for("admin", cats) or "notify_virus_admin_templ"
    template = template_text(view, name)
    if not template:
        do_log(5, "skip admin notifications - empty template")
        return None
    hdr_from = hdrfrom(view, who)
    sender = mailfrom(view, who, hdr_from)
    utf8 = _needs_smtputf8([sender, *admins])
    rcpts = list(admins) if utf8 else [_addr_to_ascii(a) for a in admins]
    if not utf8:
        sender = _addr_to_ascii(sender)
    nctx = replace(ctx, notify_from=hdr_from,
                   notify_to=[qquote_rfc2821_local(a) for a in rcpts])
    notice = split_notice(render(template, nctx))
    head, body = notice_mime.text_part(notice.body, str(setting(view, "bdy_encoding") or "UTF-8"))
    data = notice_mime.mixed(_fields(view, msg, notice),
                             [head + b"\n" + body,
                              notice_mime.header_part(msg.sender_quoted, header_block)],
                             boundary or notice_mime.new_boundary())
    return _built("admin", msg, data, sender, rcpts, utf8)


def _recipient_macros(ctx: TemplateContext, index: int, hdr_from: str,
                      to: str) -> dict[str, Any]:
    """amavis's per-recipient overrides: banned_parts, F, banning_rule_*, f, T."""
    macros = message_macros(ctx)
    own = recipient_log_macros(ctx, index)
    for key in ("banned_parts", "F", "banning_rule_comment", "banning_rule_rhs"):
        macros[key] = own[key]
    macros["f"], macros["T"] = hdr_from, to
    return macros


def build_recipient(msg: Message, view: Any, ctx: TemplateContext, wanted: RecipientNotice
                    ) -> BuiltNotice:
    """One recipient's notice: a single text part, no attachment (section 19)."""
    rcpt = wanted.rcpt
    hdr_from = hdrfrom(view, "recip")
    sender = mailfrom(view, "recip", hdr_from)
    utf8 = _needs_smtputf8([sender, rcpt.address])
    address = rcpt.address if utf8 else _addr_to_ascii(rcpt.address)
    if not utf8:
        sender = _addr_to_ascii(sender)
    index = msg.recipients.index(rcpt)
    macros = _recipient_macros(ctx, index, hdr_from, qquote_rfc2821_local(address))
    notice = split_notice(expand(template_text(view, wanted.template), macros, DEFAULT_LIMITS))
    head, body = notice_mime.text_part(notice.body, str(setting(view, "bdy_encoding") or "UTF-8"))
    data = notice_mime.single(_fields(view, msg, notice), head, body)
    return _built("recipient", msg, data, sender, [address], utf8)


def _built(kind: str, msg: Message, data: bytes, sender: str, rcpts: list[str],
           utf8: bool) -> BuiltNotice:
    path = _write(msg, data, f"notif-{kind[:5]}-")
    return BuiltNotice(kind, path, sender, rcpts, ids.generate_mail_id()[0],
                       len(data) + data.count(b"\n"), not data.isascii(), utf8)


# ------------------------------------------------------------------ sending


@dataclass
class NoticeOutcome:
    """What happened to one notice: its envelope and the next hop's reply."""

    kind: str
    sender: str
    recipients: list[str]
    reply: Reply | None
    message: Message | None = None


@dataclass
class NotifyResult:
    """All notices sent for one message."""

    outcomes: list[NoticeOutcome] = field(default_factory=list)


def notice_message(msg: Message, built: BuiltNotice, view: Any) -> Message:
    """The notice as a Message of its own: originating, a new mail_id, ENVID ``AM.<id>...``."""
    myhost = str(setting(view, "myhostname") or "localhost")
    when = msg.rx_time
    nmsg = Message(sender=built.sender, sender_quoted=quote_rfc2821_local(built.sender)
                   if built.sender else "",
                   recipients=[Recipient(a, quote_rfc2821_local(a)) for a in built.recipients],
                   spool_path=built.path, size=built.size, log_id=msg.log_id,
                   mail_id=built.mail_id, client=msg.client,
                   body_type="8BITMIME" if built.eight_bit else "7BIT",
                   smtputf8=built.smtputf8, dsn_envid=envid(built.mail_id, when, myhost),
                   originating=True, rx_time=when, rx_start=msg.rx_start)
    nmsg.findings["parent_mail_id"] = msg.mail_id
    nmsg.findings["partition_tag"] = msg.findings.get("partition_tag")
    return nmsg


def _first_failure(replies: Sequence[Reply | None]) -> Reply | None:
    """amavis's ``one_response_for_all`` as far as a notice needs it."""
    known = [r for r in replies if r is not None]
    if not known:
        return Reply(451, "4.5.0", "no reply")
    return next((r for r in known if r.is_tempfail), None) or \
        next((r for r in known if not r.is_ok), None)


def send(msg: Message, view: Any, reactor: Any, *, is_local: IsLocal, deadline: float,
         stats: Any = None) -> Any:
    """Send the admin notice, then each recipient notice; a Deferred of NotifyResult.

    Fails with ``TempFail`` when a notice got a 4xx or could not be written.
    """
    from twisted.internet import defer

    new_virus = bool(msg.findings.get("virus_names")) and bool(
        setting(view, "newvirus_admin_maps")) and \
        not virus_seen_before(stats, msg.findings["virus_names"])
    admins = admin_addresses(msg, view, new_virus=new_virus)
    wanted = recipient_notices(msg, view, is_local)
    if not admins and not wanted:
        do_log(4, "skip admin notification, no administrators")
        return defer.succeed(NotifyResult())
    return _send_all(msg, view, reactor, admins, wanted, is_local, deadline)


def _send_all(msg: Message, view: Any, reactor: Any, admins: list[str],
              wanted: list[RecipientNotice], is_local: IsLocal, deadline: float) -> Any:
    from twisted.internet import defer

    @defer.inlineCallbacks
    def run() -> Any:
        result = NotifyResult()
        try:
            block = read_header_block(msg.spool_path)
            ctx = notice_context(msg, view, block, is_local=is_local,
                                 fakes_sender=virus_fakes_sender(msg, view))
        except OSError as exc:
            raise TempFail(SECTION, f"notifications: {exc}") from exc
        jobs: list[tuple[str, Callable[[], BuiltNotice | None]]] = []
        if admins:
            jobs.append(("admin", lambda: build_admin(msg, view, ctx, admins, block)))
        for one in wanted:
            jobs.append((f"recipient {one.rcpt.address}",
                         lambda one=one: build_recipient(msg, view, ctx, one)))
        for what, build in jobs:
            try:
                built = build()
            except OSError as exc:                # a disk fault: the MTA retries later
                raise TempFail(SECTION, f"temporarily unable to notify {what}: {exc}") \
                    from exc
            except TemplateError as exc:          # permanent, like a 5xx: log, go on
                do_log(-1, "FAILED to notify %s: template: %s", what, exc)
                continue
            if built is None:
                continue
            outcome = yield _deliver(msg, view, reactor, built, deadline)
            result.outcomes.append(outcome)
            failure = _first_failure([outcome.reply])
            if failure is None:
                do_log(2, "Notification (%s) sent to %s: %s", built.kind,
                       ", ".join(f"<{a}>" for a in built.recipients), outcome.reply)
            elif failure.is_tempfail:
                raise TempFail(SECTION, f"temporarily unable to notify {what}: {failure}")
            else:
                do_log(-1, "FAILED to notify %s: %s", what, failure)
        return result

    return run()


def _deliver(msg: Message, view: Any, reactor: Any, built: BuiltNotice,
             deadline: float) -> Any:
    """Forward one notice at ``$notify_method``; its temp file goes afterwards."""
    from amavisd.actions.forward import forward

    nmsg = notice_message(msg, built, view)
    method = setting(view, "notify_method") or setting(view, "forward_method") or \
        "smtp:[127.0.0.1]:10025"

    def done(_: Any) -> NoticeOutcome:
        replies = [r.reply for r in nmsg.recipients]
        return NoticeOutcome(built.kind, built.sender, built.recipients,
                             _first_failure(replies) or next(r for r in replies if r), nmsg)

    def cleanup(value: Any) -> Any:
        built.path.unlink(missing_ok=True)
        return value

    d = forward(nmsg, nmsg.recipients, method, b"", 0, view, reactor, False, deadline,
                submit="Notif")
    return d.addCallback(done).addBoth(cleanup)
