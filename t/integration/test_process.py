# tests: amavisd/master.py, amavisd/child.py (the daemon's processes and signals)
"""Process model: one session per child, crashes, HUP, TERM, recycling, memory."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from amavisd.stats import StatsSegment
from t.integration.conftest import Client, message, send_message, wait_for


def proc_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def vm_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_titles_and_one_child_per_session(amavisd):
    """protocols.md 1.8 titles; a busy child does not accept a second connection."""
    daemon = amavisd(args=("-m", "2"))
    kids = wait_for(lambda: len(daemon.children()) == 2 and daemon.children())
    assert proc_title(daemon.pid).endswith("(master)")
    first = Client(daemon.port)
    first.reply()
    first.cmd("EHLO a.anchor.test")
    second = Client(daemon.port)
    assert second.reply()[0].startswith("220 ")
    titles = sorted(proc_title(p) for p in kids)
    assert all(re.search(r"\(ch\d+-(idle|avail|accept)\)$", t) for t in titles), titles
    third = Client(daemon.port, timeout=1.5)
    with pytest.raises(TimeoutError):
        third.line()                      # both children busy: it waits in the backlog
    first.cmd("QUIT")
    assert third.reply()[0].startswith("220 ")   # the freed child takes it


def test_kill9_mid_data_gives_no_2xx_and_a_fresh_child(amavisd, sink):
    """prototype.md check 1: SIGKILL during DATA; the client sees EOF, never a 2xx."""
    daemon = amavisd(args=("-m", "1"))
    (child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    client.cmd("MAIL FROM:<alice@anchor.test>")
    client.cmd("RCPT TO:<bob@anchor.test>")
    client.cmd("DATA")
    client.send(message("killed", body=b"x" * 50000 + b"\r\n"))
    wait_for(lambda: "-01)" in proc_title(child) or "ch" in proc_title(child))
    os.kill(child, signal.SIGKILL)
    try:
        client.send(b"rest\r\n.\r\n")
    except OSError:
        pass
    rest = client.eof()
    assert not rest.startswith(b"2"), rest
    assert b"\r\n250" not in rest and not rest.startswith(b"250")
    fresh = wait_for(lambda: [p for p in daemon.children() if p != child], timeout=10,
                     what="a new child")
    assert fresh and child not in daemon.children()
    client2 = Client(daemon.port)
    client2.reply()
    reply = send_message(client2, "alice@anchor.test", ["bob@anchor.test"], message("after"))
    assert reply[0].startswith("250 2.0.0 from MTA(")
    assert [m.data.count(b"Subject: after") for m in sink.messages] == [1]
    assert "ended by signal 9" in daemon.logfile_text()


def test_term_with_open_session_gives_421(amavisd):
    """protocols.md 1.5 and 10: TERM to the daemon, an idle session gets 421 and EOF."""
    daemon = amavisd(args=("-m", "1"))
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    daemon.signal(signal.SIGTERM)
    assert client.reply() == [
        "421 4.3.2 Service shutting down, closing channel, during waiting for input from client"]
    assert client.eof() == b""
    assert daemon.proc.wait(15) == 0


def test_quit_lets_the_open_session_finish(amavisd, sink):
    daemon = amavisd(args=("-m", "1"))
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    daemon.signal(signal.SIGQUIT)
    time.sleep(0.5)
    assert daemon.alive()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("q"),
                         ehlo="")
    assert reply[0].startswith("250 2.0.0 from MTA(")
    client.cmd("QUIT")
    assert daemon.proc.wait(15) == 0
    assert len(sink.messages) == 1


def test_hup_keeps_pid_and_sockets_and_the_open_session(amavisd, sink):
    """protocols.md 1.5: HUP re-reads the config and re-execs; the open session finishes."""
    daemon = amavisd(args=("-m", "1"))
    (old_child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    conf = daemon.conf_path.read_text().replace("log_level = 2", "log_level = 3")
    daemon.conf_path.write_text(conf)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "warm restart on HUP" in daemon.logfile_text(), what="the re-exec")
    wait_for(lambda: "(warm)" in daemon.logfile_text(), what="the warm start")
    assert daemon.alive()
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("hup1"),
                         ehlo="")
    assert reply[0].startswith("250 2.0.0 from MTA(")
    client.cmd("QUIT")
    wait_for(lambda: old_child not in daemon.children(), what="the old child to go")
    new = wait_for(lambda: daemon.children(), what="a new child")
    assert old_child not in new
    client2 = Client(daemon.port)
    client2.reply()
    reply = send_message(client2, "alice@anchor.test", ["bob@anchor.test"], message("hup2"))
    assert reply[0].startswith("250 2.0.0 from MTA(")
    assert len(sink.messages) == 2


def test_hup_with_a_broken_config_is_rejected(amavisd, sink):
    daemon = amavisd(args=("-m", "1"))
    good = daemon.conf_path.read_text()
    daemon.conf_path.write_text(good + "\nno_such_setting = 1\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "Rejecting reload" in daemon.logfile_text(), what="the rejection")
    assert "no_such_setting: unknown setting" in daemon.logfile_text()
    client = Client(daemon.port)
    client.reply()
    assert send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                        message("still"))[0].startswith("250")


def test_child_recycles_after_max_requests_without_cutting_a_session(amavisd, sink):
    """protocols.md 1.3 step 5: the session is never cut; rundown after it."""
    daemon = amavisd("max_requests = 3", args=("-m", "1"))
    (child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    client = Client(daemon.port)
    client.reply()
    client.cmd("EHLO client.anchor.test")
    for n in range(5):                              # 5 tasks in one session: all served
        reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                             message(f"r{n}"), ehlo="")
        assert reply[0].startswith("250 2.0.0 from MTA("), (n, reply)
    client.cmd("QUIT")
    wait_for(lambda: child not in daemon.children(), what="the recycled child to exit")
    assert "Requesting process rundown after 5 tasks (and 2 sessions)" in \
        daemon.logfile_text() or "Requesting process rundown after 5 tasks" in \
        daemon.logfile_text()
    (fresh,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    assert fresh != child
    assert len(sink.messages) == 5


def test_acl_denies_with_no_bytes_on_a_port_bound_bank(amavisd):
    """protocols.md 2.2/2.3: a bank bound to a port replaces @inet_acl; denied = no banner."""
    from t.helpers.daemon import free_port

    closed = free_port()
    daemon = amavisd(f"inet_socket_port = [inet_socket_port, {closed}]\n"
                     f"interface_policy = {{'{closed}': 'STRICT'}}\n"
                     "policy_bank = {'STRICT': {'inet_acl': ['127.0.0.2']}}",
                     args=("-m", "1"))
    client = Client(closed)
    assert client.eof() == b""
    log = wait_for(lambda: "DENIED ACCESS" in daemon.logfile_text() and daemon.logfile_text())
    assert "DENIED ACCESS from IP 127.0.0.1, policy bank 'STRICT'" in log
    open_client = Client(daemon.port)               # the other port still serves
    assert open_client.reply()[0].startswith("220 ")


def test_stats_segment_counts_and_nanny_shows_children(amavisd, sink, tmp_path):
    import subprocess
    import sys

    daemon = amavisd(args=("-m", "2"))
    client = Client(daemon.port)
    client.reply()
    for n in range(3):
        send_message(client, "alice@anchor.test", ["bob@anchor.test", "x@example.net"],
                     message(f"s{n}"), ehlo="EHLO c.anchor.test" if n == 0 else "")
    client.cmd("QUIT")
    db_home = tmp_path / "home" / "db"
    seg = StatsSegment.open_readonly(str(db_home / "amavisd-stats.mmap"))
    counters = wait_for(lambda: (c := seg.snapshot().counters)["InMsgs"] == 3 and c)
    assert counters["InMsgsRecips"] == 6
    assert counters["InMsgsInbound"] == 3 and counters["InMsgsOpenRelay"] == 3
    assert counters["ContentCleanMsgs"] == 3
    assert counters["OutMsgsDelivers"] == 6
    assert counters["InMsgsStatusRelayed"] == 3
    out = subprocess.run([sys.executable, "-m", "amavisd_nanny.main", "-c", "1", "-d",
                          str(db_home)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("process-id task-id     elapsed in    elapsed-bar")
    lines = [x for x in out.stderr.splitlines() if x.startswith("PID ")]
    assert sorted(int(x[4:9]) for x in lines) == sorted(daemon.children())
    seg.close()


def test_50mb_message_keeps_child_memory_flat(amavisd, sink):
    """DESIGN.md memory contract: peak RSS grows by less than 30 MB for a 50 MB message."""
    daemon = amavisd(args=("-m", "1"))
    (child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    client = Client(daemon.port, timeout=120)
    client.reply()
    send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("warm"))
    before = vm_hwm_kb(child)
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = line * (50 * 1024 * 1024 // len(line))
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"],
                         message("big", body=body), ehlo="")
    assert reply[0].startswith("250 2.0.0 from MTA("), reply
    growth_mb = (vm_hwm_kb(child) - before) / 1024
    assert growth_mb < 30, f"child peak RSS grew by {growth_mb:.1f} MB"
    assert sink.messages[-1].size >= len(body)


def test_stuck_child_is_killed_and_replaced(amavisd):
    """A child whose heartbeat stops (SIGSTOP) is killed after $child_timeout + margin."""
    daemon = amavisd("child_timeout = 2", args=("-m", "1"))
    (child,) = wait_for(lambda: len(daemon.children()) == 1 and daemon.children())
    os.kill(child, signal.SIGSTOP)
    fresh = wait_for(lambda: [p for p in daemon.children() if p != child], timeout=20,
                     what="the stuck child to be replaced")
    assert fresh
    assert "heartbeat is" in daemon.logfile_text()
    client = Client(daemon.port)
    assert client.reply()[0].startswith("220 ")


def test_dynamic_pool_grows_with_busy_children(amavisd):
    """protocols.md 1.1: with $min_servers, spare children are kept between the bounds."""
    daemon = amavisd("min_servers = 1\nmin_spare_servers = 1\nmax_spare_servers = 2",
                     args=("-m", "3"))
    wait_for(lambda: len(daemon.children()) == 1, what="one child at start")
    clients = []
    for n in range(2):
        client = Client(daemon.port)
        assert client.reply()[0].startswith("220 ")
        clients.append(client)
        wait_for(lambda n=n: len(daemon.children()) == n + 2, what=f"{n + 2} children")
    time.sleep(2.5)
    assert len(daemon.children()) == 3                # never above max_servers
    for client in clients:
        client.cmd("QUIT")
    wait_for(lambda: len(daemon.children()) <= 2, timeout=15, what="idle children to retire")


def test_unix_socket_with_an_lmtp_bank(amavisd, sink, tmp_path):
    """protocols.md 2.1/2.2/2.4: a Unix socket, bank via interface_policy SOCK, LMTP."""
    import socket as socketlib

    path = tmp_path / "home" / "amavisd.sock"
    daemon = amavisd(f"unix_socketname = {str(path)!r}\nunix_socket_mode = 0o666\n"
                     "interface_policy = {'SOCK': 'LMTPSOCK'}\n"
                     "policy_bank = {'LMTPSOCK': {'protocol': 'LMTP'}}")
    assert oct(os.stat(path).st_mode & 0o777) == "0o666"
    raw = socketlib.socket(socketlib.AF_UNIX)
    raw.connect(str(path))
    client = Client.__new__(Client)
    client.sock, client.buf = raw, b""
    Client.opened.append(client)
    assert client.reply() == ["220 [localhost] LMTP amavis service ready"]
    client.cmd("LHLO client.anchor.test")
    client.cmd("MAIL FROM:<alice@anchor.test>")
    client.cmd("RCPT TO:<bob@anchor.test>")
    client.cmd("RCPT TO:<rej2@anchor.test>")
    client.cmd("DATA")
    client.send(message("unix") + b".\r\n")
    assert client.reply()[0].startswith("250 2.0.0 from MTA(")
    assert client.reply()[0].startswith("550 5.1.1 id=")
    head = sink.messages[0].data.split(b"\r\n\r\n")[0]
    assert b"(amavis, unix socket) with LMTP" in head.replace(b"\r\n", b"")
    daemon.stop()
    assert not path.exists()                           # removed at shutdown


def test_ipv6_loopback_is_served(amavisd, sink):
    import socket as socketlib

    if not socketlib.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    from t.helpers.daemon import free_port

    port6 = free_port()
    amavisd(f"listen_sockets = ['inet6:[::1]:{port6}']")
    raw = socketlib.create_connection(("::1", port6), timeout=10)
    client = Client.__new__(Client)
    client.sock, client.buf = raw, b""
    Client.opened.append(client)
    assert client.reply() == ["220 [::1] ESMTP amavis service ready"]
    reply = send_message(client, "alice@anchor.test", ["bob@anchor.test"], message("v6"))
    assert reply[0].startswith("250 2.0.0 from MTA(")
    assert b"([::1])" in sink.messages[0].data.split(b"\r\n")[0] or \
        b"[IPv6:::1]" in sink.messages[0].data.split(b"\r\n")[0]
