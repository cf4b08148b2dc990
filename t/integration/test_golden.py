# tests: amavisd (daemon process) against the Perl amavisd's golden outputs, profile pass
"""Replay the golden cases of the Perl amavisd (t/data/golden/pass) against our daemon.

Same client dialogue, same input: the transcript, the header field added, the
delivered message and the main log line must match, up to the values that change on
every run (mail_id, pid, date, elapsed ms, the sink's queue id and port).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from t.integration.conftest import Client, wait_for

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden" / "pass"


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    for line in text.split("\n"):
        if line.startswith("## ") or line.startswith("### "):
            name = line.lstrip("# ").split(" (")[0].split(":")[-1].strip()
            out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return out


def mask(text: str) -> str:
    text = re.sub(r"\(\d{5}-\d\d(-\d+)?\)", "(PID-NN)", text)
    text = re.sub(r"mail_id: [A-Za-z0-9_-]{12}", "mail_id: MAILID", text)
    text = re.sub(r" id [A-Za-z0-9_-]{12}( for|;)", r" id MAILID\1", text)
    text = re.sub(r"queued_as: [^,]+(, \d+ ms)", r"queued_as: QID\1", text)
    text = re.sub(r", \d+ ms$", ", N ms", text, flags=re.M)
    text = re.sub(r"port \d+\)", "port PORT)", text)
    text = re.sub(r"\w{3}, \d+ \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)", "DATE", text)
    return re.sub(r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ \S+\[\d+\]: ", "", text, flags=re.M)


@pytest.mark.parametrize("case", ["clean", "clean-xforward"])
def test_golden_case(case, amavisd, sink):
    golden = sections((GOLDEN / f"{case}.txt").read_text())
    data = golden["INPUT MESSAGE"].rstrip("\n").encode().replace(b"\n", b"\r\n") + b"\r\n"
    daemon = amavisd()
    client = Client(daemon.port)
    got_lines = [f"S: {x}" for x in client.reply()]
    for line in golden["SMTP TRANSCRIPT"].splitlines():
        if not line.startswith("C: "):
            continue
        command = line[3:]
        if command.startswith("<") and command.endswith("bytes of message data>"):
            stuffed = data.replace(b"\r\n.", b"\r\n..")
            client.send(stuffed)
            continue
        if command == ".":
            client.send(b".\r\n")
        else:
            client.send(command.encode() + b"\r\n")
        got_lines.append(line)
        got_lines += [f"S: {x}" for x in client.reply()]
    want = [x for x in golden["SMTP TRANSCRIPT"].splitlines()
            if x and not x.endswith("bytes of message data>")]
    sink_reply = f"from MTA(smtp:[127.0.0.1]:{sink.port}): {sink.messages[0].queue_id and ''}"
    final = next(x for x in got_lines if x.startswith("S: 250 2.0.0 from MTA("))
    assert final.startswith(f"S: 250 2.0.0 {sink_reply}")
    want = [("S: FINAL" if x.startswith("S: 250 2.0.0 from MTA(") else x) for x in want]
    got = [("S: FINAL" if x.startswith("S: 250 2.0.0 from MTA(") else x) for x in got_lines]
    assert got == want

    delivered = sink.messages[0].data
    head, body = delivered.split(b"\r\n\r\n", 1)
    added = golden["header fields added/changed by the filter"].strip("\n")
    want_head = golden["delivered header section"].strip("\n")
    assert mask(head.decode().replace("\r\n", "\n")) == mask(want_head)
    assert mask(head.decode().replace("\r\n", "\n")).startswith(mask(added))
    assert body.decode().replace("\r\n", "\n") == golden["delivered body"].rstrip("\n") + "\n"

    want_log = [mask(x) for x in golden["LOG LINES"].splitlines() if "Passed" in x]
    log = wait_for(lambda: "Passed" in daemon.logfile_text() and daemon.logfile_text())
    got_log = [mask(x) for x in log.splitlines() if "Passed" in x]
    assert got_log == want_log
