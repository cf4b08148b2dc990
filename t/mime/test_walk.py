# tests: amavisd/mime/walk.py
"""The streaming MIME splitter (spec/pipeline.md 6.1-6.2): tree, names, decoding, bounds.

Expected numbering and names were checked against MIME-tools 5.510 as amavisd
drives it (leaves numbered while parsing, containers afterwards; RFC 2231 names
re-encoded as encoded words; the last of several boundary parameters wins).
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amavisd.mime import walk
from amavisd.mime.walk import mime_walk, parse_params
from amavisd.parts import PartsTree


def split(tmp_path: Path, text: str | bytes, **kw) -> tuple[PartsTree, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spool = tmp_path / "email.txt"
    spool.write_bytes(text.encode() if isinstance(text, str) else text)
    parts = tmp_path / "parts"
    tree = PartsTree()
    mime_walk(spool, tree, parts, max_files=kw.pop("max_files", 1500), **kw)
    return tree, parts


def by_placement(tree: PartsTree) -> dict[str, list]:
    out: dict[str, list] = {}
    for p in tree.walk():
        out.setdefault(p.placement, []).append(p)
    return out


NESTED = textwrap.dedent("""\
    From: a@example.com
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="outer"

    preamble
    --outer
    Content-Type: multipart/alternative; boundary=inner

    --inner
    Content-Type: text/plain

    plain
    --inner
    Content-Type: text/html

    <p>html</p>
    --inner--
    --outer
    Content-Type: message/rfc822

    From: x@example.com
    Content-Type: multipart/mixed; boundary=outer2

    --outer2
    Content-Type: application/x-nested

    not parsed
    --outer2--
    --outer
    Content-Type: application/octet-stream; name=last.bin

    tail
    --outer--
    """)


def test_nested_multiparts_tree_and_numbering(tmp_path):
    """Leaves p001.. in parse order, containers numbered after them, depth first."""
    tree, parts = split(tmp_path, NESTED)
    seen = [(p.base_name, p.placement, p.declared_types[0]) for p in tree.walk()]
    assert seen == [
        ("p005", "1", "multipart/mixed"),
        ("p006", "1/1", "multipart/alternative"),
        ("p003", "1/2", "message/rfc822"),
        ("p004", "1/3", "application/octet-stream"),
        ("p001", "1/1/1", "text/plain"),
        ("p002", "1/1/2", "text/html"),
    ]
    assert (parts / "p001").read_bytes() == b"plain"
    assert (parts / "p002").read_bytes() == b"<p>html</p>"
    # message/rfc822 is a leaf: its own MIME structure stays inside the file
    assert b"--outer2--" in (parts / "p003").read_bytes()
    assert (parts / "p004").read_bytes() == b"tail"
    assert by_placement(tree)["1/3"][0].declared_names == ["last.bin"]
    assert tree.mime_errors == []
    root_children = tree.root.children
    assert [c.base_name for c in root_children] == ["p005"]
    assert all(p.depth == 1 for p in tree.walk())


def test_files_private_to_daemon_and_group(tmp_path):
    """parts/ is 0750, every part file 0640: no access for others, read access for the
    daemon's group, so clamd (its user in that group) can CONTSCAN the folder."""
    old = os.umask(0o077)
    try:
        tree, parts = split(tmp_path, NESTED)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(parts).st_mode) == 0o750
    for f in parts.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640
    assert sorted(f.name for f in parts.iterdir()) == ["p001", "p002", "p003", "p004"]


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_base64_and_qp_byte_exact_any_chunking(tmp_path, monkeypatch, chunk):
    """Decoded bodies equal the original bytes whatever the read size."""
    monkeypatch.setattr(walk, "CHUNK", chunk)
    rnd = random.Random(5)
    binary = bytes(rnd.getrandbits(8) for _ in range(50_000))
    text = ("Gr\u00fc\u00dfe = caf\u00e9 " * 40 + "\n" + "x" * 200 + " \n").encode("utf-8") * 3
    qp = binascii.b2a_qp(text).decode()
    msg = ("Content-Type: multipart/mixed; boundary=b\n\n--b\n"
           "Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(binary).decode()
           + "--b\nContent-Type: text/plain; charset=utf-8\n"
           "Content-Transfer-Encoding: quoted-printable\n\n" + qp + "\n--b--\n")
    tree, parts = split(tmp_path, msg)
    leaves = {p.placement: p for p in tree.leaves()}
    assert (parts / leaves["1/1"].base_name).read_bytes() == binary
    assert leaves["1/1"].size == len(binary)
    assert leaves["1/1"].encoding == "base64"
    assert (parts / leaves["1/2"].base_name).read_bytes() == text
    assert leaves["1/2"].encoding == "quoted-printable"


def test_names_rfc2047_and_rfc2231(tmp_path):
    """Decoded and raw forms, filename before name, deduplicated (MIME-tools output)."""
    msg = ("Content-Type: multipart/mixed; boundary=b\n\n--b\n"
           "Content-Type: application/octet-stream; name=\"=?UTF-8?B?w6kuZXhl?=\"\n"
           "Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20x.exe\n\nA\n"
           "--b\nContent-Type: application/x; name*0=\"long\"; name*1=\"name.zip\"\n\nB\n"
           "--b\nContent-Disposition: attachment; filename*0*=iso-8859-1'en'%E9t%E9;"
           " filename*1=\".pdf\"\n\nC\n"
           "--b\nContent-Disposition: attachment; filename=\"same.txt\"\n"
           "Content-Type: text/plain; name=same.txt\n\nD\n--b--\n")
    tree, _ = split(tmp_path, msg)
    names = {p.placement: p.declared_names for p in tree.leaves()}
    assert names["1/1"] == ["\u20ac x.exe", "=?UTF-8?Q?=E2=82=AC_x.exe?=",
                            "\u00e9.exe", "=?UTF-8?B?w6kuZXhl?="]
    assert names["1/2"] == ["longname.zip"]
    assert names["1/3"] == ["\u00e9t\u00e9.pdf", "=?iso-8859-1*en?Q?=E9t=E9.pdf?="]
    assert names["1/4"] == ["same.txt"]


def test_parse_params_last_value_wins_and_counts_boundaries():
    first, params, nbound = parse_params('multipart/mixed; boundary="a"; boundary=b; x="q\\"t"')
    assert (first, params["boundary"], params["x"], nbound) == ("multipart/mixed", "b", 'q"t', 2)


def test_cve_2024_28054_double_boundary_flagged_B(tmp_path):
    """Two boundary parameters: attribute B, and the last one splits (as MIME-tools)."""
    msg = ('Content-Type: multipart/mixed; boundary="aaa"; boundary="bbb"\n\n'
           "pre\n--aaa\nContent-Type: text/plain\n\nA\n--bbb\nContent-Type: text/plain\n\n"
           "B\n--aaa--\n--bbb--\n")
    tree, parts = split(tmp_path, msg)
    top = tree.root.children[0]
    assert top.attributes == {"B"}
    assert tree.ambiguous
    leaves = list(tree.leaves())
    assert [p.placement for p in leaves] == ["1/1"]
    assert (parts / leaves[0].base_name).read_bytes() == b"B\n--aaa--"


def test_folded_double_boundary_also_flagged(tmp_path):
    """Deliberately stricter than Perl's fallback regex, which reads only the first line."""
    msg = "Content-Type: multipart/mixed;\n boundary=aaa;\n boundary=bbb\n\n--bbb\n\nx\n--bbb--\n"
    tree, _ = split(tmp_path, msg)
    assert "B" in tree.root.children[0].attributes


def test_preamble_and_epilogue_saved_only_when_odd(tmp_path):
    """Section 6.1: more than 5 lines or other characters -> part 'preamble'/'epilogue'."""
    msg = ("Content-Type: multipart/mixed; boundary=b\n\n" + "line\n" * 6 +
           "--b\n\nbody\n--b--\nbye.\n")
    tree, parts = split(tmp_path, msg)
    kids = tree.root.children
    assert [(k.declared_names, k.placement) for k in kids] == [(["preamble"], "1"), ([], "1")]
    assert (parts / kids[0].base_name).read_bytes() == b"line\n" * 5 + b"line"
    msg2 = "Content-Type: multipart/mixed; boundary=b\n\nhi\n--b\n\nbody\n--b--\n<script>\n"
    tree2, _ = split(tmp_path / "2", msg2)
    assert [k.declared_names for k in tree2.root.children] == [[], ["epilogue"]]


def test_encrypted_types_get_U_and_C(tmp_path):
    msg = ('Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; '
           "boundary=b\n\n--b\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n"
           "--b\nContent-Type: application/octet-stream\n\nxx\n--b--\n")
    tree, _ = split(tmp_path, msg)
    top = tree.root.children[0]
    assert {"U", "C"} <= top.attributes
    assert {"U", "C"} <= by_placement(tree)["1/1"][0].attributes
    assert tree.any_encrypted and tree.any_undecipherable


def test_uuencoded_body_extracted(tmp_path):
    """extract_uuencode(1): text/plain 7bit with 'begin 644' -> text part + the file."""
    payload = bytes(range(256)) * 3
    uu = b"".join(binascii.b2a_uu(payload[i:i + 45]) for i in range(0, len(payload), 45))
    body = b"Here is the file:\n\nbegin 644 evil.exe\n" + uu + b"`\nend\n\nbye\n"
    tree, parts = split(tmp_path, b"Subject: uu\n\n" + body)
    top = tree.root.children[0]
    assert top.declared_types == ["multipart/mixed"]
    kids = top.children
    assert [k.declared_types for k in kids] == [["text/plain"], ["application/octet-stream"]]
    assert kids[1].declared_names == ["evil.exe"]
    assert (parts / kids[1].base_name).read_bytes() == payload
    assert (parts / kids[0].base_name).read_bytes() == b"Here is the file:\n\n"


def test_boundary_errors_do_not_raise(tmp_path):
    """Missing close, outer boundary closing an inner multipart, junk: errors, no crash."""
    msg = ("Content-Type: multipart/mixed; boundary=o\n\n--o\n"
           "Content-Type: multipart/mixed; boundary=i\n\n--i\n\nA\n--o\n\nB\n")
    tree, parts = split(tmp_path, msg)
    assert "unexpected end of parts before epilogue" in tree.mime_errors
    assert "part did not end with expected boundary" in tree.mime_errors
    contents = sorted((parts / p.base_name).read_bytes() for p in tree.leaves() if p.path)
    assert contents == [b"A", b"B\n"]
    tree2, _ = split(tmp_path / "2", "Content-Type: multipart/mixed\n\nno boundary\n")
    assert tree2.root.children[0].declared_types == [
        "multipart/mixed", "application/x-unparseable-multipart"]


def nested(levels: int) -> str:
    head = "".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n"
                   for i in range(levels))
    tail = "".join(f"--b{i}--\n" for i in reversed(range(levels + 1)))
    return (f"Content-Type: multipart/mixed; boundary=b0\n\n{head}"
            f"--b{levels}\nContent-Type: text/plain\n\ndeep\n{tail}")


def test_100_level_multipart_no_recursion(tmp_path):
    """An explicit stack: 100 levels parse fully, no RecursionError."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(80)           # well below the nesting: recursion would fail
    try:
        tree, parts = split(tmp_path, nested(99))
    finally:
        sys.setrecursionlimit(old)
    leaf = list(tree.leaves())
    assert len(leaf) == 1 and leaf[0].placement == "1" + "/1" * 100
    assert (parts / leaf[0].base_name).read_bytes() == b"deep"
    assert tree.hold is None


def test_nesting_and_part_count_bounded(tmp_path):
    """Deeper than max_depth, or more entities than MAXFILES: a hold, quickly."""
    t0 = time.process_time()
    tree, _ = split(tmp_path, nested(5000))
    assert time.process_time() - t0 < 5
    assert tree.hold == "Maximum MIME nesting depth (100) exceeded" and tree.over_levels
    many = "Content-Type: multipart/mixed; boundary=b\n\n" + "--b\n\nx\n" * 30 + "--b--\n"
    tree2, _ = split(tmp_path / "2", many, max_files=10)
    assert tree2.hold == "Maximum number of files (10) exceeded"
    assert len(list(tree2.leaves())) <= 10


def test_header_only_and_empty_message(tmp_path):
    tree, parts = split(tmp_path, "Subject: x\n")
    (only,) = tree.walk()
    assert only.size == 0 and only.declared_types == ["text/plain"]
    tree2, _ = split(tmp_path / "2", b"")
    assert len(list(tree2.walk())) == 1


RSS_SCRIPT = r"""
import base64, os, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from amavisd.message import Message
from amavisd.unpack import decode_message, DecodeLimits
tmp = Path(sys.argv[2])
spool = tmp / "email.txt"
block = os.urandom(57 * 1000)
with open(spool, "wb") as f:
    f.write(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nhi\n"
            b"--b\nContent-Type: application/octet-stream; name=big.bin\n"
            b"Content-Transfer-Encoding: base64\n\n")
    enc = base64.encodebytes(block)
    n = 0
    while n < 50 * 1024 * 1024:
        f.write(enc); n += len(enc)
    f.write(b"--b--\n")
import magic  # loaded before the baseline, as in a child that already typed a message
from amavisd.checks.filetype import default_typer
default_typer()(spool)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
msg = Message(sender="", sender_quoted="", recipients=[], spool_path=spool,
              size=spool.stat().st_size, log_id="1")
tree = decode_message(msg, tmp / "parts", DecodeLimits())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
big = [p for p in tree.leaves() if p.declared_names == ["big.bin"]][0]
print(before, after, big.size, spool.stat().st_size)
"""


def test_50mb_base64_attachment_rss(tmp_path):
    """DESIGN.md Memory: peak RSS grows < 30 MB for a 50 MB message (clean subprocess)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(root), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True)
    before, after, big, total = map(int, out.stdout.split())
    assert total > 50 * 1024 * 1024
    assert big == 57 * 1000 * ((50 * 1024 * 1024 + 76999) // len(
        base64.encodebytes(b"\0" * 57 * 1000)))
    assert (after - before) < 30 * 1024, f"peak RSS grew {(after - before) / 1024:.1f} MB"
