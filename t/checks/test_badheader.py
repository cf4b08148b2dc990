# tests: amavisd/checks/badheader.py
"""The bad-header check against amavisd-new itself (spec/pipeline.md section 8).

Each crafted header block is run through our check and compared with two answers:
the installed Perl ``check_header_validity`` (``t/data/badheader/oracle.pl``, when
``/usr/share/perl5/Amavis.pm`` is there; CI installs amavisd-new) and the same
oracle's answers recorded in ``t/data/badheader/expected.json``.  Re-record with
``python -m t.checks.test_badheader --record`` after adding a case.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amavisd.checks import badheader
from amavisd.checks.badheader import (
    ALLOWED_HEADER_TESTS,
    HeaderFault,
    badh_minors,
    format_mime_error,
    run,
    split_fields,
    truncate_utf8,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "badheader"
ORACLE = DATA / "oracle.pl"
EXPECTED = DATA / "expected.json"
AMAVIS_PM = Path("/usr/share/perl5/Amavis.pm")

BASE = b"From: a@example.com\nDate: Mon, 30 Nov 2026 03:01:54 +0000\n"
UTF8_SUBJECT = "Subject: Grüße aus München – Angebot\n".encode()
#: name -> (header block, options): options override %allowed_header_tests, plus
#: "smtputf8" and "__empty__" (an empty %allowed_header_tests).
CASES: dict[str, tuple[bytes, dict[str, bool]]] = {
    "clean": (BASE + b"Subject: hi\n", {}),
    "missing-date": (b"From: a@example.com\nSubject: hi\n", {}),
    "missing-both": (b"Subject: hi\n", {}),
    "empty-block": (b"", {}),
    "dup-subject": (BASE + b"Subject: a\nSubject: b\n", {}),
    "triple-to": (BASE + b"To: a\nTO: b\nto: c\nCc: x\ncc: y\n", {}),
    "latin1-subject": ((DATA / "bad-header-8bit.hdr").read_bytes(), {}),
    "utf8-subject": ((DATA / "utf8-subject.hdr").read_bytes(), {}),
    "utf8-subject-test-on": (BASE + UTF8_SUBJECT, {"utf8": True}),
    "utf8-subject-smtputf8": (BASE + UTF8_SUBJECT, {"utf8": True, "smtputf8": True}),
    "utf8-long-prefix": (BASE + b"Subject: " + b"x" * 80
                         + " – and a long tail after it ok\n".encode(), {"utf8": True}),
    "nul": (BASE + b"Subject: a\x00b\n", {}),
    "cr": (BASE + b"Subject: abc\r\n", {}),
    "crlf-all": (b"From: a\r\nDate: b\r\n", {}),
    "cr-nonascii": (BASE + b"Subject: \xfc abc\rdef\n", {}),
    "nul-far": (BASE + b"X-Long: " + b"0123456789" * 9
                + b"\x00tail-of-the-field-is-long-too\n", {}),
    "line-1200": (BASE + b"X-Long: " + b"a" * 1200 + b"\n", {}),
    "line-999": (BASE + b"X-Long: " + b"b" * 991 + b"\n", {}),
    "line-998": (BASE + b"X-Long: " + b"c" * 990 + b"\n", {}),
    "folded-long": (BASE + b"X-Long: a\n\t" + b"d" * 1100 + b"\n", {}),
    "ws-only-fold": (BASE + b"Subject: a\n \nX: y\n", {}),
    "ws-only-fold-tab": (BASE + b"Subject: a\n\t \t\n rest of it\n", {}),
    "ws-only-4": (BASE + b"Subject: a\n    \n", {}),
    "ws-only-5": (BASE + b"Subject: a\n     \n", {}),
    "utf8-4-byte-char": (BASE + "Subject: emoji \U0001F600 here\n".encode(), {"utf8": True}),
    "ws-only-long": (BASE + b"Subject: a\n" + b" " * 30 + b"\n", {}),
    "ws-only-last-no-nl": (BASE + b"Subject: a\n   ", {}),
    "no-colon": (BASE + b"This is not a header\n", {}),
    "dashes": (BASE + b"--boundary: x\n", {}),
    "bad-name-char": (BASE + b"Sub ject: x\n", {}),
    "obsolete-space-colon": (BASE + b"Subject : x\nSubject\t: y\n", {}),
    "nonascii-name": (BASE + b"X-T\xe9st: value\n", {}),
    "nonascii-name-long": (BASE + "X-Tést: a value that is long enough to be shortened "
                           "by the rule here\n".encode(), {}),
    "c0-in-utf8": (BASE + "Subject: café \x01 bar\n".encode(), {}),
    "c0-first-utf8": (BASE + "Subject: \x01café\n".encode(), {}),
    "c1-in-utf8": (BASE + "Subject: café \x85 bar\n".encode(), {}),
    "c1-overlong": (BASE + b"Subject: x \xe0\x82\x85 y\n", {}),
    "backslash-x": (BASE + b"Subject: \\x{41} \xfc\n", {}),
    "backslash-x-ascii": (BASE + b"Subject: \\x{41} \x00\n", {}),
    "tab-newline-escape": (BASE + b"Subject: a\tb\xfc\n c\n", {}),
    "long-post": (BASE + b"Subject: \xfc" + b"\xe4" * 30 + b"\n", {}),
    "long-post-utf8": (BASE + b"Subject: \x00" + "äöü".encode() * 10 + b"\n", {}),
    "many": (b"".join(b"X-%d: a\x00\n" % i for i in range(120))
             + b"Subject: a\nSubject: b\n", {}),
    "tests-off": (b"Subject: a\x00\nSubject: b\n", {"control": False, "multiple": False}),
    "syntax-off": (BASE + b"no colon here\nX-T\xe9st: v\n", {"syntax": False}),
    "all-off": (b"Subject: \xfc\n", {"syntax": False, "empty": False, "long": False,
                                     "control": False, "8bit": False, "missing": False,
                                     "multiple": False}),
    "empty-tests-hash": (b"Subject: \xfc\n", {"__empty__": True}),
    "long-before-control": (BASE + b"X: \x00" + b"e" * 1000 + b"\n", {}),
    "empty-before-long": (BASE + b"X: " + b"f" * 1000 + b"\n \n", {}),
    "invalid-utf8-late": (BASE + "Subject: café and ".encode() + b"\xff\n", {}),
    "surrogate": (BASE + b"Subject: \xed\xa0\x80\n", {}),
    "separator-ends-header": (BASE + b"Subject: a\n\nSubject: body line\n", {}),
}


def _options(name: str) -> tuple[bytes, bool, dict[str, bool]]:
    block, opts = CASES[name]
    opts = dict(opts)
    smtputf8 = opts.pop("smtputf8", False)
    if opts.pop("__empty__", False):
        return block, smtputf8, {}
    tests = dict(ALLOWED_HEADER_TESTS)
    tests.update(opts)
    return block, smtputf8, tests


def _ours(name: str) -> dict[str, object]:
    block, smtputf8, tests = _options(name)
    faults = run(block, smtputf8=smtputf8, allowed_tests=tests)
    return {"minor": max((f.minor for f in faults), default=0),
            "bad": [f.text for f in faults]}


def _perl(name: str) -> dict[str, object]:
    block, smtputf8, tests = _options(name)
    argv = [shutil.which("perl") or "perl", str(ORACLE), "1" if smtputf8 else "0",
            json.dumps({key: int(value) for key, value in tests.items()})]
    done = subprocess.run(argv, input=block, capture_output=True, check=True, timeout=60)
    answer = json.loads(done.stdout)
    return {"minor": int(answer["minor"]), "bad": list(answer["bad"])}


needs_perl = pytest.mark.skipif(
    not AMAVIS_PM.exists() or shutil.which("perl") is None,
    reason="amavisd-new is not installed (/usr/share/perl5/Amavis.pm missing): "
           "the live Perl oracle cannot run; expected.json still checks every case")


@needs_perl
@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_perl_oracle(name: str) -> None:
    assert _ours(name) == _perl(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_agrees_with_recorded_answers(name: str) -> None:
    expected = json.loads(EXPECTED.read_text())
    assert _ours(name) == expected[name]


def test_recorded_answers_cover_every_case() -> None:
    assert sorted(json.loads(EXPECTED.read_text())) == sorted(CASES)


# ---------------------------------------------------------------- golden cases
def test_golden_bad_header_8bit_alert_and_category() -> None:
    golden = json.loads((DATA / "golden-alerts.json").read_text())["bad-header-8bit"]
    faults = run((DATA / "bad-header-8bit.hdr").read_bytes())
    assert "BAD HEADER SECTION, " + faults[0].text == golden["x_amavis_alert"]
    assert len(faults) == 1
    assert f"BAD-HEADER-{badh_minors(faults)[0]}" == golden["log_category"]


def test_golden_utf8_subject_is_clean_by_default() -> None:
    golden = json.loads((DATA / "golden-alerts.json").read_text())["utf8-subject"]
    assert golden["x_amavis_alert"] is None
    block = (DATA / "utf8-subject.hdr").read_bytes()
    assert run(block) == []
    # the same block is flagged once the utf8 test is on, and not under SMTPUTF8
    tests = {**ALLOWED_HEADER_TESTS, "utf8": True}
    assert [f.test for f in run(block, allowed_tests=tests)] == ["utf8"]
    assert run(block, allowed_tests=tests, smtputf8=True) == []


# ---------------------------------------------------------------- details
def test_findings_carry_test_key_and_minor() -> None:
    block = (b"Date: x\nFrom: y\nX: a\x00\nSubject: \xfc\nBad line\n"
             b"X-Long: " + b"z" * 1000 + b"\nS: a\n \nTo: a\nTo: b\n")
    faults = run(block)
    assert [(f.test, f.minor) for f in faults] == [
        ("control", 3), ("8bit", 2), ("syntax", 6), ("long", 5), ("empty", 4),
        ("multiple", 8)]
    assert badh_minors(faults) == [8]


def test_mime_error_is_last_and_adds_its_own_minor() -> None:
    faults = run(BASE, mime_errors=["Bad boundary\n  in part 2  ", "second\tone"])
    # as Perl's substitutions give it: the space before "; " survives
    assert faults == [HeaderFault("mime", 1, "MIME error: Bad boundary; in part 2 ; second one")]
    assert badh_minors(faults) == [1]
    both = run(b"From: a\n", mime_errors=["x"])
    assert [f.test for f in both] == ["missing", "mime"]
    assert badh_minors(both) == [7, 1]


def test_mime_error_needs_the_mime_test() -> None:
    tests = {**ALLOWED_HEADER_TESTS, "mime": False}
    assert run(BASE, allowed_tests=tests, mime_errors=["broken"]) == []


def test_mime_error_is_cut_at_250_characters() -> None:
    text = format_mime_error(["e" * 300])
    assert text == "e" * 250 + "[...]"
    assert format_mime_error([]) is None


def test_split_fields_folds_on_sp_and_tab_and_stops_at_separator() -> None:
    block = b"A: 1\n 2\nB: 3\r\n\t4\n\nC: body\n"
    assert split_fields(block) == [b"A: 1\n 2\n", b"B: 3\r\n\t4\n"]
    assert split_fields(b" lead\nA: 1") == [b" lead\n", b"A: 1"]


def test_truncate_utf8_drops_a_partial_character() -> None:
    assert truncate_utf8("aé".encode() * 10, 15) == "aéaéaéaéaé".encode()
    assert truncate_utf8(b"a" * 14 + "é".encode(), 15) == b"a" * 14
    assert truncate_utf8(b"abc", 0) == b""


def test_findings_are_logged_at_level_2(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(1, logger="amavis")
    run(b"Date: x\nFrom: y\nSubject: \xfc\n")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [(21, "check_header: 2, Non-encoded non-ASCII data (and not UTF-8) "
                          "(char FC hex): Subject: \\x{FC}")]
    caplog.clear()
    run(BASE)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (15, "check_header: 0, OK")]


def test_module_name() -> None:
    assert badheader.NAME == "badheader"


def _record() -> None:
    """Ask the Perl oracle about every case and store the answers."""
    answers = {name: _perl(name) for name in sorted(CASES)}
    EXPECTED.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(answers)} cases into {EXPECTED}")


if __name__ == "__main__" and "--record" in sys.argv:
    logging.basicConfig()
    _record()
