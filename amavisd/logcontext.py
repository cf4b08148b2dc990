# tests: t/test_logtemplates.py t/test_json_event.py
"""The template context of one processed message: what the log templates read.

``$log_templ``, ``$log_recip_templ`` and the structured report (``report.py``)
describe the message as the pipeline left it: recipients with their destiny,
reply and categories, the checks' findings, the quarantine locations.  This
module turns the ``Message`` (and the settings in force) into the
``TemplateContext`` the macros of spec/pipeline.md 19.2 read, once per message;
nothing here decides or logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from amavisd.logline import actions_performed
from amavisd.message import Message
from amavisd.templates import (
    DkimSignature,
    RecipientFacts,
    ScannerResult,
    TemplateContext,
)

#: ``from MTA([127.0.0.1]:10025): 250 2.0.0 Ok``: our reply after forwarding
#: (actions/forward.py) carries the next hop and its own reply.
_FROM_MTA = re.compile(r"\bfrom MTA\(([^)]*)\): (.*)\Z", re.S)


def _setting(view: Any, name: str, default: Any = None) -> Any:
    value = getattr(view, name, default)
    return default if value is None else value


def client_addr_given(msg: Message) -> str | None:
    """The client address XFORWARD/AM.PDP gave, or None.

    The pipeline puts the MTA's own address in ``client.addr`` when the MTA sent
    none (pipeline.md 3.11); amavis keeps it undefined there and takes ``%a``
    from the trace instead.  A given address comes with the other XFORWARD
    attributes, the substitute with none of them.
    """
    client = msg.client
    if client.addr is None:
        return None
    substituted = (client.addr == client.mta_addr and client.port is None
                   and client.proto is None and client.helo is None and client.name is None)
    return None if substituted else client.addr


def _recipient_facts(msg: Message, local: Sequence[bool]) -> list[RecipientFacts]:
    content = msg.findings.get("content")
    spam = msg.findings.get("spam")
    facts = []
    for rcpt, is_local in zip(msg.recipients, local, strict=True):
        reply = str(rcpt.reply) if rcpt.reply is not None else ""
        remote_mta = remote_reply = None
        m = _FROM_MTA.search(reply)
        if m:
            remote_mta, remote_reply = m.group(1), m.group(2)
        elif rcpt.queued_as:
            remote_reply = rcpt.queued_as
        verdict = content.banned.get(rcpt.address) if content is not None else None
        banned = verdict is not None and getattr(rcpt, "banning_reason_short", None) is not None
        levels = spam.recipients.get(rcpt.address) if spam is not None else None
        facts.append(RecipientFacts(
            address=rcpt.address, is_local=bool(is_local),
            destiny=rcpt.destiny if rcpt.destiny is not None else 0,
            done=bool(rcpt.done), smtp_response=reply, remote_mta=remote_mta,
            remote_mta_smtp_response=remote_reply,
            dsn_notify=list(rcpt.notify) if rcpt.notify else None,
            contents_category=list(rcpt.ccats) if rcpt.ccats else ["1"],
            blocking_ccat=rcpt.ccat_blocking, spam_level=rcpt.spam_level,
            spam_tests=list(rcpt.spam_tests), bypass_spam_checks=bool(rcpt.bypass_spam_checks),
            tag_level=_level(levels, "tag_level"), tag2_level=_level(levels, "tag2_level"),
            kill_level=_level(levels, "kill_level"),
            banning_reason_short=getattr(rcpt, "banning_reason_short", None),
            banning_rule_key=list(verdict.banning_rule_key) if banned else None,
            banning_rule_comment=list(verdict.banning_rule_comment) if banned else None,
            banning_rule_rhs=[str(x) for x in verdict.banning_rule_rhs] if banned else None,
            banned_parts=list(verdict.banned_parts) if banned else None,
            banned_parts_as_attr=list(verdict.banned_parts_as_attr) if banned else None))
    return facts


def _level(levels: Any, name: str) -> float | None:
    value = getattr(levels, name, None) if levels is not None else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _ccat_key(ccat: str) -> tuple[int, int]:
    major, _, minor = ccat.partition(",")
    return int(major or 0), int(minor or 0)


def _dkim_new(findings: dict[str, Any]) -> list[DkimSignature]:
    out = []
    for sd in findings.get("dkim_new") or []:
        selector, _, domain = str(sd).partition(":")
        out.append(DkimSignature(domain=domain, selector=selector))
    return out


def message_context(msg: Message, view: Any, header_block: bytes, local: Sequence[bool],
                    elapsed: Callable[[], float] | None = None) -> TemplateContext:
    """The context of ``msg`` after its processing, for the log templates and the report.

    ``local`` is ``@local_domains_maps`` per recipient; ``elapsed`` gives the
    seconds since the transaction timing started (``%y``).
    """
    findings = msg.findings
    virus = findings.get("virus")
    qdir = _setting(view, "QUARANTINEDIR", "")
    quarantined = findings.get("quarantined_to") or None
    valid = [DkimSignature(domain=s.domain, selector=s.selector, identity=s.identity)
             for s in findings.get("dkim_signatures_valid") or []]
    # amavis adds each category to the message as well as to the recipient: the union
    categories = set(findings.get("ccats") or []) | {c for r in msg.recipients for c in r.ccats}
    categories.add("1")
    if findings.get("ccat_main"):      # message-level findings (over limits, ...) too
        categories.add(str(findings["ccat_main"]))
    ctx = TemplateContext.from_message(
        msg, header_block,
        contents_category=sorted(categories, key=_ccat_key, reverse=True),
        client_addr=client_addr_given(msg),
        recipients=_recipient_facts(msg, local),
        partition_tag=str(findings.get("partition_tag", "0")),
        myhostname=str(_setting(view, "myhostname", "localhost")),
        localhost_name=str(_setting(view, "localhost_name", "localhost")),
        parent_mail_id=findings.get("parent_mail_id"),
        body_digest=findings.get("body_digest"),
        virus_names=list(findings["virus_names"]) if findings.get("virus_names") else None,
        av_output=(virus.output or None) if virus is not None and virus.virus_names else None,
        detecting_scanners=list(findings.get("detecting_scanners") or []),
        av_results=[ScannerResult(r.name, bool(r.status), list(r.virus_names))
                    for r in (virus.results if virus is not None else [])],
        bad_headers=[f.text for f in findings.get("bad_headers") or []],
        spam_report=findings.get("spam_report"),
        supplementary_info=({"AUTOLEARN": str(findings["autolearn"])}
                            if findings.get("autolearn") else {}),
        dkim_valid=valid, dkim_new=_dkim_new(findings),
        dkim_author_sig=findings.get("dkim_author_sig"),
        dkim_sender_sig=findings.get("dkim_sender_sig"),
        dkim_thirdparty_sig=findings.get("dkim_thirdparty_sig"),
        dkim_envsender_sig=findings.get("dkim_envsender_sig"),
        quarantined_to=list(quarantined) if quarantined else None,
        quarantine_dir=str(qdir).rstrip("/") if qdir else None,
        actions_performed=actions_performed(msg, local),
        macro_tests_sanity_limit=int(_setting(view, "macro_tests_sanity_limit", 50)),
        sa_spam_level_char=str(_setting(view, "sa_spam_level_char", "*")))
    if elapsed is not None:
        ctx.elapsed = elapsed
    return ctx
