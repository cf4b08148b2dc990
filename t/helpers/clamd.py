"""Start a private clamd (Debian's /usr/sbin/clamd) with a signature database we write.

    from t.helpers.clamd import ClamdServer, clamd_available

    with ClamdServer(tmp_path) as clamd:       # started, answers PING
        clamd.socket_path, clamd.tcp_port      # LocalSocket and TCPSocket (127.0.0.1)
        clamd.stop(); clamd.start()            # a restart keeps both addresses

The database is the anchor's (shared/anchor/setup.sh): EICAR as an MD5 ``.hdb``
entry (``Win.Test.EICAR_HDB-1``) and as an ``.ndb`` body pattern
(``Eicar-Test-Signature``, which also catches EICAR followed by a newline), and the
MD5 of clamav-testfiles' ``clam.exe`` (``Clamav.Test.File-6``).  clamd reports
signatures from a local database with the suffix ``.UNOFFICIAL``, as in the golden
outputs.  freshclam is never run (no network in tests).  The clamd config has
``Foreground yes`` and no ``User``: it runs as whoever starts it (root in our
test containers), so it can read the daemon's parts folders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from t.helpers.daemon import free_port

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
CLAMSCAN = shutil.which("clamscan") or "/usr/bin/clamscan"
TESTFILES = Path("/usr/share/clamav-testfiles")
#: The EICAR test string (68 bytes), assembled so this file is not itself "infected".
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR" + b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
START_TIMEOUT = 30.0


def clamd_available() -> bool:
    return os.access(CLAMD, os.X_OK) and (TESTFILES / "clam.exe").is_file()


def write_database(folder: Path) -> Path:
    """The anchor's tiny signature DB (setup.sh) in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    clam = (TESTFILES / "clam.exe").read_bytes()
    (folder / "test.hdb").write_text(
        f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Win.Test.EICAR_HDB-1\n"
        f"{hashlib.md5(clam).hexdigest()}:{len(clam)}:Clamav.Test.File-6\n")
    (folder / "test.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


class ClamdServer:
    """One private clamd: a Unix socket in ``folder`` and a TCP port on 127.0.0.1."""

    def __init__(self, folder: Path, *, tcp_port: int | None = None) -> None:
        self.folder = Path(folder) / "clamd"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.db = write_database(self.folder / "db")
        self.socket_path = str(self.folder / "clamd.sock")
        self.tcp_port = tcp_port or free_port()
        self.conf = self.folder / "clamd.conf"
        (self.folder / "tmp").mkdir(exist_ok=True)
        self.conf.write_text(
            f"LocalSocket {self.socket_path}\nLocalSocketMode 666\nFixStaleSocket yes\n"
            f"TCPSocket {self.tcp_port}\nTCPAddr 127.0.0.1\n"
            f"Foreground yes\nLogFile {self.folder / 'clamd.log'}\nLogTime yes\n"
            f"TemporaryDirectory {self.folder / 'tmp'}\nDatabaseDirectory {self.db}\n"
            "MaxThreads 4\nSelfCheck 0\nScanMail yes\nScanArchive yes\nScanPE yes\n"
            "ScanOLE2 yes\nScanPDF yes\nScanHTML yes\nBytecode no\n"
            "StreamMaxLength 100M\nMaxFileSize 100M\nMaxScanSize 200M\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from amavisd.scanners import clamd

        if self.running:
            return
        out = open(self.folder / "clamd.stdout", "ab")
        self.proc = subprocess.Popen([CLAMD, "-c", str(self.conf)], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if os.path.exists(self.socket_path) and clamd.ping(self.socket_path, 2.0) \
                    and clamd.ping(("127.0.0.1", self.tcp_port), 2.0):
                return
            time.sleep(0.1)
        log = (self.folder / "clamd.stdout").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"clamd did not answer PING: {log}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the clamd we started (by its pid), SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
