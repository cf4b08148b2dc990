"""The embedded demo config used by ``amavisd demo``: try the daemon with no MTA.

It listens on 127.0.0.1:10024 and writes every passed message as a BSMTP file
into ``/tmp/amavisd-demo/out`` (or ``$AMAVISD_DEMO_HOME/out``), so a first-time user
can send a message with swaks or smtplib and look at what the filter did.  The
folder is under the temp directory, not the current one, because the daemon drops
root to ``nobody``, which cannot enter most home folders.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from amavisd.checks.banned import DEBIAN_BANNED_FILENAME_RE
from amavisd.constants import D_DISCARD


def demo_home() -> str:
    default = os.path.join(tempfile.gettempdir(), "amavisd-demo")
    return os.path.abspath(os.environ.get("AMAVISD_DEMO_HOME", default))


def demo_settings() -> dict[str, Any]:
    home = demo_home()
    settings: dict[str, Any] = {
        "MYHOME": home,
        "TEMPBASE": f"{home}/tmp",
        "db_home": f"{home}/db",
        "QUARANTINEDIR": f"{home}/quarantine",
        "enable_db": 1,
        "inet_socket_port": 10024,
        "inet_socket_bind": ["127.0.0.1"],
        "myhostname": "amavis-demo.localhost",
        "mydomain": "localhost",
        "local_domains_acl": [".localhost", "example.com"],
        "forward_method": f"bsmtp:{home}/out/%m.bsmtp",
        "notify_method": f"bsmtp:{home}/out/notify-%m.bsmtp",
        "max_servers": 2,
        "DO_SYSLOG": 0,
        "log_level": 1,
        "pid_file": f"{home}/amavisd.pid",
        # as Debian's default: no virus or spam scanner, so no X-Virus-Scanned field
        "bypass_virus_checks_maps": [1],
        "bypass_spam_checks_maps": [1],
        "banned_filename_re": DEBIAN_BANNED_FILENAME_RE,
        "final_banned_destiny": D_DISCARD,
    }
    if os.geteuid() == 0:
        settings["daemon_user"] = "nobody"
        settings["daemon_group"] = "nogroup"
    return settings


def prepare_demo_dirs(uid: int | None, gid: int | None) -> None:
    """Make the demo's folders, owned by the daemon user when we start as root."""
    home = demo_home()
    for sub in ("", "tmp", "db", "quarantine", "out"):
        path = os.path.join(home, sub)
        os.makedirs(path, mode=0o750, exist_ok=True)
        if uid is not None:
            os.chown(path, uid, gid if gid is not None else -1)


DEMO_BANNER = """\
amavisd demo: listening on {where}, passed mail goes to {home}/out/*.bsmtp
Send a test message from another terminal, for example:
  swaks --server {where} --from alice@example.com --to bob@example.com
or
  python3 -c "import smtplib; smtplib.SMTP('{host}', {port}).sendmail(
      'alice@example.com', ['bob@example.com'], 'Subject: hello\\n\\nhi\\n')"
then look at {home}/out/ and the log below.  Ctrl-C stops the demo.
"""
