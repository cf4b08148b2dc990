# tests: t/actions/test_notify.py
"""The template context of a notice: what the checks found, in the engine's terms.

Runs in the child, when a notification or a DSN is built (spec/pipeline.md 18,
19).  ``TemplateContext.from_message`` knows the envelope, ids, client and the
recipients' outcomes; this module adds the findings the checks left on the
Message, so that every macro of section 19.2 sees what amavis would show:

* virus names, scanner output (``%v``), the detecting scanners and each
  scanner's verdict (``%W``);
* per recipient: is it local, its banned parts and rules (``%F``,
  ``banned_parts``, ``banning_rule_*``), spam level, tests and its tag, tag2
  and kill levels;
* bad-header texts (``%X``), the spam report (``%A``, ``REPORT``);
* quarantine locations (``%q``), DKIM facts (``[:dkim|...]``);
* ``%o``: for a virus known to fake its sender, ``?@[<oldest public IP>]`` (or
  nothing) instead of the envelope sender (section 2 step 16).

Nothing here decides anything; a missing finding keeps the engine's default,
which is what amavis shows when the fact is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amavisd.header import header_facts, oldest_public_ip
from amavisd.message import ClientInfo, Message
from amavisd.templates import DkimSignature, ScannerResult, TemplateContext

IsLocal = Callable[[str], bool]


def _number(value: Any) -> float | None:
    """A level as the macros take it: a number, or None for undef (and '')."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _dkim_signatures(values: Any) -> list[DkimSignature]:
    out = []
    for sig in values or []:
        if isinstance(sig, str):                       # 'selector:domain'
            selector, _, domain = sig.partition(":")
            out.append(DkimSignature(domain, selector))
        else:
            out.append(DkimSignature(str(getattr(sig, "domain", "")),
                                     str(getattr(sig, "selector", "")),
                                     str(getattr(sig, "identity", "") or "")))
    return out


def faked_sender_source(msg: Message, header_block: bytes, fakes_sender: bool) -> str | None:
    """``%o`` (section 2 step 16): None keeps the sender; a faking virus gives
    ``?@[ip]`` from the oldest public Received hop, or '' when there is none."""
    if not fakes_sender:
        return None
    ip = oldest_public_ip(header_facts(header_block).received)
    return f"?@[{ip}]" if ip else ""


def given_client_addr(client: ClientInfo) -> str | None:
    """The client address XFORWARD or AM.PDP gave, else None.

    Without one the pipeline fills ``client.addr`` with the MTA's own address
    (section 3.11); amavis takes it from its trace then, so the trace gets no extra
    hop for it (``%a`` still shows it, from the trace).
    """
    xforward = (client.name, client.port, client.proto, client.helo, client.ident,
                client.source)
    if client.addr == client.mta_addr and not any(v is not None for v in xforward):
        return None
    return client.addr


def notice_context(msg: Message, view: Any, header_block: bytes, *,
                   is_local: IsLocal | None = None,
                   fakes_sender: bool = False) -> TemplateContext:
    """The context for every notice about ``msg`` (admin, recipient, DSN).

    ``is_local`` answers ``@local_domains_maps`` for a recipient (``%0``,
    ``log_domains``, the recipient-notice rule); ``fakes_sender`` is the answer of
    ``@viruses_that_fake_sender_maps`` for the message's viruses.
    """
    findings = msg.findings
    virus = findings.get("virus")
    names = findings.get("virus_names") or []
    spam = findings.get("spam")
    content = findings.get("content")
    verdicts = getattr(content, "banned", None) or {}
    qdir = getattr(view, "QUARANTINEDIR", None)
    extra: dict[str, Any] = dict(
        myhostname=str(getattr(view, "myhostname", None) or "localhost"),
        client_addr=given_client_addr(msg.client),
        localhost_name=str(getattr(view, "localhost_name", None) or "localhost"),
        partition_tag=str(findings.get("partition_tag") or 0),
        virus_names=list(names) if names else None,
        sender_source=faked_sender_source(msg, header_block, fakes_sender),
        bad_headers=[f.text for f in findings.get("bad_headers") or []],
        quarantined_to=list(findings["quarantined_to"]) if findings.get("quarantined_to")
        else None,
        quarantine_dir=str(qdir).rstrip("/") if qdir else None,
        dkim_valid=_dkim_signatures(findings.get("dkim_signatures_valid")),
        dkim_new=_dkim_signatures(findings.get("dkim_new")),
        dkim_author_sig=findings.get("dkim_author_sig"),
        dkim_sender_sig=findings.get("dkim_sender_sig"),
        dkim_thirdparty_sig=findings.get("dkim_thirdparty_sig"),
        dkim_envsender_sig=findings.get("dkim_envsender_sig"),
        macro_tests_sanity_limit=int(getattr(view, "macro_tests_sanity_limit", 50) or 0),
        sa_spam_level_char=str(getattr(view, "sa_spam_level_char", "*") or ""),
        attachment_password_setting=getattr(view, "attachment_password", None),
    )
    if findings.get("body_digest"):
        extra["body_digest"] = str(findings["body_digest"])
    if virus is not None:
        extra["av_output"] = getattr(virus, "output", None) or None
        extra["detecting_scanners"] = list(getattr(virus, "detecting_scanners", []) or [])
        extra["av_results"] = [ScannerResult(str(r.name), bool(r.status),
                                             list(getattr(r, "virus_names", []) or []))
                               for r in getattr(virus, "results", []) or []]
    elif findings.get("detecting_scanners"):
        extra["detecting_scanners"] = list(findings["detecting_scanners"])
    if spam is not None and getattr(spam, "report", None):
        extra["spam_summary"] = extra["spam_report"] = str(spam.report)
    ctx = TemplateContext.from_message(msg, header_block, **extra)
    spam_entries = getattr(spam, "recipients", None) or {}
    for facts, rcpt in zip(ctx.recipients, msg.recipients, strict=True):
        facts.is_local = bool(is_local(rcpt.address)) if is_local else False
        facts.spam_tests = list(rcpt.spam_tests or [])
        entry = spam_entries.get(rcpt.address)
        if entry is not None:
            facts.tag_level = _number(entry.tag_level)
            facts.tag2_level = _number(entry.tag2_level)
            facts.kill_level = _number(entry.kill_level)
        verdict = verdicts.get(rcpt.address)
        if verdict is not None and getattr(rcpt, "banning_reason_short", None) is not None:
            facts.banned_parts = list(verdict.banned_parts)
            facts.banned_parts_as_attr = list(verdict.banned_parts_as_attr)
            facts.banning_rule_key = [str(k) for k in verdict.banning_rule_key]
            facts.banning_rule_comment = [str(c) for c in verdict.banning_rule_comment]
            facts.banning_rule_rhs = [_rhs_text(r) for r in verdict.banning_rule_rhs]
    return ctx


def _rhs_text(value: Any) -> str:
    """A banning rule's right-hand side as Perl prints it: 1, '' for false, the text."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    return str(value)
