"""Self-test of t/helpers/daemon.py against a tiny fake daemon.

Why: the integration tests of the real daemon will rely on this helper to start, find
and stop processes; a bug here would show up as flaky or hanging tests elsewhere.  The
fake is a one-file prefork SMTP responder with the same command line as amavisd
(``-c CONF [-m N] foreground``), so the helper is tested before the daemon exists.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest

from t.helpers.daemon import (
    DaemonStartError,
    config_values,
    free_port,
    running_daemon,
    start_daemon,
)

FAKE = r'''
import os, signal, socket, sys, time

args = sys.argv[1:]
conf = args[args.index("-c") + 1]
nkids = int(args[args.index("-m") + 1]) if "-m" in args else 2
assert args[-1] == "foreground", args

class NS(dict):
    def __missing__(self, key):
        return None

ns = NS()
exec(open(conf).read(), {}, ns)
print("fake started, port", ns["inet_socket_port"], flush=True)
if "--die" in args:
    print("fake: fatal config error on purpose", flush=True)
    sys.exit(3)
if "--silent" in args:
    time.sleep(60)
    sys.exit(0)

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ns["inet_socket_bind"] or "127.0.0.1", int(ns["inet_socket_port"])))
srv.listen(16)

def child():
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        c, _ = srv.accept()
        c.sendall(b"220 fake ESMTP\r\n")
        f = c.makefile("rb")
        for line in f:
            if line.upper().startswith(b"QUIT"):
                c.sendall(b"221 bye\r\n")
                break
            c.sendall(b"250 ok\r\n")
        c.close()

kids = []
for _ in range(nkids):
    pid = os.fork()
    if pid == 0:
        child()
    kids.append(pid)

def term(*_):
    for k in kids:
        os.kill(k, signal.SIGTERM)
    for k in kids:
        os.waitpid(k, 0)
    print("fake stopped", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if "--ignore-term" in args else term)
signal.signal(signal.SIGUSR1, lambda *a: print("fake got USR1", flush=True))
while True:
    signal.pause()
'''


def _config(tmp_path: Path, port: int) -> str:
    home = tmp_path / "home"
    return (f"daemon_user = 'nobody'\n"
            f"MYHOME = {str(home)!r}\n"
            f"TEMPBASE = MYHOME + '/tmp'\n"
            f"final_virus_destiny = D_DISCARD\n"
            f"inet_socket_bind = '127.0.0.1'\n"
            f"inet_socket_port = {port}\n")


@pytest.fixture
def fake(tmp_path: Path) -> tuple[str, str]:
    script = tmp_path / "fake_amavisd.py"
    script.write_text(FAKE)
    return (sys.executable, str(script))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); treat it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_config_values_follow_assignments_and_tolerate_unknown_names() -> None:
    vals = config_values("MYHOME = '/x'\nTEMPBASE = MYHOME + '/tmp'\n"
                         "final_virus_destiny = D_DISCARD\nthis is not python\n"
                         "inet_socket_port = [10024, 10026]\n")
    assert vals["TEMPBASE"] == "/x/tmp"
    assert vals["final_virus_destiny"] is None
    assert vals["inet_socket_port"] == [10024, 10026]


def test_config_values_skip_failing_statement() -> None:
    vals = config_values("a = 1\nb = undefined_func(2)\nc = a + 1\n")
    assert vals["a"] == 1 and vals["c"] == 2 and "b" not in vals


def test_start_children_signal_stop(tmp_path: Path, fake: tuple[str, str]) -> None:
    port = free_port()
    d = start_daemon(_config(tmp_path, port), tmp_path, ("-m", "3"), argv_prefix=fake)
    try:
        assert d.banner.startswith("220")
        assert d.port == port and d.host == "127.0.0.1"
        st = os.stat(tmp_path / "amavisd.conf")
        assert stat.S_IMODE(st.st_mode) == 0o644
        home = tmp_path / "home"
        assert (home / "tmp").is_dir()
        if os.geteuid() == 0:
            assert st.st_uid == 0
            nobody = pwd.getpwnam("nobody").pw_uid
            assert os.stat(home).st_uid == nobody
            assert os.stat(home / "tmp").st_uid == nobody
        kids = d.children()
        assert len(kids) == 3
        d.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while "fake got USR1" not in d.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "fake got USR1" in d.log_text()
        with socket.create_connection(("127.0.0.1", port), 2) as s:
            assert s.recv(100).startswith(b"220")
    finally:
        rc = d.stop()
    assert rc == 0
    assert "fake stopped" in d.log_text()
    assert all(_wait_gone(k) for k in kids)
    assert d.stop() == 0  # second stop is harmless


def test_start_failure_reports_log_tail(tmp_path: Path, fake: tuple[str, str]) -> None:
    with pytest.raises(DaemonStartError, match="fatal config error on purpose"):
        start_daemon(_config(tmp_path, free_port()), tmp_path, ("--die",), argv_prefix=fake)


def test_start_timeout(tmp_path: Path, fake: tuple[str, str]) -> None:
    t0 = time.monotonic()
    with pytest.raises(DaemonStartError, match="did not answer 220"):
        start_daemon(_config(tmp_path, free_port()), tmp_path, ("--silent",),
                     argv_prefix=fake, timeout=1.5)
    assert time.monotonic() - t0 < 10


def test_stop_escalates_to_kill(tmp_path: Path, fake: tuple[str, str]) -> None:
    d = start_daemon(_config(tmp_path, free_port()), tmp_path, ("--ignore-term",),
                     argv_prefix=fake)
    kids = d.children()
    assert len(kids) == 2
    rc = d.stop(timeout=1)
    assert rc == -signal.SIGKILL
    assert all(_wait_gone(k) for k in kids)


def test_context_manager_stops(tmp_path: Path, fake: tuple[str, str]) -> None:
    with running_daemon(_config(tmp_path, free_port()), tmp_path, argv_prefix=fake) as d:
        pid = d.pid
        assert d.alive()
    assert not d.alive()
    assert _wait_gone(pid)
