# tests: amavisd (daemon process): content checks end to end (decoding, banned, limits, destinies)
"""Content checks through the real daemon: a raw SMTP/LMTP client, the daemon, a sink.

Each test sends one (or two) messages and asserts the exact final reply, what the
sink received (or did not), the main log line and, where one is due, the
quarantine file.  The config is the anchor's profile ``pass`` (Debian's defaults,
see test_golden.py) plus the settings a test is about.  Spec references are to
spec/pipeline.md (sections 6.5, 7, 8, 12, 13, 17, 18, 20.3, 22) and
spec/protocols.md 3.8 (final reply) and monitoring.md (main log line).
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import os
import re
import shutil
import stat
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from t.integration.conftest import Client, send_message, wait_for
from t.integration.test_golden import PROFILE_PASS

CLAM = Path("/usr/share/clamav-testfiles")
SENDER = "alice@anchor.test"
BOB = "bob@anchor.test"
CAROL = "carol@anchor.test"
LOG_ID = r"\d+-\d\d"
MAIL_ID = r"[A-Za-z0-9_-]{12}"
EXE_LEAF = ".exe,.exe-ms,clam.exe"
#: Debian's decoding limits (pipeline.md section 0), stated because the base config
#: leaves the quotas undef.
DEBIAN_LIMITS = """
MAXLEVELS = 14
MAXFILES = 1500
MIN_EXPANSION_QUOTA = 100*1024
MAX_EXPANSION_QUOTA = 300*1024*1024
"""
PROFILE = PROFILE_PASS + DEBIAN_LIMITS
#: virus checks not bypassed: only then do recipients get CC_UNCHECKED (pipeline.md 12.3)
CHECKED = "bypass_virus_checks_maps = []\n"


# ------------------------------------------------------------------ message builders
def mail(subject: str, attachments: list[tuple[str, bytes]] = (), *, to: str = BOB,
         subject_raw: bytes | None = None) -> bytes:
    """A multipart/mixed message: a text part, then each attachment base64-encoded."""
    boundary = b"=_content_test_" + uuid.uuid4().hex.encode()
    head = (b"From: Alice <" + SENDER.encode() + b">\r\nTo: <" + to.encode() + b">\r\n"
            b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\n"
            b"Subject: " + (subject_raw if subject_raw is not None else subject.encode())
            + b"\r\nMessage-ID: <" + subject.encode() + b"@anchor.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\""
            + boundary + b"\"\r\n\r\n")
    body = b"--" + boundary + b"\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" \
        b"see the attachment\r\n"
    for name, payload in attachments:
        encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
        body += (b"--" + boundary + b"\r\nContent-Type: application/octet-stream; name=\""
                 + name.encode() + b"\"\r\nContent-Disposition: attachment; filename=\""
                 + name.encode() + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                 + encoded)
    return head + body + b"--" + boundary + b"--\r\n"


def zip_bytes(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name, (2026, 11, 30, 3, 1, 54)), data, method)
    return buf.getvalue()


def encrypted_zip(name: str, data: bytes) -> bytes:
    """A stored zip whose member has the 'encrypted' flag (bit 0) set in the local header
    and in the central directory (zipfile clears it on writing, so it is set in the
    bytes), with 12 bytes of encryption header in front of the data, as traditional
    PKWARE encryption lays it out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo(name, (2026, 11, 30, 3, 1, 54)), os.urandom(12) + data)
    raw = bytearray(buf.getvalue())
    assert raw[:4] == b"PK\x03\x04"
    raw[6] |= 1                                   # local header: general purpose flags
    central = raw.find(b"PK\x01\x02")
    raw[central + 8] |= 1                         # central directory: same flags
    assert zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist()[0].flag_bits & 1
    return bytes(raw)


# ------------------------------------------------------------------ daemon helpers
def session(daemon) -> Client:
    client = Client(daemon.port)
    assert client.reply()[0].startswith("220 ")
    return client


def main_log_line(daemon, timeout: float = 15.0) -> str:
    """The first main log line (``Passed``/``Blocked``) of the daemon's log."""
    text = wait_for(lambda: (" Passed " in (t := daemon.logfile_text()) or " Blocked " in t)
                    and t, timeout, "the main log line")
    return next(x for x in text.splitlines() if " Passed " in x or " Blocked " in x)


def main_log_lines(daemon, count: int, timeout: float = 15.0) -> list[str]:
    def lines() -> list[str]:
        return [x for x in daemon.logfile_text().splitlines()
                if " Passed " in x or " Blocked " in x]
    wait_for(lambda: len(lines()) >= count, timeout, f"{count} main log lines")
    return lines()


def delivered_to(sink, address: str) -> list:
    return [m for m in sink.messages
            if any(f"<{address}>".encode() in r for r in m.rcpts)]


def quarantine_file(tmp_path: Path, line: str) -> Path:
    """The quarantine file the log line names (``quarantine: g/banned-<mail_id>``)."""
    match = re.search(r", quarantine: (\w/[\w-]+),", line)
    assert match, line
    return tmp_path / "home" / "virusmails" / match.group(1)


def banned_path_lines(daemon) -> list[str]:
    """The ``p.path BANNED:1 <rcpt>: "<path>"`` lines (pipeline.md 7.2, log level 1)."""
    return [x for x in daemon.logfile_text().splitlines() if "p.path BANNED:" in x]


def header_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ------------------------------------------------------------------ 1. clamav test files
#: file -> (leaf placement of clam.exe, or the skip reason)
CLAM_ARCHIVES: dict[str, str] = {
    "clam.zip": "1/2/1",
    "clam.bz2.zip": "1/2/1",                 # a bzip2 *method* member, not a .bz2 file
    "clam.7z": "1/2/1",
    "clam.cab": "1/2/1",
    "clam.arj": "1/2/1",
    "clam.bin-be.cpio": "1/2/1",
    "clam.bin-le.cpio": "1/2/1",
    "clam.newc.cpio": "1/2/1",
    "clam.odc.cpio": "1/2/1",
    "clam.exe.bz2": "1/2/1",
    "clam.tar.gz": "1/2/1/1",
}
# Not here, with their own tests: clam.d64.zip and clam.impl.zip (members undecipherable,
# t/unpack/test_decoders.py), clam_cache_emax.tgz (beyond MAXLEVELS,
# test_clam_cache_emax_is_over_levels).


def _clam_params():
    for name, want in CLAM_ARCHIVES.items():
        marks = []
        if not (CLAM / name).is_file():
            marks.append(pytest.mark.skip(reason=f"{CLAM / name} is not installed"))
        elif want.startswith("skip: "):
            marks.append(pytest.mark.skip(reason=want[6:]))
        yield pytest.param(name, want, marks=marks, id=name)


@pytest.mark.parametrize(("name", "placement"), _clam_params())
def test_clamav_archive_is_banned_at_its_depth(name, placement, amavisd, sink, tmp_path):
    """pipeline.md 6.4/6.5 (decoders, tiers), 7.2-7.4 (Debian banned list: ``.exe-ms``
    and the name ``clam.exe``), 13 step 6 / 17 (D_DISCARD reply), 22 (quarantine).

    The reply carries ``%F``, the leaf descriptor of the banned part; the level-1
    ``p.path BANNED`` log line shows the leaf at its real placement, so an
    archive the daemon failed to open (the attachment itself would never be banned:
    its name does not end in .exe) or a wrong nesting makes this fail."""
    daemon = amavisd(PROFILE)
    client = session(daemon)
    data = mail(f"clam-{name}", [(name, (CLAM / name).read_bytes())])
    reply = send_message(client, SENDER, [BOB], data)
    assert len(reply) == 1
    assert re.fullmatch(rf"250 2\.7\.0 Ok, discarded, id={LOG_ID} - BANNED: "
                        + re.escape(EXE_LEAF), reply[0]), reply
    client.cmd("QUIT")
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Blocked BANNED \({re.escape(EXE_LEAF)}\) "
                     r"\{DiscardedInbound,Quarantined\}, \[127\.0\.0\.1\] "
                     rf"<{SENDER}> -> <{BOB}>, quarantine: \w/banned-{MAIL_ID}, "
                     rf"Message-ID: <clam-{re.escape(name)}@anchor\.test>, "
                     rf"mail_id: {MAIL_ID}, Hits: -, size: {len(data)}, \d+ ms$", line), line
    paths = banned_path_lines(daemon)
    assert paths, daemon.logfile_text()[-3000:]
    leaf = paths[0].split(" | ")[-1]
    assert re.match(rf"P=p\d+,L={re.escape(placement)},T=exe,T=exe-ms,N=clam\.exe\b",
                    leaf), paths
    assert delivered_to(sink, BOB) == []
    qfile = quarantine_file(tmp_path, line)
    assert qfile.is_file()
    assert qfile.name == "banned-" + re.search(rf"mail_id: ({MAIL_ID})", line).group(1)
    stored = qfile.read_bytes().replace(b"\r\n", b"\n")
    assert data.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in stored   # whole body
    assert stored.startswith(b"Return-Path: <alice@anchor.test>\n")            # 20.4


# ------------------------------------------------------------------ 2. bombs and limits
def _nested_zips(levels: int) -> bytes:
    data = zip_bytes([("readme.txt", b"innocent text at the bottom\n")])
    for n in range(levels, 0, -1):
        data = zip_bytes([(f"level{n:02d}.zip", data)])
    return data


def _temp_is_only_child_folders(tmp_path: Path) -> None:
    """TEMPBASE holds nothing but the children's own work folders (pipeline.md 6.5)."""
    base = tmp_path / "home" / "tmp"
    entries = list(base.iterdir())
    assert entries, "no child work folder under TEMPBASE"
    for entry in entries:
        st = entry.lstat()
        assert stat.S_ISDIR(st.st_mode), f"stray non-folder in TEMPBASE: {entry}"
        inside = {p.name for p in entry.iterdir()}
        assert inside <= {"parts", "email.txt", "body.txt"}, (entry, inside)


def _passed_unchecked(daemon, sink, tmp_path, data: bytes, hold: str) -> bytes:
    """Send; expect the forwarded 250, the hold header (once), no subject tag, the
    ``Inserting header field`` log line and a clean TEMPBASE."""
    client = session(daemon)
    before = tree(tmp_path)
    start = time.monotonic()
    reply = send_message(client, SENDER, [BOB], data)
    elapsed = time.monotonic() - start
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\d+", reply[0]), reply
    assert elapsed < 20, elapsed
    client.cmd("QUIT")
    got = delivered_to(sink, BOB)
    assert len(got) == 1
    head = header_of(got[0].data)
    holds = re.findall(rb"^X-Amavis-Hold: (.*)\r?$", head.replace(b"\r\n", b"\n"), re.M)
    assert len(holds) == 1 and holds[0].decode().startswith(hold), head
    # Debian's recipients bypass virus checks, so they are not UNCHECKED: no subject tag
    assert b"\nSubject: ***UNCHECKED*** " not in head, head          # pipeline.md 20.8
    assert f"Inserting header field: X-Amavis-Hold: {holds[0].decode()}" in \
        daemon.logfile_text()
    # nothing appeared outside the child's work folder
    _temp_is_only_child_folders(tmp_path)
    new = {p for p in tree(tmp_path) - before
           if not p.startswith("home/tmp/") and p != "home/amavis.log"}
    assert new == set(), new
    return head


def _assert_passed_unchecked_line(daemon, data: bytes) -> None:
    """monitoring.md: ``Passed UNCHECKED`` -- the *message* category list gets 7,2 even
    when every recipient bypasses virus checks (pipeline.md 12.3; Amavis.pm check_mail
    adds it to $msginfo unconditionally, and the log template reads that list)."""
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Passed UNCHECKED \{{RelayedInbound\}}, \[127\.0\.0\.1\] "
                     rf"<{SENDER}> -> <{BOB}>, Message-ID: <[\w-]+@anchor\.test>, "
                     rf"mail_id: {MAIL_ID}, Hits: -, size: {len(data)}, "
                     r"queued_as: Q\d+, \d+ ms$", line), line


def test_zip_nested_beyond_maxlevels_passes_unchecked(amavisd, sink, tmp_path):
    """pipeline.md 6.5: a tier deeper than $MAXLEVELS stops decoding with the hold text
    ``Maximum decoding depth (14) exceeded`` and over_levels -> CC_UNCHECKED,2; with
    Debian's D_PASS for unchecked the mail passes with ``X-Amavis-Hold`` (20.3 item 1)
    and the log says ``Passed UNCHECKED`` (monitoring.md: minor 2 prints plain
    UNCHECKED).  The message gets 7,2 although Debian's recipients bypass virus checks
    (12.3); they do not, so there is no ``***UNCHECKED***`` subject tag (20.8)."""
    daemon = amavisd(PROFILE)
    data = mail("deep-zip", [("deep.zip", _nested_zips(20))])
    _passed_unchecked(daemon, sink, tmp_path, data, "Maximum decoding depth (14) exceeded")
    _assert_passed_unchecked_line(daemon, data)


def test_zip_nested_beyond_maxlevels_tags_checked_recipients(amavisd, sink, tmp_path):
    """pipeline.md 12.3/20.8: with virus checks not bypassed the recipient itself is
    UNCHECKED (7,2), so the passed copy's Subject gets ``***UNCHECKED*** ``."""
    daemon = amavisd(PROFILE + CHECKED)
    client = session(daemon)
    data = mail("deep-tag", [("deep.zip", _nested_zips(20))])
    reply = send_message(client, SENDER, [BOB], data)
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    head = header_of(delivered_to(sink, BOB)[0].data)
    assert b"\r\nSubject: ***UNCHECKED*** deep-tag\r\n" in head, head
    assert re.search(rb"(^|\r\n)X-Amavis-Hold: Maximum decoding depth \(14\) exceeded\r\n",
                     head), head
    assert re.search(r"\) Passed UNCHECKED \{Relayed(Tagged)?Inbound\}", main_log_line(daemon))


def test_high_ratio_zip_beyond_quota_passes_unchecked(amavisd, sink, tmp_path):
    """pipeline.md 6.5: storage quota = max(MIN_Q, size*5, min(MAX_Q, size*500)); the
    8 MiB member of this small zip exceeds a 1 MiB MAX_EXPANSION_QUOTA -> hold
    ``Exceeded storage quota 1048576 bytes by ...`` and CC_UNCHECKED,2, passed with
    X-Amavis-Hold; no more than the quota is written (TEMPBASE stays small)."""
    daemon = amavisd(PROFILE + "MAX_EXPANSION_QUOTA = 1024*1024\n")
    bomb = zip_bytes([("zeros.txt", bytes(8 * 1024 * 1024))])
    assert len(bomb) < 20_000
    data = mail("ratio-zip", [("ratio.zip", bomb)])
    _passed_unchecked(daemon, sink, tmp_path, data,
                      "Exceeded storage quota 1048576 bytes by do_unzip")
    written = sum(p.stat().st_size for p in (tmp_path / "home" / "tmp").rglob("*")
                  if p.is_file())
    assert written <= 1024 * 1024 + 4 * len(data), written
    _assert_passed_unchecked_line(daemon, data)


def test_quota_with_undef_limits_is_size_times_max_factor(amavisd, sink, tmp_path):
    """pipeline.md 6.5 and Amavis::Util::max/min, which skip undef: with
    $MIN_EXPANSION_QUOTA and $MAX_EXPANSION_QUOTA undef (the upstream defaults, our
    base config) the quota is max(size*5, size*500) = size*500, so a member 20 times
    the mail size is decoded (and its .exe name banned), not held as over quota."""
    daemon = amavisd(PROFILE + "MIN_EXPANSION_QUOTA = None\nMAX_EXPANSION_QUOTA = None\n")
    payload = bytes(400 * 1024)
    data = mail("undef-quota", [("pad.zip", zip_bytes([("zeros.exe", payload)]))])
    assert len(payload) > 5 * len(data)
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"250 2\.7\.0 Ok, discarded, id={LOG_ID} - BANNED: "
                        r"\.dat,zeros\.exe", reply[0]), reply


def test_clam_cache_emax_is_over_levels(amavisd, sink, tmp_path):
    """pipeline.md 6.5 with a real file: clamav's clam_cache_emax.tgz nests eight tar.gz
    levels (two tiers each), so the tier holding clam.exe is beyond MAXLEVELS=14: the
    exe is never seen, the mail is UNCHECKED (over limits) and passes with the hold."""
    if not (CLAM / "clam_cache_emax.tgz").is_file():
        pytest.skip("clamav-testfiles not installed")
    daemon = amavisd(PROFILE)
    data = mail("emax", [("emax.tgz", (CLAM / "clam_cache_emax.tgz").read_bytes())])
    _passed_unchecked(daemon, sink, tmp_path, data, "Maximum decoding depth (14) exceeded")
    assert banned_path_lines(daemon) == []
    _assert_passed_unchecked_line(daemon, data)


def test_over_limits_with_unchecked_reject_is_554(amavisd, sink, tmp_path):
    """pipeline.md 13 step 6 note: the default destiny map has only the major key, so
    the blocking ccat is '7' and the reply is ``554 5.7.0 Reject, id=... - UNCHECKED``
    (virus checks not bypassed: recipients get CC_UNCHECKED only then, 12.3);
    nothing is delivered; the Blocked log line says UNCHECKED (blocking ccat minor 0)."""
    daemon = amavisd(PROFILE + CHECKED + "final_unchecked_destiny = D_REJECT\n")
    data = mail("deep-reject", [("deep.zip", _nested_zips(20))])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"554 5\.7\.0 Reject, id={LOG_ID} - UNCHECKED", reply[0]), reply
    client.cmd("QUIT")
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Blocked UNCHECKED \{{RejectedInbound\}}, "
                     rf"\[127\.0\.0\.1\] <{SENDER}> -> <{BOB}>, ", line), line
    assert delivered_to(sink, BOB) == []
    _temp_is_only_child_folders(tmp_path)


# ------------------------------------------------------------------ 3. hostile archives
def test_zip_with_traversal_and_absolute_names_stays_inside(amavisd, sink, tmp_path):
    """pipeline.md 6.2/6.4: member names are only declared names, never file names.
    '../' and absolute names are decoded as parts of the parts folder; no file appears
    at the paths they name; the '.exe' leaf under an absolute name is still banned."""
    tag = uuid.uuid4().hex[:12]
    escape_rel = f"../../../../../../../../tmp/amavisd-escape-{tag}.txt"
    escape_abs = f"/tmp/amavisd-abs-{tag}.exe"
    targets = [Path(f"/tmp/amavisd-escape-{tag}.txt"), Path(escape_abs)]
    zipped = zip_bytes([(escape_rel, b"climbing out\n"), (escape_abs, b"MZ absolute\n"),
                        ("../sibling/evil.txt", b"next door\n")])
    daemon = amavisd(PROFILE)
    data = mail("traversal", [("names.zip", zipped)])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"250 2\.7\.0 Ok, discarded, id={LOG_ID} - BANNED: "
                        rf"\.(asc|txt|dat),{re.escape(escape_abs)}", reply[0]), reply
    for target in targets:
        assert not target.exists(), target
    assert not (tmp_path / "home" / "sibling").exists()
    _temp_is_only_child_folders(tmp_path)
    assert delivered_to(sink, BOB) == []


def test_encrypted_zip_passes_as_unchecked_encrypted(amavisd, sink, tmp_path):
    """pipeline.md 6.4 (encrypted members get U,C), 12.3 (CC_UNCHECKED,1), monitoring.md
    (a passed message whose main ccat is 7,1 logs ``Passed UNCHECKED-ENCRYPTED``)."""
    daemon = amavisd(PROFILE)
    data = mail("encrypted", [("secret.zip", encrypted_zip("secret.txt", b"hidden\n"))])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Passed UNCHECKED-ENCRYPTED \{{RelayedInbound\}}, ",
                     line), line
    assert len(delivered_to(sink, BOB)) == 1
    assert b"X-Amavis-Hold:" not in header_of(delivered_to(sink, BOB)[0].data)


def test_encrypted_zip_with_unchecked_reject_is_554(amavisd, sink, tmp_path):
    """pipeline.md 13 step 6 (and its note): blocking ccat is the bare major '7', so
    ``554 5.7.0 Reject, id=... - UNCHECKED``, not ``UNCHECKED: encrypted``; the
    Blocked log line prints the blocking ccat, ``UNCHECKED`` (virus checks not
    bypassed, else the recipient is never UNCHECKED, 12.3).  Real ``zip -e`` output
    when the program exists, else the flag bit set by hand."""
    zip_prog = shutil.which("zip")
    if zip_prog:
        import subprocess

        work = tmp_path / "zip-e"
        work.mkdir()
        (work / "secret.txt").write_bytes(b"hidden\n")
        subprocess.run([zip_prog, "-q", "-P", "s3cret", "secret.zip", "secret.txt"],
                       cwd=work, check=True)
        zipped = (work / "secret.zip").read_bytes()
        shutil.rmtree(work)
    else:
        zipped = encrypted_zip("secret.txt", b"hidden\n")
    daemon = amavisd(PROFILE + CHECKED + "final_unchecked_destiny = D_REJECT\n")
    data = mail("encrypted-reject", [("secret.zip", zipped)])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"554 5\.7\.0 Reject, id={LOG_ID} - UNCHECKED", reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Blocked UNCHECKED \{{RejectedInbound\}}, ", line), line
    assert delivered_to(sink, BOB) == []


def test_truncated_zip_is_left_unpacked_and_passes_clean(amavisd, sink, tmp_path):
    """pipeline.md 6.4: a decoder error leaves the part undecoded ('Decoding of pNNN
    (...) failed, leaving it unpacked'); that is neither a hold nor undecipherable,
    so the mail passes CLEAN, the member name inside (clam.exe) unseen."""
    raw = (CLAM / "clam.zip").read_bytes() if (CLAM / "clam.zip").is_file() else \
        zip_bytes([("clam.exe", b"MZ" + bytes(600))])
    daemon = amavisd(PROFILE)
    data = mail("truncated", [("broken.zip", raw[: len(raw) // 2])])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\d+", reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Passed CLEAN \{{RelayedInbound\}}, ", line), line
    assert re.search(r"Decoding of p\d+ \(Zip archive data[^)]*\) failed, leaving it "
                     r"unpacked", daemon.logfile_text()), daemon.logfile_text()[-2000:]
    assert len(delivered_to(sink, BOB)) == 1


def test_100_level_nested_multipart_is_bounded(amavisd, sink, tmp_path):
    """pipeline.md 6.1/6.5: deep MIME nesting is one decoding tier; the daemon answers
    within seconds and the same child (same pid in the log id, next task number)
    serves the next session: it did not crash."""
    depth = 100
    body = b"deep text\r\n"
    ctype = b"text/plain"
    for n in range(depth):
        b = f"nest{n}".encode()
        body = (b"--" + b + b"\r\nContent-Type: " + ctype + b"\r\n\r\n" + body
                + b"--" + b + b"--\r\n")
        ctype = b'multipart/mixed; boundary="' + b + b'"'
    data = (b"From: <alice@anchor.test>\r\nTo: <bob@anchor.test>\r\n"
            b"Date: Mon, 30 Nov 2026 03:01:54 +0000\r\nSubject: nested\r\n"
            b"Message-ID: <nested@anchor.test>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: " + ctype + b"\r\n\r\n" + body)
    daemon = amavisd(PROFILE + "max_servers = 1\n")
    client = session(daemon)
    start = time.monotonic()
    reply = send_message(client, SENDER, [BOB], data)
    assert time.monotonic() - start < 5
    assert reply[0].startswith("250 "), reply
    client.cmd("QUIT")
    again = session(daemon)                 # a new session: the same (only) child
    second = send_message(again, SENDER, [BOB], mail("after-nested"))
    assert second[0].startswith("250 2.0.0 from MTA("), second
    lines = main_log_lines(daemon, 2)
    ids = [re.search(r"\((\d+)-(\d\d)\) ", x).groups() for x in lines]
    assert ids[0][0] == ids[1][0], lines                  # same child pid
    assert int(ids[1][1]) == int(ids[0][1]) + 1, lines     # its next task
    assert daemon.alive()
    assert "Passed CLEAN" in lines[0], lines


# ------------------------------------------------------------------ 4. per recipient
BYPASS_CAROL = "bypass_banned_checks_maps = [['carol@anchor.test']]\n"


def test_bypass_banned_for_one_recipient_smtp(amavisd, sink, tmp_path):
    """pipeline.md 7.1 (bypass_banned_checks skips the recipient), protocols.md 3.8 rule
    6: the forwarded reply of the passed recipient plus ``, but 1 DISCARD``; only
    carol's copy reaches the sink."""
    daemon = amavisd(PROFILE + BYPASS_CAROL)
    data = mail("bypass", [("clam.zip", zip_bytes([("clam.exe", b"MZ" + bytes(600))]))])
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB, CAROL], data)
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\d+, but 1 DISCARD", reply[0]), reply
    assert delivered_to(sink, BOB) == []
    assert len(delivered_to(sink, CAROL)) == 1
    assert [m.rcpts for m in sink.messages] == [[f"RCPT TO:<{CAROL}>".encode()]]


def test_bypass_banned_for_one_recipient_lmtp(amavisd, sink, tmp_path):
    """protocols.md 3.8 LMTP: one reply per recipient in RCPT order: bob's discard,
    then carol's forwarded 250."""
    daemon = amavisd(PROFILE + BYPASS_CAROL)
    data = mail("bypass-lmtp", [("clam.zip", zip_bytes([("clam.exe", b"MZ" + bytes(600))]))])
    client = session(daemon)
    first = send_message(client, SENDER, [BOB, CAROL], data, ehlo="LHLO client.anchor.test")
    second = client.reply()
    assert re.fullmatch(rf"250 2\.7\.0 Ok, discarded, id={LOG_ID} - BANNED: "
                        r"\.exe,\.exe-ms,clam\.exe", first[0]), first
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\d+", second[0]), second
    assert delivered_to(sink, BOB) == []
    assert len(delivered_to(sink, CAROL)) == 1


# ------------------------------------------------------------------ 5/6. destinies
BANNED_ZIP = [("clam.zip", zip_bytes([("clam.exe", b"MZ" + bytes(600))]))]
#: file(1) types the fake exe gets: b"MZ" + zeros is a DOS executable
FAKE_EXE_LEAF = r"\.\S+,clam\.exe"


def _dsns(sink) -> list:
    return [m for m in sink.messages if m.mail.startswith(b"MAIL FROM:<>")]


def test_banned_bounce_sends_dsn_to_sender(amavisd, sink, tmp_path):
    """pipeline.md 17 (D_BOUNCE: 2xx to the MTA, DSN by amavis), protocols.md 3.8 rule 6
    (``250 2.5.0 Ok, id=..., BOUNCE``), 18 (multipart/report; delivery-status with
    Final-Recipient, Action: failed, Status: 5.7.0, Diagnostic-Code: smtp; 554 5.7.0
    Bounce, ...; the original header section only)."""
    daemon = amavisd(PROFILE + "final_banned_destiny = D_BOUNCE\n")
    data = mail("bounce", BANNED_ZIP)
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], data)
    assert re.fullmatch(rf"250 2\.5\.0 Ok, id={LOG_ID}, BOUNCE", reply[0]), reply
    log_id = reply[0].split("id=")[1].split(",")[0]
    line = main_log_line(daemon)
    assert re.search(rf"\({log_id}\) Blocked BANNED \({FAKE_EXE_LEAF}\) "
                     r"\{BouncedInbound,Quarantined\}, ", line), line
    assert delivered_to(sink, BOB) == []
    dsns = wait_for(lambda: _dsns(sink), what="the DSN")
    assert len(dsns) == 1
    assert dsns[0].mail.split()[:2] == [b"MAIL", b"FROM:<>"]
    assert dsns[0].rcpts[0].split()[:2] == [b"RCPT", f"TO:<{SENDER}>".encode()]
    report = email.message_from_bytes(dsns[0].data, policy=email.policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    status = next(p for p in parts if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    per_msg, per_rcpt = blocks[0], blocks[1]
    assert per_msg["Reporting-MTA"] == "dns; mx.anchor.test"
    assert re.fullmatch(r"rfc822; ?bob@anchor\.test", per_rcpt["Final-Recipient"])
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.7.0"
    # RFC 3461 9.2 as amavis wraps it (Notify.pm): every line but the last 'ddd-x.y.z'
    diag = per_rcpt["Diagnostic-Code"]
    assert diag.startswith("smtp; "), diag
    lines = [x.strip() for x in diag[6:].splitlines()]
    assert all(x.startswith("554-5.7.0 ") for x in lines[:-1]), lines
    assert lines[-1].startswith("554 5.7.0 "), lines
    assert re.fullmatch(rf"554 5\.7\.0 Bounce, id={log_id} - BANNED: {FAKE_EXE_LEAF}",
                        "554 5.7.0 " + " ".join(x[10:] for x in lines)), lines
    headers = next(p for p in parts if p.get_content_type() == "text/rfc822-headers")
    text = headers.get_payload(decode=True)
    assert text.startswith(b"Return-Path: <alice@anchor.test>")
    assert b"Message-ID: <bounce@anchor.test>" in text
    assert b"see the attachment" not in dsns[0].data      # header section only


def test_banned_bounce_with_null_sender_sends_no_dsn(amavisd, sink, tmp_path):
    """pipeline.md 18: a null envelope sender suppresses the DSN; protocols.md 3.8:
    the reply then counts the recipient as ``DISCARD(bounce.suppressed)``, and the
    log's status word is ``NoBounce`` (Amavis.pm, dsn_sent = 2)."""
    daemon = amavisd(PROFILE + "final_banned_destiny = D_BOUNCE\n")
    client = session(daemon)
    reply = send_message(client, "", [BOB], mail("bounce-null", BANNED_ZIP))
    line = main_log_line(daemon)
    time.sleep(0.5)
    assert _dsns(sink) == []
    assert delivered_to(sink, BOB) == []
    assert re.fullmatch(rf"250 2\.5\.0 Ok, id={LOG_ID}, DISCARD\(bounce\.suppressed\)",
                        reply[0]), reply
    # Amavis.pm: dsn_sent 2 (suppressed) -> status word NoBounce (monitoring.md)
    assert re.search(rf"\({LOG_ID}\) Blocked BANNED \({FAKE_EXE_LEAF}\) "
                     r"\{NoBounceInbound,Quarantined\}, \[127\.0\.0\.1\] <> -> "
                     r"<bob@anchor\.test>, ", line), line


def test_banned_reject_is_554(amavisd, sink, tmp_path):
    """pipeline.md 13 step 6, 17 (all recipients reject: the 5xx goes to the MTA, no DSN)."""
    daemon = amavisd(PROFILE + "final_banned_destiny = D_REJECT\n")
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], mail("reject", BANNED_ZIP))
    assert re.fullmatch(rf"554 5\.7\.0 Reject, id={LOG_ID} - BANNED: {FAKE_EXE_LEAF}",
                        reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"Blocked BANNED \({FAKE_EXE_LEAF}\) \{{RejectedInbound,Quarantined\}}",
                     line), line
    assert quarantine_file(tmp_path, line).is_file()
    time.sleep(0.3)
    assert delivered_to(sink, BOB) == [] and _dsns(sink) == []


def test_banned_tempfail_is_450(amavisd, sink, tmp_path):
    """pipeline.md 13 step 6 (D_TEMPFAIL: code 450, class 4, ``Temporary failure``)."""
    daemon = amavisd(PROFILE + "final_banned_destiny = D_TEMPFAIL\n")
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], mail("tempfail", BANNED_ZIP))
    assert re.fullmatch(rf"450 4\.7\.0 Temporary failure, id={LOG_ID} - BANNED: "
                        rf"{FAKE_EXE_LEAF}", reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"Blocked BANNED \({FAKE_EXE_LEAF}\) \{{TempFailedInbound,", line), line
    time.sleep(0.3)
    assert delivered_to(sink, BOB) == [] and _dsns(sink) == []


# ------------------------------------------------------------------ 7. quarantine failure
def test_quarantine_write_failure_tempfails(amavisd, sink, tmp_path):
    """pipeline.md 22.2: a quarantine that cannot be written dies 'temporarily unable
    to quarantine' -> the whole message is 451 (reliability: 4xx on any own fault);
    nothing is forwarded or notified, nothing is left in the quarantine folder."""
    qdir = tmp_path / "home" / "virusmails"
    qdir.mkdir(parents=True)
    os.chown(qdir, 0, 0)
    os.chmod(qdir, 0o555)
    daemon = amavisd(PROFILE)
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], mail("quar-fail", BANNED_ZIP))
    assert re.fullmatch(rf"451 4\.5\.0 Error in processing, id={LOG_ID}, "
                        r"quar\+notif FAILED: .+", reply[0]), reply
    time.sleep(0.3)
    assert sink.messages == []
    assert list(qdir.rglob("*")) == []


# ------------------------------------------------------------------ 8. bad header
BAD_SUBJECT = b"caf\xe9 cr\xe8me"


def test_bad_header_reject_is_554_5_6_0(amavisd, sink, tmp_path):
    """pipeline.md 8 (non-encoded 8-bit, not UTF-8: BadHdr8bit, minor 2) and 13 step 6
    note: blocking ccat is the bare major '4' -> ``554 5.6.0 Reject, id=... - BAD
    HEADER`` (not 5.6.3); log ``Blocked BAD-HEADER-0``; nothing delivered."""
    daemon = amavisd(PROFILE + "final_bad_header_destiny = D_REJECT\n")
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], mail("badh", subject_raw=BAD_SUBJECT))
    assert re.fullmatch(rf"554 5\.6\.0 Reject, id={LOG_ID} - BAD HEADER", reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Blocked BAD-HEADER-0 \{{RejectedInbound,Quarantined\}}, ",
                     line), line
    time.sleep(0.3)
    assert delivered_to(sink, BOB) == []


def test_bad_header_lover_receives_it(amavisd, sink, tmp_path):
    """pipeline.md 13 step 3: a bad-header lover treats BADH as PASS; the mail reaches
    bob with ``X-Amavis-Alert: BAD HEADER SECTION, ...`` (20.3 item 6), log ``Passed
    BAD-HEADER-2`` (main ccat 4,2), and, like Debian, a badh- quarantine copy (22.1)."""
    daemon = amavisd(PROFILE + "final_bad_header_destiny = D_REJECT\n"
                     "bad_header_lovers_maps = [['bob@anchor.test']]\n")
    client = session(daemon)
    reply = send_message(client, SENDER, [BOB], mail("badh-lover", subject_raw=BAD_SUBJECT))
    assert re.fullmatch(rf"250 2\.0\.0 from MTA\(smtp:\[127\.0\.0\.1\]:{sink.port}\): "
                        r"250 2\.0\.0 Ok: queued as Q\d+", reply[0]), reply
    line = main_log_line(daemon)
    assert re.search(rf"\({LOG_ID}\) Passed BAD-HEADER-2 \{{RelayedInbound,Quarantined\}}, ",
                     line), line
    got = delivered_to(sink, BOB)
    assert len(got) == 1
    head = header_of(got[0].data)
    assert (b"X-Amavis-Alert: BAD HEADER SECTION, Non-encoded non-ASCII data (and not "
            b"UTF-8)\r\n (char E9 hex): Subject: caf\\x{E9} cr\\x{E8}me") in head, head
    assert b"Subject: " + BAD_SUBJECT + b"\r\n" in head
    assert quarantine_file(tmp_path, line).name.startswith("badh-")
