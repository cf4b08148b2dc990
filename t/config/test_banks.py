# tests: amavisd/config/banks.py
"""Bank selection by client IP and by DKIM author (pipeline.md section 16)."""

from amavisd.config.banks import load_client_ip_banks
from amavisd.config.model import Config


def config(**values):
    cfg = Config()
    for name, value in values.items():
        cfg.assign(name, value, "t:1")
    cfg.finish()
    return cfg


def test_default_policy_is_mynetworks_to_mynets():
    cfg = config(policy_bank={"MYNETS": {"log_level": 3}})
    view = cfg.view()
    assert load_client_ip_banks(view, "10.1.2.3") == ["MYNETS"]
    assert view.originating and view.log_level == 3
    view = cfg.view()
    assert load_client_ip_banks(view, None) == []          # 0.0.0.0 is not ours
    assert load_client_ip_banks(view, "192.0.2.1") == []
    assert not view.originating


def test_first_matching_pair_wins_and_loads_every_named_bank():
    cfg = config(policy_bank={"A": {}, "B": {}, "C": {}},
                 client_ipaddr_policy=[["!192.0.2.5", "192.0.2.0/24"], "A,B",
                                       ["0/0"], "C"])
    assert load_client_ip_banks(cfg.view(), "192.0.2.7") == ["A", "B"]
    assert load_client_ip_banks(cfg.view(), "192.0.2.5") == ["C"]
