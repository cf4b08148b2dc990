# tests: amavisd/digest.py, the body digest in amavisd/protocols/spool.py
"""The body digest (pipeline.md section 5): body only, as stored, any chunking."""

import hashlib
import random

import pytest

from amavisd.digest import BodyDigest, hash_name
from amavisd.protocols.spool import DataSpool

CASES = [
    (b"Subject: x\nFrom: a\n\nbody line\n\nmore\n", b"body line\n\nmore\n"),
    (b"\nno header at all\n", b"no header at all\n"),
    (b"Subject: crlf\r\n\r\nbody\r\n", b"body\r\n"),
    (b"Subject: only a header\n", b""),
]


@pytest.mark.parametrize(("message", "body"), CASES)
def test_body_only_in_any_chunking(message, body):
    rng = random.Random(7)
    for _ in range(100):
        digest = BodyDigest()
        i = 0
        while i < len(message):
            n = rng.randint(1, 5)
            digest.feed(message[i:i + n])
            i += n
        assert digest.hexdigest() == hashlib.md5(body).hexdigest()


def test_algorithm_names_as_amavis_spells_them():
    assert hash_name("MD5") == "md5" and hash_name("SHA-1") == "sha1"
    assert hash_name("SHA-256") == "sha256"
    digest = BodyDigest("SHA-256")
    digest.feed(b"S: x\n\nhello\n")
    assert digest.hexdigest() == hashlib.sha256(b"hello\n").hexdigest()
    with pytest.raises(ValueError):
        BodyDigest("CRC-7")


def test_the_spool_digests_the_stored_body(tmp_path):
    """CRLF on the wire, dot-stuffing undone: the digest is over what is stored."""
    spool = DataSpool(tmp_path / "email.txt", None, BodyDigest())
    assert spool.feed(b"Subject: s\r\n\r\n..dot\r\nline\r\n") is None
    assert spool.feed(b".\r\n") == b""
    result = spool.close()
    stored = (tmp_path / "email.txt").read_bytes()
    assert stored == b"Subject: s\n\n.dot\nline\n"
    assert result.body_digest == hashlib.md5(b".dot\nline\n").hexdigest()
