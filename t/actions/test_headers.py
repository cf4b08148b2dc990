# tests: amavisd/actions/headers.py
"""Header edits on forwarded mail (spec pipeline.md section 20), byte for byte.

Expected fields come from the Perl amavisd's goldens in t/data/golden/{pass,full}
(same mail_id, date and port as the golden run, so no masking is needed) and, for
the RFC 2047 cases, from Amavis::Out::EditHeader::hdr run on the same input.
"""

from __future__ import annotations

import builtins
import calendar
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor

from amavisd.actions.forward import forward
from amavisd.actions.headers import (
    AMAVIS_ALLOWED_ADDED_HEADER_FIELDS,
    HeaderEdit,
    hdr,
    hops_refusal,
    parse_authservid,
    plan_edits,
    render_header,
    split_header,
)
from amavisd.checks import badheader
from amavisd.checks.banned import BannedHit
from amavisd.constants import D_PASS
from amavisd.message import ClientInfo, Message, Recipient
from amavisd.pipeline import Pipeline
from amavisd.protocols.smtp_client import CHUNK_SIZE
from t.sink import Sink, in_reactor

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


@pytest.fixture(autouse=True)
def utc() -> Any:
    """The goldens were taken on a host in UTC; the Received date uses local time."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def golden(profile: str, case: str) -> dict[str, bytes]:
    """The sections of one golden file, as bytes (the 8-bit cases hold raw octets)."""
    out: dict[str, bytes] = {}
    name = None
    for line in (GOLDEN / profile / f"{case}.txt").read_bytes().split(b"\n"):
        if line.startswith((b"## ", b"### ")):
            name = line.decode().lstrip("# ").split(" (")[0].split(":")[-1].strip()
            out[name] = b""
        elif name is not None:
            out[name] += line + b"\n"
    return out


def golden_block(sections: dict[str, bytes], name: str) -> bytes:
    return sections[name].rstrip(b"\n") + b"\n"


def view(**kw: Any) -> SimpleNamespace:
    """Settings as the anchor's 'full' profile has them (Debian X_HEADER_LINE).

    ``x-virus-scanned`` is in the allowed fields as amavis puts it there when it
    reads its config (Amavis::Conf); the gate itself takes the hash literally.
    """
    base: dict[str, Any] = dict(
        myhostname="mx.anchor.test", mydomain="anchor.test", localhost_name="localhost",
        local_domains_maps=[[".anchor.test"]], bypass_virus_checks_maps=[],
        X_HEADER_LINE="Debian amavis at anchor.test",
        allowed_added_header_fields=AMAVIS_ALLOWED_ADDED_HEADER_FIELDS | {"x-virus-scanned": 1},
        forward_method="smtp:[127.0.0.1]:1", child_timeout=480)
    base.update(kw)
    return SimpleNamespace(**base)


def make_msg(tmp_path: Path, data: bytes, rcpts: list[str], mail_id: str, now: float,
             **kw: Any) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(data)
    client = ClientInfo(mta_addr="127.0.0.1", mta_helo="client.anchor.test",
                        local_addr="127.0.0.1", local_port=31024)
    msg = Message("alice@anchor.test", "alice@anchor.test", [Recipient(r, r) for r in rcpts],
                  spool, len(data), "21574-05", mail_id=mail_id, client=client, rx_time=now)
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


def rendered(msg: Message, v: SimpleNamespace, findings: dict[str, Any] | None = None
             ) -> list[bytes]:
    """The new header section of every cluster, LF line ends for easy comparison."""
    split = split_header(msg.spool_path)
    clusters = plan_edits(msg, msg.recipients, v, findings or {}, msg.rx_time, split.block)
    return [render_header(split.block, c.edit).replace(b"\r\n", b"\n") for c in clusters]


def golden_case(profile: str, case: str) -> tuple[dict[str, bytes], bytes]:
    sections = golden(profile, case)
    return sections, golden_block(sections, "INPUT MESSAGE")


def golden_time(sections: dict[str, bytes]) -> float:
    m = re.search(rb"; \w{3}, (\d+) (\w{3}) (\d{4}) (\d\d):(\d\d):(\d\d) \+0000 \(UTC\)",
                  sections["header fields added/changed by the filter"])
    assert m is not None
    mon = time.strptime(m.group(2).decode(), "%b").tm_mon
    return calendar.timegm((int(m.group(3)), mon, int(m.group(1)), int(m.group(4)),
                            int(m.group(5)), int(m.group(6))))


def golden_mail_id(sections: dict[str, bytes]) -> str:
    added = sections["header fields added/changed by the filter"]
    m = re.search(rb" id ([A-Za-z0-9_-]{12}) for", added)
    assert m is not None
    return m.group(1).decode()


# ---------------------------------------------------------------- goldens
def test_clean_gets_only_received_as_in_the_pass_golden(tmp_path: Path) -> None:
    """Profile pass bypasses virus checks: our Received is the only field added."""
    sections, data = golden_case("pass", "clean")
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], golden_mail_id(sections),
                   golden_time(sections))
    [header] = rendered(msg, view(bypass_virus_checks_maps=[1]))
    assert header == golden_block(sections, "delivered header section") + b"\n"


def test_clean_with_x_header_line_as_in_the_full_golden(tmp_path: Path) -> None:
    sections, data = golden_case("full", "clean")
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], golden_mail_id(sections),
                   golden_time(sections))
    [header] = rendered(msg, view())
    added = golden_block(sections, "header fields added/changed by the filter")
    assert header.startswith(added)
    assert header == golden_block(sections, "delivered header section") + b"\n"


def test_bad_header_8bit_alert_as_in_the_full_golden(tmp_path: Path) -> None:
    """X-Quarantine-ID, X-Virus-Scanned, X-Amavis-Alert folded at 78, Received (20.3)."""
    sections, data = golden_case("full", "bad-header-8bit")
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], golden_mail_id(sections),
                   golden_time(sections))
    msg.recipients[0].ccats = ["4,2", "4", "1"]
    faults = badheader.run(split_header(msg.spool_path).block)
    findings = {"bad_headers": faults, "quarantined_to": ["badh-x"]}
    [header] = rendered(msg, view(), findings)
    assert header.startswith(golden_block(sections, "header fields added/changed by the filter"))
    assert header == golden_block(sections, "delivered header section") + b"\n"


def test_banned_exe_in_zip_for_a_local_recipient(tmp_path: Path) -> None:
    """A banned lover's copy: the alert names amavis's %F (golden reply), the other
    fields are written exactly as the full golden writes them for its passed mail."""
    sections, data = golden_case("full", "banned-exe-in-zip")
    reason = re.search(rb"BANNED: (.*)", sections["FINAL SMTP REPLY"]).group(1).decode()
    model, _ = golden_case("full", "bad-header-8bit")
    model_added = golden_block(model, "header fields added/changed by the filter")
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], golden_mail_id(model),
                   golden_time(model))
    msg.recipients[0].ccats = ["8", "1"]
    hit = BannedHit("p004", "x", "x", "rule", "rule", 1, reason, ("bob@anchor.test",))
    [header] = rendered(msg, view(), {"banned": [hit], "quarantined_to": ["banned-x"]})
    alert = model_added.split(b"X-Amavis-Alert:")[0] + (
        f"X-Amavis-Alert: BANNED, message contains {reason}\n".encode())
    received = b"Received:" + model_added.split(b"\nReceived:", 1)[1]
    assert reason == ".asc,invoice-2026-11.exe"
    assert header == alert + received + data.split(b"\n\n", 1)[0] + b"\n\n"


# ---------------------------------------------------------------- subject tags
def _tagged_subject(tmp_path: Path, subject: bytes | None, ccats: list[str],
                    rcpt: str = "bob@anchor.test") -> bytes:
    head = b"From: a@anchor.test\n" + (b"Subject:" + subject + b"\n" if subject is not None
                                       else b"")
    msg = make_msg(tmp_path, head + b"\nbody\n", [rcpt], "MAILID123456", 0.0)
    msg.recipients[0].ccats = ccats
    [header] = rendered(msg, view(allowed_added_header_fields={"x-virus-scanned": 1}))
    return header


def test_unchecked_subject_tag_replaces_existing_occurrences(tmp_path: Path) -> None:
    got = _tagged_subject(tmp_path, b" Hello ***UNCHECKED*** there", ["7", "1"])
    assert got == (b"X-Virus-Scanned: Debian amavis at anchor.test\n"
                   b"From: a@anchor.test\nSubject: ***UNCHECKED*** Hello there\n\n")


def test_subject_tag_on_rfc2047_subject_is_reencoded(tmp_path: Path) -> None:
    """Decoded, tagged, Q-encoded again in UTF-8 (20.2, 20.8); as Amavis's hdr() does."""
    got = _tagged_subject(tmp_path, b" =?iso-8859-1?q?Gr=FC=DFe?=\n =?iso-8859-1?q?_aus_M=FC"
                          b"nchen?= und ein sehr langer Rest der Betreffzeile, damit gefaltet "
                          b"wird", ["9", "1"])
    assert got.split(b"Subject:", 1)[1] == (
        b" ***INFECTED*** =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?= und ein\n"
        b" sehr langer Rest der Betreffzeile, damit gefaltet wird\n\n")


def test_subject_tag_on_utf8_encoded_word(tmp_path: Path) -> None:
    got = _tagged_subject(tmp_path, b" =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=",
                          ["7", "1"])
    assert got.endswith(b"Subject: ***UNCHECKED*** =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?="
                        b"\n\n")


def test_subject_inserted_when_missing(tmp_path: Path) -> None:
    """No Subject: one is added, tag trimmed, among our fields (20.8)."""
    got = _tagged_subject(tmp_path, None, ["7", "1"])
    assert got == (b"X-Virus-Scanned: Debian amavis at anchor.test\nSubject: ***UNCHECKED***\n"
                   b"From: a@anchor.test\n\n")


def test_no_subject_tag_for_a_nonlocal_recipient(tmp_path: Path) -> None:
    got = _tagged_subject(tmp_path, b" hi", ["9", "1"], rcpt="bob@elsewhere.test")
    assert b"Subject: hi\n" in got and b"INFECTED***" not in got.split(b"X-Amavis-Alert")[0]


# ---------------------------------------------------------------- clustering
def test_two_recipients_with_different_bypass_virus_checks_make_two_clusters(
        tmp_path: Path) -> None:
    data = b"Subject: s\n\nbody\n"
    msg = make_msg(tmp_path, data, ["bob@anchor.test", "carol@anchor.test", "dan@anchor.test"],
                   "MAILID123456", calendar.timegm((2026, 11, 30, 3, 2, 50)))
    v = view(bypass_virus_checks_maps=[{"carol@anchor.test": 1}])
    split = split_header(msg.spool_path)
    clusters = plan_edits(msg, msg.recipients, v, {}, msg.rx_time, split.block)
    assert [[r.address for r in c.recipients] for c in clusters] == [
        ["bob@anchor.test", "dan@anchor.test"], ["carol@anchor.test"]]
    received = (b"Received: from client.anchor.test ([127.0.0.1])\n"
                b" by localhost (mx.anchor.test [127.0.0.1]) (amavis, port 31024) with ESMTP\n"
                b" id MAILID123456; Mon, 30 Nov 2026 03:02:50 +0000 (UTC)\n")
    first, second = (render_header(split.block, c.edit) for c in clusters)
    assert first == (b"X-Virus-Scanned: Debian amavis at anchor.test\n" + received
                     + data.split(b"\n\n")[0] + b"\n\n").replace(b"\n", b"\r\n")
    assert second == (received + b"Subject: s\n\n").replace(b"\n", b"\r\n")


def test_existing_hold_fields_removed_and_ours_added(tmp_path: Path) -> None:
    data = b"X-Amavis-Hold: forged\nX-Virus-Scanned: other\nSubject: s\n\nbody\n"
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], "MAILID123456", 0.0)
    [header] = rendered(msg, view(allowed_added_header_fields={"x-amavis-hold": 1},
                                  bypass_virus_checks_maps=[1]),
                        {"hold": "Maximum decoding depth (14) exceeded"})
    assert header == (b"X-Amavis-Hold: Maximum decoding depth (14) exceeded\n"
                      b"X-Virus-Scanned: other\nSubject: s\n\n")


def test_remove_existing_x_scanned_only_with_av_code(tmp_path: Path) -> None:
    data = b"X-Virus-Scanned: other\nSubject: s\n\nbody\n"
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], "MAILID123456", 0.0)
    v = view(allowed_added_header_fields={"x-virus-scanned": 1},
             remove_existing_x_scanned_headers=1)
    assert rendered(msg, v)[0].count(b"X-Virus-Scanned") == 2
    v.av_scanners = [["ClamAV-clamd"]]
    assert rendered(msg, v)[0] == (b"X-Virus-Scanned: Debian amavis at anchor.test\n"
                                   b"Subject: s\n\n")


def test_authentication_results_with_our_authservid_removed() -> None:
    """20.1: ours or unparseable goes, others stay."""
    assert parse_authservid(" (comment) mx.anchor.test; dkim=pass") == "mx.anchor.test"
    assert parse_authservid(' "quoted\\"id"; x') == 'quoted"id'
    assert parse_authservid(" ;broken") is None


# ---------------------------------------------------------------- sanitation and limits
def test_more_than_100_received_fields_is_refused() -> None:
    block = b"Received: from a by b; now\n" * 100
    assert hops_refusal(block, "1-01") is None
    assert str(hops_refusal(block + b"received: x\n", "1-01")) == (
        "554 5.4.6 Reject: Too many hops: 101 'Received:' header fields, id=1-01")


def test_too_many_hops_in_the_pipeline_sends_nothing(tmp_path: Path) -> None:
    data = b"Received: from a by b; now\n" * 101 + b"\nbody\n"
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], "MAILID123456", 0.0)
    msg.recipients[0].destiny = D_PASS
    Pipeline(None, None, None)._forward(msg, view(forward_method="smtp:[127.0.0.1]:9"))
    r = msg.recipients[0]
    assert (str(r.reply), r.done) == (
        "554 5.4.6 Reject: Too many hops: 101 'Received:' header fields, id=21574-05", 2)


def test_long_lines_cut_whitespace_lines_unfolded_bare_cr_removed(tmp_path: Path) -> None:
    data = (b"X-Long: " + b"a" * 1100 + b"\nX-Fits: " + b"b" * 990 + b"\n"
            b"X-Fold: one\n   \n two\nX-CR: a\rb\n\nbody\n")
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], "MAILID123456", 0.0)
    [header] = rendered(msg, view(allowed_added_header_fields={}))
    lines = header.split(b"\n")
    assert lines[0] == b"X-Long: " + b"a" * 987 + b"..." and len(lines[0]) == 998
    assert lines[1] == b"X-Fits: " + b"b" * 990 and len(lines[1]) == 998
    assert lines[2:] == [b"X-Fold: one   ", b" two", b"X-CR: ab", b"", b""]


def test_sanitation_off_keeps_the_original() -> None:
    block = b"X-Long: " + b"a" * 1100 + b"\nX-Fold: one\n   \n two\n"
    edit = HeaderEdit(fix_bare_cr=False, fix_folding=False, fix_long_lines=False)
    assert render_header(block, edit) == (block + b"\n").replace(b"\n", b"\r\n")


def test_added_field_over_998_is_cut() -> None:
    """Wrapped first (the name stays alone), then the long line is cut (as Amavis's hdr())."""
    assert hdr("X-A", "x" * 1200) == b"X-A:\n " + b"x" * 994 + b"...\n"


def test_gate_takes_the_configured_hash_literally() -> None:
    """Without the key the field is not added; without any setting amavis's defaults
    apply, X_HEADER_TAG included (pipeline.md 20)."""
    from amavisd.actions.headers import HeaderSettings
    assert not HeaderSettings.from_view(view(allowed_added_header_fields={"received": 1})
                                        ).allowed("X-Virus-Scanned")
    bare = HeaderSettings.from_view(SimpleNamespace(myhostname="mx.anchor.test"))
    assert bare.allowed("X-Virus-Scanned") and bare.allowed("received")
    assert not bare.allowed("X-Spam-Report")
    assert bare.x_header_line == "amavis at mx.anchor.test"


def test_split_header_separator_eof_and_missing_separator(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"A: 1\n\nbody\n")
    assert split_header(path) == type(split_header(path))(b"A: 1\n", 6, True)
    path.write_bytes(b"A: 1\nB: 2\n")
    assert split_header(path).body_offset == 10
    path.write_bytes(b"\nbody\n")
    assert (split_header(path).block, split_header(path).body_offset) == (b"", 1)
    path.write_bytes(b"A: 1\n--boundary\nx\n\ny\n")
    assert (split_header(path).block, split_header(path).body_offset) == (b"A: 1\n", 5)


# ---------------------------------------------------------------- end to end
class _CountingFile:
    """Wraps the spool file: remembers every read size (-1 = the whole rest)."""

    def __init__(self, fh: Any, sizes: list[int]):
        self._fh, self._sizes = fh, sizes

    def read(self, n: int = -1) -> bytes:
        self._sizes.append(n)
        return self._fh.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def test_forward_rewritten_header_body_byte_identical_and_streamed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"".join(b"line %07d\n.dot line\n" % i for i in range(150_000))   # ~3 MB
    data = b"Received: from x by y; now\nSubject: Hello\n\n" + body
    msg = make_msg(tmp_path, data, ["bob@anchor.test"], "MAILID123456", 0.0)
    msg.recipients[0].ccats = ["7", "1"]
    sizes: list[int] = []
    real_open = builtins.open

    def counting_open(file: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        fh = real_open(file, mode, *a, **kw)
        return _CountingFile(fh, sizes) if str(file) == str(msg.spool_path) else fh

    monkeypatch.setattr(builtins, "open", counting_open)
    split = split_header(msg.spool_path)
    [cluster] = plan_edits(msg, msg.recipients, view(), {}, 0.0, split.block)
    header = render_header(split.block, cluster.edit)
    assert b"Subject: ***UNCHECKED*** Hello\r\n\r\n" in header
    with Sink() as sink:
        in_reactor(forward, msg, msg.recipients, f"smtp:[127.0.0.1]:{sink.port}", header,
                   split.body_offset, view(), reactor, False, time.time() + 300)
        assert msg.recipients[0].reply.code == 250
        got = sink.messages[0].data
    assert got == header + body.replace(b"\n", b"\r\n")
    assert split.body_offset == data.index(b"\n\n") + 2
    assert sizes and all(0 < n <= CHUNK_SIZE for n in sizes), sizes[:5]
