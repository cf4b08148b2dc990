# tests: amavisd/checks/banned.py
"""The banned check on hand-built parts trees (spec/pipeline.md section 7).

Three kinds of evidence: the golden replies and log lines of the Perl daemon
(``t/data/banned/golden.json``), the installed Perl ``check_for_banned_names`` run
on the same trees and tables (``t/data/banned/oracle.pl``, skipped without
amavisd-new; CI installs it), and the oracle's answers recorded in
``t/data/banned/expected.json`` (``python -m t.checks.test_banned --record``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amavisd.checks import banned
from amavisd.checks.banned import (
    BANNED_RULES,
    DEBIAN_BANNED_FILENAME_RE,
    BannedHit,
    LeafKeys,
    banned_table,
    per_recipient,
    resolve_tables,
    run,
)
from amavisd.config.perlconf import NewRE, perl_regex
from amavisd.log import amavis_level
from amavisd.parts import Part, PartsTree

DATA = Path(__file__).resolve().parent.parent / "data" / "banned"
ORACLE = DATA / "oracle.pl"
EXPECTED = DATA / "expected.json"
AMAVIS_PM = Path("/usr/share/perl5/Amavis.pm")
DEBIAN_DEFAULTS = Path("/etc/amavis/conf.d/20-debian_defaults")


# ---------------------------------------------------------------- scenarios
def part(n: int, place: str, m: list[str] | None = None, t: list[str] | None = None,
         names: list[str] | None = None, attrs: str = "",
         children: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One node in the oracle's JSON form (see oracle.pl)."""
    return {"n": n, "place": place, "M": m or [], "T": t or [], "N": names or [],
            "A": attrs, "children": children or []}


def mixed(*children: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """multipart/mixed with a text/plain first part, as mail clients send it."""
    return [part(n, "1", ["multipart/mixed"], children=[
        part(1, "1/1", ["text/plain"], ["asc"]), *children])]


DEB = {"DEB": "debian"}
DEFAULT_ONLY = {"DEFAULT": "DEB"}
ALLOW_ARCHIVES = [[r"^\.(zip|rar)$", "", 0]]
EXE_IN_ZIP_NAMEPATH = [[r"(?# EXE IN ZIP )\tT=zip\b.*\n.*\tN=[^\t]*\.exe(\t|$)", "", "DISCARD"]]


def one(addr: str = "bob@example.com", maps: list[Any] | None = None,
        bypass: bool = False) -> dict[str, Any]:
    return {"addr": addr, "maps": ["DEFAULT"] if maps is None else maps,
            "bypass": int(bypass)}


SCENARIOS: dict[str, dict[str, Any]] = {
    # golden banned-exe-in-zip: the zip member typed 'asc' by file(1)
    "golden-exe-in-zip": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["invoice.zip"], children=[
            part(4, "1/2/1", [], ["asc"], ["invoice-2026-11.exe"])])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one("bob@anchor.test")]},
    "golden-eicar": {
        "tree": mixed(part(2, "1/2", ["application/octet-stream"], ["dat"], ["eicar.com"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one("bob@anchor.test")]},
    "golden-clam-zip": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["clam.zip"], children=[
            part(4, "1/2/1", [], ["exe", "exe-ms"], ["clam.exe"])])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one("bob@anchor.test")]},
    "double-extension": {
        "tree": mixed(part(2, "1/2", ["application/pdf"], ["pdf"], ["report.pdf.exe"]),
                      part(4, "1/3", ["text/plain"], ["asc"], ["notes.txt.dll"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one()]},
    "clsid": {
        "tree": mixed(part(2, "1/2", ["text/plain"], ["asc"],
                           ["readme.txt{00020C01-0000-0000-C000-000000000046}"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one()]},
    "msdownload": {
        "tree": mixed(part(2, "1/2", ["application/x-msdownload"], ["dat"], ["setup.bin"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one()]},
    "exe-ms-type-and-long-spaces": {
        "tree": mixed(part(2, "1/2", ["image/jpeg"], ["exe", "exe-ms"], ["photo.jpg"]),
                      part(4, "1/3", ["image/jpeg"], ["exe", "exe-ms"],
                           ["photo.jpg            .scr"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one()]},
    "clean-message": {
        "tree": mixed(part(2, "1/2", ["application/pdf"], ["pdf"], ["report.pdf"])),
        "tables": DEB, "banned_rules": DEFAULT_ONLY, "recipients": [one()]},
    "allow-archives-first": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["a.zip"], children=[
                          part(4, "1/2/1", [], ["exe", "exe-ms"], ["setup.exe"])]),
                      part(5, "1/3", ["application/octet-stream"], ["exe", "exe-ms"],
                           ["run.exe"])),
        "tables": {**DEB, "ALLOW": ALLOW_ARCHIVES},
        "banned_rules": {"DEFAULT": "DEB", "ALLOW": "ALLOW"},
        "recipients": [one("allow@example.com", ["ALLOW, DEFAULT"]),
                       one("strict@example.com", ["DEFAULT"]),
                       one("list@example.com", [["ALLOW", "DEB"]])]},
    "undecipherable": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["secret.zip"], children=[
            part(4, "1/2/1", [], [], ["payload.bin"], attrs="UC")])),
        "tables": {"UND": [[r"^UNDECIPHERABLE$", ""]]},
        "banned_rules": {"UND": "UND"}, "recipients": [one(maps=["UND"])]},
    "namepath": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["invoice.zip"], children=[
            part(4, "1/2/1", [], ["asc"], ["invoice.exe"])])),
        "tables": {**DEB, "NP": EXE_IN_ZIP_NAMEPATH, "ALLOW": ALLOW_ARCHIVES,
                   "MIME": [[r"^application/x-msdownload$", "i"]]},
        "banned_rules": {"DEFAULT": "DEB", "ALLOW": "ALLOW", "MIME": "MIME"},
        "namepath": "NP",
        "recipients": [one("default@example.com"),            # tables say banned
                       one("none@example.com", []),            # no tables: namepath
                       one("allowed@example.com", ["ALLOW"]),  # tables said 0: stays
                       one("mime@example.com", ["MIME"])]},    # no answer: namepath
    "regex-flags": {
        "tree": mixed(part(2, "1/2", ["Application/X-MSDownload"], ["dat"], ["tool.bin"])),
        "tables": {"F": [[r"^application/x-msdownload$", "smi"]]},
        "banned_rules": {"F": "F"}, "recipients": [one(maps=["F"])]},
    "recipient-groups": {
        "tree": mixed(part(2, "1/2", ["application/x-msdownload"], ["dat"], ["tool.bin"]),
                      part(4, "1/3", ["application/octet-stream"], ["dat"], ["game.com"])),
        "tables": {**DEB, "MIME": [[r"(?#MS download)^application/x-msdownload$", "i",
                                    "DISCARD"]]},
        "banned_rules": {"DEFAULT": "DEB", "MIME": "MIME"},
        "recipients": [one("a@example.com"), one("b@example.com", ["MIME"]),
                       one("c@example.com"), one("d@example.com", ["NOSUCH"])]},
    "rhs-captures-and-undef": {
        "tree": mixed(part(2, "1/2", ["application/octet-stream"], ["dat"], ["x.scr"])),
        "tables": {"UNDEF": [[r"\.scr$", "", None]], "ZERO": [[r"\.SCR$", "i", "0"]],
                   "CAPT": [[r"\.(s)(c)r$", "", "DISCARD-$2${1}$(9)"], [r"^x\.", ""]]},
        "banned_rules": {"UNDEF": "UNDEF", "CAPT": "CAPT", "ZERO": "ZERO"},
        "recipients": [one(maps=["UNDEF CAPT"]), one("zero@example.com", ["ZERO CAPT"])]},
    "bypassed-still-sees-namepath": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["a.zip"], children=[
            part(4, "1/2/1", [], ["exe"], ["a.exe"])])),
        "tables": {**DEB, "NP": EXE_IN_ZIP_NAMEPATH}, "banned_rules": DEFAULT_ONLY,
        "namepath": "NP",
        "recipients": [one("bob@example.com"), one("bypass@example.com", [], bypass=True)]},
    "all-bypassed": {
        "tree": mixed(part(2, "1/2", ["application/zip"], ["zip"], ["a.zip"], children=[
            part(4, "1/2/1", [], ["exe"], ["a.exe"])])),
        "tables": {**DEB, "NP": EXE_IN_ZIP_NAMEPATH}, "banned_rules": DEFAULT_ONLY,
        "namepath": "NP", "recipients": [one("bypass@example.com", [], bypass=True)]},
}


# ---------------------------------------------------------------- our side
def tree_of(spec: list[dict[str, Any]]) -> PartsTree:
    tree = PartsTree()

    def build(node: dict[str, Any], parent: Part) -> None:
        child = parent.add(Part(
            f"p{node['n']:03d}", placement=node["place"], declared_types=list(node["M"]),
            type_short=list(node["T"]), declared_names=list(node["N"]),
            attributes=set(node["A"])))
        for grandchild in node["children"]:
            build(grandchild, child)

    for node in spec:
        build(node, tree.root)
    return tree


def tables_of(scenario: dict[str, Any]) -> dict[str, Any]:
    """Tables as the Perl config importer hands them over: NewRE of compiled regexes."""
    tables: dict[str, Any] = {}
    for name, spec in scenario["tables"].items():
        if spec == "debian":
            tables[name] = DEBIAN_BANNED_FILENAME_RE
        else:
            tables[name] = NewRE(tuple(
                (perl_regex(src, flags), rest[0] if rest else 1) for src, flags, *rest in spec))
    return tables


def run_ours(name: str) -> tuple[list[BannedHit], dict[str, Any]]:
    scenario = SCENARIOS[name]
    tables = tables_of(scenario)
    rules = {k: (tables[v] if v is not None else None)
             for k, v in scenario["banned_rules"].items()}
    recipients = {r["addr"]: None if r["bypass"] else
                  [[tables[t] for t in e] if isinstance(e, list) else e for e in r["maps"]]
                  for r in scenario["recipients"]}
    namepath = tables[scenario["namepath"]] if scenario.get("namepath") else None
    hits = run(tree_of(scenario["tree"]), recipients, namepath, banned_rules=rules)
    return hits, recipients


def summary_of(hits: list[BannedHit], addrs: list[str]) -> dict[str, Any]:
    verdicts = per_recipient(hits)
    out: dict[str, Any] = {}
    for addr in addrs:
        v = verdicts.get(addr)
        out[addr] = None if v is None else {
            "banned_parts": v.banned_parts, "banned_parts_as_attr": v.banned_parts_as_attr,
            "banning_rule_key": v.banning_rule_key,
            "banning_rule_comment": v.banning_rule_comment,
            "banning_rule_rhs": v.banning_rule_rhs,
            "banning_reason_short": v.banning_reason_short}
    return out


def ours(name: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    caplog.clear()
    caplog.set_level(1, logger="amavis")
    hits, recipients = run_ours(name)
    log = [[amavis_level(r.levelno), r.getMessage()] for r in caplog.records
           if r.getMessage().startswith("p.path")]
    return {"recipients": summary_of(hits, list(recipients)), "log": log}


def perl(name: str) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    done = subprocess.run([shutil.which("perl") or "perl", str(ORACLE)],
                          input=json.dumps(scenario).encode(), capture_output=True,
                          check=True, timeout=60)
    answer = json.loads(done.stdout)
    recips: dict[str, Any] = {}
    for addr, stored in answer["recipients"].items():
        recips[addr] = None if stored["banned_parts"] is None else stored
    log = [[level, text] for level, text in answer["log"] if text.startswith("p.path")]
    return {"recipients": recips, "log": log}


needs_perl = pytest.mark.skipif(
    not AMAVIS_PM.exists() or not DEBIAN_DEFAULTS.exists() or shutil.which("perl") is None,
    reason="amavisd-new is not installed (/usr/share/perl5/Amavis.pm or "
           "/etc/amavis/conf.d/20-debian_defaults missing): the live Perl oracle "
           "cannot run; expected.json still checks every scenario")


@needs_perl
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_agrees_with_perl_oracle(name: str, caplog: pytest.LogCaptureFixture) -> None:
    assert ours(name, caplog) == perl(name)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_agrees_with_recorded_answers(name: str, caplog: pytest.LogCaptureFixture) -> None:
    assert ours(name, caplog) == json.loads(EXPECTED.read_text())[name]


def test_recorded_answers_cover_every_scenario() -> None:
    assert sorted(json.loads(EXPECTED.read_text())) == sorted(SCENARIOS)


# ---------------------------------------------------------------- golden cases
@pytest.mark.parametrize("case", ["banned-exe-in-zip", "eicar", "clam-zip"])
def test_golden_reply_and_log_line(case: str) -> None:
    golden = json.loads((DATA / "golden.json").read_text())[case]
    hits, _ = run_ours("golden-" + case.removeprefix("banned-"))
    assert len(hits) == 1
    reason = hits[0].banning_reason_short
    assert golden["reply"].endswith(" - BANNED: " + reason)
    assert golden["log_excerpt"] == f"Blocked BANNED ({reason})"


def test_golden_exe_in_zip_descriptors() -> None:
    (hit,) = run_ours("golden-exe-in-zip")[0]
    assert hit.part == "p004"
    assert hit.banned_part == ("multipart/mixed | application/zip,.zip,invoice.zip"
                               " | .asc,invoice-2026-11.exe")
    assert hit.banned_part_as_attr == (
        "P=p003,L=1,M=multipart/mixed | P=p002,L=1/2,M=application/zip,T=zip,"
        "N=invoice.zip | P=p004,L=1/2/1,T=asc,N=invoice-2026-11.exe")
    assert hit.banning_rule_key == r"(?^i:.\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$)"
    assert hit.banning_rule_comment == hit.banning_rule_key
    assert hit.banning_rule_rhs == 1
    assert hit.recipients == ("bob@anchor.test",)


def test_golden_log_line_level(caplog: pytest.LogCaptureFixture) -> None:
    got = ours("golden-exe-in-zip", caplog)["log"]
    assert got == [
        [3, 'p.path bob@anchor.test: "P=p003,L=1,M=multipart/mixed | '
            'P=p001,L=1/1,M=text/plain,T=asc"'],
        [1, 'p.path BANNED:1 bob@anchor.test: "P=p003,L=1,M=multipart/mixed | '
            'P=p002,L=1/2,M=application/zip,T=zip,N=invoice.zip | '
            'P=p004,L=1/2/1,T=asc,N=invoice-2026-11.exe", '
            r'matching_key="(?^i:.\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$)"']]


# ---------------------------------------------------------------- Debian's list
def test_debian_list_matches_the_shipped_file() -> None:
    """Our constant has Debian's rules, in Debian's order (section 7.4)."""
    keys = [rule.display for rule in DEBIAN_BANNED_FILENAME_RE.rules]
    assert keys == [
        r"(?^i:\.[^./]*\.(exe|vbs|pif|scr|bat|cmd|com|cpl|dll)\.?$)",
        r"(?^i:\{[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\}?$)",
        r"(?^i:^application/x-msdownload$)",
        r"(?^i:^application/x-msdos-program$)",
        r"(?^i:^application/hta$)",
        r"(?^i:.\.(exe|vbs|pif|scr|bat|cmd|com|cpl)$)",
        r"(?^:^\.(exe-ms)$)",
    ]
    assert all(rule.rhs == 1 for rule in DEBIAN_BANNED_FILENAME_RE.rules)
    assert BANNED_RULES == {"DEFAULT": DEBIAN_BANNED_FILENAME_RE}
    if DEBIAN_DEFAULTS.exists():   # and the installed file says the same
        text = DEBIAN_DEFAULTS.read_text()
        block = re.search(r"^\$banned_filename_re = new_RE\((.*?)^\);", text, re.M | re.S)
        assert block is not None
        live = re.findall(r"^\s*qr'(.*?)'(i?),", block.group(1), re.M)
        assert [f"(?^{flags}:{src})" for src, flags in live] == keys


@pytest.mark.parametrize(("name", "rule_index"), [
    ("report.pdf.exe", 0), ("notes.txt.dll", 0), ("a.b.scr.", 0),
    ("x{00020C01-0000-0000-C000-000000000046}", 1), ("x{00020c01-0000-0000-c000-000000000046", 1),
    ("setup.EXE", 5), ("a.Com", 5), ("a.cpl", 5)])
def test_debian_rule_for_a_name(name: str, rule_index: int) -> None:
    found = DEBIAN_BANNED_FILENAME_RE.lookup(["multipart/mixed", name])
    assert found is not None
    assert found[1] is DEBIAN_BANNED_FILENAME_RE.rules[rule_index]


@pytest.mark.parametrize("keys", [["report.pdf"], [".exe"], ["exe"], ["a.dll"], [".exe-msx"],
                                  ["application/x-msdownloads"], [".EXE-MS"]])
def test_debian_list_lets_these_pass(keys: list[str]) -> None:
    assert DEBIAN_BANNED_FILENAME_RE.lookup(keys) is None


# ---------------------------------------------------------------- details
def test_allow_rule_first_lets_archive_contents_pass() -> None:
    hits, _ = run_ours("allow-archives-first")
    verdicts = per_recipient(hits)
    # inside the zip only the strict recipient is banned; run.exe is banned for all
    assert verdicts["strict@example.com"].banned_parts == [
        "multipart/mixed | application/octet-stream,.exe,.exe-ms,run.exe",
        "multipart/mixed | application/zip,.zip,a.zip | .exe,.exe-ms,setup.exe"]
    for addr in ("allow@example.com", "list@example.com"):
        assert verdicts[addr].banned_parts == [
            "multipart/mixed | application/octet-stream,.exe,.exe-ms,run.exe"]


def test_namepath_only_answers_where_tables_did_not() -> None:
    hits, _ = run_ours("namepath")
    verdicts = per_recipient(hits)
    assert sorted(verdicts) == ["default@example.com", "mime@example.com", "none@example.com"]
    assert verdicts["none@example.com"].banning_reason_short == "EXE IN ZIP:.asc,invoice.exe"
    assert verdicts["none@example.com"].dsn_suppress_reason == \
        "BANNED:DISCARD suggested by rule"
    assert verdicts["default@example.com"].dsn_suppress_reason is None
    via = {hit.recipients: hit.via_namepath for hit in hits}
    assert via == {("default@example.com",): False,
                   ("none@example.com", "mime@example.com"): True}


def test_recipient_groups_are_checked_once_and_reported_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = banned.BannedTable.lookup

    def counting(self: banned.BannedTable, keys: Any) -> Any:
        calls.append(id(self))
        return real(self, keys)

    monkeypatch.setattr(banned.BannedTable, "lookup", counting)
    hits, _ = run_ours("recipient-groups")
    # two groups (DEFAULT for a and c, MIME for b) x three leaves; d has no table
    assert len(calls) == 6
    assert [(h.part, h.recipients, h.banning_rule_rhs) for h in hits] == [
        ("p002", ("a@example.com", "c@example.com"), 1),
        ("p002", ("b@example.com",), "DISCARD"),
        ("p004", ("a@example.com", "c@example.com"), 1)]
    assert hits[1].banning_reason_short == "MS download:application/x-msdownload,.dat,tool.bin"
    assert hits[1].banning_rule_comment == "MS download"


def test_unknown_rule_name_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(1, logger="amavis")
    assert resolve_tables(["NOSUCH, DEFAULT", None], BANNED_RULES, "d@example.com") == [
        DEBIAN_BANNED_FILENAME_RE]
    assert [(amavis_level(r.levelno), r.getMessage()) for r in caplog.records] == [
        (2, "INFO: unknown banned table name NOSUCH, recip=d@example.com")]


def test_rhs_captures_and_undefined_rhs() -> None:
    (hit,) = run_ours("rhs-captures-and-undef")[0]
    # the undef rule answers nothing, so the next table decides; $(9) is empty
    assert hit.banning_rule_rhs == "DISCARD-cs"


def test_reason_short_compacts_six_or_more_blanks() -> None:
    assert banned.reason_short("a     b", "k") == "a     b"
    assert banned.reason_short("a \t    b", "(?^:(?#c1)x(?# c 2 ))") == "c1 c 2:a ... b"


def test_undecipherable_key_and_attribute_order() -> None:
    tree = tree_of(SCENARIOS["undecipherable"]["tree"])
    leaf = [p for p in tree.leaves()][-1]
    keys = LeafKeys.of(leaf)
    assert keys.flat[-2:] == ["payload.bin", "UNDECIPHERABLE"]
    assert keys.as_attr.endswith("P=p004,L=1/2/1,N=payload.bin,A=U,A=C")
    assert keys.namepath.split("\n")[-1] == "P=p004\tL=1/2/1\tN=payload.bin\tA=U\tA=C"
    (hit,) = run_ours("undecipherable")[0]
    assert hit.banning_reason_short == "payload.bin,UNDECIPHERABLE"


def test_python_tables_plain_lists_and_strings() -> None:
    tree = tree_of(mixed(part(2, "1/2", ["application/zip"], ["zip"], ["a.zip"], children=[
        part(4, "1/2/1", [], ["exe"], ["a.exe"])])))
    allow_first = [(re.compile(r"^\.(zip|rar)$"), 0), *DEBIAN_BANNED_FILENAME_RE.rules]
    strings = [r"\.exe$", (r"^text/", 0)]
    hits = run(tree, {"x@example.com": [allow_first], "y@example.com": [strings]})
    assert [(h.recipients, h.banning_rule_key) for h in hits] == [
        (("y@example.com",), r"\.exe$")]


def test_tabs_and_newlines_in_names_become_spaces() -> None:
    tree = tree_of(mixed(part(2, "1/2", ["text/plain"], ["asc"], ["a\tb\nc.exe"])))
    (hit,) = run(tree, {"x@example.com": ["DEFAULT"]})
    assert hit.banned_part == "multipart/mixed | text/plain,.asc,a b c.exe"


def test_no_tables_and_no_recipients_skip_the_walk(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(1, logger="amavis")
    tree = tree_of(SCENARIOS["golden-clam-zip"]["tree"])
    assert run(tree, {"x@example.com": []}) == []
    assert run(tree, {}) == []
    assert run(tree, {"x@example.com": None}, [r"."]) == []
    messages = [r.getMessage() for r in caplog.records]
    assert "skipping banned check: no applicable lookup tables" in messages
    assert "skipping banned check: all recipients bypass banned checks" in messages
    assert not any(m.startswith("p.path") for m in messages)


def test_banned_table_refuses_other_things() -> None:
    with pytest.raises(TypeError):
        banned_table({"a": 1})
    with pytest.raises(TypeError):
        banned_table([42])


def test_module_name() -> None:
    assert banned.NAME == "banned"


def _record() -> None:
    """Ask the Perl oracle about every scenario and store the answers."""
    answers = {name: perl(name) for name in sorted(SCENARIOS)}
    EXPECTED.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(answers)} scenarios into {EXPECTED}")


if __name__ == "__main__" and "--record" in sys.argv:
    _record()
