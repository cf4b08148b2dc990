# tests: amavisd/child_session.py, amavisd/config/model.py (policy banks in the daemon)
"""Policy banks chosen by client IP and by listening port (pipeline.md 16, protocols 2.2)."""

from __future__ import annotations

from t.helpers.daemon import free_port
from t.integration.conftest import Client, message, wait_for
from t.sink import Sink


def send_with_xforward(port: int, addr: str | None, rcpt: str = "bob@anchor.test") -> list[str]:
    client = Client(port)
    client.reply()
    client.cmd("EHLO mta.anchor.test")
    if addr:
        assert client.cmd(f"XFORWARD ADDR={addr} PORT=40000") == ["250 2.5.0 Ok XFORWARD"]
    client.cmd("MAIL FROM:<dave@anchor.test>")
    client.cmd(f"RCPT TO:<{rcpt}>")
    client.cmd("DATA")
    client.send(message("bank") + b".\r\n")
    reply = client.reply()
    client.cmd("QUIT")
    return reply


def main_lines(daemon, count: int) -> list[str]:
    text = wait_for(lambda: daemon.logfile_text().count(" Passed ") >= count
                    and daemon.logfile_text(), what=f"{count} log lines")
    return [line.split(") ", 1)[1] for line in text.splitlines() if " Passed " in line]


def test_mynetworks_client_gets_mynets_and_originating(amavisd, sink):
    """XFORWARD ADDR in @mynetworks loads MYNETS (it exists) and sets originating."""
    daemon = amavisd("policy_bank = {'MYNETS': {}}")
    assert send_with_xforward(daemon.port, "10.0.0.5")[0].startswith("250 2.0.0 from MTA(")
    assert send_with_xforward(daemon.port, "192.0.2.7")[0].startswith("250 2.0.0 from MTA(")
    assert send_with_xforward(daemon.port, None)[0].startswith("250 2.0.0 from MTA(")
    first, second, third = main_lines(daemon, 3)
    assert first.startswith("Passed CLEAN {RelayedInternal}, MYNETS LOCAL [10.0.0.5]:40000 "
                            "<dave@anchor.test> -> <bob@anchor.test>"), first
    assert second.startswith("Passed CLEAN {RelayedInbound}, [192.0.2.7]:40000 "), second
    # no XFORWARD: the key is 0.0.0.0, not the MTA's own 127.0.0.1 (protocols.md 9.14)
    assert third.startswith("Passed CLEAN {RelayedInbound}, [127.0.0.1] "), third


def test_without_a_mynets_bank_there_is_no_originating(amavisd, sink):
    daemon = amavisd()
    send_with_xforward(daemon.port, "10.0.0.5")
    (line,) = main_lines(daemon, 1)
    assert line.startswith("Passed CLEAN {RelayedInbound}, [10.0.0.5]:40000 "), line


def test_client_ipaddr_policy_pairs_load_named_banks(amavisd, sink):
    daemon = amavisd("policy_bank = {'PARTNER': {}, 'EXTRA': {}}\n"
                     "client_ipaddr_policy = [['192.0.2.0/24'], 'PARTNER,EXTRA']")
    send_with_xforward(daemon.port, "192.0.2.9")
    (line,) = main_lines(daemon, 1)
    assert line.startswith("Passed CLEAN {RelayedInbound}, PARTNER/EXTRA [192.0.2.9]:40000 "), line


def test_port_bound_bank_changes_forward_method(amavisd, sink, tmp_path):
    """A per-port bank's forward_method sends that port's mail elsewhere (observed in Perl)."""
    with Sink() as other:
        second = free_port()
        daemon = amavisd(f"inet_socket_port = [inet_socket_port, {second}]\n"
                         f"interface_policy = {{'{second}': 'OTHER'}}\n"
                         f"policy_bank = {{'OTHER': {{'forward_method': "
                         f"'smtp:[127.0.0.1]:{other.port}'}}}}")
        reply = send_with_xforward(second, None)
        assert reply[0].startswith(f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{other.port}): ")
        reply = send_with_xforward(daemon.port, None)
        assert reply[0].startswith(f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{sink.port}): ")
        assert len(other.messages) == 1 and len(sink.messages) == 1
        lines = main_lines(daemon, 2)
        assert lines[0].startswith("Passed CLEAN {RelayedInbound}, OTHER [127.0.0.1] "), lines
