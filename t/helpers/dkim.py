"""Shared pieces of the DKIM tests: keys, golden messages, views, independent verifiers.

The independent verifiers are Perl's Mail::DKIM (Debian's libmail-dkim-perl, through
t/dkim_verify.pl with the key records given instead of DNS) and dkimpy's own
``dkim.verify`` (ed25519 too, with PyNaCl).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import dkim

from amavisd.config.model import Config
from amavisd.dkim_keys import DkimKeyDecl, declare
from amavisd.message import Message, Recipient

DATA = Path(__file__).resolve().parents[1] / "data" / "dkim"
ANCHOR_PEM = DATA / "anchor.test.pem"
PERL_VERIFIER = Path(__file__).resolve().parents[1] / "dkim_verify.pl"
#: When the Perl daemon signed the golden messages (t=1796007729 .. x=1797822130).
GOLDEN_TIME = 1796007729 + 60


def anchor_record() -> str:
    """The DNS TXT record the anchor published for its key (setup.sh)."""
    return re.search(r'"(.*)"', (DATA / "anchor.test.txt").read_text()).group(1)


def rfc8463_records() -> dict[str, str]:
    lines = (DATA / "rfc8463.dns").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if line.strip())


def golden_message(name: str) -> bytes:
    """Message 1 as the Perl daemon delivered it to the sink (LF line ends)."""
    raw = (DATA / "golden" / f"{name}.txt").read_bytes()
    head = raw.split(b"### message 1: delivered header section\n", 1)[1].split(b"\n\n### ", 1)[0]
    body = raw.split(b"### message 1: delivered body\n", 1)[1].split(b"\n\n## INPUT MESSAGE", 1)[0]
    return head + b"\n\n" + body + b"\n"


def header_of(data: bytes) -> bytes:
    """The header block as the pipeline reads it (up to and including its last LF)."""
    return data[:data.index(b"\n\n") + 1]


def key(domain: str = "anchor.test", selector: str = "anchor", path: Path = ANCHOR_PEM,
        earlier: list[DkimKeyDecl] | None = None, **tags: Any) -> DkimKeyDecl:
    return declare(domain, selector, str(path), tags, "test", earlier or [])


def make_view(banks: tuple[str, ...] = (), **settings: Any):
    """A real ``BankView`` of a ``Config`` with these settings assigned."""
    config = Config()
    for name, value in settings.items():
        config.assign(name, value, "test")
    config.finish()
    return config.view(banks)


def make_msg(path: Path, data: bytes, sender: str = "alice@anchor.test",
             rcpts: tuple[str, ...] = ("bob@anchor.test",), rx_time: float = GOLDEN_TIME,
             originating: bool = False) -> Message:
    path.write_bytes(data)
    return Message(sender=sender, sender_quoted=sender,
                   recipients=[Recipient(r, r) for r in rcpts], spool_path=path,
                   size=len(data), log_id="12345-01", rx_time=rx_time,
                   originating=originating)


def perl_verify(path: Path, records: dict[str, str]) -> list[str]:
    """Mail::DKIM's verdict lines: ``d=... s=... a=... => result`` and ``result: ...``."""
    args = ["perl", str(PERL_VERIFIER), str(path)]
    args += [f"{name}={record}" for name, record in records.items()]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()


def dkimpy_verify(data: bytes, records: dict[str, str]) -> bool:
    """dkimpy's verdict on a message (LF or CRLF), the first signature."""
    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        record = records.get(name.decode().rstrip("."))
        return None if record is None else record.encode()
    return bool(dkim.verify(re.sub(rb"\r?\n", b"\r\n", data), dnsfunc=dns))
