# tests: amavisd/dkim_tools.py, amavisd/dkim_keys.py, amavisd/cli.py (key commands)
"""``amavisd genrsa | showkeys | testkeys`` as an admin runs them, and dkim_key() in configs.

``showkeys`` is compared with what the Perl daemon printed for the anchor's key
(t/data/dkim/showkeys-anchor.perl.txt); ``testkeys`` asks a DNS server of the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from amavisd.config.model import Config
from amavisd.config.perlconf import load_perl_config
from amavisd.config.pyconf import load_python_config
from amavisd.dkim_keys import dns_record, wildcard_pattern
from amavisd.errors import ConfigError
from t.helpers.dkim import ANCHOR_PEM, DATA, anchor_record, key
from t.helpers.dnsstub import DnsStub

REPO = Path(__file__).resolve().parents[1]
PERL_PEM_PATH = "/work/shared/anchor/conf/dkim/anchor.test.pem"   # as the Perl run printed it


def amavisd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "amavisd", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd or REPO, env=env)


def write_conf(tmp_path: Path, body: str) -> Path:
    conf = tmp_path / "amavisd.conf.py"
    conf.write_text("myhostname = 'mx.anchor.test'\n" + body)
    os.chmod(conf, 0o644)
    return conf


def zone_record(text: str) -> tuple[str, str]:
    """(owner name, TXT text) of the first record: the quoted strings joined."""
    m = re.search(r"^(\S+)\t3600 TXT \((.*?)\)\n", text, re.S | re.M)
    return m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))


# ---------------------------------------------------------------- genrsa
def test_genrsa_writes_a_private_rsa_key_0600(tmp_path):
    path = tmp_path / "new.pem"
    out = amavisd("genrsa", str(path), "2048")
    assert (out.returncode, out.stdout) == (0, "")
    assert out.stderr == (f'Private RSA key successfully written to file "{path}" '
                          "(2048 bits, PEM format) \n")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_bytes()
    assert text.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    loaded = serialization.load_pem_private_key(text, None)
    assert isinstance(loaded, rsa.RSAPrivateKey) and loaded.key_size == 2048


def test_genrsa_small_key_notes_rfc_6376_and_never_overwrites(tmp_path):
    path = tmp_path / "small.pem"
    out = amavisd("genrsa", str(path), "768")
    assert out.returncode == 0
    assert out.stderr == ("INFO: RFC 6376 states: Signers MUST use RSA keys of at least 1024 "
                          "bits for long-lived keys.\n"
                          f'Private RSA key successfully written to file "{path}" '
                          "(768 bits, PEM format) \n")
    assert serialization.load_pem_private_key(path.read_bytes(), None).key_size == 768
    before = path.read_bytes()
    again = amavisd("genrsa", str(path))
    assert (again.returncode, again.stdout) == \
        (1, f'genrsa: Can\'t create file "{path}": File exists\n')
    assert path.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    ((), "genrsa: File name for a key not provided"),
    (("x.pem", "abc"), "genrsa: Number of bits in a key must be numeric"),
    (("x.pem", "511"), "genrsa: Number of bits is below 512 (suggested 1024..2048)"),
    (("x.pem", "4097"), "genrsa: Number of bits too large (suggested 1024..2048)"),
])
def test_genrsa_refusals(tmp_path, args, message):
    out = amavisd("genrsa", *args, cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (1, message + "\n", "")
    assert not (tmp_path / "x.pem").exists()


def test_genrsa_then_showkeys_round_trip(tmp_path):
    pem = tmp_path / "k.pem"
    assert amavisd("genrsa", str(pem), "1024").returncode == 0
    conf = write_conf(tmp_path, f"dkim_key('Example.COM', 'Sel1', {str(pem)!r}, t='s')\n")
    out = amavisd("-c", str(conf), "showkeys")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"; key#1 1024 bits, s=sel1, d=example.com, {pem}\n")
    name, record = zone_record(out.stdout)
    assert name == "sel1._domainkey.example.com."
    assert record.startswith("v=DKIM1; t=s; p=")
    public = serialization.load_pem_private_key(pem.read_bytes(), None).public_key()
    published = serialization.load_der_public_key(
        __import__("base64").b64decode(record.split("p=", 1)[1]))
    assert published.public_numbers() == public.public_numbers()


# ---------------------------------------------------------------- showkeys
def test_showkeys_prints_what_the_perl_daemon_printed(tmp_path):
    conf = write_conf(tmp_path, f"dkim_key('anchor.test', 'anchor', {str(ANCHOR_PEM)!r})\n")
    out = amavisd("-c", str(conf), "showkeys")
    want = (DATA / "showkeys-anchor.perl.txt").read_text().replace(PERL_PEM_PATH,
                                                                   str(ANCHOR_PEM))
    assert (out.returncode, out.stdout) == (0, want)
    assert zone_record(out.stdout)[1] == anchor_record().replace("k=rsa; ", "")


def test_showkeys_selection_sorting_and_messages(tmp_path):
    ed = tmp_path / "ed.pem"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    conf = write_conf(tmp_path, f"""
dkim_key('b.example.org', 's1', {str(ANCHOR_PEM)!r})
dkim_key('*.example.net', 'w1', {str(ANCHOR_PEM)!r})
dkim_key('a.example.org', 'ed', {str(ed)!r}, n='one;two "x"')
""")
    out = amavisd("-c", str(conf), "showkeys", ".example.org").stdout
    comments = re.findall(r"^; key#.*$", out, re.M)
    assert comments == [f"; key#3 256 bits, s=ed, d=a.example.org, {ed}",
                        f"; key#1 2048 bits, s=s1, d=b.example.org, {ANCHOR_PEM}"]
    assert '"v=DKIM1; k=ed25519; n=one=3Btwo =22x=22; p="' in out
    assert len(re.findall(r'^  "([^"]*)"\)$', out, re.M)[0]) == 44
    wild = amavisd("-c", str(conf), "showkey", "www.example.net").stdout
    assert wild.splitlines()[:3] == [
        f"; key#2 2048 bits, s=w1, d=*.example.net, {ANCHOR_PEM}",
        "; CANNOT DECLARE A WILDCARDED LABEL IN DNS, AVOID OR EDIT MANUALLY!",
        "w1._domainkey.*.example.net.\t3600 TXT ("]
    none = amavisd("-c", str(conf), "showkeys", "example.com")
    assert (none.returncode, none.stdout) == (0, "No DKIM private keys match the selection "
                                                 "list.\n")
    empty = amavisd("-c", str(write_conf(tmp_path, "")), "showkeys")
    assert empty.stdout == "No DKIM private keys declared in a config file.\n"


# ---------------------------------------------------------------- testkeys
@pytest.mark.parametrize("records, mode, expect", [
    ({"anchor._domainkey.anchor.test": anchor_record()}, "answer", "pass"),
    ({"anchor._domainkey.anchor.test": "v=DKIM1; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDk"
      "HlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/B"
      "C/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QI"
      "DAQAB"}, "answer", "fail"),
    ({}, "answer", "invalid (public key: not available)"),
    ({}, "silent", "temperror (public key: DNS query timeout for "
                   "anchor._domainkey.anchor.test)"),
])
def test_testkeys_against_a_dns_server(tmp_path, records, mode, expect):
    with DnsStub(records, mode=mode) as stub:
        conf = write_conf(tmp_path, f"""
dkim_key('anchor.test', 'anchor', {str(ANCHOR_PEM)!r})
dkim_dns_servers = [{stub.address!r}]
dkim_dns_timeout = 1
""")
        out = amavisd("-c", str(conf), "testkeys")
    assert (out.returncode, out.stdout) == \
        (0, f"TESTING#1 anchor.test: anchor._domainkey.anchor.test => {expect}\n")


# ---------------------------------------------------------------- dkim_key() in configs
def test_native_config_dkim_key_errors_name_file_and_line(tmp_path):
    conf = write_conf(tmp_path, "dkim_key('example.com', 's', '/nonexistent/k.pem')\n")
    with pytest.raises(ConfigError) as err:
        load_python_config(conf, Config())
    assert str(err.value).startswith(f"{conf}:2: ")
    assert "Can't open PEM file /nonexistent/k.pem" in str(err.value)
    dup = write_conf(tmp_path, f"dkim_key('example.com', 's', {str(ANCHOR_PEM)!r})\n"
                               f"dkim_key('EXAMPLE.com', 'S', {str(ANCHOR_PEM)!r})\n")
    with pytest.raises(ConfigError) as err:
        load_python_config(dup, Config())
    assert "dkim_key: selector s for domain example.com already in use" in str(err.value)
    config = Config()
    good = write_conf(tmp_path, f"dkim_key('example.com', 's', {str(ANCHOR_PEM)!r}, 'h', "
                                f"'sha256', s='email')\n")
    load_python_config(good, config)
    (decl,) = config.dkim_signing_keys_list
    assert dict(decl.tags) == {"h": "sha256", "s": "email", "v": "DKIM1"}
    assert config.origin("dkim_signing_keys_list") == f"{good}:2"
    assert "-----" not in repr(config.dkim_signing_keys_list)      # the key never prints


def test_perl_config_dkim_key_is_declared_and_shares_a_reused_file(tmp_path):
    conf = tmp_path / "amavisd.conf"
    conf.write_text(f"use strict;\ndkim_key('a.example', 'one', '{ANCHOR_PEM}');\n"
                    f"dkim_key('b.example', 'two', '{ANCHOR_PEM}', t => 's');\n1;\n")
    config = Config()
    load_perl_config([str(conf)], config)
    one, two = config.dkim_signing_keys_list
    assert (one.domain, two.domain, two.tags["t"], two.index) == ("a.example", "b.example",
                                                                  "s", 1)
    assert one.pem is two.pem and one.origin == f"{conf}:2"
    assert dns_record(one) == dns_record(two).replace("t=s; ", "")


def test_wildcard_domains_become_patterns():
    assert wildcard_pattern("*.example.com").search("mx.example.com")
    assert not wildcard_pattern("*.example.com").search("example.com")
    assert wildcard_pattern("mail.*").pattern == r"^mail\."
    assert key("*.example.com", "w").wildcard
