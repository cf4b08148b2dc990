# tests: Debian's amavisd-milter on our AM.PDP socket, driven by Debian's miltertest
"""The milter path end to end (spec/protocols.md 4.6, 2.1, 6; docs/milter.md).

    miltertest (the MTA side, Lua) -> amavisd-milter (Debian, as nobody)
        -> our daemon's AM.PDP Unix socket (bank AM.PDP-SOCK) -> verdict and edits back

The setup is the one docs/milter.md describes: the milter runs as the daemon user,
its work folder is $TEMPBASE (mode 0750: amavisd-milter refuses a world-accessible
one), the socket is ``$unix_socket_mode = 0o660``.  Each case prints what the milter
asked the MTA to do (``mt.eom_check``) and the test asserts it: the clean message
continues with our X-Virus-Scanned field inserted at index 0, the banned .exe is
rejected with our exact 554 text, and with our daemon stopped the milter answers
``451 4.6.0 Content scanner malfunction``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from t.helpers.daemon import Daemon, free_port, start_daemon
from t.integration.conftest import base_config, wait_for
from t.integration.test_ampdp import CLEAN, EXE
from t.integration.test_golden import PROFILE_PASS
from t.sink import Sink

MILTER = shutil.which("amavisd-milter") or "/usr/sbin/amavisd-milter"
MILTERTEST = shutil.which("miltertest") or "/usr/bin/miltertest"
pytestmark = pytest.mark.skipif(
    not (os.access(MILTER, os.X_OK) and os.access(MILTERTEST, os.X_OK)),
    reason="Debian's amavisd-milter and miltertest packages are not installed")

NOBODY, NOGROUP = 65534, 65534
X_LINE = "Debian amavis at anchor.test"
#: our banned reason for EXE (libmagic's types of the part, then its name)
BANNED = "application/octet-stream,.exe,.exe-ms,evil.exe"
CONFIG = PROFILE_PASS.replace("final_banned_destiny = D_DISCARD",
                              "final_banned_destiny = D_REJECT") + """
bypass_virus_checks_maps = []         # asks for X-Virus-Scanned (pipeline.md section 23)
banned_files_lovers_maps = [['carol@anchor.test']]
unix_socketname = {sock!r}
unix_socket_mode = 0o660
interface_policy = {{'SOCK': 'AM.PDP-SOCK'}}
policy_bank = {{'AM.PDP-SOCK': {{'protocol': 'AM.PDP', 'auth_required_release': 0}}}}
"""


@dataclass
class Milter:
    proc: subprocess.Popen
    socket: Path
    log: Path
    workdir: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_milter(tmp_path: Path, amavisd_socket: Path, workdir: Path) -> Milter:
    """amavisd-milter in the foreground as nobody (Debian runs it as amavis, the daemon's
    user), its socket in a private folder; stopped by the fixture's finalizer."""
    folder = tmp_path / "milter"
    folder.mkdir()
    os.chown(folder, NOBODY, NOGROUP)
    os.chmod(folder, 0o750)
    sock, log = folder / "milter.sock", tmp_path / "milter.log"
    argv = [MILTER, "-f", "-d", "3", "-s", f"unix:{sock}", "-S", str(amavisd_socket),
            "-w", str(workdir), "-p", str(folder / "milter.pid"), "-t", "60", "-T", "60"]
    if shutil.which("stdbuf"):
        argv = [shutil.which("stdbuf"), "-oL", *argv]     # its log lines as they come
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd="/", user=NOBODY,
                                group=NOGROUP, extra_groups=[])
    milter = Milter(proc, sock, log, workdir)
    try:
        wait_for(lambda: sock.exists() or proc.poll() is not None, 10, "the milter socket")
    except AssertionError:
        stop_milter(milter)
        raise
    if proc.poll() is not None:
        raise AssertionError(f"amavisd-milter exited {proc.returncode}: {milter.log_text()}")
    return milter


def stop_milter(milter: Milter) -> None:
    if milter.proc.poll() is None:
        milter.proc.send_signal(signal.SIGTERM)
        try:
            milter.proc.wait(10)
        except subprocess.TimeoutExpired:
            milter.proc.kill()
            milter.proc.wait(5)


def start(root: Path, sink: Sink) -> tuple[Daemon, Milter]:
    """Our daemon with the AM.PDP-SOCK bank, and amavisd-milter on its socket."""
    sock = root / "home" / "amavisd.sock"
    extra = CONFIG.format(sock=str(sock))
    daemon = start_daemon(base_config(root, free_port(), f"smtp:[127.0.0.1]:{sink.port}",
                                      extra), root)
    try:
        tempbase = root / "home" / "tmp"
        os.chmod(tempbase, 0o750)   # amavisd-milter: "working directory ... is world accessible"
        milter = start_milter(root, sock, tempbase)
    except BaseException:
        daemon.stop()
        raise
    return daemon, milter


@pytest.fixture(scope="module")
def shared():
    """One daemon and milter for the cases that leave both running (stopping the milter
    takes libmilter ~5 s)."""
    root = private_folder("milter-")
    try:
        with Sink() as sink:
            daemon, milter = start(root, sink)
            try:
                yield daemon, milter, sink, root
            finally:
                stop_milter(milter)
                daemon.stop()
    finally:
        if os.environ.get("AMAVISD_KEEP_TEST_DIRS") != "1":
            shutil.rmtree(root, ignore_errors=True)


def private_folder(prefix: str) -> Path:
    """Under the system temp dir, reachable by the daemon user (see conftest's tmp_path)."""
    base = Path(tempfile.gettempdir()) / "amavisd-tests"
    base.mkdir(mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(root, 0o711)
    return root


# ------------------------------------------------------------------ miltertest scripts
def lua_string(text: str) -> str:
    assert "]==]" not in text
    return "[==[" + text + "]==]"


def transaction(qid: str, rcpts: list[str], data: bytes) -> str:
    """Lua for one SMTP transaction as an MTA hands it to a milter (CRLF in the body)."""
    head, _, body = data.decode().partition("\n\n")
    lines = [
        'mt.set_timeout(60)',
        'conn = mt.connect(SOCK, 40, 0.25)',
        'if conn == nil then error("cannot connect to the milter") end',
        'mt.macro(conn, SMFIC_CONNECT, "j", "mx.anchor.test")',
        'if mt.conninfo(conn, "client.anchor.test", "192.0.2.10") ~= nil then'
        ' error("conninfo") end',
        'if mt.helo(conn, "client.anchor.test") ~= nil then error("helo") end',
        f'mt.macro(conn, SMFIC_MAIL, "i", "{qid}", "r", "ESMTP")',
        'if mt.mailfrom(conn, "<alice@anchor.test>") ~= nil then error("mailfrom") end',
    ]
    lines += [f'if mt.rcptto(conn, "<{r}>") ~= nil then error("rcptto") end' for r in rcpts]
    for field in re.split(r"\n(?![ \t])", head):
        name, _, value = field.partition(":")
        lines.append(f"if mt.header(conn, {lua_string(name)}, {lua_string(value.strip())})"
                     ' ~= nil then error("header") end')
    lines += [
        'if mt.eoh(conn) ~= nil then error("eoh") end',
        f'if mt.bodystring(conn, {lua_string(body.replace(chr(10), chr(13) + chr(10)))})'
        ' ~= nil then error("body") end',
        'if mt.eom(conn) ~= nil then error("eom") end',
        'print("reply=" .. string.char(mt.getreply(conn)))',
    ]
    return "\n".join(lines) + "\n"


def check(name: str, expr: str) -> str:
    return f'print("{name}=" .. tostring({expr}))\n'


def miltertest(tmp_path: Path, milter: Milter, script: str, **defs: str) -> dict[str, str]:
    """Run a Lua script; returns what it printed as ``name=value`` pairs."""
    path = tmp_path / "case.lua"
    path.write_text(script + "mt.disconnect(conn)\n")
    argv = [MILTERTEST, "-D", f"SOCK=unix:{milter.socket}", "-s", str(path)]
    for key, value in defs.items():
        argv[1:1] = ["-D", f"{key}={value}"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (f"miltertest failed: {run.stdout}{run.stderr}\n"
                                 f"--- milter log ---\n{milter.log_text()}")
    out = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
    return out


def milter_workdirs(milter: Milter) -> list[str]:
    return sorted(p.name for p in milter.workdir.iterdir() if p.name.startswith("af"))


# ------------------------------------------------------------------ the cases
def test_clean_message_continues_with_our_header(shared):
    daemon, milter, sink, tmp_path = shared
    n_sink = len(sink.messages)
    script = transaction("QID1", ["bob@anchor.test"], CLEAN)
    script += check("x_virus_scanned", 'mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned",'
                    f' "{X_LINE}", 0)')
    script += check("x_virus_scanned_value", 'mt.getheader(conn, "X-Virus-Scanned", 0)')
    script += check("wrong_value", 'mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned",'
                    ' "something else")')
    script += check("quarantine_id", 'mt.eom_check(conn, MT_HDRINSERT, "X-Quarantine-ID")')
    script += check("appended", "mt.eom_check(conn, MT_HDRADD)")
    script += check("changed", "mt.eom_check(conn, MT_HDRCHANGE)")
    got = miltertest(tmp_path, milter, script)
    assert got == {"reply": "c",                        # SMFIR_CONTINUE: the MTA delivers
                   "x_virus_scanned": "true", "x_virus_scanned_value": X_LINE,
                   "wrong_value": "false", "quarantine_id": "false", "appended": "false",
                   "changed": "false"}
    line = wait_for(lambda: [x for x in daemon.logfile_text().splitlines()
                             if " Passed CLEAN " in x], what="the Passed line")[0]
    assert ("AM.PDP-SOCK LOCAL [192.0.2.10] [192.0.2.10] <alice@anchor.test> -> "
            "<bob@anchor.test>") in line
    assert "Queue-ID: QID1, Message-ID: <hello@anchor.test>" in line
    assert len(sink.messages) == n_sink                 # delivery_care_of=client
    log = milter.log_text()
    assert "QID1: return_value=continue" in log
    assert f"QID1: insheader=0 X-Virus-Scanned {X_LINE}" in log
    wait_for(lambda: milter_workdirs(milter) == [], what="the milter to remove its folder")


def test_banned_exe_is_rejected_with_our_reply(shared):
    daemon, milter, sink, tmp_path = shared
    n_sink = len(sink.messages)
    script = transaction("QID2", ["bob@anchor.test"], EXE)
    # the log id is only known once we answered: take it from our log, as an admin would
    script += """
local f = assert(io.open(LOG, "r"))
local text = f:read("*a")
f:close()
local id = string.match(text, "%((%S+)%) Blocked BANNED [^\\n]*Queue%-ID: QID2,")
print("id=" .. tostring(id))
local want = "Reject, id=" .. tostring(id) .. " - BANNED: " .. BANNED
"""
    script += check("reply_exact", 'mt.eom_check(conn, MT_SMTPREPLY, "554", "5.7.0", want)')
    script += check("reply_control", 'mt.eom_check(conn, MT_SMTPREPLY, "554", "5.7.0", '
                    'want .. "x")')
    script += check("x_virus_scanned", 'mt.eom_check(conn, MT_HDRINSERT, "X-Virus-Scanned")')
    got = miltertest(tmp_path, milter, script, LOG=str(tmp_path / "home" / "amavis.log"),
                     BANNED=BANNED)
    log_id = got.pop("id")
    assert re.fullmatch(r"\d{5}-\d\d", log_id), log_id
    assert got == {"reply": "y",                        # SMFIR_REPLYCODE: our 5xx text
                   "reply_exact": "true", "reply_control": "false",
                   "x_virus_scanned": "false"}
    # what the MTA tells the client, as the milter relayed it
    relayed = f"554 5.7.0 Reject, id={log_id} - BANNED: {BANNED}"
    assert f"QID2: setreply={relayed}" in milter.log_text()
    assert "QID2: return_value=reject" in milter.log_text()
    assert f"({log_id}) Blocked BANNED ({BANNED}) {{RejectedInternal,Quarantined}}, " \
           "AM.PDP-SOCK LOCAL [192.0.2.10] [192.0.2.10] <alice@anchor.test> -> <bob@anchor.test>" \
        in daemon.logfile_text()
    assert len(sink.messages) == n_sink
    wait_for(lambda: milter_workdirs(milter) == [], what="the milter's cleanup")


def test_mixed_recipients_delete_the_banned_one(shared):
    """carol loves banned files, bob does not: the milter deletes bob and continues."""
    daemon, milter, sink, tmp_path = shared
    n_sink = len(sink.messages)
    script = transaction("QID3", ["bob@anchor.test", "carol@anchor.test"], EXE)
    script += check("bob_deleted", 'mt.eom_check(conn, MT_RCPTDELETE, "<bob@anchor.test>")')
    script += check("carol_deleted", 'mt.eom_check(conn, MT_RCPTDELETE, '
                    '"<carol@anchor.test>")')
    # a folded field body keeps its LF (spec 4.4: encoded as %0a on the AM.PDP wire)
    script += check("alert", 'mt.eom_check(conn, MT_HDRINSERT, "X-Amavis-Alert", '
                    f'"BANNED, message contains\\n {BANNED}", 0)')
    script += check("quarantine_id", 'mt.eom_check(conn, MT_HDRINSERT, "X-Quarantine-ID")')
    got = miltertest(tmp_path, milter, script)
    assert got == {"reply": "c", "bob_deleted": "true", "carol_deleted": "false",
                   "alert": "true", "quarantine_id": "true"}
    assert "QID3: delrcpt=<bob@anchor.test>" in milter.log_text()
    # bob's rejection after the data cannot be an SMTP reply: alice gets a DSN (3.8)
    wait_for(lambda: len(sink.messages) == n_sink + 1, what="the DSN")
    dsn = sink.messages[-1]
    assert dsn.mail.startswith(b"MAIL FROM:<> ")
    assert [r.split(b" ")[1] for r in dsn.rcpts] == [b"TO:<alice@anchor.test>"]


@pytest.fixture
def own(tmp_path, sink):
    """A daemon and milter of the test's own (it stops the daemon)."""
    daemon, milter = start(tmp_path, sink)
    yield daemon, milter
    stop_milter(milter)
    daemon.stop()


def test_daemon_down_is_a_tempfail(own, tmp_path):
    """With our daemon stopped the milter cannot connect and tells the MTA 451 (the MTA
    keeps the mail and retries): the first message passes, the second is deferred."""
    daemon, milter = own
    got = miltertest(tmp_path, milter, transaction("QID4", ["bob@anchor.test"], CLEAN))
    assert got == {"reply": "c"}
    daemon.stop()
    assert not (tmp_path / "home" / "amavisd.sock").exists()
    script = transaction("QID5", ["bob@anchor.test"], CLEAN)
    script += check("tempfail", 'mt.eom_check(conn, MT_SMTPREPLY, "451", "4.6.0", '
                    '"Content scanner malfunction")')
    got = miltertest(tmp_path, milter, script)
    assert got == {"reply": "y", "tempfail": "true"}
    assert "QID5: could not connect to amavisd socket" in milter.log_text()
    assert "QID5: set reply 451 4.6.0 Content scanner malfunction" in milter.log_text()
    wait_for(lambda: milter_workdirs(milter) == [], what="the milter's cleanup")
