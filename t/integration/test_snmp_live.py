# tests: amavisd-agent --snmp against the counters a running daemon wrote
"""After known traffic through the real daemon, snmpget by AMAVIS-MIB name returns it.

Monitoring issue: "after sending N messages of known kinds through the daemon,
snmpget/snmpwalk -v2c -m +AMAVIS-MIB return the expected counter values by name".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from t.integration.conftest import Client, message, send_message, wait_for
from t.integration.test_golden import PROFILE_PASS

REPO = Path(__file__).resolve().parents[2]
MIBDIRS = f"+{REPO / 'mibs'}:{REPO / 't' / 'data' / 'mibs'}"
BANNED = (b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n",
          b"--XX\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XX\r\n"
          b"Content-Type: application/octet-stream; name=run.exe\r\n\r\nMZ\r\n--XX--\r\n")

pytestmark = pytest.mark.skipif(not shutil.which("snmpget"),
                                reason="net-snmp tools (Debian package snmp) are not installed")


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_snmpget_after_real_traffic(amavisd, sink, tmp_path):
    daemon = amavisd(PROFILE_PASS)
    client = Client(daemon.port)
    client.reply()
    for n in range(3):                                        # 3 clean, 1 recipient each
        send_message(client, "alice@anchor.test", ["bob@anchor.test"], message(f"c{n}"),
                     ehlo="EHLO c.anchor.test" if n == 0 else "")
    head, body = BANNED
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                         message("banned", extra=head, body=body), ehlo="")
    assert reply[0].startswith("250 2.7.0 Ok, discarded"), reply
    client.cmd("QUIT")
    db_home = tmp_path / "home" / "db"
    port = free_udp_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "amavisd-agent"),
                                                       str(REPO)]))
    log = tmp_path / "agent.log"
    with open(log, "w") as err:
        agent = subprocess.Popen([sys.executable, "-m", "amavisd_agent.main", "--snmp",
                                  f"127.0.0.1:{port}", "--db-home", str(db_home)],
                                 env=env, stderr=err, text=True)
    try:
        names = ["inMsgs", "contentCleanMsgs", "contentBannedMsgs", "quarBannedMsgs",
                 "inMsgsStatusDiscarded"]

        def ask():
            out = subprocess.run(["snmpget", "-v2c", "-c", "public", "-t", "0.5", "-r", "0",
                                  "-M", MIBDIRS, "-m", "AMAVIS-MIB", "-Oqv",
                                  f"127.0.0.1:{port}", *[f"AMAVIS-MIB::{n}.0" for n in names]],
                                 capture_output=True, text=True, timeout=10)
            return out.stdout.split() if out.returncode == 0 else None

        values = wait_for(lambda: (v := ask()) and v[0] == "4" and v, timeout=20,
                          what="the agent to answer with 4 messages")
        assert values == ["4", "3", "1", "1", "1"], dict(zip(names, values, strict=True))
    finally:
        agent.terminate()
        agent.wait(10)
    assert "Traceback" not in log.read_text()
