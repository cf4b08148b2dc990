# tests: a private Postfix instance (Debian's postfix package) for the MTA topology tests
"""A private Postfix on loopback ports, and the main.cf/master.cf snippets of the three
amavisd topologies (spec/protocols.md sections 6 and 8, docs/postfix.md).

Why a helper of its own: the topology tests (t/integration/test_postfix.py) and the
bench (bench/postfix.py) both need a real Postfix in front of and behind the daemon,
and docs/postfix.md must show exactly the configuration they run.  So the admin-facing
snippets live here, as functions of the ports, and everything else is the private
instance's plumbing:

* its own ``config_directory`` (``ROOT/etc``: main.cf through ``postconf -c DIR -e``,
  master.cf written here), ``queue_directory`` (``ROOT/spool``) and ``data_directory``
  (``ROOT/data``), its own ``multi_instance_name``/``syslog_name`` and a log file
  (``maillog_file`` through postlogd), so it never touches /etc/postfix or
  /var/spool/postfix;
* ``inet_interfaces = loopback-only``, every listener on an explicit 127.0.0.1 port;
* no DNS: ``smtp_host_lookup = native``, ``smtp_dns_support_level = disabled``,
  ``smtpd_peername_lookup = no``, next hops in brackets;
* ``mydestination`` is empty and the test domain ``anchor.test`` is a relay domain
  whose mail goes to a sink (``relayhost = [127.0.0.1]:SINK``): the sink records the
  envelope and the bytes, which is what the tests assert;
* short queue timers, so a deferred message is retried within seconds.

    with Postfix(root, sink_port=sink.port, snippet=after_queue(p, r)) as pf:
        pf.smtp_port ...; pf.queue(); pf.flush(); pf.wait_log(r"status=sent")

``start()`` is ``postfix -c DIR start``; ``stop()`` is ``postfix -c DIR stop`` and then
waits until no process of the instance is left (found by ``MAIL_CONFIG=DIR`` in
/proc/PID/environ, which Postfix's master passes to every child), killing stragglers by
pid.  Stdlib only, so bench/postfix.py can import it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
AMAVISD_MILTER = shutil.which("amavisd-milter") or "/usr/sbin/amavisd-milter"
INSTANCE = "postfix-amavistest"
HOSTNAME = "postfix.anchor.test"
#: Postfix's queue ids (short form, enable_long_queue_ids = no)
QUEUE_ID = r"[0-9A-F]{6,}"

# The ports docs/postfix.md shows: amavisd's 10024, the re-injection 10025, the milter's.
DOC_AMAVIS_PORT = 10024
DOC_REINJECT_PORT = 10025
DOC_MILTER_PORT = 10029
DOC_MAX_SERVERS = 2            # amavisd's default $max_servers
DOC_CHILD_TIMEOUT = 480        # amavisd's default $child_timeout (8 * 60)


def unavailable() -> str | None:
    """Why a private Postfix cannot run here, or None: it needs root (master binds and
    drops to the postfix user) and Debian's postfix binaries."""
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    for tool in (POSTFIX, POSTCONF, POSTQUEUE):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (Debian package postfix)"
    return None


# --------------------------------------------------------------------------- snippets
def service(name: str, kind: str, private: str, unpriv: str, chroot: str, wakeup: str,
            maxproc: str, command: str, *overrides: str) -> str:
    """One master.cf entry in the usual column layout, ``-o`` overrides indented."""
    head = f"{name:<10} {kind:<5} {private:<7} {unpriv:<7} {chroot:<7} {wakeup:<7} " \
           f"{maxproc:<7} {command}"
    return "\n".join([head, *(f"  -o {o}" for o in overrides)]) + "\n"


#: What the re-injection listener turns off: the content filter (or the mail would loop
#: through amavisd forever), the milters, header/body checks and the recipient lookups
#: (done before amavisd already), and the restrictions and error limits meant for
#: strangers; only loopback may use it.
REINJECTION_OVERRIDES = (
    "content_filter=",
    "smtpd_proxy_filter=",
    "smtpd_milters=",
    "receive_override_options=no_header_body_checks,no_unknown_recipient_checks,"
    "no_milters",
    "smtpd_authorized_xforward_hosts=127.0.0.0/8",
    "mynetworks=127.0.0.0/8",
    "smtpd_client_restrictions=permit_mynetworks,reject",
    "smtpd_helo_restrictions=",
    "smtpd_sender_restrictions=",
    "smtpd_relay_restrictions=permit_mynetworks,reject",
    "smtpd_recipient_restrictions=permit_mynetworks,reject",
    "smtpd_data_restrictions=reject_unauth_pipelining",
    "smtpd_end_of_data_restrictions=",
    "smtpd_restriction_classes=",
    "smtpd_delay_reject=no",
    "smtpd_error_sleep_time=0",
    "smtpd_soft_error_limit=1001",
    "smtpd_hard_error_limit=1000",
    "smtpd_client_connection_count_limit=0",
    "smtpd_client_connection_rate_limit=0",
    "local_header_rewrite_clients=",
    "local_recipient_maps=",
    "relay_recipient_maps=",
)


def reinjection(port: int) -> str:
    """The smtpd amavisd forwards to (``$forward_method``, ``$notify_method``)."""
    return service(f"127.0.0.1:{port}", "inet", "n", "-", "n", "-", "-", "smtpd",
                   "syslog_name=postfix/reinject", *REINJECTION_OVERRIDES)


@dataclass(frozen=True)
class Snippet:
    """What an admin adds for one topology.

    ``main_cf``: main.cf settings; ``entries``: new master.cf entries (the content filter
    feed); ``public_smtpd`` (before-queue only): replaces the ``smtp inet`` entry;
    ``reinjection``: the listener amavisd forwards and sends DSNs to; ``amavisd``: the
    lines of our amavisd.conf (native Python syntax) that go with them."""

    name: str
    main_cf: tuple[tuple[str, str], ...]
    entries: str
    public_smtpd: str
    reinjection: str
    amavisd: str

    def main_text(self) -> str:
        return "".join(f"{k} = {v}\n" for k, v in self.main_cf)

    def master_text(self) -> str:
        return self.public_smtpd + self.entries + self.reinjection


def conf_lines(*pairs: tuple[str, str, str]) -> str:
    """amavisd.conf lines ``name = value`` with aligned comments."""
    width = max(len(f"{k} = {v}") for k, v, c in pairs if c) + 2
    return "".join((f"{f'{k} = {v}':<{width}}# {c}" if c else f"{k} = {v}").rstrip() + "\n"
                   for k, v, c in pairs)


def after_queue(amavis_port: int = DOC_AMAVIS_PORT, reinject_port: int = DOC_REINJECT_PORT,
                max_servers: int = DOC_MAX_SERVERS,
                child_timeout: int = DOC_CHILD_TIMEOUT) -> Snippet:
    """content_filter: Postfix queues the mail first, then its smtp client feeds amavisd
    (at most ``max_servers`` at a time, so no delivery waits for a free child) and waits
    for the reply to the data longer than amavisd may take (``$child_timeout``)."""
    done = max(1200, 2 * child_timeout)
    feed = service("smtp-amavis", "unix", "-", "-", "n", "-", str(max_servers), "smtp",
                   "syslog_name=postfix/amavis",
                   f"smtp_data_done_timeout={done}s",
                   "smtp_send_xforward_command=yes",
                   "smtp_connection_cache_on_demand=no")
    ours = conf_lines(
        ("inet_socket_port", str(amavis_port), "content_filter's port"),
        ("forward_method", f"'smtp:[127.0.0.1]:{reinject_port}'", "the re-injection listener"),
        ("notify_method", f"'smtp:[127.0.0.1]:{reinject_port}'", "DSNs and notifications"),
        ("max_servers", str(max_servers), "= maxproc of smtp-amavis"),
        ("child_timeout", str(child_timeout), f"< smtp_data_done_timeout ({done}s)"))
    return Snippet("after-queue",
                   (("content_filter", f"smtp-amavis:[127.0.0.1]:{amavis_port}"),),
                   feed, "", reinjection(reinject_port), ours)


def before_queue(listen: str = "smtp", amavis_port: int = DOC_AMAVIS_PORT,
                 reinject_port: int = DOC_REINJECT_PORT, max_servers: int = DOC_MAX_SERVERS,
                 child_timeout: int = DOC_CHILD_TIMEOUT, maxproc: int = 20) -> Snippet:
    """smtpd_proxy_filter: the public smtpd hands each message to amavisd while the client
    waits, and passes amavisd's reply on.  ``speed_adjust`` receives the whole message
    first, so a slow client does not hold an amavisd child; the proxy timeout covers a
    whole check (``$child_timeout``) and stays under the 10 minutes an SMTP client waits
    for the reply to its final dot (RFC 5321 4.5.3.2.6)."""
    proxy_timeout = child_timeout + 60
    public = service(listen, "inet", "n", "-", "n", "-", str(maxproc), "smtpd",
                     f"smtpd_proxy_filter=127.0.0.1:{amavis_port}",
                     "smtpd_proxy_options=speed_adjust",
                     f"smtpd_proxy_timeout={proxy_timeout}s")
    ours = conf_lines(
        ("inet_socket_port", str(amavis_port), "smtpd_proxy_filter's port"),
        ("forward_method", f"'smtp:[127.0.0.1]:{reinject_port}'", "the re-injection listener"),
        ("notify_method", f"'smtp:[127.0.0.1]:{reinject_port}'", "DSNs and notifications"),
        ("max_servers", str(max_servers), "sessions beyond this wait for a child"),
        ("child_timeout", str(child_timeout), f"< smtpd_proxy_timeout ({proxy_timeout}s)"),
        ("final_virus_destiny", "D_REJECT", "the client gets our 554"),
        ("final_banned_destiny", "D_REJECT", ""))
    return Snippet("before-queue", (), "", public, reinjection(reinject_port), ours)


def milter(milter_port: int = DOC_MILTER_PORT, reinject_port: int = DOC_REINJECT_PORT,
           max_servers: int = DOC_MAX_SERVERS, child_timeout: int = DOC_CHILD_TIMEOUT,
           socket_path: str = "/var/lib/amavis/amavisd.sock") -> Snippet:
    """smtpd_milters: Postfix asks amavisd-milter, which asks amavisd over AM.PDP; the
    re-injection listener only carries amavisd's DSNs and notifications
    (``$notify_method``).  The content timeout outlasts the milter's own wait for
    amavisd (``milter_args`` -T), which outlasts ``$child_timeout``."""
    main = (("smtpd_milters", f"inet:127.0.0.1:{milter_port}"),
            ("milter_connect_macros", "j {client_name} {daemon_name} v"),
            ("milter_protocol", "6"),
            ("milter_default_action", "tempfail"),
            ("milter_content_timeout", f"{child_timeout + 90}s"))
    ours = conf_lines(
        ("unix_socketname", repr(socket_path), "amavisd-milter -S"),
        ("unix_socket_mode", "0o660", ""),
        ("interface_policy", "{'SOCK': 'AM.PDP-SOCK'}", ""),
        ("policy_bank", "{'AM.PDP-SOCK': {'protocol': 'AM.PDP', 'auth_required_release': 0}}",
         ""),
        ("notify_method", f"'smtp:[127.0.0.1]:{reinject_port}'", "DSNs and notifications"),
        ("max_servers", str(max_servers), "= amavisd-milter -m"),
        ("child_timeout", str(child_timeout), f"< amavisd-milter -T ({child_timeout + 60})"),
        ("final_virus_destiny", "D_REJECT", "the client gets our 554"),
        ("final_banned_destiny", "D_REJECT", ""))
    return Snippet("milter", main, "", "", reinjection(reinject_port), ours)


def milter_args(milter_port: int = DOC_MILTER_PORT,
                amavisd_socket: str = "/var/lib/amavis/amavisd.sock",
                workdir: str = "/var/lib/amavis/tmp", max_servers: int = DOC_MAX_SERVERS,
                child_timeout: int = DOC_CHILD_TIMEOUT) -> list[str]:
    """amavisd-milter's arguments for the milter snippet (docs/milter.md has the rest):
    at most ``max_servers`` requests at a time, and it waits for amavisd (-T) longer than
    a check may take."""
    return ["-s", f"inet:{milter_port}@127.0.0.1", "-S", amavisd_socket, "-w", workdir,
            "-m", str(max_servers), "-T", str(child_timeout + 60)]


def doc_snippets() -> dict[str, str]:
    """The snippets exactly as docs/postfix.md shows them (t/integration/test_postfix.py
    checks that it does); ``python -m t.helpers.postfix`` prints them."""
    aq, bq, mi = after_queue(), before_queue(), milter()
    return {
        "re-injection master.cf": aq.reinjection,
        "after-queue main.cf": aq.main_text(),
        "after-queue master.cf": aq.entries,
        "after-queue amavisd.conf": aq.amavisd,
        "before-queue master.cf": bq.public_smtpd,
        "before-queue amavisd.conf": bq.amavisd,
        "milter main.cf": mi.main_text(),
        "milter amavisd.conf": mi.amavisd,
        "milter amavisd-milter": "amavisd-milter " + " ".join(milter_args()) + "\n",
    }


# ----------------------------------------------------------------------- the instance
#: Postfix's own services, as in Debian's master.cf but nothing chrooted (the private
#: queue directory has no chroot files) and no pipe/local deliveries.
BASE_SERVICES = "".join(service(*row) for row in (
    ("pickup", "unix", "n", "-", "n", "1", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "1", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
))


def instance_main_cf(root: Path, sink_port: int, name: str = INSTANCE) -> list[tuple[str, str]]:
    """The private instance's main.cf (before a topology's settings)."""
    return [
        ("compatibility_level", "3.6"),
        ("queue_directory", str(root / "spool")),
        ("data_directory", str(root / "data")),
        ("multi_instance_name", name),
        ("syslog_name", name),
        ("maillog_file", str(root / "maillog")),
        ("maillog_file_prefixes", str(root)),
        ("inet_interfaces", "loopback-only"),
        ("inet_protocols", "ipv4"),
        ("myhostname", HOSTNAME),
        ("mydomain", "anchor.test"),
        ("myorigin", "$myhostname"),
        ("mydestination", ""),
        ("relay_domains", "anchor.test"),
        ("relayhost", f"[127.0.0.1]:{sink_port}"),
        ("mynetworks", "127.0.0.0/8"),
        ("smtp_host_lookup", "native"),
        ("lmtp_host_lookup", "native"),
        ("smtp_dns_support_level", "disabled"),
        ("smtpd_peername_lookup", "no"),
        ("alias_maps", ""),
        ("alias_database", ""),
        ("local_recipient_maps", ""),
        ("biff", "no"),
        ("append_dot_mydomain", "no"),
        ("queue_run_delay", "1s"),
        ("minimal_backoff_time", "1s"),
        ("maximal_backoff_time", "2s"),
        ("delay_warning_time", "0h"),
        ("smtp_connect_timeout", "5s"),
        ("smtpd_banner", "$myhostname ESMTP Postfix"),
    ]


class PostfixError(RuntimeError):
    """A Postfix command failed; the message holds its output and the log's tail."""


def _environ_of(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it (the master daemonizes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_port(port: int, timeout: float = 10.0) -> str | None:
    """The 220 greeting of 127.0.0.1:port, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(5)
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    return banner.decode("ascii", "replace").strip()
        time.sleep(0.05)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postfix:
    """One private Postfix instance under `root` (created if missing)."""

    def __init__(self, root: Path | str, sink_port: int, snippet: Snippet | None = None, *,
                 smtp_port: int | None = None, name: str = INSTANCE,
                 main_cf: Iterable[tuple[str, str]] = ()) -> None:
        self.root = Path(root)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.log_path = self.root / "maillog"
        self.sink_port = sink_port
        self.snippet = snippet
        self.name = name
        self.extra_main = list(main_cf)
        self.smtp_port = smtp_port or free_port()
        self.started = False

    # ----------------------------------------------------------------- configuration
    def write_config(self) -> None:
        """main.cf through ``postconf -e`` (the private settings, then the topology's,
        then the caller's), master.cf written whole."""
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")   # master.lock, caches
        (self.config_dir / "main.cf").write_text("# private test instance: t/helpers/postfix.py\n")
        settings = instance_main_cf(self.root, self.sink_port, self.name)
        if self.snippet:
            settings += list(self.snippet.main_cf)
        self.postconf(*(f"{k} = {v}" for k, v in settings + self.extra_main))
        public = service(f"127.0.0.1:{self.smtp_port}", "inet", "n", "-", "n", "-", "-",
                         "smtpd")
        if self.snippet and self.snippet.public_smtpd:
            public = self.snippet.public_smtpd
        rest = (self.snippet.entries + self.snippet.reinjection) if self.snippet else ""
        (self.config_dir / "master.cf").write_text(
            "# private test instance: t/helpers/postfix.py\n" + public + BASE_SERVICES + rest)

    def _run(self, argv: Sequence[str], timeout: float = 30, check: bool = True,
             ) -> subprocess.CompletedProcess:
        run = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL, check=False)
        if check and run.returncode != 0:
            raise PostfixError(f"{' '.join(argv)} exited {run.returncode}: "
                               f"{run.stdout}{run.stderr}\n--- maillog tail ---\n"
                               + "\n".join(self.log_text().splitlines()[-20:]))
        return run

    def postconf(self, *assignments: str) -> None:
        """``postconf -c DIR -e 'name = value' ...``"""
        if assignments:
            self._run([POSTCONF, "-c", str(self.config_dir), "-e", *assignments])

    def postconf_value(self, name: str) -> str:
        return self._run([POSTCONF, "-c", str(self.config_dir), "-h", name]).stdout.strip()

    def check(self) -> str:
        """``postfix -c DIR check``: raises on failure, returns what it printed (warnings)
        plus the warnings it logged."""
        before = len(self.log_text())
        run = self._run([POSTFIX, "-c", str(self.config_dir), "check"])
        logged = [x for x in self.log_text()[before:].splitlines()
                  if " warning: " in x or " fatal: " in x]
        return (run.stdout + run.stderr + "".join(x + "\n" for x in logged)).strip()

    # ------------------------------------------------------------------- processes
    def pids(self) -> list[int]:
        """Every process of this instance: master and children carry MAIL_CONFIG=DIR."""
        mark = b"MAIL_CONFIG=" + str(self.config_dir).encode() + b"\0"
        return sorted(int(p) for p in os.listdir("/proc")
                      if p.isdigit() and mark in _environ_of(int(p)))

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def start(self, timeout: float = 15.0) -> None:
        """Write the config and ``postfix -c DIR start``; returns once the public smtpd
        greets."""
        self.write_config()
        self.started = True
        self._run([POSTFIX, "-c", str(self.config_dir), "start"], timeout=timeout)
        if wait_port(self.smtp_port, timeout) is None:
            self.stop()
            raise PostfixError(f"Postfix did not greet on 127.0.0.1:{self.smtp_port}:\n"
                               + self.log_text()[-3000:])

    def reload(self) -> None:
        self._run([POSTFIX, "-c", str(self.config_dir), "reload"])

    def stop(self, timeout: float = 10.0) -> None:
        """``postfix -c DIR stop``, then wait until no process of the instance is left;
        leftovers are killed by pid.  Safe to call twice."""
        if not self.started:
            return
        if self.master_pid() is not None:
            self._run([POSTFIX, "-c", str(self.config_dir), "stop"], timeout=timeout,
                      check=False)
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- what it says
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match:
        """The first match of regex `pattern` in the log (from offset `start`)."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            found = rx.search(self.log_text(), start)
            if found:
                return found
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_text()[start:].splitlines()[-30:])
                raise AssertionError(f"no {pattern!r} in the Postfix log:\n{tail}")
            time.sleep(0.05)

    def queue(self) -> str:
        """``postqueue -c DIR -p``: what ``mailq`` shows the admin."""
        return self._run([POSTQUEUE, "-c", str(self.config_dir), "-p"]).stdout

    def queue_ids(self) -> list[str]:
        """The queued messages' ids (``*`` active, ``!`` on hold).  A message moving from
        the deferred to the active queue during the scan is listed twice by postqueue:
        each id is returned once."""
        return sorted(set(re.findall(rf"^({QUEUE_ID})[*!]?\s", self.queue(), re.M)))

    def flush(self) -> None:
        """``postqueue -c DIR -f``: retry every deferred message now."""
        self._run([POSTQUEUE, "-c", str(self.config_dir), "-f"])


def main() -> None:
    """Print the snippets docs/postfix.md shows."""
    for name, text in doc_snippets().items():
        print(f"--- {name}\n{text}")


if __name__ == "__main__":
    main()
