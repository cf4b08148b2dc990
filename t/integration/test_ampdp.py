"""AM.PDP through the real daemon on a Unix socket (spec/protocols.md 4, 7.1).

The client side is written by hand the way Debian's amavisd-submit speaks:
write ``email.txt`` into a directory under $TEMPBASE, send the request, read
the response up to the empty line.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from t.integration.conftest import wait_for
from t.integration.test_golden import PROFILE_PASS

EXE = (b"From: Alice <alice@anchor.test>\nTo: Bob <bob@anchor.test>\n"
       b"Date: Mon, 30 Nov 2026 03:01:54 +0000\nSubject: evil\n"
       b"Message-ID: <evil@anchor.test>\nMIME-Version: 1.0\n"
       b"Content-Type: multipart/mixed; boundary=\"b1\"\n\n"
       b"--b1\nContent-Type: text/plain\n\nsee attached\n"
       b"--b1\nContent-Type: application/octet-stream\n"
       b"Content-Disposition: attachment; filename=\"evil.exe\"\n"
       b"Content-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA\n"
       b"--b1--\n")
CLEAN = (b"From: Alice <alice@anchor.test>\nTo: Bob <bob@anchor.test>\n"
         b"Date: Mon, 30 Nov 2026 03:01:54 +0000\nSubject: hello\n"
         b"Message-ID: <hello@anchor.test>\n\nHi Bob,\nsee you.\n")


def start(amavisd, tmp_path: Path, extra: str = ""):
    path = tmp_path / "home" / "amavisd.sock"
    daemon = amavisd(f"unix_socketname = {str(path)!r}\nunix_socket_mode = 0o666\n"
                     "interface_policy = {'SOCK': 'AM.PDP-SOCK'}\n"
                     "policy_bank = {'AM.PDP-SOCK': {'protocol': 'AM.PDP'}}\n" + extra)
    return daemon, path


def submit(sock_path: Path, tmp_path: Path, name: str, data: bytes, rcpts: list[str],
           removed_by: str = "server") -> tuple[dict[str, list[str]], Path]:
    """amavisd-submit's exchange (7.1): tempdir, email.txt, request, response."""
    tempdir = tmp_path / "home" / "tmp" / f"amavis-{name}"
    tempdir.mkdir(mode=0o755)
    os.chmod(tempdir, 0o777)            # the daemon runs as nobody and removes it
    (tempdir / "email.txt").write_bytes(data)
    os.chmod(tempdir / "email.txt", 0o644)
    lines = ["request=AM.PDP", f"mail_file={tempdir}/email.txt", f"tempdir={tempdir}",
             f"tempdir_removed_by={removed_by}", "sender=<alice@anchor.test>"]
    lines += [f"recipient=<{r}>" for r in rcpts]
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(60)
    raw.connect(str(sock_path))
    try:
        raw.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while not buf.endswith(b"\r\n\r\n"):
            chunk = raw.recv(65536)
            assert chunk, f"server closed early: {buf!r}"
            buf += chunk
    finally:
        raw.close()
    attrs: dict[str, list[str]] = {}
    for line in buf.decode().split("\r\n"):
        if line:
            name, _, value = line.partition("=")
            attrs.setdefault(name, []).append(value)
    return attrs, tempdir


def test_clean_message_continue(amavisd, sink, tmp_path):
    daemon, path = start(amavisd, tmp_path, "X_HEADER_LINE = 'Debian amavis at anchor.test'")
    attrs, tempdir = submit(path, tmp_path, "pdp1", CLEAN, ["bob@anchor.test"])
    log_id = attrs["log_id"][0]
    assert log_id.startswith("pdp1-")              # from the tempdir name (spec 1.8)
    assert attrs["version_server"] == ["2"]
    assert attrs["setreply"] == [f"250 2.5.0 Ok,%20id={log_id},%20continue%20delivery"]
    assert attrs["return_value"] == ["continue"]
    assert attrs["exit_code"] == ["0"]
    assert "delrcpt" not in attrs
    assert sink.messages == []                   # delivery_care_of=client: not forwarded
    assert not tempdir.exists()                  # tempdir_removed_by=server
    wait_for(lambda: " Passed CLEAN " in daemon.logfile_text(), what="the Passed line")


def test_banned_reject(amavisd, sink, tmp_path):
    profile = PROFILE_PASS.replace("final_banned_destiny = D_DISCARD",
                                   "final_banned_destiny = D_REJECT")
    daemon, path = start(amavisd, tmp_path, profile)
    attrs, tempdir = submit(path, tmp_path, "pdp2", EXE, ["bob@anchor.test"],
                            removed_by="client")
    log_id = attrs["log_id"][0]
    (reply,) = attrs["setreply"]
    assert reply.startswith(f"554 5.7.0 Reject,%20id={log_id}%20-%20BANNED:%20"
                            "application/octet-stream,")
    assert reply.endswith(",evil.exe")
    assert attrs["return_value"] == ["reject"]
    assert attrs["exit_code"] == ["69"]
    assert sink.messages == []
    assert (tempdir / "email.txt").exists()     # tempdir_removed_by=client
    # the same connection-less client again: a suspicious tempdir
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(30)
    raw.connect(str(path))
    raw.sendall(b"request=AM.PDP\ntempdir=/tmp/../etc\nrecipient=<b@x>\n\n"
                b"request=smtpd_access_policy\n\n")
    buf = b""
    while b"action=DUNNO\n\n" not in buf:
        chunk = raw.recv(65536)
        assert chunk, buf
        buf += chunk
    raw.close()
    assert buf == (b"setreply=450 4.5.0 Failure:%20Suspicious%20temporary%20directory%20name"
                   b"%20'/tmp/../etc'\r\nreturn_value=tempfail\r\nexit_code=75\r\n\r\n"
                   b"action=DUNNO\n\n")


def test_mixed_with_header_edits(amavisd, sink, tmp_path):
    """A banned recipient is deleted (delrcpt); the other continues with the alert field."""
    profile = PROFILE_PASS.replace("final_banned_destiny = D_DISCARD",
                                   "final_banned_destiny = D_REJECT")
    profile += "\nbanned_files_lovers_maps = [['carol@anchor.test']]\n"
    daemon, path = start(amavisd, tmp_path, profile)
    attrs, _ = submit(path, tmp_path, "pdp3", EXE, ["bob@anchor.test", "carol@anchor.test"])
    assert attrs["return_value"] == ["continue"], attrs
    assert attrs["delrcpt"] == ["<bob@anchor.test>"]
    assert attrs["setreply"][0].endswith(",%20but%201%20REJECT")
    ins = attrs.get("insheader", [])
    assert ins[0].startswith("0 X-Amavis-Alert BANNED,%20message%20contains"), ins
    assert ins[-1].startswith("0 X-Quarantine-ID <")     # emitted last: ends up topmost
    assert not any(" Received " in x for x in ins)


SUBMIT = Path("/usr/sbin/amavisd-submit")


@pytest.mark.skipif(not SUBMIT.exists() or not shutil.which("perl"),
                    reason="Debian's amavisd-submit (amavisd-new package) is not installed")
def test_debian_amavisd_submit(amavisd, sink, tmp_path):
    """Debian's Perl client (7.1), socket and tempbase edited, run as nobody."""
    profile = PROFILE_PASS.replace("final_banned_destiny = D_DISCARD",
                                   "final_banned_destiny = D_REJECT")
    daemon, path = start(amavisd, tmp_path, profile)
    tempbase = tmp_path / "home" / "tmp"
    script = SUBMIT.read_text()
    script = script.replace("$socketname = '/var/lib/amavis/amavisd.sock';",
                            f"$socketname = '{path}';")
    script = script.replace("$tempbase = '/var/lib/amavis/tmp';", f"$tempbase = '{tempbase}';")
    copy = tmp_path / "amavisd-submit"
    copy.write_text(script)
    os.chmod(copy, 0o755)

    def run(data: bytes) -> subprocess.CompletedProcess:
        return subprocess.run(["perl", "-T", str(copy), "alice@anchor.test",
                               "bob@anchor.test"], input=data, capture_output=True,
                              timeout=60, user="nobody", group="nogroup", cwd="/")

    clean = run(CLEAN)
    assert clean.returncode == 0, clean.stderr
    banned = run(EXE)
    assert banned.returncode == 69, banned.stderr
    assert b"554 5.7.0 Reject, id=" in banned.stderr
    assert b"BANNED: application/octet-stream," in banned.stderr
    assert sink.messages == []
    # the server removed the client's dirs (the children's own have a timestamp and pid)
    left = [p.name for p in tempbase.iterdir() if re.fullmatch(r"amavis-\w{10}", p.name)]
    assert left == []


@pytest.mark.parametrize(("bank", "word"), [("{'protocol': 'AM.PDP'}", "Internal"),
                                            ("{'protocol': 'AM.PDP', 'originating': 0}",
                                             "Inbound")])
def test_socket_bank_decides_originating(amavisd, sink, tmp_path, bank, word):
    """Regression: AM.PDP sets originating=1 first, then the banks recompute it (4.3);
    the socket's own bank with originating => 0 used to be overridden."""
    daemon, path = start(amavisd, tmp_path, f"policy_bank = {{'AM.PDP-SOCK': {bank}}}\n")
    submit(path, tmp_path, "orig", CLEAN, ["bob@anchor.test"])
    line = wait_for(lambda: re.search(r".* Passed CLEAN .*", daemon.logfile_text()),
                    what="the Passed line").group(0)
    assert f"Passed CLEAN {{Relayed{word}}}, AM.PDP-SOCK " in line, line
