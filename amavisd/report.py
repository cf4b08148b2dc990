# tests: t/test_json_event.py
"""The structured report of one message (the JSON event, spec/monitoring.md 5.6).

Built once per message after its processing, from the template context the log
templates read (``logcontext.message_context``) and a few facts only the pipeline
has (SQL ids, section timings).  It goes into ``[:report_json]`` of a log
template and, when Redis logging is configured, to a Redis list
(``redis_store``).  ``encode_json`` writes it as Amavis::JSON does: compact,
keys sorted at every level, numbers that keep their formatted text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from amavisd.constants import D_BOUNCE, D_DISCARD, D_PASS
from amavisd.templates import CCAT_DISPLAY_NAMES, TemplateContext
from amavisd.templates.builtins import idn_to_utf8
from amavisd.templates.mailfmt import (
    iso8601_week,
    iso8601_weekday,
    mail_addr_decode,
    mime_decode_header,
    parse_address_list,
    parse_message_id,
)


class Number(str):
    """A JSON number written as its text (``0.010``, ``1796007645.580``): Amavis::JSON's
    ``numeric``.  Plain ints are numbers too; other values are strings, as in Perl."""


def num3(value: float) -> Number:
    """``%.3f``: seconds, scores and times carry three decimals."""
    return Number(f"{value:.3f}")


_ESCAPE = re.compile("[\x00-\x1f\x7f\u2028\u2029\"\\\\\ud800-\udfff]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    if "\ud800" <= ch <= "\udfff":     # an undecodable octet (surrogateescape): not UTF-8
        return "\ufffd"
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04X}"


def _string(text: str) -> str:
    return '"' + _ESCAPE.sub(_escape, text) + '"'


def encode_json(value: Any) -> str:
    """Compact JSON, keys sorted by code point (UTF-8 byte order) at every level.

    ``"`` and ``\\`` are escaped, controls as ``\\b \\t \\n \\f \\r`` or ``\\u00XX``
    (DEL too), and U+2028/U+2029; ``/`` and other non-ASCII stay as they are.
    An octet that was not UTF-8 (a surrogate escape) becomes U+FFFD, so the text
    always encodes to valid UTF-8.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Number):
        return str(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_string(str(k))}:{encode_json(value[k])}"
                              for k in sorted(value, key=str)) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    return _string(str(value))


@dataclass
class ReportFacts:
    """What the report needs beyond the template context (none of it is in a macro)."""

    sid: int | None = None                                   # SQL maddr id of the sender
    rids: Sequence[int | None] = ()                          # ... of each recipient
    user_policy_ids: Sequence[Any] = ()
    quar_type: str | None = None
    dsn_sent: int | None = None
    checks_performed: str | None = None                      # "V S H B F P D" subset
    #: TimeElapsed* in ms without the prefix: Receiving, Decoding, VirusCheck, ...
    elapsed_ms: dict[str, float] = field(default_factory=dict)
    attached_file_names: list[str] | None = None
    orcpts: Sequence[str | None] = ()
    bypass: Sequence[dict[str, bool]] = ()                    # per recipient
    blacklisted: Sequence[bool] = ()
    whitelisted: Sequence[bool] = ()
    is_auto_resp: bool = False
    is_mlist: bool = False
    is_bulk: bool = False
    os_fp: str | None = None


def _decoded_field(ctx: TemplateContext, name: str) -> str | None:
    """A header field body unfolded, trimmed and RFC 2047-decoded (None: no such field)."""
    body = ctx.header_body(name)
    if body is None:
        return None
    body = re.sub(r"\n(?=[ \t])", "", body.rstrip("\n")).strip(" \t")
    return mime_decode_header(body)


def _addresses(ctx: TemplateContext, name: str) -> list[str] | None:
    body = ctx.header_body(name)
    if body is None:
        return None
    found = [mail_addr_decode(a) or "" for a in parse_address_list(body)]
    return found or None


def _action(r, notification_type: str | None) -> str:
    resp = r.smtp_response
    if resp.startswith("4"):
        return "TEMPFAIL"
    if resp.startswith("5"):
        return "BOUNCE" if r.destiny == D_BOUNCE else "REJECT"
    if r.destiny == D_DISCARD:
        return "DISCARD"
    if r.destiny == D_PASS and (resp.startswith("2") or not r.done):
        return notification_type or "PASS"
    return "?"


def _ccat_name(ccat: str | list[str] | None) -> str | None:
    items = ccat if isinstance(ccat, list) else [] if ccat is None else [ccat]
    for item in [*items, "0"]:
        if item in CCAT_DISPLAY_NAMES:
            return CCAT_DISPLAY_NAMES[item]
    return None


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _at(seq: Sequence[Any], i: int, default: Any = None) -> Any:
    return seq[i] if i < len(seq) else default


def _strip_brackets(addr: str) -> str:
    return addr[1:-1] if len(addr) >= 2 and addr[0] == "<" and addr[-1] == ">" else addr


def structured_report(ctx: TemplateContext, facts: ReportFacts, *,
                      src_ip: str | None = None, dst_ip: str | None = None,
                      dst_port: int | None = None, notification_type: str | None = None,
                      now: float | None = None) -> dict[str, Any]:
    """The event of spec monitoring.md 5.6 for the message ``ctx`` describes.

    ``notification_type`` (``DSN``, ``NOTIF``, ``SEND``) makes it the report of
    a notice amavis sent about the message: no ``dsn_sent``, no ``elapsed``.
    """
    from amavisd.templates.mailfmt import qquote_rfc2821_local

    sender = mail_addr_decode(_strip_brackets(qquote_rfc2821_local(ctx.sender))) or ""
    rcpt_smtp = [mail_addr_decode(_strip_brackets(qquote_rfc2821_local(r.address))) or ""
                 for r in ctx.recipients]
    recipients: list[dict[str, Any]] = []
    actions: list[str] = []
    codes: list[str] = []
    queued: list[str] = []
    tests: dict[str, float] = {}
    for i, r in enumerate(ctx.recipients):
        act = _action(r, notification_type)
        actions.append(act)
        resp = r.smtp_response
        m = re.match(r"(\d{3})(?: |\Z)", resp)
        code = m.group(1) if m else None
        if code is not None:
            codes.append(code)
        rq = None
        if r.remote_mta_smtp_response:
            mq = re.search(r"\bqueued as ([0-9A-Za-z]+)\Z", r.remote_mta_smtp_response)
            if mq:
                rq = mq.group(1)
            elif re.fullmatch(r"[0-9A-Za-z]+", r.remote_mta_smtp_response):
                rq = r.remote_mta_smtp_response     # already the id (forward.py)
        if rq is not None:
            queued.append(rq)
        for entry in ",".join(r.spam_tests).split(","):
            name, eq, score = entry.partition("=")
            if not name or not eq:
                continue
            try:
                value = float(score)
            except ValueError:
                continue
            tests[name] = max(value, tests.get(name, value))
        blk = _ccat_name(r.blocking_ccat) if r.blocking_ccat is not None else None
        main = _ccat_name(r.contents_category)
        if main == blk:
            main = None
        one: dict[str, Any] = {"rcpt_to": rcpt_smtp[i],
                               "rcpt_is_local": bool(r.is_local), "action": act}
        orcpt = _at(facts.orcpts, i)
        if orcpt:
            addr = orcpt.split(";", 1)[-1]
            if addr != rcpt_smtp[i]:
                one["rcpt_to_orig"] = addr
        if _at(facts.rids, i) is not None:
            one["rid"] = str(facts.rids[i])
        if _at(facts.user_policy_ids, i) is not None:
            one["sql_user_policy_id"] = str(facts.user_policy_ids[i])
        if resp:
            one["smtp_response"] = resp
        if code is not None:
            one["smtp_code"] = code
        if rq is not None:
            one["queued_as"] = rq
        if r.spam_level is not None:
            one["spam_score"] = num3(r.spam_level)
        if _at(facts.blacklisted, i):
            one["blacklisted"] = True
        if _at(facts.whitelisted, i):
            one["whitelisted"] = True
        for kind in ("virus", "banned", "spam"):
            if _at(facts.bypass, i, {}).get(kind):
                one[f"bypass_{kind}_checks"] = True
        if blk is not None:
            one["ccat_blocking"] = blk
        if main is not None:
            one["ccat_main"] = main
        if r.banning_reason_short:
            one["banning_reason"] = r.banning_reason_short
        recipients.append(one)

    actions = _unique(actions)
    blocking = ctx.blocking_ccat
    content_type = _ccat_name(blocking if blocking is not None else ctx.contents_category)
    report: dict[str, Any] = {
        "type": "amavis", "host": idn_to_utf8(ctx.myhostname), "log_id": ctx.log_id,
        "mail_id": ctx.mail_id, "mail_from": sender, "rcpt_to": rcpt_smtp,
        "rcpt_num": len(rcpt_smtp), "recipients": recipients,
        "content_type": content_type, "originating": bool(ctx.originating),
        "action": actions,
        "message": f"{ctx.log_id} {','.join(actions)} {content_type} {sender} -> "
                   f"{','.join(rcpt_smtp)}",
        "partition": ctx.partition_tag,
        "policy_banks": [b for b in ctx.policy_bank_path.split("/") if b],
    }
    optional: dict[str, Any] = {
        "mail_id_parent": ctx.parent_mail_id, "src_ip": src_ip, "dst_ip": dst_ip or None,
        "dst_port": dst_port or None, "client_ip": ctx.client_addr,
        "client_port": int(ctx.client_port) if str(ctx.client_port or "").isdigit()
        and int(ctx.client_port) else None,
        "queue_id": ctx.queue_id or None,
        "sid": str(facts.sid) if facts.sid is not None else None,
        "protocol": ctx.protocol, "attached_file_names": facts.attached_file_names or None,
        "digest_body": ctx.body_digest or None, "os_fp": facts.os_fp or None,
        "checks_performed": facts.checks_performed,
        "actions_performed": " ".join(ctx.actions_performed) if ctx.actions_performed
        else None,
        "dkim_author_sig": ctx.dkim_author_sig,
        "quar_type": facts.quar_type,
    }
    report.update({k: v for k, v in optional.items() if v is not None})
    _header_keys(report, ctx)
    trace = ctx.get_trace()
    public = [h.ip for h in trace if h.public and h.ip]
    if public:
        report["ip_trace"] = public
    if trace:
        report["ip_proto_trace"] = [h.proto_form() for h in trace]
    if ctx.size:
        report["size"] = int(ctx.size)
    if ctx.quarantined_to:
        first = ctx.quarantined_to[0]
        prefix = (ctx.quarantine_dir or "") + "/"
        report["quarantine"] = first[len(prefix):] if ctx.quarantine_dir and \
            first.startswith(prefix) else first
    levels = [r.spam_level for r in ctx.recipients if r.spam_level is not None]
    if levels:
        report["spam_score"] = num3(max(levels))
    if notification_type is None:
        report["dsn_sent"] = facts.dsn_sent == 1
    if ctx.virus_names:
        report["virusnames"] = _unique(ctx.virus_names)
        report["av_scan"] = {re.sub(r"[\x00-\x1f\x7f-\x9f\\]", " ", s.name.replace('"', "'")):
                             list(s.virus_names) for s in ctx.av_results if s.infected}
    if tests:
        report["tests"] = sorted(tests)
        report["tests_spam"] = sorted((t for t in tests if tests[t] > 0),
                                      key=lambda t: -tests[t])
        report["tests_ham"] = sorted((t for t in tests if tests[t] < 0),
                                     key=lambda t: tests[t])
    for key, on in (("is_auto_resp", facts.is_auto_resp), ("is_mlist", facts.is_mlist),
                    ("is_bulk", facts.is_bulk)):
        if on:
            report[key] = True
    valid = _unique(idn_to_utf8(s.domain) for s in ctx.dkim_valid)
    new = _unique(idn_to_utf8(s.domain) for s in ctx.dkim_new)
    if valid:
        report["dkim_valid_sig"] = valid
    if new:
        report["dkim_new_sig"] = new
    if codes:
        report["smtp_code"] = _unique(codes)
    if queued:
        report["queued_as"] = _unique(queued)
    _time_keys(report, ctx.rx_time, ctx.tz)
    if notification_type is None and facts.elapsed_ms:
        update_elapsed(report, facts.elapsed_ms, now)
    return report


def _header_keys(report: dict[str, Any], ctx: TemplateContext) -> None:
    """sender, author, to_addr, cc_addr, subject(_rot13), message_id, references, user_agent."""
    sender = _addresses(ctx, "sender")
    if sender:
        report["sender"] = sender[0]
    for key, name in (("author", "from"), ("to_addr", "to"), ("cc_addr", "cc")):
        found = _addresses(ctx, name)
        if found:
            report[key] = found
    subject = _decoded_field(ctx, "subject")
    if subject is not None:
        import codecs

        report["subject"] = subject
        report["subject_rot13"] = codecs.encode(subject, "rot13")
    mid = ctx.header_body("message-id")
    if mid is not None and mid.strip():
        report["message_id"] = " ".join(mail_addr_decode(i) or i for i in parse_message_id(mid))
    refs: list[str] = []
    for name in ("in-reply-to", "references"):
        body = ctx.header_body(name)
        if body:
            refs += [mail_addr_decode(i) or i for i in parse_message_id(body)]
    if refs:
        report["references"] = _unique(refs)
    agent = _decoded_field(ctx, "user-agent") or _decoded_field(ctx, "x-mailer")
    if agent:
        report["user_agent"] = agent


def _time_keys(report: dict[str, Any], rx_time: float, tz: Any) -> None:
    millis = int(round(rx_time * 1000))
    seconds, ms = divmod(millis, 1000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    report["@timestamp"] = f"{stamp}.{ms:03d}Z"
    report["time_unix"] = num3(rx_time)
    year = _iso_year(rx_time, tz)
    report["time_iso_week_date"] = \
        f"{year:04d}-W{iso8601_week(rx_time, tz):02d}-{iso8601_weekday(rx_time, tz)}"


def _iso_year(t: float, tz: Any) -> int:
    from datetime import datetime

    dt = datetime.fromtimestamp(t, tz) if tz is not None else datetime.fromtimestamp(t)
    return dt.isocalendar()[0]


def update_elapsed(report: dict[str, Any], elapsed_ms: Mapping[str, float],
                   now_total_ms: float | None = None) -> None:
    """``elapsed``: seconds with three decimals; ``Total`` as of now, ``Amavis`` the
    rest after the spam and virus checks (spec 5.6)."""
    el = {k: v for k, v in elapsed_ms.items() if k != "PenPals"}
    if now_total_ms is not None:
        el["Total"] = now_total_ms
    total = el.get("Total", 0.0)
    el["Amavis"] = total - el.get("SpamCheck", 0.0) - el.get("VirusCheck", 0.0)
    report["elapsed"] = {k: num3(v / 1000.0) for k, v in el.items()}


def report_json_bytes(report: Mapping[str, Any]) -> bytes:
    """The event as the UTF-8 octets Redis gets."""
    return encode_json(report).encode("utf-8")
