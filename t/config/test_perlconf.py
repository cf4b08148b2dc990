# tests: amavisd/config/perlconf.py, amavisd/config/perl_shim.pl
"""Perl amavisd.conf import: Debian's config, the anchor profiles, the Perl oracle, errors.

The oracle (t/data/perlconf/oracle.pl) asks the installed Amavis::Conf what the
real daemon sees after reading the same files; every setting our registry knows
must come out the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from amavisd.config import perlconf
from amavisd.config.load import DEBIAN_CONF_DIRS, default_config_files
from amavisd.config.model import Config
from amavisd.config.perlconf import (
    NewRE,
    PerlCode,
    PerlScalarRef,
    RegexError,
    evaluate_perl_config,
    load_perl_config,
    perl_regex,
)
from amavisd.config.registry import BANK, REGISTRY, canonical
from amavisd.constants import D_DISCARD
from amavisd.errors import ConfigError

DATA = Path(__file__).resolve().parent.parent / "data" / "perlconf"
ORACLE = DATA / "oracle.pl"
AMAVIS_CONF_PM = Path("/usr/share/perl5/Amavis/Conf.pm")

needs_perl = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
needs_amavis = pytest.mark.skipif(
    not AMAVIS_CONF_PM.exists(),
    reason="amavisd-new is not installed (no /usr/share/perl5/Amavis/Conf.pm for the oracle)")
needs_debian = pytest.mark.skipif(
    not all(os.path.isdir(d) for d in DEBIAN_CONF_DIRS),
    reason="Debian's amavisd-new config dirs (/usr/share/amavis/conf.d, /etc/amavis/conf.d) "
           "are not installed")

PROFILES = {
    "base+pass": ["amavisd-base", "profile-pass"],
    "base+pass+dkim": ["amavisd-base", "profile-pass", "profile-dkim"],
    "base+pass+clamd": ["amavisd-base", "profile-pass", "profile-clamd"],
    "base+pass+clamd+full": ["amavisd-base", "profile-pass", "profile-clamd", "profile-full"],
    "base+pass+destiny-reject": ["amavisd-base", "profile-pass", "destiny-reject"],
    "base+pass+clamd+full+destiny-reject": ["amavisd-base", "profile-pass", "profile-clamd",
                                            "profile-full", "destiny-reject"],
}


@pytest.fixture
def anchor_dir(tmp_path, monkeypatch):
    """profile-dkim reads $ENV{ANCHOR_DIR}/conf/dkim/anchor.test.pem: the anchor's key."""
    pem = tmp_path / "anchor" / "conf" / "dkim" / "anchor.test.pem"
    pem.parent.mkdir(parents=True)
    pem.write_bytes((DATA.parent / "dkim" / "anchor.test.pem").read_bytes())
    monkeypatch.setenv("ANCHOR_DIR", str(tmp_path / "anchor"))
    return tmp_path / "anchor"


def profile_files(profile: str) -> list[str]:
    return [str(DATA / f"{name}.conf") for name in PROFILES[profile]]


def write(tmp_path: Path, text: str, name: str = "amavisd.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(*paths: str) -> Config:
    config = Config()
    load_perl_config(list(paths), config)
    return config


# ---------------------------------------------------------------- the oracle
def perl_name(key: str) -> str:
    return REGISTRY[key].sigil + key


def run_oracle(files: list[str]) -> dict:
    names = [perl_name(key) for key in REGISTRY]
    proc = subprocess.run(["perl", str(ORACLE), ",".join(names), *files],
                          capture_output=True, check=True, env=os.environ.copy())
    return json.loads(proc.stdout)


def expected_value(key: str, perl_value):
    """The Perl value as our registry would hold it (policy banks: the keys we implement)."""
    if key == "policy_bank":
        banks = {}
        for bank, content in (perl_value or {}).items():
            kept = {}
            for name, raw in content.items():
                known = canonical(name)
                if known is not None and REGISTRY[known].scope == BANK:
                    kept[known] = REGISTRY[known].parse(raw)
            banks[bank] = kept
        return banks
    if key == "dkim_signing_keys_list":      # Conf.pm's records of the dkim_key() calls
        return [{"domain": e["domain"], "selector": e["selector"], "key_ind": e["key_ind"]}
                for e in perl_value]
    from amavisd.config.perlconf import _Decoder

    name = perl_name(key)
    decoded = _Decoder({"variables": {name: perl_value}}).var(name)
    return REGISTRY[key].parse(decoded)


def _plain(value):
    """Compare values, not the names of the Perl variables a reference pointed to."""
    from amavisd.config.perlconf import PerlScalarRef
    from amavisd.dkim_keys import DkimKeyDecl

    if isinstance(value, DkimKeyDecl):
        return {"domain": value.domain_text, "selector": value.selector, "key_ind": value.index}
    if isinstance(value, PerlScalarRef):
        return ("scalar-ref", _plain(value.value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def assert_matches_oracle(files: list[str]) -> Config:
    config = load(*files)
    oracle = run_oracle(files)
    changed = {name.lstrip("$@%") for name in oracle["changed"]}
    for key in REGISTRY:
        ours = config.values[key]
        assigned = config.origin(key) != "default"
        if key in changed and REGISTRY[key].derive is None:
            # a derived *_maps default holds references to legacy variables (e.g.
            # @local_domains_acl); Perl counts it changed when those change
            assert assigned, f"{key}: Perl sees it set, we did not assign it"
        if assigned:
            theirs = expected_value(key, oracle["values"][perl_name(key)])
            assert _plain(ours) == _plain(theirs), f"{key}: ours {ours!r} != amavisd's {theirs!r}"
    return config


# ---------------------------------------------------------------- Debian's own config
@needs_perl
@needs_debian
def test_debian_config_values():
    config = load(*default_config_files())
    assert config.inet_socket_port == [10024]
    assert config.MYHOME == "/var/lib/amavis"
    assert config.TEMPBASE == "/var/lib/amavis/tmp"
    assert config.daemon_user == "amavis"
    assert config.QUARANTINEDIR == "/var/lib/amavis/virusmails"
    assert config.unix_socketname == "/var/lib/amavis/amavisd.sock"
    assert config.interface_policy == {"SOCK": "AM.PDP-SOCK"}
    assert config.policy_bank["AM.PDP-SOCK"] == {"protocol": "AM.PDP",
                                                 "auth_required_release": False}
    assert config.DO_SYSLOG is True
    assert config.origin("MYHOME") == "/usr/share/amavis/conf.d/10-debian_scripts:18"
    assert config.origin("inet_socket_port").startswith("/etc/amavis/conf.d/20-debian_defaults:")
    accepted = config.accepted_not_implemented
    assert "policy_bank[AM.PDP-SOCK][auth_required_release]" not in accepted
    assert "notify_sender_templ" not in accepted and "av_scanners" not in accepted
    # 30-template_localization: read_l10n_templates('en_US', '/etc/amavis')
    assert config.notify_sender_templ == Path("/etc/amavis/en_US/template-dsn.txt").read_text()
    assert config.final_virus_destiny == D_DISCARD        # Debian's 20-debian_defaults
    assert config.origin("final_virus_destiny").startswith("/etc/amavis/conf.d/20-debian")
    assert config.files[0] == "/usr/share/amavis/conf.d/10-debian_scripts"


@needs_perl
@needs_debian
def test_debian_max_servers_unless_changed():
    """Debian leaves $max_servers at amavisd's 2; a local 50-user may change it."""
    config = load(*default_config_files())
    if config.origin("max_servers") == "default":
        assert config.max_servers == 2


@needs_perl
@needs_debian
def test_debian_lookup_tables_are_translated():
    result = evaluate_perl_config(default_config_files())
    banned = result.variables["$banned_filename_re"]
    assert isinstance(banned, NewRE)
    assert banned.entries[0][0].search("x.txt.exe") and banned.entries[0][1] == 1
    fake = result.variables["@viruses_that_fake_sender_maps"][0]
    assert [value for _, value in fake.entries] == [0, 1]
    assert fake.entries[0][0].search("Eicar-Test-Signature")
    assert result.variables["@bypass_virus_checks_maps"] == [1]
    clamd = result.variables["@av_scanners"][0]
    assert clamd[0] == "ClamAV-clamd" and clamd[1] == PerlCode("ask_daemon")
    assert clamd[5].search("/tmp/x: Eicar-Sig FOUND").group(1) == "Eicar-Sig"


@needs_perl
@needs_amavis
@needs_debian
def test_debian_config_matches_oracle():
    assert_matches_oracle(default_config_files())


# ---------------------------------------------------------------- anchor profiles
@needs_perl
@needs_amavis
@pytest.mark.parametrize("profile", PROFILES)
def test_anchor_profile_matches_oracle(profile, anchor_dir):
    config = assert_matches_oracle(profile_files(profile))
    assert config.inet_socket_port == [31024]
    assert config.MYHOME == "/tmp/anchor-amavis"
    assert config.forward_method == "smtp:[127.0.0.1]:31025"


@needs_perl
def test_anchor_dkim_profile(anchor_dir):
    result = evaluate_perl_config(profile_files("base+pass+dkim"))
    (key,) = result.dkim_keys
    assert (key.domain, key.selector) == ("anchor.test", "anchor")
    assert key.key == f"{anchor_dir}/conf/dkim/anchor.test.pem"
    assert key.origin.endswith("profile-dkim.conf:10")
    assert result.variables["@dkim_signature_options_bysender_maps"] == [
        {".": {"ttl": 21 * 24 * 3600, "c": "relaxed/simple"}}]
    config = Config()
    perlconf.assign_perl_config(result, config)
    assert config.policy_bank["ORIGINATING"] == {"originating": True}
    assert config.interface_policy == {"SOCK": "AM.PDP-SOCK", "31024": "ORIGINATING"}
    (decl,) = config.dkim_signing_keys_list        # read at config time (amavisd.dkim_keys)
    assert (decl.domain, decl.selector, decl.bits) == ("anchor.test", "anchor", 2048)


@needs_perl
def test_anchor_clamd_profile_keeps_references_to_legacy_variables():
    result = evaluate_perl_config(profile_files("base+pass+clamd"))
    maps = result.variables["@bypass_virus_checks_maps"]
    assert maps[0] is result.referenced["%bypass_virus_checks"]
    assert maps[1] is result.referenced["@bypass_virus_checks_acl"]
    assert isinstance(maps[2], PerlScalarRef) and maps[2].name == "bypass_virus_checks_re"
    assert maps[2].value is None
    scanner = result.variables["@av_scanners"][0]
    assert scanner[1] == PerlCode("ask_daemon")
    assert scanner[2] == ["CONTSCAN {}\n", "/tmp/anchor-clamd/clamd.sock"]
    assert scanner[3].flags & re.MULTILINE
    assert result.origins["@av_scanners"].endswith("profile-clamd.conf:6")


# ---------------------------------------------------------------- shim behaviour
@needs_perl
def test_interpolation_strict_and_origins(tmp_path):
    first = write(tmp_path, "use strict;\n$MYHOME = '/srv/amavis';\n1;\n", "a.conf")
    second = write(tmp_path, "use strict;\n$TEMPBASE = \"$MYHOME/tmp\";\n"
                             "$policy_bank{'MYNETS'} = { log_level => 2, bogus_key => 1 };\n"
                             "push @inet_acl, '10.0.0.1';\n"
                             "$max_servers = '5';\n1;\n", "b.conf")
    config = load(first, second)
    assert config.TEMPBASE == "/srv/amavis/tmp"
    assert config.max_servers == 5
    assert config.inet_acl == ["127.0.0.1", "[::1]", "10.0.0.1"]
    assert config.policy_bank == {"MYNETS": {"log_level": 2}}
    assert config.origin("TEMPBASE") == f"{second}:2"
    assert config.origin("inet_acl") == f"{second}:4"
    assert config.accepted_not_implemented == {"policy_bank[MYNETS][bogus_key]": f"{second}:3"}


@needs_perl
def test_preset_and_environment(tmp_path):
    path = write(tmp_path, "use strict;\n$TEMPBASE = \"$MYHOME/tmp\";\n$ENV{TMPDIR} = $TEMPBASE;\n"
                           "$X_HEADER_LINE = \"at $instance_name\";\n1;\n")
    config = Config()
    load_perl_config([path], config, preset={"MYHOME": "/srv/h", "instance_name": "two"})
    assert config.TEMPBASE == "/srv/h/tmp"
    assert config.origin("MYHOME") == "default"
    result = evaluate_perl_config([path], preset={"MYHOME": "/srv/h", "instance_name": "two"})
    assert result.environment == {"TMPDIR": "/srv/h/tmp"}
    assert result.variables["$X_HEADER_LINE"] == "at two"
    assert config.accepted_not_implemented["ENV{TMPDIR}"] == path


@needs_perl
def test_shared_anonymous_references_stay_shared(tmp_path):
    path = write(tmp_path, "use strict;\nmy $list = ['a', 'b'];\n"
                           "@av_scanners = ($list);\n@av_scanners_backup = ($list);\n"
                           "$forward_method = Opaque(['smtp:[127.0.0.1]:10025']) ? "
                           "'smtp:[::1]:10025' : '';\n1;\n")
    result = evaluate_perl_config([path])
    assert result.variables["@av_scanners"][0] is result.variables["@av_scanners_backup"][0]
    assert result.variables["@av_scanners"][0] == ["a", "b"]


@needs_perl
def test_unknown_variable_without_strict_is_accepted_and_listed(tmp_path, caplog):
    path = write(tmp_path, "$my_helper = 'x';\n$final_virus_destinyy = D_PASS;\n1;\n")
    config = load(path)
    assert config.accepted_not_implemented == {
        "my_helper": f"{path}:1", "final_virus_destinyy": f"{path}:2"}
    assert "final_virus_destinyy is not an amavisd setting" in caplog.text


@needs_perl
def test_same_name_with_two_sigils_prefers_the_registry_one(tmp_path):
    path = write(tmp_path, "$inet_acl = 'x';\n@inet_acl = ('10.1.1.1');\n1;\n")
    config = load(path)
    assert config.inet_acl == ["10.1.1.1"]
    assert config.accepted_not_implemented == {"$inet_acl": f"{path}:1"}


# ---------------------------------------------------------------- errors
@needs_perl
def test_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "use strict;\n$max_servers = 2;\n$log_level = = 3;\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.origin == f"{path}:3"
    assert "syntax error" in err.value.why


@needs_perl
def test_undeclared_variable_under_strict_names_line(tmp_path):
    path = write(tmp_path, "use strict;\n\n$final_virus_destinyy = D_PASS;\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.origin == f"{path}:3"
    assert "$final_virus_destinyy" in err.value.why


@needs_perl
def test_missing_include_names_the_including_line(tmp_path):
    path = write(tmp_path, "use strict;\ninclude_config_files('/nonexistent/amavisd.conf');\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.origin == f"{path}:2"
    assert "/nonexistent/amavisd.conf" in err.value.why and "does not exist" in err.value.why


@needs_perl
def test_error_inside_included_file_names_that_file(tmp_path):
    inner = write(tmp_path, "use strict;\n$max_servers = ;\n1;\n", "inner.conf")
    outer = write(tmp_path, f"use strict;\ninclude_config_files('{inner}');\n1;\n", "outer.conf")
    with pytest.raises(ConfigError) as err:
        load(outer)
    assert err.value.origin == f"{inner}:2"


@needs_perl
def test_included_file_values_and_origins(tmp_path):
    inner = write(tmp_path, "use strict;\n$log_level = 3;\n1;\n", "inner.conf")
    outer = write(tmp_path, f"use strict;\ninclude_config_files('{inner}');\n1;\n", "outer.conf")
    config = load(outer)
    assert config.log_level == 3
    assert config.origin("log_level") == f"{inner}:2"
    assert config.files == [outer, inner]


@needs_perl
def test_missing_top_level_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(str(tmp_path / "absent.conf"))
    assert "does not exist" in str(err.value)


@needs_perl
@pytest.mark.parametrize("regex", [r"qr/^(?{ 1 })x/", r"qr/\Gfoo/", r"qr/a\Kb/",
                                   r"qr/\p{Lu}/", r"qr/(a|(?R))/"])
def test_untranslatable_regex_names_file_and_pattern(tmp_path, regex):
    scanner = f"['x', \\&ask_daemon, [], {regex}]"
    path = write(tmp_path, f"use strict;\n@av_scanners = ({scanner});\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.origin == f"{path}:2"
    assert err.value.name == "av_scanners"
    assert "cannot be used" in err.value.why


@needs_perl
def test_bad_value_for_known_setting_names_line(tmp_path):
    path = write(tmp_path, "use strict;\n$max_servers = 'many';\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value) == f"{path}:2: max_servers: expected a number, got 'many'"


@needs_perl
def test_bad_dkim_key_file(tmp_path):
    path = write(tmp_path, "use strict;\ndkim_key('example.com', 's1', '/nonexistent.pem');\n1;\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.origin == f"{path}:2" and "PEM file" in err.value.why


@needs_perl
def test_shim_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(perlconf, "SHIM_TIMEOUT", 1)
    path = write(tmp_path, "my $out = `sleep 20`;\n1;\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load(path)
    assert "took over 1 s" in err.value.why
    assert time.monotonic() - started < 10


@needs_perl
def test_read_helpers(tmp_path):
    (tmp_path / "senders").write_text("# comment\nUser@Example.COM  -3.0\n.example.net\n")
    (tmp_path / "list").write_text("a@b  # trailing\n\nc@d\n")
    path = write(tmp_path, f"use strict;\n@score_sender_maps = (read_hash('{tmp_path}/senders'));"
                           f"\n@local_domains_acl = @{{read_array('{tmp_path}/list')}};\n1;\n")
    result = evaluate_perl_config([path])
    assert result.variables["@score_sender_maps"] == [{"user@example.com": "-3.0",
                                                        ".example.net": 1}]
    assert result.variables["@local_domains_acl"] == ["a@b", "c@d"]


# ---------------------------------------------------------------- regex translation
@pytest.mark.parametrize("pattern, flags, text, expected", [
    (r"^foo\z", "", "foo\n", None),
    (r"^foo\Z", "", "foo\n", "foo"),
    (r"\Afoo", "", "foo", "foo"),
    (r"(?<word>\w+)-\k<word>", "", "ab-ab", "ab-ab"),
    (r"a\hb", "", "a\tb", "a\tb"),
    (r"[[:alpha:]]+", "", "abc1", "abc"),
    (r"[[:digit:][:upper:]]+", "", "A1b", "A1"),
    (r"x(?i)Y", "", "xy", "xy"),
    (r"(?:x(?i)Y)z", "", "xyz", "xyz"),
    (r"(?:x(?i)Y)Z", "", "xyz", None),
    (r"(?^i:AB)c", "", "abc", "abc"),
    (r"a++b", "", "aab", "aab"),
    (r"\x{41}\x42", "", "AB", "AB"),
    (r"[\x{263A}]", "", "\u263a", "\u263a"),
    (r"(a)\g1\g{-1}", "", "aaa", "aaa"),
    (r"foo # comment (unbalanced", "x", "foo", "foo"),
    (r"[a-]--", "", "---", "---"),
    (r"[&|~]+", "", "&|~", "&|~"),
    (r"\bEICAR\b", "i", "eicar-test", "eicar"),
])
def test_perl_regex_translation(pattern, flags, text, expected):
    match = perl_regex(pattern, flags).search(text)
    assert (match.group(0) if match else None) == expected


@pytest.mark.parametrize("pattern, flags", [
    (r"(?{ 1 })", ""), (r"\G", ""), (r"(?|(a)|(b))", ""), (r"(?R)", ""), (r"\p{L}", ""),
    (r"(*FAIL)", ""), (r"[[:^alpha:]]", ""), (r"x", "l"), (r"a\Kb", ""),
])
def test_untranslatable_perl_regex(pattern, flags):
    with pytest.raises(RegexError):
        perl_regex(pattern, flags)
