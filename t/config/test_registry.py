# tests: amavisd/config/registry.py, amavisd/config/model.py
"""The registry is the one truth: defaults parse, docs exist, banks take BANK settings."""

import pytest

from amavisd.config.model import Config
from amavisd.config.registry import BANK, GLOBAL, REGISTRY, canonical
from amavisd.errors import ConfigError


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_default_parses_and_is_documented(name):
    entry = REGISTRY[name]
    assert entry.doc and entry.doc[0].isupper() and entry.doc.endswith(".")
    assert entry.scope in (BANK, GLOBAL)
    assert entry.parse(entry.default) == entry.default or entry.default in (None, [], {})


@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if s.scope == BANK))
def test_every_bank_setting_is_accepted_in_a_bank(name):
    config = Config()
    config.assign("policy_bank", {"B": {name: REGISTRY[name].default}}, "t:1")
    config.finish()
    assert name in config.policy_bank["B"]


def test_aliases_map_to_one_setting():
    assert canonical("do_syslog") == "DO_SYSLOG"
    assert canonical("logfile") == "LOGFILE"
    assert canonical("no_such_thing") is None


def test_unknown_setting_names_origin():
    with pytest.raises(ConfigError) as err:
        Config().assign("final_virus_destinyy", 1, "x.conf:7")
    assert str(err.value) == "x.conf:7: final_virus_destinyy: unknown setting"


def test_wrong_type_names_origin():
    with pytest.raises(ConfigError) as err:
        Config().assign("max_servers", "lots", "x.conf:3")
    assert "x.conf:3" in str(err.value) and "max_servers" in str(err.value)


def test_global_setting_refused_inside_a_bank():
    with pytest.raises(ConfigError) as err:
        Config().assign("policy_bank", {"B": {"max_servers": 3}}, "x.conf:9")
    assert "global setting" in str(err.value)


def test_smtpd_timeout_below_5_becomes_5():
    """protocols.md 1.2: values below 5 are raised to 5."""
    config = Config()
    config.assign("smtpd_timeout", 2, "t:1")
    assert config.smtpd_timeout == 5


def test_after_defaults_follow_myhome():
    config = Config()
    config.assign("MYHOME", "/srv/am", "t:1")
    config.finish()
    assert config.TEMPBASE == "/srv/am"
    assert config.db_home == "/srv/am/db"
    assert config.origin("TEMPBASE") == "derived"


def test_bank_view_overlays_and_merges_dicts():
    """pipeline.md 16: a bank replaces values; two dicts merge unless REPLACE."""
    config = Config()
    config.assign("allowed_added_header_fields", {"received": 1, "x-a": 1}, "t:1")
    config.assign("policy_bank", {
        "P": {"log_level": 3, "allowed_added_header_fields": {"x-b": 1}},
        "R": {"allowed_added_header_fields": {"x-c": 1, "REPLACE": 1}},
        "MYNETS": {},
    }, "t:2")
    config.finish()
    view = config.view(["P"])
    assert view.log_level == 3
    assert view.allowed_added_header_fields == {"received": 1, "x-a": 1, "x-b": 1,
                                                "x-virus-scanned": 1}   # amavis adds its tag
    view.load("R")
    assert view.allowed_added_header_fields == {"x-c": 1, "REPLACE": 1}
    assert view.policy_bank_path == "P/R"
    assert not view.originating
    view.load("MYNETS")
    assert view.originating
    assert config.view().log_level == 0
    assert not config.view().load("NOSUCHBANK")


def test_generated_docs_are_current():
    """docs/config.md and conf/amavisd.conf come from the registry; regenerate on change."""
    from pathlib import Path

    from amavisd.config.docgen import render_conf, render_markdown

    root = Path(__file__).resolve().parents[2]
    assert (root / "docs" / "config.md").read_text() == render_markdown(), \
        "run: python -m amavisd.config.docgen"
    assert (root / "conf" / "amavisd.conf").read_text() == render_conf()


def test_sample_conf_loads_as_python(tmp_path):
    """The generated sample is valid native config (all commented out)."""
    import os
    from pathlib import Path

    from amavisd.cli import parse_args
    from amavisd.config.load import load_config

    root = Path(__file__).resolve().parents[2]
    path = tmp_path / "amavisd.conf"
    path.write_text((root / "conf" / "amavisd.conf").read_text()
                    + "\nmyhostname = 'mx.example.com'\n")
    os.chmod(path, 0o644)
    assert load_config(parse_args(["-c", str(path)])).max_servers == 2


def test_every_package_is_in_pyproject():
    """An installed copy must have every subpackage (pip install ., not only -e)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "amavisd").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
