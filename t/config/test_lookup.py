# tests: amavisd/config/lookup.py, amavisd/lookups.py
"""The lookup mechanism (pipeline.md §14) asked the same questions as amavisd-new.

Every case is asked of our ``config.lookup`` and of the installed Perl modules
(Amavis::Lookup, Amavis::Lookup::IP, via ``t/data/lookup/oracle.pl``); each
answer must be the same.  Where amavisd-new is not installed, the answers the
oracle gave once (``t/data/lookup/expected.json``, written by
``t/data/lookup/record.py``) stand in for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from amavisd.config import lookup as lk
from amavisd.config.lookup import (
    Label,
    Lookups,
    LookupTableError,
    acl_lookup,
    address_keys,
    check_ip_acl,
    ip_to_vec,
    lookup,
    lookup_ip_acl,
    lookup_with_key,
    new_RE,
    split_address,
    split_localpart,
)
from amavisd.config.model import Config
from amavisd.config.perlconf import (
    NewRE,
    Opaque,
    OpaqueRef,
    PerlCode,
    PerlLookup,
    PerlObject,
    PerlScalarRef,
    evaluate_perl_config,
    perl_regex,
)
from amavisd.lookups import domain_acl_match, ip_acl_match

DATA = Path(__file__).resolve().parent.parent / "data" / "lookup"
ORACLE = DATA / "oracle.pl"
EXPECTED = DATA / "expected.json"
LOOKUP_PM = Path("/usr/share/perl5/Amavis/Lookup.pm")

# ---------------------------------------------------------------- the questions
ADDRESSES = [
    "user@example.com",
    "User@Example.COM",
    "user+foo@example.com",
    "User+Foo@Sub.Example.COM",
    "user+foo+bar@example.com",
    "user+@example.com",
    "+foo@example.com",
    "user-foo@example.com",
    "owner-list@example.com",
    "list-request@example.com",
    "Postmaster+x@example.com",
    "mailer-daemon-x@example.com",
    "user@sub.example.com",
    "user@deep.sub.example.com",
    "user@example.com.",
    "user@EXAMPLE.com..",
    "user@example.org",
    "",
    "@example.com",
    "user@",
    "user",
    "example.com",
    "user@[192.0.2.1]",
    "User@[IPv6:2001:DB8::1]",
    '"quoted@local"@example.com',
    '"Quoted Name"@Example.com',
    "a@b@example.com",
    "user@a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z",
    "Üser+Ext@example.com",
]

#: (recipient_delimiter, localpart_is_case_sensitive)
OPTIONS = [(None, 0), ("+", 0), ("+-", 1)]

DEEP = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z"

# Tables in the oracle's JSON form (see oracle.pl): named, so a failure names one.
HASH_PLAIN = {"hash": {"user@example.com": "exact", "example.com": "domain",
                       ".example.com": "subdomains", "user@": "bare-user", ".": "catchall"}}
HASH_EXT = {"hash": {"user+foo@example.com": "ext-full", "user@example.com": "noext-full",
                     "user+foo@": "ext-bare", "user@": "bare", "user-foo@example.com": "dash",
                     "owner-list@": "owner", "list@": "list-split"}}
HASH_UNDEF = {"hash": {"user@example.com": None, "user@": None, ".example.com": "parent",
                       ".com": "com"}}
HASH_RHS = {"hash": {".example.com": "1=$1|2=$2|3=$3|4=$4|5=$5|${1}|$(5)|$0|$6|$$|$x",
                     ".": "x-${3}${4}@$5", "user@": 7}}
HASH_CASE = {"hash": {"User@Example.COM": "as-given", "User@example.com": "cs-key",
                      "user@example.com": "lower", "Üser@": "upper-umlaut",
                      "Üser+Ext@example.com": "as-given-umlaut"}}
HASH_NULL = {"hash": {"": "null", "@": "at", ".": "dot"}}
HASH_AT = {"hash": {"@": "at", "[192.0.2.1]": "literal", "user@[192.0.2.1]": "literal-full",
                    ".[192.0.2.1]": "dot-literal", "[ipv6:2001:db8::1]": "v6-literal"}}
HASH_DEEP = {"hash": {".z": "z", f".{DEEP}": "deepest", f".{DEEP[8:]}": "drop?",
                      f".{DEEP[12:]}": "the 20th",
                      f".{DEEP[14:]}": "kept?", "user@": None, ".org": "org"}}
ACL_BASIC = {"acl": ["user@example.com", "!.sub.example.com", ".example.com"]}
ACL_EXACT = {"acl": ["example.com"]}
ACL_NEGATE = {"acl": ["!!.example.com", "!!!user@example.org", "."]}
ACL_ODD = {"acl": ["@example.com", "user@", "", "!."]}
ACL_CASE = {"acl": ["User@Example.COM", ".COM.", "Üser+ext@example.com"]}
ACL_EXT = {"acl": ["user+foo@example.com", "[192.0.2.1]", ".[192.0.2.1]",
                   "user@[192.0.2.1]", "quoted@local\"@example.com"]}
ACL_DEEP = {"acl": [f"!.{DEEP[4:]}", ".z"]}
RE_BASIC = {"re": [["^user@example\\.com$", "i"],
                   ["@(sub\\.)?example\\.com$", "i", "dom-$1"],
                   ["^(.*)\\+(.*)@(.*)$", "", "ext:$1:$2:${3}:$(9):$0"]]}
RE_UNDEF_FIRST = {"re": [["example", "i", None], ["^", "", "any"]]}
RE_NOCAPTURE = {"re": [["^$", "", "null-$1"], ["^[^@]*$", "", "no-at"],
                       ["(?:x)?Sub", "", "v-$1-${2}"]]}
RE_FALLBACK = {"re": [["[.]org$", "", 0], ["^", "", "fallback"]]}

LOOKUP_MAPS: dict[str, list[Any]] = {
    "hash-plain": [HASH_PLAIN],
    "hash-ext": [HASH_EXT],
    "hash-undef-then-const": [HASH_UNDEF, {"const": "next"}],
    "hash-rhs": [HASH_RHS],
    "hash-case": [HASH_CASE],
    "hash-null": [HASH_NULL],
    "hash-literal": [HASH_AT],
    "hash-deep": [HASH_DEEP],
    "acl-basic": [ACL_BASIC],
    "acl-exact-then-hash": [ACL_EXACT, HASH_PLAIN],
    "acl-negate": [ACL_NEGATE],
    "acl-odd": [ACL_ODD, {"const": "none"}],
    "acl-case": [ACL_CASE],
    "acl-ext": [ACL_EXT],
    "acl-deep": [ACL_DEEP],
    "re-basic": [RE_BASIC],
    "re-undef-first": [RE_UNDEF_FIRST, RE_FALLBACK],
    "re-nocapture": [RE_NOCAPTURE],
    "constants": [{"label": "LBL"}, {"const": None}, {"sref": None}, {"hash": {}},
                  {"acl": []}, {"re": []}, ACL_EXACT, {"const": 0}, {"const": "c"},
                  {"const": ""}],
    "references": [{"sref": {"acl": ["!user@example.org", "example.org"]}},
                   {"sref": {"hash": {".sub.example.com": "sub"}}},
                   {"sref": {"re": [["^User", "", "upper"]]}}, {"sref": "s"},
                   {"opaque": ["smtp:[127.0.0.1]:10025", "smtp:[::1]:10025"]}],
    "opaque": [{"opaque": None}, {"opaque_ref": None}, {"opaque_ref": "r"},
               {"opaque": {"a": 1}}],
    "everything": [HASH_UNDEF, ACL_NEGATE, RE_BASIC, {"const": 5}, HASH_PLAIN],
}
#: Maps asked with every option set; the rest with the first two only.
OPTION_SENSITIVE = {"hash-ext", "hash-rhs", "hash-case", "acl-case", "everything"}

RE_KEY_LISTS = [["a.exe", "application/x-msdownload"], ["x.txt", "text/plain"], [],
                ["Sub", "TEXT"]]

IPS = [
    "10.1.2.3", "192.168.1.12", "192.168.1.13", "172.16.3.3", "172.16.3.4", "172.31.0.1",
    "127.0.0.1", "0.0.0.0", "8.8.8.8", "::1", "[::1]", "IPv6:::1", "::ffff:10.1.2.3",
    "::FFFF:0a01:0203", "fe80::1%eth0", "2001:db8::1", "2001:DB8:0:0:0:0:0:1", "::",
    "1.2.3", "256.1.1.1", "bogus", "", "010.001.002.003", " 10.1.2.3 ", "[10.1.2.3]",
    "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::8", "1::2::3", "fc00::1", "::10.1.2.3",
    "2001:db8::10.1.2.3",
]
IP_DOC_ACL = {"acl": ["!192.168.1.12", "172.16.3.3", "!172.16.3.0/255.255.255.0",
                      "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "!0.0.0.0/8",
                      "!::", "127.0.0.0/8", "::1"]}
IP_MAPS: dict[str, list[Any]] = {
    "doc-example": [IP_DOC_ACL],
    "ipv4-only": [{"acl": ["0/0"]}],
    "anything": [{"acl": ["::/0"]}],
    "forms": [{"acl": ["!!10/8", "[fe80::]/10", "IPv6:2001:db8::/32", "[fc00::]/7",
                       "127.1/16", "[10.1.2.3]"]}],
    "mynetworks": [{"acl": ["127.0.0.0/8", "[::1]", "169.254.0.0/16", "[fe80::]/10",
                            "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "[fc00::]/7"]}],
    "hash": [{"hash": {"10.1.2.3": "host", "172.16": "net16", "192": "net8",
                       "0000:0000:0000:0000:0000:0000:0000:0001": "v6-full", "::1": "short",
                       "": "invalid", "2001:0db8:0000:0000:0000:0000:0000:0001": "doc",
                       "0000:0000:0000:0000:0000:ffff:0a01:0203": "mapped-full"}}],
    "hash-undef": [{"hash": {"10.1.2.3": None, "10.1": None, "10": "ten"}},
                   {"const": "fallthrough"}],
    "constants": [{"label": "L"}, {"const": None}, {"sref": None}, {"acl": []},
                  {"sref": {"acl": ["!10/8"]}}, {"const": 0}],
    "bad-entry-late": [{"acl": ["10.0.0.1", "bogus", "::/0"]}],
    "bad-mask": [{"acl": ["10.0.0.0/255.0.255.0"]}],
    "bad-prefix": [{"acl": ["10.0.0.0/33"]}],
    "v6-prefix": [{"acl": ["!2001:db8::/129", "::/0"]}],
    "short-host": [{"acl": ["10.1.2"]}],
}


#: A Perl config as admins write them: the importer (perlconf) turns these maps into
#: Python values, and our answers on those must be amavisd's on the config itself.
PERL_CONF = r"""
use strict;
@local_domains_acl = ( "!sub.example.net", ".example.net", "example.com" );
%local_domains = ( 'special@example.org' => 1, '.example.org' => 0, 'user@' => undef );
$local_domains_re = new_RE( qr'@example\.edu$'i, [ qr'^(.*)@(.*)\.info$'i => 'info:$1:$2' ] );
@local_domains_maps = ( \%local_domains, \@local_domains_acl, \$local_domains_re );
$sa_kill_level_deflt = 6.31;
@spam_kill_level_maps = (
  { 'boss@example.com' => 20, '.example.com' => undef, '.example.org' => '${5}' },
  new_RE( [ qr'^spammy' => 3 ], [ qr'^([^+@]+)\+([^+@]+)@' => '$2' ] ),
  \$sa_kill_level_deflt );
@virus_admin_maps = ( Opaque( [ 'a@example.com', 'b@example.com' ] ) );
@bypass_spam_checks_maps = ( [ "!.example.com" ], \"fallback", 1 );
1;
"""
CONF_MAPS = ["@local_domains_maps", "@spam_kill_level_maps", "@virus_admin_maps",
             "@bypass_spam_checks_maps"]


def case_id(case: dict[str, Any]) -> str:
    """A stable name for a case: the recorded answers are keyed by it."""
    text = json.dumps(case, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def build_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every question, as (group, case); the group names the map in a failure."""
    cases: list[tuple[str, dict[str, Any]]] = []
    for delimiter, cs in OPTIONS:
        options = {"recipient_delimiter": delimiter, "localpart_is_case_sensitive": cs}
        for addr in ADDRESSES:
            cases.append(("keys", {"kind": "keys", "key": addr, "options": options}))
    for addr in ADDRESSES + ["a@b@[x@y]", "x@[unclosed", "\"a\\\"@b\"@c", "@", "@@"]:
        cases.append(("split", {"kind": "split", "key": addr}))
    for name, tables in LOOKUP_MAPS.items():
        options_list = OPTIONS if name in OPTION_SENSITIVE else OPTIONS[:2]
        for delimiter, cs in options_list:
            options = {"recipient_delimiter": delimiter, "localpart_is_case_sensitive": cs}
            for get_all in (0, 1):
                for addr in ADDRESSES:
                    cases.append((f"lookup:{name}", {
                        "kind": "lookup", "get_all": get_all, "key": addr,
                        "tables": tables, "options": options}))
    for keys in RE_KEY_LISTS:
        for get_all in (0, 1):
            cases.append(("lookup:re-key-list", {
                "kind": "lookup", "get_all": get_all, "key": keys,
                "tables": [RE_NOCAPTURE, {"re": [["\\.exe$", "i", "exe"],
                                                 ["^text/", "", "text"]]}]}))
    for var in CONF_MAPS:
        for delimiter, cs in OPTIONS[:2]:
            options = {"recipient_delimiter": delimiter, "localpart_is_case_sensitive": cs}
            for get_all in (0, 1):
                for addr in ADDRESSES + ["special@Example.ORG", "x@y.example.org",
                                         "x@example.edu", "Joe@Shop.Example.Info",
                                         "spammy@example.com", "a+b@example.net"]:
                    cases.append((f"conf:{var}", {
                        "kind": "conf", "conf": PERL_CONF, "var": var, "get_all": get_all,
                        "key": addr, "options": options}))
    for name, tables in IP_MAPS.items():
        for ip in IPS:
            cases.append((f"ip:{name}", {"kind": "ip", "key": ip, "tables": tables}))
    return cases


CASES = build_cases()
GROUPS = sorted({group for group, _ in CASES})


# ---------------------------------------------------------------- the two answerers
def run_oracle(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The installed amavisd-new's answers, one per case, in order."""
    proc = subprocess.run(["perl", str(ORACLE)], input=json.dumps(cases).encode("utf-8"),
                          capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"oracle.pl failed: {proc.stderr.decode('utf-8', 'replace')}")
    answers = json.loads(proc.stdout)
    assert len(answers) == len(cases)
    return answers


def python_table(spec: Any) -> Any:
    """An oracle table description as the Perl importer (perlconf) would give it."""
    if "const" in spec:
        return spec["const"]
    if "sref" in spec:
        inner = spec["sref"]
        return PerlScalarRef(None, python_table(inner) if isinstance(inner, dict) else inner)
    if "hash" in spec:
        return dict(spec["hash"])
    if "acl" in spec:
        return list(spec["acl"])
    if "re" in spec:
        return NewRE(tuple((perl_regex(entry[0], entry[1]), entry[2] if len(entry) > 2 else 1)
                           for entry in spec["re"]))
    if "opaque" in spec:
        return Opaque(spec["opaque"])
    if "opaque_ref" in spec:
        return OpaqueRef(PerlScalarRef(None, spec["opaque_ref"]))
    if "label" in spec:
        return PerlObject("Amavis::Lookup::Label", PerlScalarRef(None, spec["label"]))
    raise ValueError(spec)


@functools.lru_cache(maxsize=4)
def imported_conf(text: str) -> dict[str, Any]:
    """The variables a Perl config sets, as the importer gives them (needs perl)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "amavisd.conf"
        path.write_text(text, encoding="utf-8")
        return evaluate_perl_config([str(path)]).variables


def ours(case: dict[str, Any]) -> dict[str, Any]:
    """Our answer to one case, in the oracle's shape."""
    options = case.get("options") or {}
    delimiter = options.get("recipient_delimiter")
    cs = bool(options.get("localpart_is_case_sensitive"))
    try:
        if case["kind"] == "keys":
            return {"keys": address_keys(case["key"], delimiter, cs)}
        if case["kind"] == "split":
            return {"split": list(split_address(case["key"]))}
        if case["kind"] == "conf":
            tables = imported_conf(case["conf"])[case["var"]]
            result, key = lookup_with_key(bool(case["get_all"]), case["key"], tables,
                                          recipient_delimiter=delimiter,
                                          localpart_is_case_sensitive=cs)
            return {"result": result, "keys": key}
        tables = [python_table(spec) for spec in case["tables"]]
        if case["kind"] == "ip":
            result, key = lookup_ip_acl(case["key"], tables)
            return {"result": result, "keys": key}
        result, key = lookup_with_key(bool(case["get_all"]), case["key"], tables,
                                      recipient_delimiter=delimiter,
                                      localpart_is_case_sensitive=cs)
        return {"result": result, "keys": key}
    except ValueError as exc:
        return {"error": str(exc)}


def perlish(value: Any) -> Any:
    """Perl has no types but strings and numbers: compare values as Perl prints them."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return [perlish(item) for item in value]
    if isinstance(value, dict):
        return {key: perlish(item) for key, item in value.items()}
    return value


def comparable_key(key: Any) -> bool:
    """Regex keys print differently ((?^i:...)) and opaque ones hold addresses of refs."""
    return not (isinstance(key, str) and key.startswith(("(?^", "(opaque:")))


def differences(case: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    mine = ours(case)
    if "error" in theirs or "error" in mine:
        if ("error" in theirs) != ("error" in mine) or theirs["error"] not in mine["error"]:
            return f"perl {theirs} / ours {mine}"
        return None
    if "result" in theirs:
        if perlish(mine["result"]) != perlish(theirs["result"]):
            return f"result: perl {theirs['result']!r} / ours {mine['result']!r}"
        perl_keys, our_keys = theirs["keys"], mine["keys"]
        if not isinstance(perl_keys, list):
            perl_keys, our_keys = [perl_keys], [our_keys]
        if len(perl_keys) != len(our_keys):
            return f"keys: perl {theirs['keys']!r} / ours {mine['keys']!r}"
        for perl_key, our_key in zip(perl_keys, our_keys, strict=True):
            if comparable_key(perl_key) and perl_key != our_key:
                return f"keys: perl {theirs['keys']!r} / ours {mine['keys']!r}"
        return None
    return None if perlish(mine) == perlish(theirs) else f"perl {theirs} / ours {mine}"


@pytest.fixture(scope="module")
def oracle_answers() -> dict[str, dict[str, Any]]:
    """Answers by case id: live from Perl when amavisd-new is installed, else recorded."""
    if LOOKUP_PM.exists():
        if shutil.which("perl") is None:
            pytest.fail("Amavis/Lookup.pm is installed but perl is not on PATH")
        cases = [case for _, case in CASES]
        return {case_id(case): answer for case, answer in zip(cases, run_oracle(cases),
                                                               strict=True)}
    if not EXPECTED.exists():
        pytest.skip(f"{LOOKUP_PM} is missing (amavisd-new not installed) and no recorded "
                    f"answers in {EXPECTED}")
    return json.loads(EXPECTED.read_text(encoding="utf-8"))["answers"]


@pytest.mark.parametrize("group", GROUPS)
def test_same_answers_as_amavisd(group: str, oracle_answers: dict[str, Any]) -> None:
    """Each question of the group gets amavisd-new's answer (value and matching key)."""
    missing, wrong = [], []
    if group.startswith("conf:") and shutil.which("perl") is None:
        pytest.skip("perl is needed to import the Perl config these cases ask about")
    for name, case in CASES:
        if name != group:
            continue
        theirs = oracle_answers.get(case_id(case))
        if theirs is None:
            missing.append(case)
            continue
        why = differences(case, theirs)
        if why:
            wrong.append(f"{json.dumps(case, ensure_ascii=False)}\n    {why}")
    assert not missing, (f"{len(missing)} cases have no recorded answer: "
                         "run python t/data/lookup/record.py")
    assert not wrong, f"{len(wrong)} answers differ:\n" + "\n".join(wrong[:20])


@pytest.mark.skipif(not LOOKUP_PM.exists(), reason=f"{LOOKUP_PM} is missing (no live oracle)")
def test_recorded_answers_are_current(oracle_answers: dict[str, Any]) -> None:
    """expected.json holds what the live oracle says today (re-run record.py if not)."""
    recorded = json.loads(EXPECTED.read_text(encoding="utf-8"))["answers"]
    assert recorded == oracle_answers


def test_many_cases() -> None:
    assert len(CASES) > 2000


# ---------------------------------------------------------------- key order, spelled out
def test_key_order_of_spec_example() -> None:
    """pipeline.md §14: the key sequence for User+Foo@Sub.Example.COM with delimiter +."""
    assert address_keys("User+Foo@Sub.Example.COM", "+") == [
        "User+Foo@Sub.Example.COM", "user+foo@sub.example.com", "user@sub.example.com",
        "user+foo@", "user@", "sub.example.com", ".sub.example.com", ".example.com",
        ".com", "."]


def test_null_sender_keys() -> None:
    assert address_keys("") == ["", "@", "."]


def test_address_literal_not_split() -> None:
    assert address_keys("u@[192.0.2.1]") == ["u@[192.0.2.1]", "u@", "[192.0.2.1]", "."]


def test_at_most_20_domain_suffixes_the_deepest_dropped() -> None:
    keys = address_keys(f"u@{DEEP}")
    suffixes = [k for k in keys if k.startswith(".")]
    assert len(suffixes) == 20
    assert suffixes[-1] == "." and suffixes[-2] == ".z"
    assert f".{DEEP}" not in keys and DEEP in keys


def test_split_localpart_reserved_and_owner() -> None:
    assert split_localpart("user+foo+bar", "+") == ("user", "+foo+bar")
    assert split_localpart("+foo", "+") == ("+foo", None)
    assert split_localpart("postmaster+x", "+") == ("postmaster", "+x")
    assert split_localpart("Mailer-Daemon", "-") == ("Mailer-Daemon", None)
    assert split_localpart("owner-list", "-") == ("owner-list", None)
    assert split_localpart("list-request", "+-") == ("list-request", None)
    assert split_localpart("list-request", "+") == ("list-request", None)
    assert split_localpart("a-b", "+-") == ("a", "-b")


# ---------------------------------------------------------------- semantics by hand
def test_hash_none_value_asks_next_table_not_next_key() -> None:
    """A present key with value None ends that hash: the next *table* is asked."""
    tables = [{"user@example.com": None, ".example.com": "parent"}, "next"]
    assert lookup(False, "user@example.com", tables) == "next"
    assert lookup(True, "user@example.com", tables) == [None, "parent", "next"]


def test_acl_at_domain_is_empty_localpart() -> None:
    """In an ACL '@dom' is the address with an empty local part, not the domain."""
    assert acl_lookup("user@example.com", ["@example.com"]) == (None, None)
    assert acl_lookup("@example.com", ["@example.com"]) == (True, "@example.com")
    assert domain_acl_match("user@example.com", ["@example.com"]) is None


def test_re_without_groups_gives_one_for_dollar_one() -> None:
    assert lookup(False, "abc", [new_RE(("b", "x$1y"))]) == "x1y"


def test_native_tables() -> None:
    """Python values: a compiled regex and a list of them are regex tables."""
    assert lookup(False, "Foo@x", [re.compile(r"(?i)^foo@")]) == 1
    assert lookup(False, "foo@x", [[(re.compile(r"^(\w+)@"), "u=$1")]]) == "u=foo"
    assert lookup(False, "foo@x", [new_RE("nomatch", ("@(x)$", "d=${1}"))]) == "d=x"
    assert lookup(False, "foo@x", [None, "", 3]) == ""
    assert lookup(False, "foo@x", [Label("only-a-label")]) is None


def test_code_tables() -> None:
    """A Python callable is asked lazily; unknown Perl subs are a clear error."""
    asked = []

    def table(key: Any, get_all: bool) -> Any:
        asked.append((key, get_all))
        return {".x": "from-code"}

    assert lookup(False, "a@b.x", [table]) == "from-code"
    assert asked == [("a@b.x", False)]
    with pytest.raises(LookupTableError, match="anonymous Perl sub"):
        lookup(False, "a@b", [PerlCode("__ANON__")])
    with pytest.raises(LookupTableError, match="mystery"):
        lookup(False, "a@b", [PerlCode("mystery")])
    lk.register_code_table("known_for_test", lambda key, get_all: ["."])
    try:
        assert lookup(False, "a@b", [PerlCode("known_for_test")]) is True
    finally:
        del lk.CODE_TABLES["known_for_test"]


def test_sql_fields_skipped_and_unknown_objects_refused() -> None:
    assert lookup(False, "a@b", [PerlLookup("q_sql_s", ("x",)), "c"]) == "c"
    with pytest.raises(LookupTableError):
        lookup(False, "a@b", [object()])
    with pytest.raises(LookupTableError, match="list of keys"):
        lookup(False, ["a@b"], [{"a@b": 1}])


def test_scalar_ref_to_table_and_to_constant() -> None:
    acl = PerlScalarRef("local_domains_re", NewRE(((re.compile("@b$"), "re"),)))
    assert lookup(False, "a@b", [acl]) == "re"
    assert lookup(False, "a@b", [PerlScalarRef("x", None), PerlScalarRef(None, "k")]) == "k"
    nested = PerlScalarRef(None, PerlScalarRef(None, "deep"))
    assert lookup(False, "a@b", [nested]) == "deep"


def test_imported_regex_word_class_is_ascii_as_on_octets() -> None:
    """amavisd: 'Üser+x@dom' =~ /^(\\w+)\\+/ is false (the oracle showed it); so must ours be."""
    table = NewRE(((perl_regex(r"^(\w+)\+", ""), "$1"),))
    assert lookup(False, "Üser+x@example.com", [table]) is None


# ---------------------------------------------------------------- per recipient
def test_lookups_per_recipient_reads_the_view() -> None:
    config = Config()
    config.assign("message_size_limit_maps",
                  [{"big@example.com": 50_000_000}, [".example.com"], 1000], "test")
    config.assign("policy_bank", {"SMALL": {"message_size_limit_maps": [10]}}, "test")
    base = Lookups(config.view())
    assert base.per_recipient("message_size_limit_maps", "Big@Example.com") == 50_000_000
    assert base.per_recipient("message_size_limit_maps", "x@sub.example.com") is True
    assert base.per_recipient("message_size_limit_maps", "x@other") == 1000
    assert base.per_recipient("message_size_limit_maps", "big@example.com",
                              get_all=True) == [50_000_000, True, 1000]
    small = Lookups(config.view(["SMALL"]))
    assert small.per_recipient("message_size_limit_maps", "big@example.com") == 10


def test_lookups_unknown_setting_is_attribute_error() -> None:
    with pytest.raises(AttributeError):
        Lookups(Config().view()).per_recipient("no_such_maps", "a@b")


# ---------------------------------------------------------------- IP, by hand
def test_ip_to_vec_forms() -> None:
    assert ip_to_vec("10/8", True)[1:] == (104, None)
    assert ip_to_vec("10.0.0.0/255.255.0.0", True)[1] == 112
    assert ip_to_vec("fe80::1%eth0")[2] == "%eth0"
    with pytest.raises(ValueError, match="fewer than 4"):
        ip_to_vec("10.1.2")


def test_ip_acl_match_wrapper_fails_closed_on_a_bad_entry() -> None:
    assert ip_acl_match("10.1.2.3", ["!10.1/16", "10/8"]) == (False, "!10.1/16")
    assert ip_acl_match("10.2.2.3", ["!10.1/16", "10/8"]) == (True, "10/8")
    assert ip_acl_match("8.8.8.8", ["10/8"]) == (None, None)
    assert ip_acl_match("garbage", ["::/0"]) == (True, "::/0")
    assert ip_acl_match("8.8.8.8", ["bogus", "::/0"]) == (None, None)
    with pytest.raises(ValueError, match="bogus"):
        lookup_ip_acl("8.8.8.8", [["bogus", "::/0"]])


def test_check_ip_acl() -> None:
    check_ip_acl(["127.0.0.0/8", "[::1]", "!10/8", "[fe80::]/10"])
    with pytest.raises(ValueError, match="10.0.0.0/33"):
        check_ip_acl(["10.0.0.0/33"])
