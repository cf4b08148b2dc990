# tests: amavisd/header.py oldest_public_ip
"""The log line's ``[%e]``: the oldest public address of the Received trace, as amavis
counts public (``@public_networks_maps``), not as Python's ``is_global`` does."""

from amavisd.header import oldest_public_ip


def test_documentation_ranges_are_public_as_in_amavis():
    trace = ["from mx.anchor.test ([10.0.0.5]) by relay.anchor.test",   # newest first
             "from client.example ([192.0.2.10]) by mx.anchor.test"]
    assert oldest_public_ip(trace) == "192.0.2.10"


def test_private_and_loopback_are_skipped_and_the_oldest_wins():
    trace = ["from a ([198.51.100.7]) by b", "from c ([203.0.113.9]) by d",
             "from e ([127.0.0.1]) by f", "from g ([172.16.1.1]) by h"]
    assert oldest_public_ip(trace) == "203.0.113.9"
    assert oldest_public_ip(["from e ([127.0.0.1]) by f", "from x ([10.1.1.1]) by y"]) is None


def test_only_the_from_part_counts():
    assert oldest_public_ip(["from a ([10.0.0.1]) by b ([192.0.2.1])"]) is None
