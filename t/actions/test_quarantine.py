# tests: amavisd/actions/quarantine.py
"""Quarantine selection and local files (spec pipeline.md 20.4, 22.1-22.3; protocols.md 5.8)."""

from __future__ import annotations

import errno
import gzip
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from amavisd.actions import quarantine as q
from amavisd.actions.quarantine import QuarantineRequest, quarantine, select
from amavisd.constants import D_DISCARD, D_PASS
from amavisd.errors import TempFail
from amavisd.message import ClientInfo, Message, Recipient

GOLDEN = Path(__file__).parent.parent / "data" / "golden" / "full"
BODY = (b"Return-Path: <old@example.org>\n"
        b"Received: from pc.x.test\n\tby mta.x.test\n"
        b"From: Alice <alice@example.org>\nSubject: test\n\n"
        b"Hello,\nFrom the start of a line\n>From quoted\nend\n")
RX_TIME = 1796007763.0     # Mon, 30 Nov 2026 03:02:43 UTC


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    import time
    time.tzset()


def view(tmp_path: Path, **kw: Any) -> SimpleNamespace:
    qdir = tmp_path / "virusmails"
    qdir.mkdir(exist_ok=True)
    base = dict(QUARANTINEDIR=str(qdir), quarantine_subdir_levels=1,
                myhostname="mx.anchor.test", localhost_name="localhost",
                allowed_added_header_fields={"received": 1},
                notify_method="smtp:[127.0.0.1]:10025")
    base.update(kw)
    return SimpleNamespace(**base)


def make_msg(tmp_path: Path, *rcpts: str, body: bytes = BODY, mail_id: str = "kULeRChqr0W1",
             **findings: Any) -> Message:
    spool = tmp_path / "email.txt"
    spool.write_bytes(body)
    recipients = [Recipient(r, r) for r in rcpts or ("bob@anchor.test",)]
    msg = Message("alice@anchor.test", "alice@anchor.test", recipients, spool, len(body),
                  "21574-03", mail_id=mail_id, rx_time=RX_TIME,
                  client=ClientInfo(mta_addr="127.0.0.1", mta_helo="localhost",
                                    local_addr="127.0.0.1", local_port=10024))
    msg.findings.update(findings)
    return msg


def block(msg: Message, ccat: str, *which: int) -> None:
    for i, r in enumerate(msg.recipients):
        if not which or i in which:
            r.ccat_blocking, r.destiny, r.done = ccat, D_DISCARD, 1
            r.ccats = [ccat, "1"]          # type: ignore[attr-defined]
        else:
            r.destiny = D_PASS


# ------------------------------------------------------------------ selection (22.1)


def test_virus_blocked_recipient_selects_virus_quarantine(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature"])
    block(msg, "9")
    v = view(tmp_path)
    assert select(msg, lambda r: v) == [
        QuarantineRequest("local:virus-%m", ("virus-quarantine",), ("Virus",),
                          ("bob@anchor.test",))]


def test_clean_and_passed_spammy_not_quarantined_by_default(tmp_path: Path) -> None:
    """SPAMMY has no entry; the walk reaches CLEAN whose method is undef (22.1)."""
    msg = make_msg(tmp_path)
    msg.recipients[0].ccats = ["5", "1"]      # type: ignore[attr-defined]
    v = view(tmp_path)
    assert select(msg, lambda r: v) == []
    v.clean_quarantine_method = "local:clean-%m"
    assert [r.method for r in select(msg, lambda r: v)] == ["local:clean-%m"]


def test_blocked_oversized_never_quarantined(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "3")
    assert select(msg, lambda r: view(tmp_path)) == []


def test_empty_quarantine_to_disables(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "8")
    v = view(tmp_path, banned_quarantine_to_maps=[""])
    assert select(msg, lambda r: v) == []


def test_percent_a_and_bsmtp_use_the_recipient(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    block(msg, "4")
    v = view(tmp_path, bad_header_quarantine_method="bsmtp:badh-%m.bsmtp")
    (req,) = select(msg, lambda r: v)
    assert req.to == ("bob@anchor.test", "carol@anchor.test")
    v = view(tmp_path, bad_header_quarantine_to_maps=["%a"])
    assert select(msg, lambda r: v)[0].to == ("bob@anchor.test", "carol@anchor.test")


def test_duplicates_collapse_and_local_with_at_goes_to_notify_method(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    block(msg, "9")
    v = view(tmp_path)
    (req,) = select(msg, lambda r: v)
    assert req.to == ("virus-quarantine",)
    assert req.for_recipients == ("bob@anchor.test", "carol@anchor.test")
    v.virus_quarantine_to_maps = ["quarantine@anchor.test"]
    (req,) = select(msg, lambda r: v)
    assert req.method == "smtp:[127.0.0.1]:10025"


def test_spam_cutoff_disables_spam_quarantine(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "6")
    msg.recipients[0].spam_level = 30.0       # type: ignore[attr-defined]
    v = view(tmp_path, spam_quarantine_cutoff_level_maps=[20])
    assert select(msg, lambda r: v) == []
    msg.recipients[0].spam_level = 10.0       # type: ignore[attr-defined]
    assert [r.method for r in select(msg, lambda r: v)] == ["local:spam-%m.gz"]


def test_archive_transparent_and_not(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    v = view(tmp_path, archive_quarantine_method="local:archive-%m.gz",
             archive_quarantine_to_maps=["%a"])
    (req,) = select(msg, lambda r: v)
    assert req.transparent and req.categories == ("Arch",)
    v.archive_quarantine_to_maps = ["archive-quarantine"]
    (req,) = select(msg, lambda r: v)
    assert not req.transparent and req.to == ("archive-quarantine",)


# ------------------------------------------------------------------ files (22.3, 20.4)


def expected_header(msg: Message, alert: str) -> bytes:
    """Derived from spec 20.4 and Out/Local order: prepends topmost, then adds, Received."""
    return (
        "Return-Path: <alice@anchor.test>\n"
        "Delivered-To: virus-quarantine\n"
        "X-Envelope-From: <alice@anchor.test>\n"
        "X-Envelope-To: <bob@anchor.test>\n"
        "X-Envelope-To-Blocked: <bob@anchor.test>\n"
        "X-Quarantine-ID: <kULeRChqr0W1>\n"
        f"{alert}"
        "X-Spam-Flag: NO\n"
        "X-Spam-Score: 0\n"
        "X-Spam-Level:\n"
        "X-Spam-Status: No, score=x tag=x tag2=x kill=x tests=[] autolearn=unavailable\n"
        "Received: from localhost ([127.0.0.1])\n"
        " by localhost (mx.anchor.test [127.0.0.1]) (amavis, port 10024) with ESMTP\n"
        " id kULeRChqr0W1 for <bob@anchor.test>; Mon, 30 Nov 2026 03:02:43 +0000 (UTC)\n"
    ).encode()


def test_virus_file_exact_bytes_subdir_and_mode(tmp_path: Path) -> None:
    """Debian layout: one subfolder level by the mail_id's first character (22.3)."""
    msg = make_msg(tmp_path, virus_names=["Eicar-Test-Signature.UNOFFICIAL"])
    block(msg, "9")
    v = view(tmp_path)
    (res,) = quarantine(msg, select(msg, lambda r: v), v)
    path = Path(v.QUARANTINEDIR) / "k" / "virus-kULeRChqr0W1"
    assert res.locations == [str(path)] and res.quar_type == "F"
    assert str(res.reply) == f"250 2.6.0 Ok, delivered to {path}, id=21574-03"
    alert = ("X-Amavis-Alert: INFECTED, message contains virus:\n"      # wrapped at 78
             " Eicar-Test-Signature.UNOFFICIAL\n")
    original = BODY.split(b"\n", 1)[1]         # the old Return-Path is dropped
    assert path.read_bytes() == expected_header(msg, alert) + original
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in Path(v.QUARANTINEDIR).iterdir()) == sorted(q._SUBDIR_CHARS)
    assert msg.actions_performed == ["Quarantined"]


def test_log_location_matches_golden_form(tmp_path: Path) -> None:
    """The log line shows ``quarantine: k/virus-<mail_id>`` ($QUARANTINEDIR stripped)."""
    golden = (GOLDEN / "eicar.txt").read_text()
    m = re.search(r"quarantine: (\S+), .*mail_id: (\S+),", golden)
    assert m is not None
    loc, mail_id = m.groups()
    msg = make_msg(tmp_path, mail_id=mail_id, virus_names=["Eicar"])
    block(msg, "9")
    v = view(tmp_path)
    quarantine(msg, select(msg, lambda r: v), v)
    assert q.log_locations(msg, v) == [loc]


def test_banned_alert_uses_first_recipient_reason(tmp_path: Path) -> None:
    msg = make_msg(tmp_path, "bob@anchor.test", "carol@anchor.test")
    block(msg, "8")
    msg.recipients[0].banning_reason_short = ".exe,evil.exe"   # type: ignore[attr-defined]
    msg.recipients[1].banning_reason_short = ".com,x.com"      # type: ignore[attr-defined]
    v = view(tmp_path, quarantine_subdir_levels=0)
    quarantine(msg, select(msg, lambda r: v), v)
    data = (Path(v.QUARANTINEDIR) / "banned-kULeRChqr0W1").read_bytes()
    assert data.count(b"X-Amavis-Alert:") == 1
    assert b"X-Amavis-Alert: BANNED, message contains .exe,evil.exe\n" in data
    assert b"X-Envelope-To: <bob@anchor.test>, <carol@anchor.test>\n" in data


def test_gzip_is_streamed_and_readable(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "6")
    v = view(tmp_path)
    (res,) = quarantine(msg, select(msg, lambda r: v), v)
    assert res.quar_type == "Z" and res.locations[0].endswith("/k/spam-kULeRChqr0W1.gz")
    data = gzip.decompress(Path(res.locations[0]).read_bytes())
    assert data.startswith(b"Return-Path: <alice@anchor.test>\nDelivered-To: spam-quarantine\n")
    assert data.endswith(BODY.split(b"\n", 1)[1])


def test_mbox_append_with_from_escaping(tmp_path: Path) -> None:
    v = view(tmp_path)
    mbox = Path(v.QUARANTINEDIR) / "archive.mbox"
    v.local_delivery_aliases = {"archive-mbox": (str(mbox), None)}
    for mail_id in ("AAAAAAAAAAA1", "BBBBBBBBBBB2"):
        msg = make_msg(tmp_path, mail_id=mail_id)
        req = QuarantineRequest("local:", ("archive-mbox",), ("Arch",))
        (res,) = quarantine(msg, [req], v)
        assert str(res.reply).startswith(f"250 2.6.0 Ok, delivered to {mbox}")
    data = mbox.read_bytes()
    assert data.count(b"From <alice@anchor.test> Mon Nov 30 03:02:43 2026\n") == 2
    assert b"\n>From the start of a line\n>>From quoted\nend\n\n" in data
    assert data.endswith(b"end\n\n")
    assert msg.actions_performed == ["Archived"]


def test_existing_file_never_overwritten(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "9")
    v = view(tmp_path)
    quarantine(msg, select(msg, lambda r: v), v)
    path = Path(v.QUARANTINEDIR) / "k" / "virus-kULeRChqr0W1"
    before = path.read_bytes()
    with pytest.raises(TempFail, match="already exists, refuse to overwrite"):
        quarantine(msg, select(msg, lambda r: v), v)
    assert path.read_bytes() == before


@pytest.mark.parametrize("template", ["local:../escape-%m", "local:/tmp/escape-%m",
                                      "local:a/../../escape-%m"])
def test_escape_attempts_refused(tmp_path: Path, template: str) -> None:
    msg = make_msg(tmp_path)
    v = view(tmp_path, quarantine_subdir_levels=0)
    with pytest.raises(TempFail, match="temporarily unable to quarantine"):
        quarantine(msg, [QuarantineRequest(template, ("virus-quarantine",), ("Virus",))], v)
    assert not list(tmp_path.glob("escape-*")) and not list(Path("/tmp").glob("escape-kULe*"))


def test_alias_outside_quarantinedir_refused(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    v = view(tmp_path, local_delivery_aliases={"x": (str(tmp_path / "out.mbox"), None)})
    with pytest.raises(TempFail):
        quarantine(msg, [QuarantineRequest("local:", ("x",), ("Virus",))], v)
    assert not (tmp_path / "out.mbox").exists()


def test_skip_when_no_quarantinedir(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    v = view(tmp_path, QUARANTINEDIR=None)
    (res,) = quarantine(msg, [QuarantineRequest("local:virus-%m", ("virus-quarantine",),
                                                ("Virus",))], v)
    assert str(res.reply) == "250 2.6.0 Ok, skip local delivery(3), id=21574-03"


def _as_unprivileged(fn: Any) -> str:
    """Run ``fn`` in a forked child as nobody (root ignores folder permissions).

    Returns what the child reported: 'TempFail: <reason>' or 'no error'.
    """
    if os.geteuid() != 0:
        return fn()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: never returns to pytest
        code = 0
        try:
            os.close(rfd)
            os.setgid(65534)
            os.setuid(65534)
            os.write(wfd, fn().encode())
        except BaseException as exc:            # noqa: BLE001 - report anything to the parent
            os.write(wfd, f"child error: {exc!r}".encode())
            code = 1
        os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        out = fh.read().decode()
    os.waitpid(pid, 0)
    return out


def test_read_only_folder_tempfails(tmp_path: Path) -> None:
    """A quarantine folder we cannot write to: the message tempfails (22.2)."""
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="quar-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        msg = make_msg(base)
        block(msg, "9")
        v = view(base, quarantine_subdir_levels=0)
        os.chmod(v.QUARANTINEDIR, 0o555)
        os.chmod(msg.spool_path, 0o644)

        def attempt() -> str:
            try:
                quarantine(msg, select(msg, lambda r: v), v)
            except TempFail as exc:
                return f"TempFail: {exc.section}: {exc.reason}"
            return "no error"

        out = _as_unprivileged(attempt)
    finally:
        os.chmod(base / "virusmails", 0o755)
        import shutil
        shutil.rmtree(base)
    assert out.startswith("TempFail: quar+notif: temporarily unable to quarantine: "
                          "451 4.5.0 Local delivery(1)"), out
    assert "Permission denied" in out


def test_enospc_while_writing_tempfails_and_removes_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    msg = make_msg(tmp_path)
    block(msg, "9")
    v = view(tmp_path, quarantine_subdir_levels=0)
    real_write = os.write

    def failing_write(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino and Path(f"/proc/self/fd/{fd}").resolve().parent == \
                Path(v.QUARANTINEDIR).resolve():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(TempFail, match="No space left on device"):
        quarantine(msg, select(msg, lambda r: v), v)
    assert list(Path(v.QUARANTINEDIR).iterdir()) == []


def test_bsmtp_keeps_envelope_without_x_envelope_to(tmp_path: Path) -> None:
    msg = make_msg(tmp_path)
    block(msg, "4")
    v = view(tmp_path, bad_header_quarantine_method="bsmtp:badh-%m.bsmtp")
    (res,) = quarantine(msg, select(msg, lambda r: v), v)
    path = Path(v.QUARANTINEDIR) / "badh-kULeRChqr0W1.bsmtp"
    assert res.quar_type == "B" and res.locations == [str(path)]
    data = path.read_bytes()
    assert b"RCPT TO:<bob@anchor.test>" in data and b"X-Envelope-To" not in data
    assert b"X-Envelope-From: <alice@anchor.test>\nX-Quarantine-ID: <kULeRChqr0W1>\n" in data
