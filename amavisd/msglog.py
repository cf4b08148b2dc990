# tests: t/test_logtemplates.py t/test_json_event.py
"""The end of a message's processing as the logs see it (spec/pipeline.md 2 steps 34-38).

One call per message, after the SMTP reply is known and before the timing line:

* the structured report (``report.py``) is built at most once: for
  ``[:report_json]`` in a log template and for Redis;
* ``$log_templ`` (and ``$log_recip_templ``, when set) give the level-0 entries;
  an admin's template that fails to expand is logged and replaced by the
  built-in line (``logline.main_log_lines``) so the message is never unlogged;
* the event is queued for Redis when Redis logging is on (``redis_store``).

The pipeline owns the order; this module only describes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from amavisd import log as amavis_log
from amavisd import redis_store
from amavisd.config.lookup import Lookups
from amavisd.header import HeaderFacts
from amavisd.logcontext import message_context
from amavisd.logline import main_log_lines
from amavisd.logtemplates import default_log_template
from amavisd.message import Message
from amavisd.report import (
    ReportFacts,
    encode_json,
    num3,
    report_json_bytes,
    structured_report,
)
from amavisd.templates import (
    TemplateContext,
    TemplateError,
    render_log_lines,
    render_recipient_log_lines,
)

log = logging.getLogger(__name__)

_BULK = re.compile(rb"^Precedence:[ \t]*(bulk|list|junk)\b", re.I | re.M)
_MLIST = re.compile(rb"^(List-(Id|Post|Unsubscribe)|Mailing-List|X-Mailing-List|"
                    rb"X-ML-Name|List-Help):", re.I | re.M)
_AUTO = re.compile(rb"^Auto-Submitted:[ \t]*(?!no\b)\S", re.I | re.M)


def log_entries(view: Any, ctx: TemplateContext) -> list[tuple[str, bool]]:
    """The level-0 entries of ``$log_templ`` and ``$log_recip_templ`` for ``ctx``.

    Each entry comes with whether it carries ``[:report_json]`` output: such a
    line is written with its backslashes as they are, so the JSON stays JSON.
    Raises TemplateError when a template cannot be expanded.
    """
    produced: list[str] = []
    encode = ctx.json_encode or encode_json

    def recording(report: Any) -> str:
        text = encode(report)
        produced.append(text)
        return text

    ctx.json_encode = recording
    lines: list[str] = []
    template = getattr(view, "log_templ", None)
    if template and logging.getLogger().isEnabledFor(amavis_log.py_level(0)):
        lines += render_log_lines(str(template), ctx)
    per_recipient = getattr(view, "log_recip_templ", None)
    if per_recipient:
        for i in range(len(ctx.recipients)):
            lines += render_recipient_log_lines(str(per_recipient), ctx, i)
    return [(line, any(j in line for j in produced)) for line in lines]


def origin_ip(ctx: TemplateContext) -> str | None:
    """``%e``: the oldest public address of the trace, public as amavis counts it
    (documentation ranges such as 192.0.2.0/24 are public there)."""
    public = [h.ip for h in ctx.get_trace() if h.public and h.ip]
    return public[-1] if public else None


def elapsed_sections(sections: Sequence[tuple[str, float]], inner: dict[str, float],
                     total_ms: float) -> dict[str, float]:
    """TimeElapsed* in ms by name (Receiving, Decoding, ..., Total), as the counters have
    them (pipeline._count): the same numbers go into the event's ``elapsed``."""
    by_name = dict(sections)
    out = dict(inner)
    out["Receiving"] = by_name.get("SMTP DATA", 0.0)
    out["Sending"] = sum(by_name.get(x, 0.0) for x in ("notif-quar", "forwarding", "DSN"))
    out["Total"] = total_ms
    return {k: v for k, v in out.items() if k in ("Receiving", "Sending", "Total") or v}


def _checks_performed(msg: Message) -> str:
    """``V S H B F P D``: the checks that ran (virus, spam, header, banned, p0f, penpals,
    DKIM); penpals and p0f are not implemented here."""
    f = msg.findings
    virus = f.get("virus")
    spam = f.get("spam")
    letters = [("V", virus is not None and bool(virus.results)),
               ("S", spam is not None and bool(spam.performed)),
               ("H", "bad_headers" in f), ("B", "banned" in f),
               ("F", bool(f.get("os_fingerprint"))), ("P", False),
               ("D", "dkim_signatures_all" in f)]
    return " ".join(x for x, on in letters if on)


def _file_names(msg: Message) -> list[str] | None:
    content = msg.findings.get("content")
    if content is None:
        return None
    names: list[str] = []
    pending = list(content.tree.root.children)
    while pending:
        part = pending.pop(0)
        if part.declared_names:
            names.append(part.declared_names[0])
        else:
            pending.extend(part.children)
    return names or None


def report_facts(msg: Message, view: Any, header_block: bytes, stored: Any,
                 elapsed_ms: dict[str, float]) -> ReportFacts:
    """What the report needs beyond the template context."""
    lookups = Lookups(view)
    bypass = [{kind: bool(lookups.per_recipient(f"bypass_{kind}_checks_maps", r.address))
               for kind in ("virus", "banned")} | {"spam": bool(r.bypass_spam_checks)}
              for r in msg.recipients]
    quar_types = msg.findings.get("quar_type") or []
    return ReportFacts(
        sid=getattr(stored, "sid", None), rids=list(getattr(stored, "rids", None) or []),
        quar_type=quar_types[0] if quar_types else None,
        dsn_sent=msg.findings.get("dsn_sent"), checks_performed=_checks_performed(msg) or None,
        elapsed_ms=elapsed_ms, attached_file_names=_file_names(msg),
        orcpts=[r.orcpt for r in msg.recipients], bypass=bypass,
        blacklisted=[r.blacklisted for r in msg.recipients],
        whitelisted=[r.whitelisted for r in msg.recipients],
        is_auto_resp=bool(_AUTO.search(header_block)),
        is_mlist=bool(_MLIST.search(header_block) or msg.findings.get("is_mlist")),
        is_bulk=bool(_BULK.search(header_block) or _MLIST.search(header_block)
                     or _AUTO.search(header_block)),
        os_fp=msg.findings.get("os_fingerprint") or None)


def _is_default_short(view: Any) -> bool:
    """``$log_templ`` is our default (short) text and no per-recipient template is on."""
    template = getattr(view, "log_templ", None)
    if not template or getattr(view, "log_recip_templ", None):
        return False
    default = default_log_template("log_short_templ")
    return template is default or str(template) == str(default)


def log_message(config: Any, msg: Message, view: Any, header_block: bytes,
                facts: HeaderFacts, local: Sequence[bool], total_ms: Callable[[], float],
                elapsed_ms: dict[str, float], stored: Any = None) -> dict[str, Any] | None:
    """Write the main log entries and queue the Redis event; returns the report if built."""
    ctx = message_context(msg, view, header_block, local, elapsed=lambda: total_ms() / 1000.0)
    built: list[dict[str, Any]] = []

    def report() -> dict[str, Any]:
        if not built:
            built.append(structured_report(
                ctx, report_facts(msg, view, header_block, stored, elapsed_ms),
                src_ip=msg.client.mta_addr or None, dst_ip=msg.client.local_addr or None,
                dst_port=msg.client.local_port or None, now=total_ms()))
        elif "elapsed" in built[0]:           # a later use: Total as of now (amavis too)
            built[0]["elapsed"]["Total"] = num3(total_ms() / 1000.0)
        return built[0]

    ctx.structured_report = report

    def built_in() -> list[tuple[str, bool]]:
        quarantined = [q[len(ctx.quarantine_dir) + 1:] if ctx.quarantine_dir and
                       q.startswith(ctx.quarantine_dir + "/") else q
                       for q in ctx.quarantined_to or []]
        is_local = dict(zip((r.address for r in msg.recipients), local, strict=True))
        return [(line, False) for line in main_log_lines(
            msg, facts, lambda a: is_local.get(a, False), total_ms(),
            origin_ip(ctx), quarantined)]

    try:
        if _is_default_short(view):
            # the default text gives exactly logline.main_log_lines' output
            # (t/test_logtemplates.py holds them equal); expanding it through the
            # engine cost ~14 % of a 4 KB message's CPU (bench/RESULTS.md)
            entries = built_in()
        else:
            entries = log_entries(view, ctx)
    except Exception as exc:  # noqa: BLE001 - TemplateError, or a bug: never lose the line
        why = exc if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
        amavis_log.do_log(-1, "log template failed, the built-in line follows: %s", why)
        entries = built_in()
    for line, is_json in entries:
        amavis_log.do_log(0, "%s", line, raw_backslash=is_json)
    if redis_store.logging_enabled(config, view) is not None:
        try:
            redis_store.push_event(config, view, msg.log_id, report_json_bytes(report()))
        except Exception as exc:  # noqa: BLE001 - the event must never cost the message
            amavis_log.do_log(-1, "save_structured_report failed: %s", exc)
    return built[0] if built else None
