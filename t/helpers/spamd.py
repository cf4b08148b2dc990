# tests: t/checks/test_spam.py, t/integration/test_spam.py
"""Private spamd and rspamd instances for the spam tests.

``running_spamd()`` starts Debian's ``/usr/sbin/spamd`` on a free loopback port
with ``--local`` (no network tests), ``-x`` (no per-user config) and, as root,
``-u nobody``; it waits until spamd answers PING (a few seconds: SpamAssassin
compiles its rules).  ``running_rspamd()`` starts ``rspamd -f`` with a private
configuration folder (only the normal worker, on a free port, console logging)
and waits for ``/ping``.  Both stop the process they started, by its pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from t.helpers.daemon import free_port

SPAMD = "/usr/sbin/spamd"
RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
START_TIMEOUT = 40.0


@dataclass
class Instance:
    """A started daemon: where it listens and its process."""

    port: int
    process: subprocess.Popen
    folder: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace") if path.exists() else ""


def spamd_available() -> bool:
    return os.access(SPAMD, os.X_OK)


def rspamd_available() -> bool:
    return os.access(RSPAMD, os.X_OK)


def _ping_spamd(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in sock.recv(256)
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def running_spamd() -> Iterator[Instance]:
    """A private spamd on 127.0.0.1:<free port>; stopped (by pid) on exit."""
    folder = Path(tempfile.mkdtemp(prefix="spamd-"))
    os.chmod(folder, 0o755)
    port = free_port()
    argv = [SPAMD, "--local", "-x", "-i", "127.0.0.1", "-p", str(port), "-A", "127.0.0.1",
            "--min-children=1", "--max-children=2", "--min-spare=1", "--max-spare=1",
            "-s", str(folder / "log"), "-r", str(folder / "spamd.pid")]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]
    log = open(folder / "stderr", "wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _ping_spamd(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spamd did not start: "
                                   + (folder / "stderr").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield Instance(port, process, folder)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


RSPAMD_LOCAL = {
    "worker-normal.inc": 'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n',
    "worker-controller.inc": "enabled = false;\n",
    "worker-proxy.inc": "enabled = false;\n",
    "worker-fuzzy.inc": "enabled = false;\n",
    "logging.inc": 'type = "console";\nlevel = "error";\n',
    "options.inc": "dns {{ timeout = 0.2s; retransmits = 1; }}\n",
}


@contextlib.contextmanager
def running_rspamd() -> Iterator[Instance]:
    """A private rspamd (normal worker only) on 127.0.0.1:<free port>."""
    folder = Path(tempfile.mkdtemp(prefix="rspamd-"))
    port = free_port()
    local = folder / "local.d"
    for sub in ("local.d", "override.d", "db", "run", "log"):
        (folder / sub).mkdir()
    for name, text in RSPAMD_LOCAL.items():
        (local / name).write_text(text.format(port=port))
    argv = [RSPAMD, "-f", f"--var=LOCAL_CONFDIR={folder}", f"--var=DBDIR={folder}/db",
            f"--var=RUNDIR={folder}/run", f"--var=LOGDIR={folder}/log"]
    if os.geteuid() == 0:
        import pwd
        user = "_rspamd"
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            argv.append("--insecure")
        else:
            for path in [folder, *folder.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv += ["-u", user, "-g", user]
    log = open(folder / "stderr", "wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rspamd did not start: "
                                   + (folder / "stderr").read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield Instance(port, process, folder)
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
