# tests: t/templates/test_engine.py
"""The built-in macros of spec/pipeline.md 19.2, computed from a ``TemplateContext``.

``message_macros(ctx)`` is amavis's ``%builtins`` for one message (plus ``f T C B``
when the context describes a notice); ``log_macros`` is what the per-message log
template sees (``T`` is the test list there); ``recipient_log_macros`` redefines
the macros with per-recipient meaning for ``$log_recip_templ``.

Each macro is a function ``(ctx, name, *args)`` registered in ``BUILTINS`` under
all its names; a value is None (Perl's undef), a str, or a list of str (what
``%#x`` counts and ``[...]`` iterates).  None and an empty list differ: an
iterator runs once over an undef value and never over an empty list.
"""

from __future__ import annotations

import base64
import codecs
import json
import resource
import secrets
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from amavisd.constants import D_PASS
from amavisd.templates.context import RecipientFacts, TemplateContext
from amavisd.templates.engine import Value
from amavisd.templates.mailfmt import (
    idn_labels_to_unicode,
    iso8601_timestamp,
    iso8601_utc_timestamp,
    iso8601_week,
    iso8601_weekday,
    mail_addr_decode,
    mime_decode_header,
    parse_address_list,
    parse_message_id,
    qquote_rfc2821_local,
    rfc2822_timestamp,
    sanitize_str,
    split_address,
    truncate_utf8,
)
from amavisd.templates.perlish import (
    perl_decr,
    perl_incr,
    perl_index,
    perl_int,
    perl_minmax,
    perl_num,
    perl_sprintf,
    perl_str,
    perl_substr,
    wrap_string,
)
from amavisd.templates.trace import first_received_from

Macro = Callable[..., Value]
BUILTINS: dict[str, Macro] = {}

#: %ccat_display_names (pipeline.md 12.1): by "maj" and "maj,min".
CCAT_DISPLAY_NAMES = {
    "0": "CatchAll", "1": "Clean", "1,1": "CleanTag", "2": "MtaFailed",
    "2,1": "MtaTempFailed", "2,2": "MtaRejected", "3": "Oversized", "4": "BadHdr",
    "4,1": "BadHdrMime", "4,2": "BadHdr8bit", "4,3": "BadHdrChar", "4,4": "BadHdrSpace",
    "4,5": "BadHdrLong", "4,6": "BadHdrSyntax", "4,7": "BadHdrMissing", "4,8": "BadHdrDupl",
    "5": "Spammy", "5,1": "Spammy3", "6": "Spam", "7": "Unchecked",
    "7,1": "UncheckedEncrypted", "7,2": "UncheckedOverLimits",
    "7,3": "UncheckedAmbiguousContent", "8": "Banned", "9": "Virus",
}


def macro(*names: str) -> Callable[[Macro], Macro]:
    """Register a builtin under each of ``names``."""
    def register(fn: Macro) -> Macro:
        for name in names:
            BUILTINS[name] = fn
        return fn
    return register


def _arg(args: tuple[str, ...], i: int) -> str | None:
    return args[i] if i < len(args) else None


def _unique(items) -> list[str]:
    """amavis's unique_ref: defined items, first occurrence kept."""
    return list(dict.fromkeys(i for i in items if i is not None))


def perl_split_lines(text: str, separator: str) -> list[str]:
    """Perl's ``split /sep/, $s``: trailing empty fields dropped; empty input, no fields."""
    import re

    fields = re.split(separator, text)
    while fields and fields[-1] == "":
        fields.pop()
    return fields


def _ccat_key(ccat: str) -> tuple[int, int]:
    major, _, minor = ccat.partition(",")
    return perl_int(major), perl_int(minor or "0")


def _ccat_split(ccat: str | list[str] | None) -> tuple[str | None, str | None]:
    if isinstance(ccat, list):
        ccat = ccat[0] if ccat else None
    if ccat is None:
        return None, None
    major, comma, minor = ccat.partition(",")
    return major, (minor if comma else None)


def _ccat_setting(ccat: str | list[str] | None, table: Mapping[str, str]) -> str | None:
    """setting_by_given_contents_category: the first listed ccat with an entry, else CATCHALL."""
    items = ccat if isinstance(ccat, list) else [] if ccat is None else [ccat]
    for item in [*items, "0"]:
        if item in table:
            return table[item]
    return None


def _is_in(categories: list[str], major: int, minor: int = 0) -> bool:
    return any(_ccat_key(c) == (major, minor) for c in categories)


def ccat_value(categories: list[str], blocking: str | None, attr: str | None,
               which: str | None) -> str:
    """The ``ccat`` macro over one category list and its blocking category."""
    attr = (attr or "").lower()
    which = (which or "").lower()
    if attr == "is_blocking":
        return "1" if blocking is not None else ""
    if attr == "is_nonblocking":
        return "1" if blocking is None else ""
    if attr == "is_blocked_by_nonmain":
        return "1" if blocking is not None and categories and blocking != categories[0] else ""
    if attr == "name":
        if which == "main":
            chosen: str | list[str] | None = categories
        elif which == "blocking":
            if blocking is None:
                return ""
            chosen = blocking
        else:
            chosen = blocking if blocking is not None else categories
        return _ccat_setting(chosen, CCAT_DISPLAY_NAMES) or ""
    use_blocking = which == "blocking" or (which != "main" and blocking is not None)
    major, minor = _ccat_split(blocking if use_blocking else categories)
    if attr == "major":
        return major or ""
    if attr == "minor":
        return str(perl_int(minor))
    return f"({perl_int(major)},{perl_int(minor)})"


# ----------------------------------------------------------------- time and identity
@macro("p")
def _policy_bank(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.policy_bank_path


@macro("DATE", "d", "date_rfc2822_local")
def _date_rfc2822(ctx: TemplateContext, name: str, *args: str) -> Value:
    return rfc2822_timestamp(ctx.rx_time, ctx.tz)


@macro("U", "date_iso8601_utc")
def _date_iso_utc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return iso8601_utc_timestamp(ctx.rx_time)


@macro("u", "date_unix_utc")
def _date_unix(ctx: TemplateContext, name: str, *args: str) -> Value:
    return f"{int(ctx.rx_time):010d}"


@macro("date_iso8601_local")
def _date_iso_local(ctx: TemplateContext, name: str, *args: str) -> Value:
    return iso8601_timestamp(ctx.rx_time, ctx.tz)


@macro("week_iso8601")
def _week(ctx: TemplateContext, name: str, *args: str) -> Value:
    return str(iso8601_week(ctx.rx_time, ctx.tz))


@macro("weekday")
def _weekday(ctx: TemplateContext, name: str, *args: str) -> Value:
    return str(iso8601_weekday(ctx.rx_time, ctx.tz))


@macro("y")
def _elapsed(ctx: TemplateContext, name: str, *args: str) -> Value:
    return f"{1000 * ctx.now_elapsed():.0f}"


def idn_to_ascii(domain: str) -> str:
    """A domain in ASCII (A-labels), lowercased, as amavis compares and prints it."""
    if domain.isascii():
        return domain.lower()
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain.lower()


def idn_to_utf8(domain: str) -> str:
    """A domain with its A-labels as U-labels; anything else unchanged."""
    if "xn--" not in domain.lower():
        return domain
    return idn_labels_to_unicode(domain.lower())


@macro("h")
def _hostname(ctx: TemplateContext, name: str, *args: str) -> Value:
    return idn_to_utf8(ctx.myhostname) if ctx.smtputf8 else idn_to_ascii(ctx.myhostname)


@macro("HOSTNAME")
def _hostname_utf8(ctx: TemplateContext, name: str, *args: str) -> Value:
    return idn_to_utf8(ctx.myhostname)


@macro("l")
def _originating(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "1" if ctx.originating else None


@macro("n", "log_id", "LOGID")
def _log_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.log_id


@macro("i", "mail_id", "MAILID")
def _mail_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.mail_id


@macro("secret_id")
def _secret_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.secret_id


@macro("parent_mail_id")
def _parent_mail_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.parent_mail_id


@macro("P", "partition_tag")
def _partition(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.partition_tag


@macro("z")
def _size(ctx: TemplateContext, name: str, *args: str) -> Value:
    return str(ctx.size)


@macro("Q")
def _queue_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.queue_id


@macro("actions_performed")
def _actions(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ",".join(ctx.actions_performed or [])


# ----------------------------------------------------------------- envelope
@macro("s", "S")
def _sender(ctx: TemplateContext, name: str, *args: str) -> Value:
    return qquote_rfc2821_local(ctx.sender)


@macro("o")
def _sender_source(ctx: TemplateContext, name: str, *args: str) -> Value:
    return sanitize_str(ctx.sender if ctx.sender_source is None else ctx.sender_source)


@macro("R")
def _recipients(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [r.address for r in ctx.recipients]


def delivered(r: RecipientFacts) -> bool:
    """amavis's delivery_short_report: passed and (a 2xx reply or still open)."""
    return r.destiny == D_PASS and (r.smtp_response.startswith("2") or not r.done)


def short_report(r: RecipientFacts) -> str:
    """``<addr>:[ [mta] said:]\\n   <reply>`` for a recipient that does not get the mail."""
    said = f" [{r.remote_mta}] said:" if r.remote_mta else ""
    return f"{qquote_rfc2821_local(r.address)}:{said}\n   {r.smtp_response}"


@macro("D")
def _delivered(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [qquote_rfc2821_local(r.address) for r in ctx.recipients if delivered(r)]


@macro("O")
def _not_delivered(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [qquote_rfc2821_local(r.address) for r in ctx.recipients if not delivered(r)]


@macro("N")
def _not_delivered_report(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [short_report(r) for r in ctx.recipients if not delivered(r)]


@macro("log_domains")
def _log_domains(ctx: TemplateContext, name: str, *args: str) -> Value:
    domains = set()
    for r in ctx.recipients:
        if not r.is_local:
            domains.add("EXT")
        else:
            domains.add(split_address(r.address)[1].lstrip("@").lower())
    return ",".join(sorted(domains))


@macro("dsn_notify")
def _dsn_notify(ctx: TemplateContext, name: str, *args: str) -> Value:
    if ctx.sender == "":
        return "NEVER"
    merged = set()
    for r in ctx.recipients:
        for value in r.dsn_notify or ["FAILURE"]:
            merged.add(value.upper())
    return ",".join(sorted(merged)).upper()


# ----------------------------------------------------------------- header section
def header_field(ctx: TemplateContext, field_name: str | None, limit: str | None = None,
                 index: str | None = None) -> str | None:
    """macro_header_field: a field body unfolded and trimmed, ids cleaned, CR/LF shown."""
    import re

    if field_name is None:
        return None
    position = int(index) if index is not None and re.fullmatch(r"[+-]?\d+", index) else None
    text = ctx.header_body(field_name, position)
    if text is None:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    text = re.sub(r"\n(?=[ \t])", "", text)
    text = text.lstrip(" \t")
    text = re.sub(r"[ \t\n]+\Z", "", text)
    if re.fullmatch(r"Message-ID|Resent-Message-ID|In-Reply-To|References", field_name,
                    re.I) and text != "":
        text = " ".join(parse_message_id(text))
    if limit is not None and not re.fullmatch(r"\s+", limit):
        cut = perl_num(limit)
        if cut > 5 and len(text) > cut:
            text = text[:int(cut) - 5] + "[...]"
    return re.sub(r"[\r\n]", lambda m: f"\\x{{{ord(m.group(0)):02X}}}", text)


@macro("header_field", "HEADER", "header_field_octets")
def _header_field(ctx: TemplateContext, name: str, *args: str) -> Value:
    return header_field(ctx, _arg(args, 0), _arg(args, 1), _arg(args, 2))


@macro("j")
def _subject(ctx: TemplateContext, name: str, *args: str) -> Value:
    return header_field(ctx, "Subject")


def _first_id(ctx: TemplateContext, field_name: str) -> str | None:
    body = ctx.header_body(field_name)
    if body is None:
        return None
    ids = parse_message_id(body)
    return ids[0] if ids else None


@macro("m")
def _message_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _first_id(ctx, "message-id")


@macro("r")
def _resent_message_id(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _first_id(ctx, "resent-message-id")


@macro("useragent")
def _useragent(ctx: TemplateContext, name: str, *args: str) -> Value:
    head = "User-Agent"
    body = header_field(ctx, head)
    if body is None:
        head = "X-Mailer"
        body = header_field(ctx, head)
    if body is None:
        return None
    which = (_arg(args, 0) or "").lower()
    return head if which == "name" else body if which == "body" else f"{head}: {body}"


def _unquote_local(address: str) -> str:
    local, domain = split_address(address)
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        import re

        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return local + domain


def _addresses(ctx: TemplateContext, field_name: str) -> list[str]:
    out: list[str] = []
    for raw in ctx.header_fields(field_name):
        body = raw.split(b":", 1)[1].decode("utf-8", errors="replace")
        out.extend(_unquote_local(a) for a in parse_address_list(body))
    return out


@macro("rfc2822_sender")
def _rfc2822_sender(ctx: TemplateContext, name: str, *args: str) -> Value:
    body = ctx.header_body("sender")
    if body is None:
        return None
    found = parse_address_list(body)
    return qquote_rfc2821_local(_unquote_local(found[0]) if found else "")


@macro("rfc2822_from")
def _rfc2822_from(ctx: TemplateContext, name: str, *args: str) -> Value:
    body = ctx.header_body("from")
    if body is None:
        return None
    found = [_unquote_local(a) for a in parse_address_list(body)]
    return ", ".join(qquote_rfc2821_local(a) for a in found) if found else None


@macro("rfc2822_resent_sender")
def _rfc2822_resent_sender(ctx: TemplateContext, name: str, *args: str) -> Value:
    found = _addresses(ctx, "resent-sender")
    return ", ".join(qquote_rfc2821_local(a) for a in found) if found else None


@macro("rfc2822_resent_from")
def _rfc2822_resent_from(ctx: TemplateContext, name: str, *args: str) -> Value:
    found = _addresses(ctx, "resent-from")
    return ", ".join(qquote_rfc2821_local(a) for a in found) if found else None


@macro("H")
def _header_lines(ctx: TemplateContext, name: str, *args: str) -> Value:
    from amavisd.templates.mailfmt import decode_octets

    lines: list[str] = []
    for raw in ctx.header:
        lines.extend(perl_split_lines(decode_octets(raw), "\n"))
    return lines


@macro("b")
def _body_digest_hex(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.body_digest


@macro("body_digest")
def _body_digest_raw(ctx: TemplateContext, name: str, *args: str) -> Value:
    if not ctx.body_digest:
        return ""
    return bytes.fromhex(ctx.body_digest).decode("latin-1")


# ----------------------------------------------------------------- categories
@macro("ccat")
def _ccat(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ccat_value(ctx.contents_category, ctx.blocking_ccat, _arg(args, 0), _arg(args, 1))


def _effective_ccat(ctx: TemplateContext) -> str | list[str]:
    return ctx.blocking_ccat if ctx.blocking_ccat is not None else ctx.contents_category


@macro("ccat_maj")
def _ccat_maj(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _ccat_split(_effective_ccat(ctx))[0]


@macro("ccat_min")
def _ccat_min(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _ccat_split(_effective_ccat(ctx))[1]


@macro("ccat_name")
def _ccat_name(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _ccat_setting(_effective_ccat(ctx), CCAT_DISPLAY_NAMES)


# ----------------------------------------------------------------- virus, banned, header
@macro("q")
def _quarantine(ctx: TemplateContext, name: str, *args: str) -> Value:
    if ctx.quarantined_to is None:
        return None
    prefix = (ctx.quarantine_dir or "") + "/"
    return [q[len(prefix):] if q.startswith(prefix) else q for q in ctx.quarantined_to]


@macro("v")
def _av_output(ctx: TemplateContext, name: str, *args: str) -> Value:
    if ctx.av_output is None:
        return None
    return perl_split_lines(ctx.av_output, r"[ \t]*\r?\n")


@macro("V")
def _virus_names(ctx: TemplateContext, name: str, *args: str) -> Value:
    return None if ctx.virus_names is None else _unique(ctx.virus_names)


@macro("W")
def _scanners(ctx: TemplateContext, name: str, *args: str) -> Value:
    if not args:
        return list(ctx.detecting_scanners)
    import re

    parts = []
    for result in ctx.av_results:
        scanner = result.name
        if not re.fullmatch(r"[^:\" \t]+", scanner):
            scanner = '"' + scanner.replace('"', "'") + '"'
        verdict = "[" + ",".join(result.virus_names) + "]" if result.infected else "-"
        parts.append(f"{scanner}:{verdict}")
    return "; ".join(parts)


@macro("F")
def _first_banned(ctx: TemplateContext, name: str, *args: str) -> Value:
    return next((r.banning_reason_short for r in ctx.recipients
                 if r.banning_reason_short is not None), None)


def _per_recipient_union(ctx: TemplateContext, attr: str) -> list[str]:
    return _unique(v for r in ctx.recipients for v in (getattr(r, attr) or []))


@macro("banning_rule_key")
def _banning_rule_key(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _per_recipient_union(ctx, "banning_rule_key")


@macro("banning_rule_comment")
def _banning_rule_comment(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _per_recipient_union(ctx, "banning_rule_comment")


@macro("banning_rule_rhs")
def _banning_rule_rhs(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _per_recipient_union(ctx, "banning_rule_rhs")


def chop_parts(parts: list[str]) -> list[str]:
    """At most two banned parts and ``...``; long blank runs shown as `` ... ``."""
    import re

    if len(parts) > 2:
        parts = [parts[0], parts[1], "..."]
    return [re.sub(r"[ \t]{6,}", " ... ", p) for p in parts]


@macro("banned_parts")
def _banned_parts(ctx: TemplateContext, name: str, *args: str) -> Value:
    return chop_parts(_per_recipient_union(ctx, "banned_parts"))


@macro("banned_parts_as_attr")
def _banned_parts_attr(ctx: TemplateContext, name: str, *args: str) -> Value:
    return chop_parts(_per_recipient_union(ctx, "banned_parts_as_attr"))


@macro("X")
def _bad_headers(ctx: TemplateContext, name: str, *args: str) -> Value:
    return list(ctx.bad_headers)


# ----------------------------------------------------------------- spam
@macro("A")
def _spam_summary_lines(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_split_lines(ctx.spam_summary or "", r"\r?\n")


@macro("SUMMARY")
def _spam_summary(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.spam_summary


@macro("REPORT")
def _spam_report(ctx: TemplateContext, name: str, *args: str) -> Value:
    return sanitize_str(ctx.spam_report, keep_eol=True)


def macro_tests(ctx: TemplateContext, index: int | None, name: str,
                separator: str | None) -> Value:
    """``T``/``TESTS``/``TESTSSCORES``: one recipient's tests, or all (sorted, unique)."""
    if index is not None:
        r = ctx.recipients[index] if 0 <= index < len(ctx.recipients) else None
        tests = perl_split_lines(",".join(r.spam_tests), ",") if r and r.spam_tests else []
    else:
        found: set[str] = set()
        for r in ctx.recipients:
            if r.spam_tests:
                found.update(perl_split_lines(",".join(r.spam_tests), ","))
        tests = sorted(found)
    limit = ctx.macro_tests_sanity_limit
    if limit and len(tests) > limit:
        tests = tests[:limit] + ["..."]
    if name == "TESTS":
        tests = [t.split("=", 1)[0] for t in tests]
    if name == "T" or separator is None:
        return tests
    return separator.join(tests)


@macro("TESTSSCORES", "TESTS")
def _tests(ctx: TemplateContext, name: str, *args: str) -> Value:
    return macro_tests(ctx, None, name, _arg(args, 0))


def macro_score(ctx: TemplateContext, index: int | None, name: str, arg: str | None) -> Value:
    """``c``/``SCORE``/``STARS``: one recipient's level, or min..max over all of them."""
    import re

    width = ""
    if name == "SCORE" and arg is not None and re.fullmatch(r"0+| +", arg):
        width = ("0" if arg.startswith("0") else "") + str(len(arg) + 4)
    if index is not None:
        r = ctx.recipients[index] if 0 <= index < len(ctx.recipients) else None
        low = high = r.spam_level if r is not None else None
    else:
        levels = [r.spam_level for r in ctx.recipients if r.spam_level is not None]
        low, high = (min(levels), max(levels)) if levels else (None, None)
    if name == "STARS":
        char = arg if arg not in (None, "") else ctx.sa_spam_level_char
        if not char or low is None or low < 1:
            return ""
        return char * min(50, int(low))
    if low is None or high is None:
        return "-"

    def fmt(level: float) -> str:
        return re.sub(r"\.?0*\Z", "", perl_sprintf(f"%{width}.3f", [repr(level)]), count=1)

    if abs(low - high) < 0.1:
        return fmt(low)
    return f"{fmt(low)}..{fmt(high)}"


@macro("c", "SCORE", "STARS")
def _score(ctx: TemplateContext, name: str, *args: str) -> Value:
    return macro_score(ctx, None, name, _arg(args, 0))


@macro("1")
def _above_tag(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "Y" if any(_is_in(r.contents_category, 1, 1) for r in ctx.recipients) else "0"


@macro("2")
def _above_tag2(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "Y" if any(_is_in(r.contents_category, 5) for r in ctx.recipients) else "0"


@macro("k")
def _above_kill(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "Y" if any(_is_in(r.contents_category, 6) for r in ctx.recipients) else "0"


@macro("YESNO", "YESNOCAPS")
def _yesno(ctx: TemplateContext, name: str, *args: str) -> Value:
    spammy = any(_is_in(r.contents_category, 5) for r in ctx.recipients)
    yes, no = ("YES", "NO") if name == "YESNOCAPS" else ("Yes", "No")
    if spammy:
        return yes if _arg(args, 0) is None else args[0]
    return no if _arg(args, 1) is None else args[1]


def level_text(level: float | None) -> str:
    """``0+sprintf("%.3f", level)``: a level as Perl prints it, ``-`` when undefined."""
    return "-" if level is None else perl_str(float(f"{level:.3f}"))


@macro("REQD")
def _required(ctx: TemplateContext, name: str, *args: str) -> Value:
    levels = [r.tag2_level for r in ctx.recipients if r.tag2_level is not None]
    return level_text(min(levels) if levels else None)


@macro("AUTOLEARN", "ADDEDHEADERHAM", "ADDEDHEADERSPAM", "SUBJPREFIX")
def _sa_tag(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.supplementary_info.get(name)


@macro("supplementary_info")
def _supplementary(ctx: TemplateContext, name: str, *args: str) -> Value:
    info = ctx.supplementary_info.get(_arg(args, 0) or "")
    if info is None or info == "":
        return ""
    fmt = _arg(args, 1)
    return info if not fmt else perl_sprintf(fmt, [info])


# ----------------------------------------------------------------- client and trace
@macro("ip_trace_all")
def _ip_trace_all(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [sanitize_str(h.ip) if h.ip is not None else "x" for h in ctx.get_trace()]


@macro("ip_trace_public")
def _ip_trace_public(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [sanitize_str(h.ip) for h in ctx.get_trace() if h.public]


@macro("ip_proto_trace_all")
def _ip_proto_trace_all(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [sanitize_str(h.proto_form()) for h in ctx.get_trace()[1:]]


@macro("ip_proto_trace_public")
def _ip_proto_trace_public(ctx: TemplateContext, name: str, *args: str) -> Value:
    return [sanitize_str(h.proto_form()) for h in ctx.get_trace()[1:] if h.public]


@macro("protocol")
def _protocol(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.protocol or ""


@macro("t")
def _first_received(ctx: TemplateContext, name: str, *args: str) -> Value:
    return sanitize_str(first_received_from(ctx.received()))


@macro("e")
def _origin_ip(ctx: TemplateContext, name: str, *args: str) -> Value:
    public = [h.ip for h in ctx.get_trace() if h.public]
    return sanitize_str(public[-1]) if public else ""


@macro("a", "client_addr")
def _client_addr(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.effective_client_addr()


@macro("client_port")
def _client_port(ctx: TemplateContext, name: str, *args: str) -> Value:
    return None if ctx.client_port is None else str(ctx.client_port)


@macro("client_addr_port")
def _client_addr_port(ctx: TemplateContext, name: str, *args: str) -> Value:
    addr = ctx.effective_client_addr()
    if not addr:
        return None
    port = ctx.client_port
    return f"[{addr}]" + (f":{port}" if port not in (None, "", "0", 0) else "")


@macro("g")
def _client_name(ctx: TemplateContext, name: str, *args: str) -> Value:
    return sanitize_str(ctx.client_name)


@macro("client_helo")
def _client_helo(ctx: TemplateContext, name: str, *args: str) -> Value:
    return sanitize_str(ctx.client_helo)


@macro("client_protocol")
def _client_protocol(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.client_protocol


@macro("remote_mta")
def _remote_mta(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _unique(r.remote_mta for r in ctx.recipients)


@macro("smtp_response")
def _smtp_response(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _unique(r.smtp_response for r in ctx.recipients)


@macro("remote_mta_smtp_response")
def _remote_response(ctx: TemplateContext, name: str, *args: str) -> Value:
    return _unique(r.remote_mta_smtp_response for r in ctx.recipients)


@macro("REMOTEHOSTADDR")
def _remote_host_addr(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.mta_addr if ctx.protocol is not None else ""


@macro("REMOTEHOSTNAME")
def _remote_host_name(ctx: TemplateContext, name: str, *args: str) -> Value:
    ip = ctx.mta_addr if ctx.protocol is not None else ""
    return f"[{ip}]" if ip else "localhost"


@macro("tls_in")
def _tls(ctx: TemplateContext, name: str, *args: str) -> Value:
    return ctx.tls_cipher


@macro("rusage")
def _rusage(ctx: TemplateContext, name: str, *args: str) -> Value:
    which = _arg(args, 0) or ""
    if ctx.rusage is not None:
        value = ctx.rusage(which)
    else:
        field = which if which.startswith("ru_") else ""
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        if not field or not hasattr(me, field):
            return ""
        value = getattr(me, field) + getattr(kids, field)
    return "" if value is None else perl_str(value)


# ----------------------------------------------------------------- DKIM
def _acceptable_domain(ctx: TemplateContext, wanted: str) -> str:
    import re

    m = re.search(r"@([^@]*)\Z", wanted)
    if m:
        wanted = m.group(1)
    for sig in ctx.dkim_valid:
        signer = idn_to_ascii(sig.domain)
        if wanted == "":
            if ctx.dkim_author_sig:
                return "1"
        elif wanted.startswith("."):
            base = idn_to_ascii(wanted[1:])
            if signer == base or signer.endswith("." + base):
                return "1"
        elif signer == idn_to_ascii(wanted):
            return "1"
    return "0"


@macro("dkim")
def _dkim(ctx: TemplateContext, name: str, *args: str) -> Value:
    which = _arg(args, 0)
    w = (which or "").lower()
    sigs = ctx.dkim_valid
    if w in ("any", ""):
        return str(len(sigs)) if sigs else None
    simple = {"author": ctx.dkim_author_sig, "sender": ctx.dkim_sender_sig,
              "thirdparty": ctx.dkim_thirdparty_sig, "envsender": ctx.dkim_envsender_sig}
    if w in simple:
        return simple[w]
    if w == "identity":
        return ",".join(s.identity for s in sigs)
    if w == "selector":
        return ",".join(s.selector for s in sigs)
    if w == "domain":
        return ",".join(s.domain for s in sigs)
    if w == "sig_sd":
        return ",".join(_unique(f"{s.selector}:{s.domain}" for s in sigs))
    if w == "newsig_sd":
        return ",".join(_unique(f"{s.selector}:{s.domain}" for s in ctx.dkim_new))
    return _acceptable_domain(ctx, which or "")


# ----------------------------------------------------------------- notices
@macro("attachment_password")
def _attachment_password(ctx: TemplateContext, name: str, *args: str) -> Value:
    if ctx.attachment_password is None:
        ctx.attachment_password = make_password(ctx.attachment_password_setting, ctx)
    return ctx.attachment_password


def make_password(setting: Any, ctx: TemplateContext) -> str:
    """``$attachment_password``: its value, its callable's result, or a 4-digit PIN."""
    password = setting
    if callable(setting):
        try:
            password = str(setting(ctx)).strip(" \t\n")
        except Exception:  # noqa: BLE001 - amavis logs and supplies a default
            password = None
    if password is None:
        password = f"{secrets.randbelow(10000):04d}"
    return str(password)


@macro("report_json")
def _report_json(ctx: TemplateContext, name: str, *args: str) -> Value:
    if ctx.structured_report is None:
        return None
    report = ctx.structured_report()
    if report is None:
        return None
    if args:
        keys = args[0].split() if len(args) == 1 else list(args)
        negated = [k[1:] for k in keys if k.startswith("!")]
        if negated:
            report = {k: v for k, v in report.items() if k not in negated}
        else:
            report = {k: report[k] for k in keys if k in report}
    encode = ctx.json_encode or encode_json
    return encode(report)


def encode_json(report: Mapping[str, Any]) -> str:
    """Compact JSON with sorted keys, UTF-8 text, U+2028/9 escaped (Amavis::JSON's form)."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ----------------------------------------------------------------- string helpers
@macro("wrap")
def _wrap(ctx: TemplateContext, name: str, *args: str) -> Value:
    width = _arg(args, 0)
    return wrap_string(_arg(args, 3) or "", 78 if width is None else perl_num(width),
                       _arg(args, 1) or "", _arg(args, 2))


@macro("lc")
def _lc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join(args).lower()


@macro("uc")
def _uc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join(args).upper()


@macro("substr")
def _substr(ctx: TemplateContext, name: str, *args: str) -> Value:
    length = _arg(args, 2)
    return perl_substr(_arg(args, 0) or "", perl_int(_arg(args, 1)),
                       None if length is None else perl_int(length))


@macro("index")
def _index(ctx: TemplateContext, name: str, *args: str) -> Value:
    pos = _arg(args, 2)
    return str(perl_index(_arg(args, 0) or "", _arg(args, 1) or "",
                          0 if pos is None else perl_int(pos)))


@macro("len")
def _len(ctx: TemplateContext, name: str, *args: str) -> Value:
    return str(len(_arg(args, 0) or ""))


@macro("incr")
def _incr(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_incr(_arg(args, 0), list(args[1:]))


@macro("decr")
def _decr(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_decr(_arg(args, 0), list(args[1:]))


@macro("min")
def _min(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_minmax(list(args), want_max=False)


@macro("max")
def _max(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_minmax(list(args), want_max=True)


@macro("sprintf")
def _sprintf(ctx: TemplateContext, name: str, *args: str) -> Value:
    return perl_sprintf(_arg(args, 0) or "", list(args[1:]))


@macro("join")
def _join(ctx: TemplateContext, name: str, *args: str) -> Value:
    return (_arg(args, 0) or "").join(args[1:])


@macro("limit")
def _limit(ctx: TemplateContext, name: str, *args: str) -> Value:
    limit, text = perl_num(_arg(args, 0)), _arg(args, 1) or ""
    if limit < 6 or len(text) <= limit:
        return text
    return text[:max(0, int(limit) - 5)] + "[...]"


@macro("dquote")
def _dquote(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join('"' + a.replace('"', '""') + '"' for a in args)


@macro("uquote")
def _uquote(ctx: TemplateContext, name: str, *args: str) -> Value:
    import re

    return "".join(re.sub(r"[ \t]+", "_", a) for a in args)


@macro("rot13")
def _rot13(ctx: TemplateContext, name: str, *args: str) -> Value:
    return codecs.encode(_arg(args, 0) or "", "rot13")


def _octets(text: str) -> bytes:
    """A string's octets: one per character up to U+00FF, UTF-8 beyond."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", errors="surrogatepass")


@macro("hexenc")
def _hexenc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join(_octets(a).hex() for a in args)


@macro("b64encode")
def _b64encode(ctx: TemplateContext, name: str, *args: str) -> Value:
    return " ".join(base64.b64encode(_octets(a)).decode("ascii") for a in args)


@macro("b64enc")
def _b64enc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join(base64.b64encode(_octets(a)).decode("ascii").rstrip("=") for a in args)


@macro("b64urlenc")
def _b64urlenc(ctx: TemplateContext, name: str, *args: str) -> Value:
    return "".join(base64.urlsafe_b64encode(_octets(a)).decode("ascii").rstrip("=")
                   for a in args)


@macro("mail_addr_decode", "mail_addr_decode_octets")
def _mail_addr_decode(ctx: TemplateContext, name: str, *args: str) -> Value:
    return mail_addr_decode(_arg(args, 0))


@macro("mime_decode")
def _mime_decode(ctx: TemplateContext, name: str, *args: str) -> Value:
    text = _arg(args, 0)
    if not text:
        return ""
    chars = mime_decode_header(text) or ""
    limit, both = _arg(args, 1), _arg(args, 2)
    max_len = perl_num(limit) if limit is not None else 0
    if max_len > 0:
        chars = chars[:int(max_len)]
        text = text[:len(chars)]
    if both and chars != text:
        chars += f" (raw: {text})"
    return chars


@macro("mime2utf8")
def _mime2utf8(ctx: TemplateContext, name: str, *args: str) -> Value:
    text = _arg(args, 0)
    if not text:
        return ""
    limit, both = _arg(args, 1), _arg(args, 2)
    max_len = int(perl_num(limit)) if limit is not None else None
    decoded = truncate_utf8(mime_decode_header(text) or "", max_len)
    if not both:
        return decoded
    if max_len is not None and max_len > 0 and len(text) > max_len:
        text = text[:max_len]
    return decoded if decoded == text else f"{decoded} (raw: {text})"


# ----------------------------------------------------------------- the tables
def message_macros(ctx: TemplateContext) -> dict[str, Any]:
    """amavis's ``%builtins`` for this message, plus ``f T C B`` when set on the context."""
    macros: dict[str, Any] = {name: partial(fn, ctx) for name, fn in BUILTINS.items()}
    macros["."] = None
    macros["score_boost"] = "0"
    macros["report_format"] = ctx.report_format
    macros["feedback_type"] = ctx.feedback_type
    for name, value in (("f", ctx.notify_from), ("T", ctx.notify_to), ("C", ctx.notify_cc),
                        ("B", ctx.notify_bcc)):
        if value is not None:
            macros[name] = list(value) if isinstance(value, (list, tuple)) else value
    return macros


def log_macros(ctx: TemplateContext) -> dict[str, Any]:
    """What ``$log_templ`` sees: ``T`` is the test list (with scores) there."""
    macros = message_macros(ctx)
    macros["T"] = macros["TESTSSCORES"]
    return macros


def recipient_log_macros(ctx: TemplateContext, index: int) -> dict[str, Any]:
    """What ``$log_recip_templ`` sees for the ``index``-th recipient (0-based)."""
    r = ctx.recipients[index]
    macros = log_macros(ctx)
    qaddr = qquote_rfc2821_local(r.address)
    macros["."] = str(index + 1)
    macros["remote_mta"] = r.remote_mta
    macros["smtp_response"] = r.smtp_response
    macros["remote_mta_smtp_response"] = r.remote_mta_smtp_response
    macros["D"] = macros["O"] = macros["N"] = None
    if delivered(r):
        macros["D"] = qaddr
    else:
        macros["O"] = qaddr
        macros["N"] = short_report(r)
    macros["banned_parts"] = chop_parts(list(r.banned_parts or []))
    macros["F"] = r.banning_reason_short
    macros["banning_rule_comment"] = (None if r.banning_rule_comment is None
                                      else _unique(r.banning_rule_comment))
    macros["banning_rule_rhs"] = (None if r.banning_rule_rhs is None
                                  else _unique(r.banning_rule_rhs))
    notify = "NEVER" if ctx.sender == "" else ",".join(r.dsn_notify or ["FAILURE"])
    macros["dsn_notify"] = notify.upper()
    levels = (None, None, None) if r.bypass_spam_checks else \
        (r.tag_level, r.tag2_level, r.kill_level)
    # amavis turns an undefined level into 'x' before printing it with %.3f: "0"
    shown = [level_text(0.0 if level is None else level) for level in levels]
    macros["tag_level"], macros["tag2_level"], macros["kill_level"] = shown
    macros["REQD"] = shown[1]
    macros["3"], macros["4"], macros["5"] = ["x" if level is None else level_text(level)
                                             for level in levels]
    macros["0"] = "L" if r.is_local else "0"
    macros["1"] = "Y" if _is_in(r.contents_category, 1, 1) else "0"
    macros["2"] = "Y" if _is_in(r.contents_category, 5) else "0"
    macros["k"] = "Y" if _is_in(r.contents_category, 6) else "0"
    macros["R"] = r.address
    for name in ("c", "SCORE", "STARS"):
        macros[name] = lambda n, *a, _i=index: macro_score(ctx, _i, n, _arg(a, 0))
    for name in ("T", "TESTSSCORES", "TESTS"):
        macros[name] = lambda n, *a, _i=index: macro_tests(ctx, _i, n, _arg(a, 0))
    macros["ccat"] = lambda n, *a: ccat_value(r.contents_category, r.blocking_ccat,
                                              _arg(a, 0), _arg(a, 1))
    return macros
