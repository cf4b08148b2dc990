# tests: amavisd/ids.py
"""mail_id, secret_id and log ids in amavis's formats (protocols.md section 1.8)."""

import base64
import hashlib
import re

import pytest

from amavisd.ids import generate_mail_id, log_id


def test_mail_id_is_md5_of_the_decoded_secret_in_base64url():
    """The release invariant of pipeline.md section 3, which Perl tools check too."""
    for _ in range(200):
        mail_id, secret = generate_mail_id(72)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{10}[A-Za-z0-9]", mail_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]{12}", secret)
        raw = base64.urlsafe_b64decode(secret)
        digest = base64.b64encode(hashlib.md5(raw).digest(), b"-_").decode()
        assert digest[:12] == mail_id


def test_other_sizes_and_bad_size():
    mail_id, secret = generate_mail_id(96)
    assert len(mail_id) == 16 and len(secret) == 16
    with pytest.raises(ValueError):
        generate_mail_id(80)


def test_log_ids():
    assert log_id(12160, 2) == "12160-02"
    assert log_id(12160, 2, 2) == "12160-02-2"
    assert log_id(7, 123, 1) == "00007-123"
