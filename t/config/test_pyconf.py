# tests: amavisd/config/pyconf.py, amavisd/config/load.py
"""The native config: Python assignments, constants provided, errors with file:line."""

import os

import pytest

from amavisd.cli import parse_args
from amavisd.config.load import load_config, looks_like_perl
from amavisd.constants import D_DISCARD
from amavisd.errors import ConfigError


def write(tmp_path, text, name="amavisd.conf"):
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, 0o644)
    return str(path)


def load(tmp_path, text, *extra):
    return load_config(parse_args(["-c", write(tmp_path, text), *extra, "foreground"]))


def test_assignments_and_constants(tmp_path):
    config = load(tmp_path, "MYHOME = '/srv/x'\nTEMPBASE = MYHOME + '/tmp'\n"
                            "max_servers = 4\nmyhostname = 'mx.example.com'\n"
                            "policy_bank = {'MYNETS': {'log_level': 2}}\n"
                            "interface_policy['10026'] = 'MYNETS'\n"
                            f"_helper = {D_DISCARD}\n")
    assert config.TEMPBASE == "/srv/x/tmp"
    assert config.max_servers == 4
    assert config.interface_policy == {"10026": "MYNETS"}
    assert config.origin("max_servers").endswith("amavisd.conf:3")
    assert config.origin("interface_policy").endswith("amavisd.conf:6")


def test_unknown_name_is_refused_with_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx.example.com'\n\nfinal_virus_destinyy = D_PASS\n")
    assert str(err.value).endswith("amavisd.conf:3: final_virus_destinyy: unknown setting")


def test_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx.example.com'\nmax_servers = = 3\n")
    assert "amavisd.conf:2" in str(err.value) and "syntax error" in str(err.value)


def test_runtime_error_names_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx.example.com'\nMYHOME = undefined_name + '/x'\n")
    assert "amavisd.conf:2" in str(err.value) and "NameError" in str(err.value)


def test_bad_type_names_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx.example.com'\nmax_servers = 'many'\n")
    assert "amavisd.conf:2: max_servers: expected a number" in str(err.value)


def test_command_line_wins(tmp_path):
    config = load(tmp_path, "myhostname = 'mx.example.com'\nmax_servers = 4\n", "-m", "7",
                  "-H", "/srv/y")
    assert config.max_servers == 7 and config.origin("max_servers") == "command line"
    assert config.TEMPBASE == "/srv/y"


def test_hostname_must_be_fqdn(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx'\n")
    assert "fully qualified" in str(err.value)


def test_perl_and_native_files_load_in_order(tmp_path):
    """A Perl file is recognised by content and imported; a native file after it wins."""
    perl = "use strict;\n$myhostname = 'mx.example.com';\n$max_servers = 3;\n" \
           "$final_virus_destiny = D_DISCARD;\n1;\n"
    assert looks_like_perl(perl.encode())
    assert not looks_like_perl(b"max_servers = 3\n")
    first = write(tmp_path, perl, "amavisd.conf")
    second = write(tmp_path, "log_level = 4\n", "local.py")
    config = load_config(parse_args(["-c", first, "-c", second]))
    assert config.max_servers == 3 and config.origin("max_servers") == f"{first}:3"
    assert config.log_level == 4
    assert config.final_virus_destiny == D_DISCARD
    assert config.origin("final_virus_destiny") == f"{first}:4"
    assert "final_virus_destiny" not in config.accepted_not_implemented


def test_group_writable_config_is_refused(tmp_path):
    path = write(tmp_path, "myhostname = 'mx.example.com'\n")
    os.chmod(path, 0o664)
    with pytest.raises(ConfigError) as err:
        load_config(parse_args(["-c", path]))
    assert "writable by group or others" in str(err.value)


def test_bad_ip_list_entry_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "myhostname = 'mx.example.com'\ninet_acl = ['127.0.0.1', '10.1.2']\n")
    assert "amavisd.conf:2: inet_acl: bad IP network '10.1.2'" in str(err.value)


def test_config_owned_by_the_daemon_user_is_refused(tmp_path):
    """protocols.md 1.6 step 4: a config file must be owned by root (we run as root)."""
    path = write(tmp_path, "myhostname = 'mx.example.com'\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError) as err:
        load_config(parse_args(["-c", path]))
    assert f'Config file "{path}" should be owned by root (uid 0)' in str(err.value)
