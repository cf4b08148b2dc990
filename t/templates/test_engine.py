# tests: amavisd/templates/
"""The macro processor and the built-in macros (spec/pipeline.md 19.1, 19.2).

Three kinds of evidence:

* hand-written tables of snippets and their expansions: the constructs of
  README.customize (its own examples included) and every built-in macro of 19.2
  over one realistic context;
* the installed amavisd-new's own ``Amavis::Expand`` and ``wrap_string`` run on the
  same construct table and on thousands of random templates (``expand_oracle.pl``;
  skipped without amavisd-new, which CI installs);
* hostile values (a Subject such as ``[? %x |a|b]``) that must come out literally,
  and runaway templates that must stop at their bounds.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from amavisd.constants import D_DISCARD, D_PASS
from amavisd.templates import (
    BUILTINS,
    DkimSignature,
    Limits,
    RecipientFacts,
    ScannerResult,
    TemplateContext,
    TemplateLimitError,
    expand,
    log_macros,
    message_macros,
    recipient_log_macros,
    render,
    render_log_lines,
    render_recipient_log_lines,
    split_header_fields,
)
from amavisd.templates.lexer import tokenize
from amavisd.templates.perlish import (
    perl_decr,
    perl_incr,
    perl_sprintf,
    perl_substr,
    wrap_string,
)

ORACLE = Path(__file__).with_name("expand_oracle.pl")
AMAVIS_EXPAND = Path("/usr/share/perl5/Amavis/Expand.pm")


def oracle(requests: list[list]) -> list:
    """Answers of the real amavisd-new code for a batch of requests."""
    if shutil.which("perl") is None or not AMAVIS_EXPAND.exists():
        pytest.skip("amavisd-new (Perl) is not installed: no reference to compare with")
    payload = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run(["perl", str(ORACLE)], input=payload.encode(), capture_output=True,
                          timeout=120, check=True)
    answers = [json.loads(line)[0] for line in done.stdout.decode().splitlines()]
    assert len(answers) == len(requests), done.stderr.decode()[-500:]
    return answers


# ------------------------------------------------------------------ the constructs
M = {"x": "X", "V": ["v1", "v2", "v3"], "e": None, "C": [], "s": "  ", "one": ["only"],
     "R": ["a@x", "b@y"], "q": "quarantine-1", "n": "0", "big": "24", "WORD": "word"}

#: (template, expected) with the macros M.  README.customize's examples come first.
CONSTRUCTS = [
    ("[? 2   | zero | one | two | three ]", " two "),
    ("[? foo | none | any | two | three ]", " any "),
    ("[? 24  | 0    | one | many ]", " many "),
    ("[? 2   |No recipients]", ""),
    ("[? %#R |No recipients|One recipient|%#R recipients]", "2 recipients"),
    ("[? %q  |No quarantine|Quarantined as %q]", "Quarantined as quarantine-1"),
    ("[%V| ]", "v1 v2 v3"),
    ("[%V|\\n]", "v1\nv2\nv3"),
    ("[%V|\n]", "v1\nv2\nv3"),
    ("[\n    %V]", "\n    v1\n    v2\n    v3"),
    ("[ %R |%s --> <%R>|, ]", "   --> <a@x>,    --> <b@y>"),
    ("[%V|[%R|%R + %V|, ]|; ]", "a@x + v1, b@y + v1; a@x + v2, b@y + v2; a@x + v3, b@y + v3"),
    ("[? %#C |#|Cc: [<%C>|, ]]\nnext", "next"),
    ("[? %#R |#|Cc: [<%R>|, ]]\nnext", "Cc: <a@x>, <b@y>\nnext"),
    ("[? %#C ||Cc: [<%C>|, ]\\n]#\nnext", "next"),
    ("To: [%R|%R|, ]", "To: a@x, b@y"),
    ("To: [%R|, ]", "To: a@x, b@y"),
    ("To: %R", "To: a@x, b@y"),
    ("[~string|^s.*$|[\"matches\"]|[\"no match\"]]", "matches"),
    ("[~xyz|^s.*$|[\"matches\"]|[\"no match\"]]", "no match"),
    ("[~abc|^a(b)(c)$|[\"%2%1 in %0\"]]", "cb in abc"),
    ("[~abc|^z|1|^a(.)|[\"second %1\"]|else %1]", "second b"),
    ("[~abc|^z|1|^y|2|[\"else<%0><%1>\"]]", "else<abc><>"),
    ("[~abc|^z|1|else<%0>]", "else<>"),
    ("[~abc|^z|1]", ""),
    ("[~abc||empty regexp matches]", "empty regexp matches"),
    ("[~abc|(|bad regexp|fallback]", "fallback"),
    # simple calls: lists joined, counts, undef, %%, \%
    ("%V / %#V / %#x / %#s / %#e / %#C / %#q / %#one", "v1, v2, v3 / 3 / 1 / 0 / 0 / 0 / 1 / 0ne"),
    ("<%e><%unknown><%#unknown>", "<><nknown><0nknown>"),
    ("100%% and 50\\% and %", "100% and 50% and %"),
    # selectors: blank and non-numeric first arguments, the range
    ("[?|a|b]", "a"), ("[? %s |blank|not]", "blank"), ("[?%n|zero|one]", "zero"),
    ("[? [:big] |a|b|c]", "c"), ("[? %big |a|b|c]", "b"), ("[? 1 |only]", ""),
    ("[? 0 |only]", "only"), ("[? 5 ]", ""),
    ("[? 1 |a|[? %#V |none|one|many]|z]", "many"),
    # quoting and escapes
    ("[\"[? 1 |a|b]\"]", "[? 1 |a|b]"), ("[\"%x\"] %x", "%x X"),
    ("[\"a[\"nested\"]b\"]", "a[\"nested\"]b"), ("\\[not a call\\] \\| \\\\", "[not a call] | \\"),
    ("tab\\there\\101\\_x\\q", "tab\there\x41xq"), ("a\\\nb", "ab"),
    ("\\r\\f\\b\\e\\a", "\r\f\b\x1b\x07"),
    # comments: '#' eats through the source newline, not an escaped \n
    ("a # comment [? 1 |x|y]\nb", "a b"), ("a # c \\n still comment\nb", "a b"),
    ("line\n#whole line\nnext", "line\nnext"),
    # neutral and active calls, user macros
    ("[: x ]|[:x|ignored args]|[:unknown]", "X|X|"),
    ("[= m |[\"<%1,%2>\"]][:m|a|b] [@m|c] [:m]", "<a,b> <c,> <,>"),
    ("[= sel |[\"[? %1 |no|yes]\"]][@sel|1] [:sel|1]", "yes [? 1 |no|yes]"),
    ("[= z |[\"%0!\"]][:z|a]", "!"),
    ("[= m |[\"%x\"]]%m %#m [m|(%x)|,]", "%x 1 (%x)"),
    ("[= e |[\"  \"]]%#e", "0"),
    # iterators: long names, missing names, undef and empty lists
    ("[ V |(%x)|,]", "(v1),(v2),(v3)"), ("[ nosuch |(%x)|,]", ""), ("[plain text]", ""),
    ("[%e|(%e)|,]", "()"), ("[%e|(%e)]", ""), ("[ e |(%x)|,]", "()"), ("[%C|(%C)|,]", ""),
    ("[%x|%x!|,]", "X!"),
    # misplaced elements print as themselves
    ("] \"] | a\"b _X_ _x_", "] \"] | a\"b  _x_"), ("[? 1 |a|b", ""), ("[: x |y", ""),
    ("[? 1 |a \"] b|c]", " b|c]"),
    # SpamAssassin-style calls
    ("_WORD_ _WORD(arg, with, commas)_ _NOPE_ _w_", "word word  _w_"),
]


@pytest.mark.parametrize("template, expected", CONSTRUCTS)
def test_construct(template: str, expected: str) -> None:
    """Each construct of README.customize expands as documented (and as Perl does)."""
    assert expand(template, M) == expected


def test_constructs_agree_with_amavis_expand() -> None:
    """The installed Amavis::Expand gives the table's expansions, so the table is right."""
    got = oracle([["expand", template, M] for template, _ in CONSTRUCTS])
    assert got == [expected for _, expected in CONSTRUCTS]


FUZZ_PIECES = [
    "[", "[?", "[~", "[@", "[:", "[=", '["', '"]', "]", "|", "#", "%x", "%#x", "%V", "%#V",
    "%e", "%#e", "%C", "%%", "%1", "%0", "%#", "\\n", "\n", " ", "a", "12", "0", "1", " 2 ",
    "\\[", "\\]", "\\|", "\\\n", "\\_", "_X_", "_X(a,b)_", "_", '"', "\\101", "x", "V", "m",
    "^", "(a)", ".*", '[=m|["<%1>"]]', "[@m|q]", "[:m|q|r]", "%m", "%#m", "[:s]", "[:s|1]",
    "[V|%x|-]", "[s|%x|-]", "\\t", "%s", "%#s",
]
FUZZ_MACROS = {"x": "X", "V": ["v1", "v2", "v3"], "e": None, "C": [], "s": "  ", "X": "sa"}


def test_random_templates_agree_with_amavis_expand() -> None:
    """4 000 random templates built from every lexical element expand as in Perl."""
    rnd = random.Random(20261130)
    templates = ["".join(rnd.choice(FUZZ_PIECES) for _ in range(rnd.randint(1, 30)))
                 for _ in range(4000)]
    got = oracle([["expand", t, FUZZ_MACROS] for t in templates])
    mismatches = [(t, want, expand(t, FUZZ_MACROS)) for t, want in zip(templates, got,
                                                                       strict=True)
                  if expand(t, FUZZ_MACROS) != want]
    assert mismatches == []


def test_a_template_is_lexed_once() -> None:
    """Parsing is cached per template text: the second expansion reuses the tokens."""
    text = "cached [? %#V |a|b] template " + str(time.time())
    expand(text, M)
    before = tokenize.cache_info().hits
    expand(text, M)
    assert tokenize.cache_info().hits == before + 1


# ------------------------------------------------------------------ hostile values
HOSTILE = ["[? %x |a|b]", "%%", "100% [", "]", "|", "\\n", "#", '["q"]', "[:uc|x]",
           "[= x |y]", "_X_", "%V", "[@x]", "[~x|x|y]", "\n#\n"]


@pytest.mark.parametrize("value", HOSTILE)
def test_macro_values_are_never_template_code(value: str) -> None:
    """A value from mail (a Subject, a list item) is inserted literally wherever the
    template puts it: plain, in a call's argument, an iterator, a selector, a regexp."""
    subject = value.replace("\n", " ").strip()
    ctx = TemplateContext(header=split_header_fields(f"Subject: {subject}\n".encode()),
                          virus_names=[value, "B"])
    assert render("<%j>", ctx) == f"<{subject}>"
    assert render("[:uc|%j]", ctx) == subject.upper()
    assert render("[:header_field|Subject]", ctx) == subject
    assert render("[? %j |empty|%j]", ctx) == subject
    assert render("[~%j|^zzz$|no|[\"%0\"]]", ctx) == subject
    assert render("[=m|[\"<%1>\"]][@m|%j]", ctx) == f"<{subject}>"
    assert render("[%V|(%V)|,]", ctx) == f"({value}),(B)"
    assert render("%V", ctx) == f"{value}, B"


def test_hostile_subject_in_debian_style_line() -> None:
    """The Subject line of Debian's templates with a Subject full of template syntax."""
    subject = "[? %x |a|b] 100%% ]| \\n [:wrap|1||x|y]"
    ctx = TemplateContext(header=split_header_fields(f"Subject: {subject}\n".encode()))
    assert render("[? %j |#|[:wrap|78||  |Subject: %j]]", ctx) == f"Subject: {subject}"


# ------------------------------------------------------------------ limits
def test_runaway_recursion_stops_at_the_token_limit() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match="tokens"):
        expand('[= x|["[@x]"]][@x]', {}, Limits(max_tokens=50_000))
    assert time.monotonic() - started < 5


def test_deep_nesting_stops_at_the_depth_limit() -> None:
    with pytest.raises(TemplateLimitError, match="nest"):
        expand('[= x|["[:len|[@x]]"]][@x]', {}, Limits(max_depth=40))


def test_output_is_bounded() -> None:
    macros = {"V": ["y" * 1000] * 1000}
    with pytest.raises(TemplateLimitError, match="characters"):
        expand("[%V|%V%V%V|]", macros, Limits(max_chars=100_000))


def test_pending_arguments_are_bounded() -> None:
    macros = {"V": ["y" * 1000] * 1000}
    with pytest.raises(TemplateLimitError):
        expand("[:len|[%V|%V%V|]]", macros, Limits(max_chars=100_000))


def test_nested_iterators_cannot_explode_the_input() -> None:
    macros = {"V": [str(i) for i in range(200)]}
    with pytest.raises(TemplateLimitError):
        expand("[%V|[%V|[%V|%V]]]", macros, Limits(max_tokens=100_000))


def test_default_limits_leave_room_for_a_large_notice() -> None:
    """1 000 recipients in a delivery list expand well within the defaults."""
    macros = {"N": [f"<r{i}@example.com>:\n   250 2.0.0 Ok" for i in range(1000)]}
    out = expand("[? %#N |#|The message WAS NOT relayed to:[\n%N]\n]", macros)
    assert out.count("\n") == 2001


# ------------------------------------------------------------------ Perl helpers
def test_wrap_sprintf_substr_incr_agree_with_perl() -> None:
    """wrap_string, sprintf, substr and ++/-- on 6 000 inputs, against Perl itself."""
    rnd = random.Random(7)
    words = ["a", "bb", "ccc", "d" * 10, "e" * 30, "\t", " ", "  ", "\n", "\n ", "x\ty"]
    fmts = ["%s", "%5s", "%-5s|", "%.2s", "%d", "%05d", "%+d", "% d", "%x", "%#X", "%o", "%b",
            "%e", "%.2e", "%f", "%.0f", "%8.3f", "%-8.2f|", "%g", "%.3g", "%%", "%5%",
            "%y", "%u", "%i", "%010.4f", "%s %s", "%2$s", "%v d", "%"]
    values = ["0", "1", "-1", "3.14159", "-2.5", "2.5", "1e3", "abc", "12abc", "", " 7 ",
              "255", "-0", "0.5", "1.5", "99999999999", "65"]
    requests = []
    for _ in range(3000):
        requests.append(["wrap", rnd.choice([0, 5, 10, 20, 40, 78]),
                         rnd.choice(["", "  ", "> ", "\t"]),
                         rnd.choice([None, "", "  ", "\t", " "]),
                         "".join(rnd.choice(words) for _ in range(rnd.randint(0, 30))),
                         rnd.choice([0, 0, 1])])
    for _ in range(2000):
        requests.append(["sprintf", rnd.choice(fmts),
                         *[rnd.choice(values) for _ in range(rnd.randint(0, 3))]])
    for _ in range(500):
        requests.append(["substr", rnd.choice(["", "a", "abc", "abcdef"]),
                         rnd.randint(-8, 8), *([rnd.randint(-8, 8)] if rnd.random() < .6 else [])])
    for _ in range(500):
        requests.append([rnd.choice(["incr", "decr"]),
                         *[rnd.choice(values + ["aa", "Az", "zz", "a9", "Zz", "zZ9", "z"])
                           for _ in range(rnd.randint(1, 3))]])
    answers = oracle(requests)
    wrong = []
    for request, want in zip(requests, answers, strict=True):
        op, *args = request
        if op == "wrap":
            got = wrap_string(args[3], args[0], args[1], args[2], bool(args[4]))
        elif op == "sprintf":
            got = perl_sprintf(args[0], args[1:])
        elif op == "substr":
            got = perl_substr(args[0], args[1], args[2] if len(args) > 2 else None)
        elif op == "incr":
            got = perl_incr(args[0], args[1:])
        else:
            got = perl_decr(args[0], args[1:])
        if got != want:
            wrong.append((request, want, got))
    assert wrong == []


# ------------------------------------------------------------------ the built-in macros
CET = timezone(timedelta(hours=1), "CET")
HEADER = (
    b"Received: from mail.example.org (mail.example.org [198.51.100.7])\n"
    b"\tby mx.example.com (Postfix) with ESMTPS id 4AbC\n"
    b"\tfor <bob@example.com>; Mon, 30 Nov 2026 03:02:24 +0000\n"
    b"Received: from laptop.lan (laptop.lan [10.0.0.5])\n"
    b"\tby mail.example.org with ESMTPSA id 77; Mon, 30 Nov 2026 03:02:20 +0000\n"
    b'From: "Alice Example" <alice@example.org>\n'
    b"Sender: owner@lists.example.org\n"
    b"To: Bob <bob@example.com>, carol@example.net\n"
    b"Subject: Quarterly =?UTF-8?Q?=C3=BCbersicht?=\n"
    b"  and plans\n"
    b"Message-ID: <m1@example.org> (a comment)\n"
    b"Resent-Message-ID: <r1@example.org>\n"
    b"Resent-From: Relay <relay@example.org>\n"
    b"Resent-Sender: resender@example.org\n"
    b"User-Agent: Mutt/2.2\n"
    b"X-Multi: first\n"
    b"X-Multi: second\n"
    b"X-Utf8: gr\xc3\xbc\xc3\x9fe\n"
    b"X-Latin1: gr\xfc\xdfe\n"
    b"Date: Mon, 30 Nov 2026 03:02:20 +0000\n"
    b"\n")


def make_context(**changes) -> TemplateContext:
    """One message to three recipients: delivered, refused by the next hop, discarded."""
    bob = RecipientFacts(
        "bob@example.com", is_local=True, destiny=D_PASS, done=True,
        smtp_response="250 2.0.0 Ok: queued as 4QJ1X", remote_mta="127.0.0.1",
        remote_mta_smtp_response="250 2.0.0 Ok: queued as 4QJ1X",
        contents_category=["5", "1,1", "1"], spam_level=6.5,
        spam_tests=["BAYES_99=3.5,SUBJ_X=3"], tag_level=2.0, tag2_level=6.31, kill_level=10)
    carol = RecipientFacts(
        "carol@example.net", is_local=False, destiny=D_PASS, done=True,
        smtp_response="550 5.1.1 <carol@example.net>: unknown", remote_mta="mx.example.net",
        dsn_notify=["SUCCESS", "FAILURE"], contents_category=["1,1", "1"], spam_level=2.5,
        spam_tests=["BAYES_50=0.8"], tag_level=2.0, tag2_level=8, kill_level=12)
    dave = RecipientFacts(
        "d a@example.com", is_local=True, destiny=D_DISCARD, done=True,
        smtp_response="250 2.7.0 Ok, discarded, id=4711-02 - BANNED: .exe,x.exe",
        contents_category=["8", "5", "1"], blocking_ccat="8", spam_level=6.6,
        bypass_spam_checks=True, banning_reason_short="rule 7:.exe,x.exe",
        banning_rule_key=["(?i:\\.exe$)"], banning_rule_comment=["rule 7"],
        banning_rule_rhs=["1"],
        banned_parts=["multipart/mixed | application/zip,.zip,a.zip | .exe,x.exe",
                      "multipart/mixed |       .exe,y.exe", "multipart/mixed | .exe,z.exe"],
        banned_parts_as_attr=["P=p003,L=1/2,T=exe,N=x.exe"])
    values = dict(
        log_id="4711-02", mail_id="AbCdEfGhIjKl", secret_id="SeCrEt_ID_12",
        parent_mail_id="PaReNt_Id_12", partition_tag="49", myhostname="MX.Example.COM",
        policy_bank_path="MYNETS/ORIGINATING", rx_time=1796007747.25, tz=CET,
        elapsed=lambda: 0.0715, sender="alice@example.org",
        recipients=[bob, carol, dave], originating=True, queue_id="4QJ0A", size=4096,
        header=split_header_fields(HEADER), body_digest="0fca00f17d26a0b7bf2f91aed000ec3b",
        client_addr="198.51.100.7", client_port="51515", client_name="mail.example.org",
        client_helo="mail.example.org\x01", client_protocol="ESMTPS", mta_addr="127.0.0.1",
        mta_port=40404, mta_helo="mx.example.com", protocol="ESMTP",
        tls_cipher="TLS_AES_256_GCM_SHA384",
        contents_category=["8", "5", "1,1", "1"], blocking_ccat="8",
        virus_names=["Eicar-Test", "Other", "Eicar-Test"],
        av_output="p002: Eicar-Test FOUND  \r\np003: Other FOUND\n",
        detecting_scanners=["ClamAV-clamd", "Other AV"],
        av_results=[ScannerResult("ClamAV-clamd", True, ["Eicar-Test", "Other"]),
                    ScannerResult('Other "AV"', True, ["Other"]),
                    ScannerResult("Sophie", False)],
        bad_headers=["Non-encoded 8-bit data in 'X-Latin1'", "Duplicate header field: To"],
        spam_summary="Content analysis details:\n\n pts rule\n", spam_report="3.5 BAYES\\x\t!",
        supplementary_info={"AUTOLEARN": "no", "SUBJPREFIX": "[SPAM] ", "LANGUAGES": "en"},
        dkim_valid=[DkimSignature("example.org", "s1", "@example.org"),
                    DkimSignature("lists.example.org", "l2", "owner@lists.example.org"),
                    DkimSignature("example.org", "s1", "@example.org")],
        dkim_new=[DkimSignature("example.com", "k1")],
        dkim_author_sig="example.org", dkim_sender_sig="lists.example.org",
        dkim_envsender_sig="example.org",
        quarantined_to=["/var/q/banned-AbCdEfGhIjKl", "other-box"], quarantine_dir="/var/q",
        actions_performed=["RelayedInternal", "RelayedOutbound", "Quarantined"],
        notify_from='"Content-filter" <postmaster@mx.example.com>',
        notify_to=["<postmaster@example.com>", "<abuse@example.com>"],
        notify_cc=["<cc@example.com>"], notify_bcc=[],
        report_format="attach", feedback_type="abuse", attachment_password_setting="pw1",
        structured_report=lambda: {"type": "amavis", "log_id": "4711-02", "size": 4096,
                                   "subject": "a\\b\u2028"},
        rusage=lambda name: {"ru_maxrss": 2048}.get(name))
    values.update(changes)
    return TemplateContext(**values)


#: (snippet, expected) over make_context(); every macro of spec 19.2 appears at least once.
BUILTIN_CASES = [
    ("%p", "MYNETS/ORIGINATING"),
    ("%d|[:DATE]|[:date_rfc2822_local]",
     "Mon, 30 Nov 2026 04:02:27 +0100 (CET)|" * 2 + "Mon, 30 Nov 2026 04:02:27 +0100 (CET)"),
    ("%U|[:date_iso8601_utc]", "20261130T030227Z|20261130T030227Z"),
    ("%u|[:date_unix_utc]", "1796007747|1796007747"),
    ("[:date_iso8601_local] [:week_iso8601] [:weekday]", "20261130T040227+0100 49 1"),
    ("%y", "72"),
    ("%h|[:HOSTNAME]", "mx.example.com|MX.Example.COM"),
    ("[? %l |remote|local]", "local"),
    ("%s|%S", "<alice@example.org>|<alice@example.org>"),
    ("%o", "alice@example.org"),
    ("%R", 'bob@example.com, carol@example.net, d a@example.com'),
    ("%#R %D", "3 <bob@example.com>"),
    ("%O", '<carol@example.net>, <"d a"@example.com>'),
    ("[%N|%N|\n]",
     "<carol@example.net>: [mx.example.net] said:\n   550 5.1.1 <carol@example.net>: unknown\n"
     '<"d a"@example.com>:\n   250 2.7.0 Ok, discarded, id=4711-02 - BANNED: .exe,x.exe'),
    ("[:actions_performed]", "RelayedInternal,RelayedOutbound,Quarantined"),
    ("%Q", "4QJ0A"),
    ("%m|%r", "<m1@example.org>|<r1@example.org>"),
    ("%j", "Quarterly =?UTF-8?Q?=C3=BCbersicht?=  and plans"),
    ("[:log_domains]", "EXT,example.com"),
    ("[:rfc2822_sender]|[:rfc2822_from]", "<owner@lists.example.org>|<alice@example.org>"),
    ("[:rfc2822_resent_sender]|[:rfc2822_resent_from]",
     "<resender@example.org>|<relay@example.org>"),
    ("[:header_field|x-multi]|[:HEADER|X-Multi|99|1]|[:header_field_octets|X-Multi|0|-1]",
     "first|second|second"),
    ("[:header_field|X-Multi||5]|[:header_field|Nope]|[:header_field|Subject|12]",
     "||Quarter[...]"),
    ("[:header_field|X-Utf8]|[:header_field|X-Latin1]", "grüße|gr\xfc\xdfe"),
    ("[:header_field|Message-ID]", "<m1@example.org>"),
    ("[:useragent]|[:useragent|name]|[:useragent|body]",
     "User-Agent: Mutt/2.2|User-Agent|Mutt/2.2"),
    ("[:ccat]|[:ccat|name]|[:ccat|name|main]|[:ccat|major|main]|[:ccat|minor]",
     "(8,0)|Banned|Banned|8|0"),
    ("[:ccat|is_blocking]/[:ccat|is_nonblocking]/[:ccat|is_blocked_by_nonmain]", "1//"),
    ("[:ccat_maj]|[:ccat_min]|[:ccat_name]", "8||Banned"),
    ("[:dsn_notify]", "FAILURE,SUCCESS"),
    ("[:attachment_password] [:attachment_password]", "pw1 pw1"),
    ("%b|[:hexenc|[:body_digest]]|[:b64urlenc|[:body_digest]]",
     "0fca00f17d26a0b7bf2f91aed000ec3b|0fca00f17d26a0b7bf2f91aed000ec3b|D8oA8X0moLe_L5Gu0ADsOw"),
    ("%n|[:log_id]|[:LOGID]|_LOGID_", "4711-02|4711-02|4711-02|4711-02"),
    ("%i|[:mail_id]|[:MAILID]|[:secret_id]|[:parent_mail_id]",
     "AbCdEfGhIjKl|AbCdEfGhIjKl|AbCdEfGhIjKl|SeCrEt_ID_12|PaReNt_Id_12"),
    ("%P|[:partition_tag]", "49|49"),
    ("%q", "banned-AbCdEfGhIjKl, other-box"),
    ("[%v|(%v)|]", "(p002: Eicar-Test FOUND)(p003: Other FOUND)"),
    ("%V|%#V", "Eicar-Test, Other|2"),
    ("%W|[:W|x]", 'ClamAV-clamd, Other AV|ClamAV-clamd:[Eicar-Test,Other]; '
                  '"Other \'AV\'":[Other]; Sophie:-'),
    ("%F", "rule 7:.exe,x.exe"),
    ("[:banning_rule_key]|[:banning_rule_comment]|[:banning_rule_rhs]",
     "(?i:\\.exe$)|rule 7|1"),
    ("[banned_parts|<%x>|]",
     "<multipart/mixed | application/zip,.zip,a.zip | .exe,x.exe>"
     "<multipart/mixed | ... .exe,y.exe><...>"),
    ("[:banned_parts_as_attr]", "P=p003,L=1/2,T=exe,N=x.exe"),
    ("%#X: %X", "2: Non-encoded 8-bit data in 'X-Latin1', Duplicate header field: To"),
    ("%#H [H|%x|;]", "20 Received: from mail.example.org (mail.example.org [198.51.100.7]);"
     "\tby mx.example.com (Postfix) with ESMTPS id 4AbC;\tfor <bob@example.com>; Mon, 30 Nov"
     " 2026 03:02:24 +0000;Received: from laptop.lan (laptop.lan [10.0.0.5]);\tby mail.example."
     "org with ESMTPSA id 77; Mon, 30 Nov 2026 03:02:20 +0000;From: \"Alice Example\" <alice@"
     "example.org>;Sender: owner@lists.example.org;To: Bob <bob@example.com>, carol@example.net"
     ";Subject: Quarterly =?UTF-8?Q?=C3=BCbersicht?=;  and plans;Message-ID: <m1@example.org>"
     " (a comment);Resent-Message-ID: <r1@example.org>;Resent-From: Relay <relay@example.org>;"
     "Resent-Sender: resender@example.org;User-Agent: Mutt/2.2;X-Multi: first;X-Multi: second;"
     "X-Utf8: grüße;X-Latin1: gr\xfc\xdfe;Date: Mon, 30 Nov 2026 03:02:20 +0000"),
    ("%#A [%A|<%A>|]|[:SUMMARY]",
     "3 <Content analysis details:><>< pts rule>|Content analysis details:\n\n pts rule\n"),
    ("[:REPORT]", "3.5 BAYES\\\\x\\t!"),
    ("%T|[:TESTSSCORES|;]|[:TESTS]|_TESTS(,)_",
     "<postmaster@example.com>, <abuse@example.com>|BAYES_50=0.8;BAYES_99=3.5;SUBJ_X=3"
     "|BAYES_50, BAYES_99, SUBJ_X|BAYES_50,BAYES_99,SUBJ_X"),
    ("%c|[:SCORE]|[:SCORE|00]|[:SCORE|  ]|[:STARS]|[:STARS|+]",
     "2.5..6.6|2.5..6.6|02.5..06.6| 2.5.. 6.6|**|++"),
    ("%1%2%k [:YESNO] [:YESNOCAPS] [:YESNO|s|h]", "YY0 Yes YES s"),
    ("[:REQD]", "6.31"),
    ("%z", "4096"),
    ("[:ip_trace_all]", "127.0.0.1, 198.51.100.7, 10.0.0.5"),
    ("[:ip_trace_public]|%e", "198.51.100.7|198.51.100.7"),
    ("[:ip_proto_trace_all]", "ESMTPS://[198.51.100.7]:51515, ESMTPSA://10.0.0.5"),
    ("[:ip_proto_trace_public]", "ESMTPS://[198.51.100.7]:51515"),
    ("[:protocol]|[:client_protocol]", "ESMTP|ESMTPS"),
    ("%t", "mail.example.org mail.example.org [198.51.100.7]"),
    ("%a|[:client_addr]|[:client_port]|[:client_addr_port]|%g|[:client_helo]",
     "198.51.100.7|198.51.100.7|51515|[198.51.100.7]:51515|mail.example.org|mail.example.org\\x01"),
    ("[:remote_mta]|[:smtp_response]", "127.0.0.1, mx.example.net|250 2.0.0 Ok: queued as 4QJ1X, "
     "550 5.1.1 <carol@example.net>: unknown, "
     "250 2.7.0 Ok, discarded, id=4711-02 - BANNED: .exe,x.exe"),
    ("[:remote_mta_smtp_response]", "250 2.0.0 Ok: queued as 4QJ1X"),
    ("[:REMOTEHOSTADDR]|[:REMOTEHOSTNAME]", "127.0.0.1|[127.0.0.1]"),
    ("[:AUTOLEARN]|[:ADDEDHEADERHAM]|[:ADDEDHEADERSPAM]|[:SUBJPREFIX]", "no|||[SPAM] "),
    ("[:supplementary_info|LANGUAGES]|[:supplementary_info|LANGUAGES|lang=%%s]|"
     "[:supplementary_info|NONE|x%%sx]", "en|lang=en|"),
    ("[:rusage|ru_maxrss]|[:rusage|nonsense]", "2048|"),
    ("[:dkim]|[:dkim|any]|[:dkim|author]|[:dkim|sender]|[:dkim|thirdparty]|[:dkim|envsender]",
     "3|3|example.org|lists.example.org||example.org"),
    ("[:dkim|identity]", "@example.org,owner@lists.example.org,@example.org"),
    ("[:dkim|selector]|[:dkim|domain]", "s1,l2,s1|example.org,lists.example.org,example.org"),
    ("[:dkim|sig_sd]|[:dkim|newsig_sd]", "s1:example.org,l2:lists.example.org|k1:example.com"),
    ("[:dkim|example.org][:dkim|.example.org][:dkim|x@lists.example.org][:dkim|other.org]"
     "[:dkim|.org][:dkim|@]", "111011"),
    ("[:tls_in]", "TLS_AES_256_GCM_SHA384"),
    ("[:report_format]|[:feedback_type]", "attach|abuse"),
    ("[:report_json]", '{"log_id":"4711-02","size":4096,"subject":"a\\\\b\\u2028",'
                       '"type":"amavis"}'),
    ("[:report_json|size type nope]|[:report_json|!subject|!size]",
     '{"size":4096,"type":"amavis"}|{"log_id":"4711-02","type":"amavis"}'),
    ("[:wrap|20||  |one two three four five six]|[:wrap|20|> |  |one two three four five]",
     "one two three four\n  five six|> one two three four\n>   five"),
    ("[:wrap|10|||aaa bbb ccc ddd]", "aaa bbb\nccc ddd"),
    ("[:lc|AbC|D]|[:uc|aBc]|[:substr|abcdef|2|3]|[:substr|abc|-5]|[:index|abcabc|c|3]"
     "|[:len|abcd]", "abcd|ABC|cde|abc|5|4"),
    ("[:incr|5]|[:incr|aa]|[:incr|1|2|3]|[:decr|5]|[:decr|10|2|3]|[:incr]", "6|ab|6|4|5|1"),
    ("[:min|3|1.50|2]|[:max|3|10|2]|[:min| |2]|[:max]", "1.50|10||"),
    ("[:sprintf|%%05.1f-%%s-%%x|2.25|ab|255]|[:sprintf|%%c%%3$s|65||z]", "002.2-ab-ff|Az"),
    ("[:join|, |a|b|c]|[:limit|10|abcdefghijklmnop]|[:limit|5|abcdefghij]",
     "a, b, c|abcde[...]|abcdefghij"),
    ('[:dquote|ab"oh"cd]|[:uquote|From a \t b]', '"ab""oh""cd"|From_a_b'),
    ("[:rot13|Buy now]|[:hexenc|AB]|[:b64encode|ab|c]|[:b64enc|ab]",
     "Ohl abj|4142|YWI= Yw==|YWI"),
    ("[:mail_addr_decode|<User@XN--BCHER-KVA.Example>]|[:mail_addr_decode_octets|a@B.C]",
     "<User@bücher.example>|a@b.c"),
    ("[:mime_decode|[:header_field|Subject]]|[:mime_decode|=?UTF-8?B?R3LDvMOfZQ==?=|3]",
     "Quarterly übersicht  and plans|Grü"),
    ("[:mime2utf8|=?UTF-8?B?R3LDvMOfZQ==?=|3]|[:mime2utf8|=?UTF-8?B?R3LDvMOfZQ==?=|100|1]",
     "Gr|Grüße (raw: =?UTF-8?B?R3LDvMOfZQ==?=)"),
    ("%f|%#T|%C|%#B", '"Content-filter" <postmaster@mx.example.com>|2|<cc@example.com>|0'),
    ("[:score_boost]|<%.>", "0|<>"),
]


@pytest.mark.parametrize("snippet, expected", BUILTIN_CASES)
def test_builtin(snippet: str, expected: str) -> None:
    assert render(snippet, make_context()) == expected


#: Every macro name of spec/pipeline.md 19.2, copied by hand from the spec's table.
SPEC_MACROS = """
. p d DATE date_rfc2822_local U date_iso8601_utc u date_unix_utc date_iso8601_local
week_iso8601 weekday y h HOSTNAME l s S o R D O N actions_performed Q m r j log_domains
rfc2822_sender rfc2822_from rfc2822_resent_sender rfc2822_resent_from header_field HEADER
header_field_octets useragent ccat ccat_maj ccat_min ccat_name dsn_notify attachment_password
b body_digest n log_id LOGID i mail_id MAILID secret_id parent_mail_id P partition_tag q v V
W F banning_rule_key banning_rule_comment banning_rule_rhs banned_parts banned_parts_as_attr
X H A SUMMARY REPORT T TESTSSCORES TESTS c SCORE STARS 1 2 k YESNO YESNOCAPS REQD z
ip_trace_all ip_trace_public ip_proto_trace_all ip_proto_trace_public protocol
client_protocol t e a client_addr client_port client_addr_port g client_helo remote_mta
smtp_response remote_mta_smtp_response REMOTEHOSTADDR REMOTEHOSTNAME AUTOLEARN ADDEDHEADERHAM
ADDEDHEADERSPAM SUBJPREFIX supplementary_info rusage dkim tls_in report_format feedback_type
report_json wrap lc uc substr index len incr decr min max sprintf join limit dquote uquote
rot13 hexenc b64encode b64enc b64urlenc mail_addr_decode mail_addr_decode_octets mime_decode
mime2utf8 f T C B
""".split()


def _names_in(snippet: str) -> set[str]:
    import re

    names = set(re.findall(r"%#?([^#\s])", snippet))
    names |= set(re.findall(r"\[[:@]\s*([A-Za-z0-9_.]+)", snippet))
    names |= set(re.findall(r"\[\s*([A-Za-z][A-Za-z0-9_]+)\s*\|", snippet))
    names |= set(re.findall(r"_([A-Z]+)(?:\([^)]*\))?_", snippet))
    return names


def test_every_spec_macro_is_built_in_and_in_the_table() -> None:
    """Each name of the spec's table is defined, and the table above exercises it."""
    macros = message_macros(make_context())
    assert [name for name in SPEC_MACROS if name not in macros] == []
    covered = set().union(*(_names_in(s) for s, _ in BUILTIN_CASES))
    assert [name for name in SPEC_MACROS if name not in covered] == []
    assert sorted(set(BUILTINS) - covered) == []


# ------------------------------------------------------------------ absent data
def test_absent_findings_expand_as_amavis_does() -> None:
    """No virus scan, no spam check, no DKIM, no quarantine, no client info, no header."""
    ctx = TemplateContext(log_id="1-01", sender="", recipients=[
        RecipientFacts("x@example.com", smtp_response="250 2.0.0 Ok")])
    assert render("%#V|[%V|<%V>|]|%#v|%#q|[%q|<%q>|]|%#W|%#X|%#F|%#A", ctx) == \
        "0|<>|0|0|<>|0|0|0|0"
    assert render("%c|[:SCORE]|[:STARS]|[:REQD]|%1%2%k|[:YESNO]", ctx) == "-|-||-|000|No"
    assert render("[:dkim]|[:dkim|author]|[:dkim|sig_sd]|[:dkim|x.org]|%#T", ctx) == "|||0|0"
    assert render("%a|[:client_addr_port]|%g|%e|%t|%m|%j|[:useragent]|%s|[:dsn_notify]",
                  ctx) == "||||||||<>|NEVER"
    assert render("[:ip_trace_all]|[:ip_proto_trace_all]|[:protocol]|[:REMOTEHOSTNAME]",
                  ctx) == "x|||localhost"
    assert render("[:report_json]|[:attachment_password]", ctx)[0] == "|"
    assert render("%P|[:ccat]|[:ccat|name]|%o|%b|[:body_digest]", ctx) == "0|(1,0)|Clean|||"


# ------------------------------------------------------------------ log templates
def test_log_template_sees_tests_as_t() -> None:
    ctx = make_context()
    assert render_log_lines("Tests: \\[[%T|,]\\]\n\n[:SCORE]  \n", ctx) == [
        "Tests: [BAYES_50=0.8,BAYES_99=3.5,SUBJ_X=3]", "2.5..6.6"]
    assert log_macros(ctx)["D"] is not None


def test_recipient_log_template_per_recipient_values() -> None:
    """$log_recip_templ: %. counts, R/D/O/N/c/T/ccat/levels are the recipient's own."""
    ctx = make_context()
    template = ("%. %R D=%D O=%O c=%c T=[%T|,] tag=[:tag_level] tag2=[:tag2_level] "
                "kill=[:kill_level] REQD=[:REQD] %0/%1/%2/%k %3/%4/%5 [:ccat|name] "
                "F=%F n=[:dsn_notify] fwd=[:remote_mta_smtp_response]")
    lines = [render_recipient_log_lines(template, ctx, i)[0] for i in range(3)]
    assert lines == [
        "1 bob@example.com D=<bob@example.com> O= c=6.5 T=BAYES_99=3.5,SUBJ_X=3 tag=2 "
        "tag2=6.31 kill=10 REQD=6.31 L/Y/Y/0 2/6.31/10 Spammy F= n=FAILURE "
        "fwd=250 2.0.0 Ok: queued as 4QJ1X",
        "2 carol@example.net D= O=<carol@example.net> c=2.5 T=BAYES_50=0.8 tag=2 tag2=8 "
        "kill=12 REQD=8 0/Y/0/0 2/8/12 CleanTag F= n=SUCCESS,FAILURE fwd=",
        '3 d a@example.com D= O=<"d a"@example.com> c=6.6 T= tag=0 tag2=0 kill=0 REQD=0 '
        "L/0/Y/0 x/x/x Banned F=rule 7:.exe,x.exe n=FAILURE fwd="]
    assert recipient_log_macros(ctx, 2)["N"].startswith('<"d a"@example.com>:\n   250')


def test_sender_source_of_a_faked_sender() -> None:
    """%o: '?@[ip]' or empty when a virus fakes the sender (pipeline.md 9)."""
    assert render("<%o>", make_context(sender_source="?@[198.51.100.7]")) == "<?@[198.51.100.7]>"
    assert render("<%o>", make_context(sender_source="")) == "<>"


def test_hostname_in_smtputf8_mail_keeps_utf8() -> None:
    ctx = make_context(myhostname="xn--bcher-kva.example", smtputf8=True)
    assert render("%h|[:HOSTNAME]", ctx) == "bücher.example|bücher.example"
    assert render("%h", make_context(myhostname="bücher.example")) == "xn--bcher-kva.example"


def test_random_attachment_password_is_a_kept_pin() -> None:
    ctx = make_context(attachment_password_setting=None)
    first = render("[:attachment_password]", ctx)
    assert len(first) == 4 and first.isdigit()
    assert render("[:attachment_password]", ctx) == first


def test_context_from_a_message() -> None:
    """What the pipeline's Message carries reaches the macros unchanged."""
    from amavisd.errors import Reply
    from amavisd.message import ClientInfo, Message, Recipient

    bob = Recipient("bob@example.com", "bob@example.com", notify=["SUCCESS"])
    bob.destiny, bob.done, bob.reply = D_PASS, 2, Reply(250, "2.0.0", "Ok: queued as 4QJ1")
    eve = Recipient("e ve@example.net", '"e ve"@example.net')
    eve.destiny, eve.done, eve.ccat_blocking, eve.ccats = D_DISCARD, 1, "9", ["9", "1"]
    eve.reply = Reply(250, "2.7.0", "Ok, discarded, id=77-01 - INFECTED: X")
    msg = Message(findings={"ccats": ["9"]}, sender="alice@example.org",
                  sender_quoted="alice@example.org",
                  recipients=[bob, eve], spool_path=Path("/nonexistent"), size=1234,
                  log_id="77-01", mail_id="AbCdEfGhIjKl", policy_bank_path="MYNETS",
                  originating=True, rx_time=1796007747.0, rx_start=time.monotonic() - 0.5,
                  protocol="LMTP", client=ClientInfo(
                      addr="192.0.2.9", port="2525", name="c.example", helo="c",
                      proto="ESMTP", ident="QID1", mta_addr="127.0.0.1", mta_port=4242))
    ctx = TemplateContext.from_message(
        msg, b"Message-ID: <x@y>\nSubject: hi\n\nbody\n", virus_names=["X"], tz=CET)
    assert render("%s|%R|%n|%i|%p|%l|%Q|%m|%j|%z|[:protocol]|[:client_addr_port]|%g|"
                  "[:client_protocol]|[:REMOTEHOSTADDR]|%D|%O|[:dsn_notify]|%V|[:ccat]", ctx) \
        == ("<alice@example.org>|bob@example.com, e ve@example.net|77-01|AbCdEfGhIjKl|"
            "MYNETS|1|QID1|<x@y>|hi|1234|LMTP|[192.0.2.9]:2525|c.example|ESMTP|127.0.0.1|"
            '<bob@example.com>|<"e ve"@example.net>|FAILURE,SUCCESS|X|(9,0)')
    assert 400 <= int(render("%y", ctx)) < 5000
