# tests: listening sockets: $unix_socket_mode, stale and foreign files at the socket path
"""spec/protocols.md 2.1 (``$unix_socket_mode``) and what a drop-in must do with the file
at ``$unix_socketname`` on a cold start (docs/differences.md #41).

The first half calls ``amavisd.sockets`` directly; the second starts the real daemon
(t/helpers/daemon.py), which binds as root and hands the sockets to children running
as ``nobody``, the path where the mode used to be lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from amavisd import sockets
from amavisd.errors import BootError
from t.helpers.daemon import DaemonStartError, free_port, start_daemon


def stale_socket(path: Path) -> tuple[int, int]:
    """A socket file nobody listens on, as a SIGKILLed daemon leaves it."""
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert refused(path)
    return st.st_dev, st.st_ino


def refused(path: Path) -> bool:
    """Whether connecting to ``path`` is refused: a socket file with no listener."""
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return True
    return False


def ask_policy(path: Path, timeout: float = 10.0) -> bytes:
    """One AM.PDP ``smtpd_access_policy`` request: the cheapest proof that we serve."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(b"request=smtpd_access_policy\n\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf


def close_all(specs) -> None:
    for spec in specs:
        if spec.sock is not None:
            spec.sock.close()


# ------------------------------------------------------------------- the module itself
def test_bind_applies_the_mode_and_notes_the_file(tmp_path):
    path = tmp_path / "a.sock"
    specs = sockets.parse_entry(f"unix:{path}", [])
    sockets.bind_all(specs, None, 0o640)
    try:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert specs[0].mode == 0o640
        assert specs[0].inode == (st.st_dev, st.st_ino)
    finally:
        close_all(specs)


def test_stale_socket_is_replaced(tmp_path):
    path = tmp_path / "a.sock"
    stale_socket(path)
    specs = sockets.parse_entry(f"unix:{path}", [])
    sockets.bind_all(specs, None, 0o600)
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert not refused(path)                  # a listening socket now
    finally:
        close_all(specs)


def test_live_socket_is_not_taken_over(tmp_path):
    path = tmp_path / "a.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen(1)
    inode = os.lstat(path).st_ino
    try:
        specs = sockets.parse_entry(f"unix:{path}", [])
        with pytest.raises(BootError) as err:
            sockets.bind_all(specs, None, None)
        assert str(err.value) == (f"cannot bind {path}|unix: {path} is in use by a "
                                  "running process")
        assert os.lstat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))             # still the other one's
    finally:
        other.close()


@pytest.mark.parametrize("kind", ["file", "symlink", "dangling symlink", "folder", "fifo"])
def test_a_non_socket_is_never_removed(tmp_path, kind):
    path = tmp_path / "a.sock"
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me\n")
    if kind == "file":
        path.write_bytes(b"not a socket\n")
    elif kind == "symlink":
        path.symlink_to(target)
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "folder":
        path.mkdir()
        (path / "inside").write_bytes(b"x")
    else:
        os.mkfifo(path)
    before = os.lstat(path)
    specs = sockets.parse_entry(f"unix:{path}", [])
    with pytest.raises(BootError) as err:
        sockets.bind_all(specs, None, 0o660)
    assert str(err.value) == (f"cannot bind {path}|unix: {path} exists and is not a socket "
                              "(not removing it)")
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (
        before.st_ino, before.st_mode, before.st_mtime_ns)
    assert target.read_bytes() == b"keep me\n"
    if kind == "file":
        assert path.read_bytes() == b"not a socket\n"
    if kind == "folder":
        assert (path / "inside").read_bytes() == b"x"


def test_exit_removes_only_our_own_socket(tmp_path):
    path = tmp_path / "a.sock"
    specs = sockets.parse_entry(f"unix:{path}", [])
    sockets.bind_all(specs, None, None)
    close_all(specs)
    os.rename(path, tmp_path / "ours.sock")        # kept, so its inode is not reused
    newer = stale_socket(path)                     # another instance's socket now
    sockets.remove_unix_file(specs[0])
    st = os.lstat(path)
    assert (st.st_dev, st.st_ino) == newer
    os.unlink(path)
    specs = sockets.parse_entry(f"unix:{path}", [])
    sockets.bind_all(specs, None, None)
    close_all(specs)
    sockets.remove_unix_file(specs[0])
    assert not path.exists()


# ------------------------------------------------------------------- the real daemon
@pytest.fixture
def home(request):
    """A folder the daemon user can reach, with a short path (sun_path is 108 bytes)."""
    base = Path(tempfile.gettempdir()) / "amavisd-tests"
    base.mkdir(mode=0o711, exist_ok=True)
    os.chmod(base, 0o711)
    path = Path(tempfile.mkdtemp(prefix="sock-", dir=base))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(folder: Path, sock: Path, mode: str = "0o660") -> str:
    return f"""
daemon_user = 'nobody'
daemon_group = 'nogroup'
MYHOME = {str(folder / 'home')!r}
TEMPBASE = MYHOME + '/tmp'
inet_socket_port = {free_port()}
inet_socket_bind = '127.0.0.1'
LOGFILE = MYHOME + '/amavis.log'
DO_SYSLOG = 0
log_level = 2
max_servers = 2
unix_socketname = {str(sock)!r}
unix_socket_mode = {mode}
interface_policy = {{'SOCK': 'AM.PDP-SOCK'}}
policy_bank = {{'AM.PDP-SOCK': {{'protocol': 'AM.PDP'}}}}
"""


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_daemon_keeps_unix_socket_mode_in_every_child(home):
    """Twisted chmods an adopted Unix socket to 0666 in each child unless told the mode."""
    sock = home / "home" / "amavisd.sock"
    with start_daemon(config(home, sock), home / "a") as daemon:
        kids = wait_for(lambda: len(daemon.children()) == 2 and daemon.children(),
                        what="two children")
        assert ask_policy(sock) == b"action=DUNNO\n\n"     # served by a child
        st = os.stat(sock)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_uid == 65534                           # the daemon user owns it
        os.kill(kids[0], signal.SIGKILL)                    # a replacement adopts it again
        wait_for(lambda: len(daemon.children()) == 2 and kids[0] not in daemon.children(),
                 what="a replacement child")
        assert ask_policy(sock) == b"action=DUNNO\n\n"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        daemon.stop()
        assert not sock.exists()                            # removed at exit


def test_stale_socket_of_a_killed_daemon_is_replaced(home):
    sock = home / "home" / "amavisd.sock"
    conf = config(home, sock, "0o600")
    first = start_daemon(conf, home / "a")
    try:
        wait_for(lambda: len(first.children()) == 2, what="two children")
        kids = first.children()
        first.proc.kill()                                   # SIGKILL: no cleanup at all
        first.proc.wait(10)
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
    finally:
        first.stop()
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)           # left behind
    wait_for(lambda: refused(sock), what="the killed daemon's socket to refuse")
    with start_daemon(conf.replace(f"{first.port}", f"{free_port()}"), home / "b") as second:
        assert ask_policy(sock) == b"action=DUNNO\n\n"
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        assert f"removing stale socket {sock} (nobody listens on it)" in second.logfile_text()


def test_live_socket_of_a_running_daemon_is_left_alone(home):
    sock = home / "home" / "amavisd.sock"
    conf = config(home, sock)
    with start_daemon(conf, home / "a") as first:
        inode = os.lstat(sock).st_ino
        with pytest.raises(DaemonStartError) as err:
            start_daemon(conf.replace(f"{first.port}", f"{free_port()}"), home / "b",
                         timeout=15)
        assert "exited with status 1" in str(err.value)
        assert f"cannot bind {sock}|unix: {sock} is in use by a running process" \
            in str(err.value)
        assert os.lstat(sock).st_ino == inode
        assert ask_policy(sock) == b"action=DUNNO\n\n"     # the first one still serves


def test_regular_file_at_the_socket_path_stops_the_start(home):
    sock = home / "home" / "amavisd.sock"
    sock.parent.mkdir(parents=True)
    sock.write_bytes(b"an admin's file\n")
    with pytest.raises(DaemonStartError) as err:
        start_daemon(config(home, sock), home / "a", timeout=15)
    assert "exited with status 1" in str(err.value)
    assert (f"cannot bind {sock}|unix: {sock} exists and is not a socket (not removing it)"
            in str(err.value))
    assert sock.read_bytes() == b"an admin's file\n"
    log = (home / "home" / "amavis.log").read_text()
    assert f"(!!)cannot bind {sock}|unix: {sock} exists and is not a socket" in log
