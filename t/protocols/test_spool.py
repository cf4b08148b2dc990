# tests: amavisd/protocols/spool.py
"""DataSpool against a slow, obviously-correct line-by-line reference (spec 3.7)."""

from __future__ import annotations

import os
import random
import stat
import time

import pytest

from amavisd.protocols.spool import DataSpool

CHUNK_SIZES = [1, 2, 3, 7, 4096, 65536]


def reference(wire: bytes) -> tuple[bytes, int, bytes] | None:
    """(file contents, RFC 1870 size, bytes after the dot), or None without an end.

    Line by line: a line ends only at CRLF; a line "." ends the data; otherwise one
    leading dot is dropped (also on the first line); CRLF is stored as LF.
    """
    out, size, i = bytearray(), 0, 0
    while True:
        if wire.startswith(b".\r\n", i):
            return bytes(out), size, wire[i + 3:]
        if wire.startswith(b".", i):
            i += 1
        j = wire.find(b"\r\n", i)
        if j < 0:
            return None
        out += wire[i:j] + b"\n"
        size += j - i + 2
        i = j + 2


def spool_in_chunks(path, wire: bytes, sizes, limit=None):
    """Feed ``wire`` cut at the given chunk sizes (cycled); return (result, rest)."""
    spool = DataSpool(path, limit)
    pos, rest, k = 0, None, 0
    while pos < len(wire) and rest is None:
        n = sizes[k % len(sizes)]
        rest = spool.feed(wire[pos:pos + n])
        assert len(spool._carry) <= 4, "the spool must carry only a few bytes"
        pos += n
        k += 1
    if rest is not None:
        rest += wire[pos:]
    return spool.close(), rest


CASES = {
    "plain": b"Subject: x\r\n\r\nhello\r\nworld\r\n.\r\n",
    "empty-message": b".\r\n",
    "stuffed-lines": b"a\r\n..\r\n..x\r\n...\r\n. \r\n.\r\n",
    "first-line-stuffed": b"..first\r\nsecond\r\n.\r\n",
    "first-line-dot-space": b". \r\n.\r\n",
    "bare-lf-and-cr": b"a\nb\rc\r\r\n\n\r\n.\r\n",
    "cr-before-crlf-dot": b"x\r\r\n.y\r\n.\r\n",
    "smuggle-lf-dot-lf": b"a\n.\nMAIL FROM:<evil>\r\n.\r\n",
    "smuggle-cr-dot-crlf": b"a\r.\r\nb\r\n.\r\n",
    "smuggle-lf-dot-crlf": b"a\n.\r\nb\r\n.\r\n",
    "smuggle-crlf-dot-lf": b"a\r\n.\nb\r\n.\r\n",
    "pipelined-after-dot": b"body\r\n.\r\nQUIT\r\n",
    "dot-lines-near-end": b"x\r\n..\r\n.\r\n",
    "eight-bit": "Grüße\r\n".encode() + b".\r\n",
    "crlf-crlf": b"\r\n\r\n\r\n.\r\n",
    "no-trailing-crlf-in-line": b"abc\r\n.x\r\n.\r\nRSET\r\nNOOP\r\n",
}


@pytest.mark.parametrize("size", CHUNK_SIZES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_unstuffing_survives_any_chunking(case, size, tmp_path):
    """Every case spools as the reference says, wherever the chunk borders fall."""
    wire = CASES[case]
    expected, exp_size, exp_rest = reference(wire)
    result, rest = spool_in_chunks(tmp_path / "email.txt", wire, [size])
    assert result.path.read_bytes() == expected
    assert result.size == exp_size
    assert rest == exp_rest
    assert not result.too_big
    assert result.complete


@pytest.mark.parametrize("seed", range(40))
def test_random_chunkings_match_reference(seed, tmp_path):
    """Random dot/CR/LF soup cut at random places matches the reference."""
    rng = random.Random(seed)
    alphabet = [b".", b"\r", b"\n", b"\r\n", b"x", b"\xe9", b"..", b"\r\n."]
    body = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
    wire = body + b"\r\n.\r\n" + b"NOOP\r\n"
    expected = reference(wire)
    assert expected is not None
    sizes = [rng.randint(1, 9) for _ in range(20)]
    result, rest = spool_in_chunks(tmp_path / "email.txt", wire, sizes)
    assert (result.path.read_bytes(), result.size, rest) == expected
    assert result.eight_bit == (b"\xe9" in wire[:len(wire) - len(expected[2])])


@pytest.mark.parametrize("split", range(len(b"ab\r\n.\r\nQUIT")))
def test_end_marker_split_at_every_position(split, tmp_path):
    """CRLF.CRLF cut in two at any byte still ends the data."""
    wire = b"ab\r\n.\r\nQUIT"
    spool = DataSpool(tmp_path / "email.txt")
    first = spool.feed(wire[:split])
    rest = spool.feed(wire[split:]) if first is None else first + wire[split:]
    assert rest == b"QUIT"
    assert spool.close().path.read_bytes() == b"ab\n"


@pytest.mark.parametrize("lookalike", [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\n"])
def test_smuggling_lookalikes_do_not_end_data(lookalike, tmp_path):
    """Only CRLF.CRLF ends DATA; the look-alikes are stored as data (SMTP smuggling)."""
    spool = DataSpool(tmp_path / "email.txt")
    assert spool.feed(b"a" + lookalike + b"MAIL FROM:<x>\r\n") is None
    assert not spool.ended
    assert spool.feed(b".\r\n") == b""
    data = spool.close().path.read_bytes()
    assert b"MAIL FROM:<x>\n" in data


def test_leading_dot_crlf_ends_empty_message(tmp_path):
    spool = DataSpool(tmp_path / "email.txt")
    assert spool.feed(b".\r\nQUIT\r\n") == b"QUIT\r\n"
    result = spool.close()
    assert (result.size, result.path.read_bytes()) == (0, b"")


def test_size_counts_crlf_as_two_and_skips_stuffing_dots(tmp_path):
    """RFC 1870: 'a' CRLF '..b' CRLF -> 3 + 4 = 7 octets (one stuffing dot dropped)."""
    spool = DataSpool(tmp_path / "email.txt")
    spool.feed(b"a\r\n..b\r\n.\r\n")
    assert spool.close().size == 7


def test_over_the_limit_reads_to_the_end_and_truncates(tmp_path):
    """Past the limit nothing more is written, the full size is still counted."""
    line = b"x" * 98 + b"\r\n"
    wire = line * 100 + b".\r\nQUIT\r\n"
    result, rest = spool_in_chunks(tmp_path / "email.txt", wire, [1000], limit=5000)
    assert result.too_big
    assert result.size == 100 * 100
    assert rest == b"QUIT\r\n"
    data = result.path.read_bytes()
    assert data.endswith(b"\n***TRUNCATED***\n")
    assert len(data) <= 5000 + 17


def test_at_the_limit_is_not_too_big(tmp_path):
    spool = DataSpool(tmp_path / "email.txt", size_limit=4)
    spool.feed(b"ab\r\n.\r\n")
    assert not spool.close().too_big


def test_file_mode_0640_and_truncated(tmp_path):
    """email.txt is created 0640 whatever the umask, and old content is dropped."""
    path = tmp_path / "email.txt"
    path.write_bytes(b"old content that is longer\n")
    old = os.umask(0o077)
    try:
        spool = DataSpool(path)
    finally:
        os.umask(old)
    spool.feed(b"new\r\n.\r\n")
    spool.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_bytes() == b"new\n"


def test_feed_after_end_is_an_error(tmp_path):
    spool = DataSpool(tmp_path / "email.txt")
    spool.feed(b".\r\n")
    with pytest.raises(ValueError):
        spool.feed(b"more")
    spool.close()


def test_close_before_end_reports_incomplete(tmp_path):
    spool = DataSpool(tmp_path / "email.txt")
    spool.feed(b"partial\r\n")
    result = spool.close()
    assert not result.complete
    assert result.path.read_bytes().startswith(b"partial")


def test_write_error_keeps_reading_and_reports(tmp_path):
    """A disk error is recorded; the spool still finds the end (451 later, spec 3.7)."""
    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    spool = DataSpool(tmp_path / "email.txt")
    spool._file.close()
    spool._file = Full()
    assert spool.feed(b"data\r\n") is None
    assert spool.feed(b"more\r\n.\r\nNOOP\r\n") == b"NOOP\r\n"
    result = spool.close()
    assert result.error and "No space left" in result.error


def test_eight_bit_flag(tmp_path):
    spool = DataSpool(tmp_path / "email.txt")
    spool.feed(b"plain ascii\r\n.\r\n")
    assert spool.close().eight_bit is False


def test_throughput_50mb_in_64k_chunks(tmp_path):
    """A 50 MB message spools at well over 100 MB/s (DESIGN: large-chunk streaming)."""
    line = b"." + b"y" * 74 + b"\r\n"
    chunk_src = line * (64 * 1024 // len(line) + 1)
    total = 50 * 1024 * 1024
    wire = (chunk_src * (total // len(chunk_src) + 1))[:total]
    wire = wire[:wire.rfind(b"\r\n") + 2] + b".\r\n"
    spool = DataSpool(tmp_path / "email.txt")
    start = time.perf_counter()
    for i in range(0, len(wire), 65536):
        if spool.feed(wire[i:i + 65536]) is not None:
            break
    result = spool.close()
    elapsed = time.perf_counter() - start
    assert result.size == len(wire) - 3 - wire.count(b"\r\n.")
    rate = len(wire) / elapsed / 1e6
    print(f"spool throughput: {rate:.0f} MB/s")
    assert rate > 100
