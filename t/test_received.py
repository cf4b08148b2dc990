# tests: amavisd/received.py
"""Our Received field, spec protocols.md 3.10, folded as in t/data/golden/pass."""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from amavisd.message import ClientInfo, Message, Recipient
from amavisd.received import fold, received_field

NOW = calendar.timegm((2026, 11, 30, 3, 1, 54))


@pytest.fixture(autouse=True)
def utc() -> None:
    """The goldens were taken on a host in UTC; the zone comment is the local zone name."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def _msg(rcpts: list[str], **client: object) -> Message:
    info = ClientInfo(mta_addr="127.0.0.1", mta_helo="client.anchor.test",
                      local_addr="127.0.0.1", local_port=31024)
    for k, v in client.items():
        setattr(info, k, v)
    return Message("alice@anchor.test", "alice@anchor.test",
                   [Recipient(r, r) for r in rcpts], Path("/nonexistent"), 0, "20286-02",
                   mail_id="o-5GBb5NUXln", client=info)


SETTINGS = SimpleNamespace(localhost_name="localhost", myhostname="mx.anchor.test")


def test_matches_golden_clean() -> None:
    """Byte-exact with the 'header fields added by the filter' block of golden clean.txt."""
    assert received_field(_msg(["bob@anchor.test"]), SETTINGS, NOW) == (
        b"Received: from client.anchor.test ([127.0.0.1])\r\n"
        b" by localhost (mx.anchor.test [127.0.0.1]) (amavis, port 31024) with ESMTP\r\n"
        b" id o-5GBb5NUXln for <bob@anchor.test>; Mon, 30 Nov 2026 03:01:54 +0000 (UTC)\r\n")


def test_golden_file_block_is_reproduced() -> None:
    """Read the golden file itself, so a re-capture with a new fold shows up here."""
    golden = Path(__file__).parent / "data" / "golden" / "pass" / "clean-xforward.txt"
    text = golden.read_text()
    block = text.split("header fields added/changed by the filter\n", 1)[1].split("\n\n", 1)[0]
    msg = _msg(["bob@anchor.test"])
    msg.mail_id = "LTZkBNTlIfL4"
    got = received_field(msg, SETTINGS, calendar.timegm((2026, 11, 30, 3, 1, 56)))
    assert got == (block.replace("\n", "\r\n") + "\r\n").encode()


def test_section_10_observation_folds_by_the_same_rule() -> None:
    """Longer hostname: 'with ESMTP' no longer fits in 78 columns and moves down (spec 10)."""
    msg = _msg(["bob@example.com", "carol@example.com"], mta_helo="mta.example.net",
               local_port=20024)
    msg.mail_id = "a834gfJYCY38"
    settings = SimpleNamespace(localhost_name="localhost", myhostname="amavis-test.example.com")
    got = received_field(msg, settings, calendar.timegm((2026, 11, 30, 2, 56, 2)))
    assert got == (
        b"Received: from mta.example.net ([127.0.0.1])\r\n"
        b" by localhost (amavis-test.example.com [127.0.0.1]) (amavis, port 20024)\r\n"
        b" with ESMTP id a834gfJYCY38; Mon, 30 Nov 2026 02:56:02 +0000 (UTC)\r\n")


def test_for_clause_only_with_exactly_one_recipient() -> None:
    assert b"for <" not in received_field(_msg(["a@x.test", "b@x.test"]), SETTINGS, NOW)
    assert b"for <a@x.test>;" in received_field(_msg(["a@x.test"]), SETTINGS, NOW)


def test_unix_socket_and_unknown_client_as_observed_on_release() -> None:
    """Spec 10 (amavisd-release): 'from unknown by localhost (amavis, unix socket) id ...'."""
    msg = _msg(["bob@example.com"], mta_addr="", mta_helo=None, local_addr="", local_port=0,
               unix_socket="/var/run/amavis.sock")
    msg.mail_id, msg.protocol = "QA_LxtmBv1Kd", "AM.PDP"
    got = received_field(msg, SETTINGS, NOW)
    assert got == (b"Received: from unknown by localhost (amavis, unix socket) id QA_LxtmBv1Kd\r\n"
                   b" for <bob@example.com>; Mon, 30 Nov 2026 03:01:54 +0000 (UTC)\r\n")


def test_tls_cipher_ipv6_and_lmtp() -> None:
    msg = _msg(["a@x.test"], mta_addr="::1", local_addr="::1")
    msg.tls_cipher, msg.protocol = "TLS_AES_256_GCM_SHA384", "LMTPS"
    got = received_field(msg, SETTINGS, NOW).decode()
    assert got.startswith("Received: from client.anchor.test ([IPv6:::1]) (using TLS with "
                          "cipher TLS_AES_256_GCM_SHA384)\r\n")
    assert "(mx.anchor.test [IPv6:::1])" in got and "with LMTPS" in got
    assert "\n" not in got.replace("\r\n", "")
    assert all(len(line) <= 78 for line in got.split("\r\n")[1:])


def test_fold_keeps_an_overlong_piece_whole() -> None:
    assert fold("X", ["a", "b" * 100, "c"]) == "X: a\r\n " + "b" * 100 + "\r\n c\r\n"


def test_single_digit_day_is_space_padded() -> None:
    """pipeline.md 20.3 shows 'Mon,  1 Jan 2024'."""
    got = received_field(_msg(["a@x.test"]), SETTINGS, calendar.timegm((2024, 1, 1, 12, 5, 9)))
    assert b"Mon,  1 Jan 2024 12:05:09 +0000 (UTC)" in got
