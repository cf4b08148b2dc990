# tests: amavisd (daemon process) against the Perl amavisd's golden outputs, profile pass
"""Replay the golden cases of the Perl amavisd (t/data/golden/pass) against our daemon.

Our daemon runs a config equivalent to the anchor's profile `pass` (Debian's
defaults: banned-name list, D_DISCARD for banned and virus, quarantine with one
subfolder level, no virus or spam scanning).  Same client dialogue, same input:
the transcript, the final reply, the main log line, the quarantine file and, for
passed mail, the header fields added and the delivered message must match, up to
the values that change on every run (mail_id, pid, date, elapsed ms, the sink's
queue id).  The admin notifications the Perl daemon also sent are compared by the
templates issue.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from t.integration.conftest import Client, wait_for

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "pass"
CASES = ["clean", "clean-xforward", "eicar", "clam-zip", "banned-exe-in-zip", "gtube",
         "bad-header-8bit", "utf8-subject"]
PROFILE_PASS = """
from amavisd.checks.banned import DEBIAN_BANNED_FILENAME_RE as _DEBIAN_BANNED
banned_filename_re = _DEBIAN_BANNED
final_virus_destiny = D_DISCARD
final_banned_destiny = D_DISCARD
final_spam_destiny = D_PASS
final_bad_header_destiny = D_PASS
QUARANTINEDIR = MYHOME + '/virusmails'
quarantine_subdir_levels = 1
X_HEADER_LINE = 'Debian amavis at anchor.test'
"""


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    for line in text.split("\n"):
        if line.startswith("## ") or line.startswith("### "):
            name = line.lstrip("# ").split(" (")[0].split(":")[-1].strip()
            out.setdefault(name, "")
        elif name is not None:
            out[name] += line + "\n"
    return out


def mask(text: str) -> str:
    text = re.sub(r"\(\d{5}-\d\d(-\d+)?\)", "(PID-NN)", text)
    text = re.sub(r"id=\d{5}-\d\d(-\d+)?", "id=PID-NN", text)
    text = re.sub(r"mail_id: [A-Za-z0-9_-]{12}", "mail_id: MAILID", text)
    text = re.sub(r"quarantine: \w/(\w+)-[A-Za-z0-9_-]{12}", r"quarantine: X/\1-MAILID", text)
    text = re.sub(r"X-Quarantine-ID: <[A-Za-z0-9_-]{12}>", "X-Quarantine-ID: <MAILID>", text)
    text = re.sub(r" id [A-Za-z0-9_-]{12}( for|;)", r" id MAILID\1", text)
    text = re.sub(r"queued_as: [^,]+(, \d+ ms)", r"queued_as: QID\1", text)
    text = re.sub(r", \d+ ms$", ", N ms", text, flags=re.M)
    text = re.sub(r"port \d+\)", "port PORT)", text)
    text = re.sub(r"\w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)", "DATE", text)
    return re.sub(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ \S+\[\d+\]: ", "", text, flags=re.M)


def replay(client: Client, golden: dict[str, str], data: bytes) -> list[str]:
    got = [f"S: {x}" for x in client.reply()]
    for line in golden["SMTP TRANSCRIPT"].splitlines():
        if not line.startswith("C: "):
            continue
        command = line[3:]
        if command.startswith("<") and command.endswith("bytes of message data>"):
            client.send(data.replace(b"\r\n.", b"\r\n.."))
            continue
        client.send(b".\r\n" if command == "." else command.encode() + b"\r\n")
        got.append(line)
        got += [f"S: {x}" for x in client.reply()]
    return got


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case, amavisd, sink, tmp_path):
    golden = sections((GOLDEN / f"{case}.txt").read_text(errors="surrogateescape"))
    data = golden["INPUT MESSAGE"].rstrip("\n").encode(errors="surrogateescape") \
        .replace(b"\n", b"\r\n") + b"\r\n"
    daemon = amavisd(PROFILE_PASS)
    got = replay(Client(daemon.port), golden, data)
    want = [x for x in golden["SMTP TRANSCRIPT"].splitlines()
            if x and not x.endswith("bytes of message data>")]
    final = "S: " + golden["FINAL SMTP REPLY"].strip()
    passed = final.startswith("S: 250 2.0.0 from MTA(")

    def norm(line: str) -> str:
        if passed and line.startswith("S: 250 2.0.0 from MTA("):
            return "S: FINAL-FROM-MTA"
        return mask(line)

    assert [norm(x) for x in got] == [norm(x) for x in want]

    want_log = [mask(x) for x in golden["LOG LINES"].splitlines()
                if " Passed " in x or " Blocked " in x]
    log = wait_for(lambda: ((" Passed " in (t := daemon.logfile_text()))
                            or " Blocked " in t) and t, what="the main log line")
    got_log = [mask(x) for x in log.splitlines() if " Passed " in x or " Blocked " in x]
    assert got_log == want_log

    to_bob = [m for m in sink.messages if b"bob@anchor.test" in b" ".join(m.rcpts)]
    if not passed:
        assert to_bob == []
    else:
        assert len(to_bob) == 1
        head, body = to_bob[0].data.split(b"\r\n\r\n", 1)
        want_head = golden["delivered header section"].strip("\n")
        got_head = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n")
        assert mask(got_head) == mask(want_head)
        assert body.decode("utf-8", "surrogateescape").replace("\r\n", "\n") == \
            golden["delivered body"].rstrip("\n") + "\n"
    quarantine = re.search(r"quarantine: (\w)/(\S+?),", golden["LOG LINES"])
    if quarantine:
        match = re.search(r"quarantine: (\w/\S+?),", log)
        assert match, log
        assert (tmp_path / "home" / "virusmails" / match.group(1)).is_file()
