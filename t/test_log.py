# tests: amavisd/log.py, amavisd/logline.py
"""Log lines as amavis writes them (monitoring.md sections 5.2-5.4)."""

import logging

from amavisd import log as amavis_log
from amavisd.logline import ccat_log_name, quote_address, timing_report


def test_levels_map_both_ways():
    assert amavis_log.py_level(0) == amavis_log.NOTICE
    assert amavis_log.py_level(-1) == logging.WARNING
    assert amavis_log.py_level(-2) == logging.ERROR
    for level in range(0, 6):
        assert amavis_log.amavis_level(amavis_log.py_level(level)) == level


def test_sanitize_escapes_controls_and_backslash():
    assert amavis_log.sanitize("a\r\nb\tc\\d\x01") == "a\\r\\nb\\tc\\\\d\\x01"
    assert amavis_log.sanitize("plain") == "plain"


def test_long_syslog_lines_are_split_with_dots():
    text = "x" * 250
    chunks = amavis_log.split_line(text, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert chunks[0].endswith("...") and chunks[1].startswith("...")
    assert "".join(c.strip(".") for c in chunks) == text


def test_formatter_prefixes_task_id_and_alerts():
    fmt = amavis_log.AmavisFormatter()
    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "careful %s", ("now",), None)
    amavis_log.set_task_id("12345-01")
    try:
        assert fmt.format(rec) == "(12345-01) (!)careful now"
        rec.levelno = logging.ERROR
        assert fmt.format(rec) == "(12345-01) (!!)careful now"
    finally:
        amavis_log.set_task_id(None)
    rec.levelno = amavis_log.NOTICE
    assert fmt.format(rec) == "careful now"


def test_log_file_line_format(tmp_path):
    path = tmp_path / "amavis.log"
    handler = amavis_log.LogFileHandler(str(path), "mx.example.com", "/usr/sbin/amavisd")
    handler.setFormatter(amavis_log.AmavisFormatter())
    rec = logging.LogRecord("x", amavis_log.NOTICE, __file__, 1, "Passed CLEAN", (), None)
    handler.emit(rec)
    handler.close()
    import os
    import re

    line = path.read_text()
    assert re.fullmatch(r"\w{3} [ \d]\d \d\d:\d\d:\d\d mx\.example\.com /usr/sbin/amavisd"
                        rf"\[{os.getpid()}\]: Passed CLEAN\n", line), line


def test_category_names_and_quoting():
    assert ccat_log_name("1") == "CLEAN"
    assert ccat_log_name("2,1") == "MTA-BLOCKED"
    assert ccat_log_name("4,2") == "BAD-HEADER-2"
    assert ccat_log_name("7,1") == "UNCHECKED-ENCRYPTED"
    assert quote_address("") == "<>"
    assert quote_address("a b@x.org") == '<"a b"@x.org>'


def test_timing_report_format():
    line = timing_report(406, [("SMTP greeting", 3.0), ("mime_decode", 5.0)], 8.0)
    assert line == ("size: 406, TIMING [total 8 ms] - SMTP greeting: 3.0 (38%)38, "
                    "mime_decode: 5 (62%)100")
