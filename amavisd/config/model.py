"""The effective configuration and the per-connection policy-bank view.

``Config`` is built once by the master before forking (HUP re-execs rather than
changing it in place).  ``Config.view(banks)`` lays banks over the base the way
amavis loads policy banks (spec/pipeline.md section 16): a bank key replaces the
base value, except that two dicts are merged key by key unless the new one holds
``REPLACE => 1``.  Checks, ``decide`` and actions only ever see a ``BankView``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from amavisd.config.registry import BANK, BANK_KEYS, REGISTRY, canonical, defaults
from amavisd.errors import ConfigError


class Config:
    """Every setting's value and where it came from (``origins``)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = defaults()
        self.origins: dict[str, str] = {name: "default" for name in self.values}
        self.files: list[str] = []
        #: Settings an imported Perl config set that our registry does not know yet.
        self.accepted_not_implemented: dict[str, str] = {}

    # -- assignment ---------------------------------------------------------
    def assign(self, name: str, raw: Any, origin: str) -> None:
        """Check and store one value; an unknown name or a bad value is a ConfigError."""
        key = canonical(name)
        if key is None:
            raise ConfigError(origin, name, "unknown setting")
        entry = REGISTRY[key]
        try:
            value = entry.parse(raw)
        except ValueError as exc:
            raise ConfigError(origin, name, str(exc)) from None
        if key == "policy_bank":
            value = {bank: _check_bank(bank, content, origin) for bank, content in value.items()}
        self.values[key] = value
        self.origins[key] = origin

    def finish(self) -> None:
        """Fill the after-defaults (values derived from others, e.g. TEMPBASE from MYHOME)."""
        for name, entry in REGISTRY.items():
            if entry.derive is not None and self.values[name] is None:
                self.values[name] = entry.derive(self.values)
                self.origins[name] = "derived"
        self._fold_deprecated()
        tag = (self.values.get("X_HEADER_TAG") or "").lower()
        allowed = self.values["allowed_added_header_fields"]
        if tag and tag not in allowed:           # amavis adds its own tag implicitly
            self.values["allowed_added_header_fields"] = {**allowed, tag: 1}
        from amavisd.sql.lookup import imply_sql_lookups

        imply_sql_lookups(self)       # SQL fields in front of the maps (pipeline.md 14)

    def _fold_deprecated(self) -> None:
        opts = self.values["smtpd_tls_server_options"]
        for old, key in (("smtpd_tls_cert_file", "SSL_cert_file"),
                         ("smtpd_tls_key_file", "SSL_key_file")):
            if self.values[old] and key not in opts:
                opts[key] = self.values[old]

    # -- reading ------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            key = canonical(name)
            if key is None:
                raise AttributeError(f"no setting named {name!r}") from None
            return self.__dict__["values"][key]

    def origin(self, name: str) -> str:
        return self.origins.get(canonical(name) or name, "?")

    def view(self, banks: Iterable[str] = ()) -> BankView:
        """The settings as seen with ``banks`` loaded in order over the base."""
        return BankView(self, list(banks))


def _check_bank(bank: str, content: Any, origin: str) -> dict[str, Any]:
    """Check every key of a policy bank: it must be a BANK setting of a valid type."""
    if not isinstance(content, dict):
        raise ConfigError(origin, f"policy_bank[{bank!r}]", "a policy bank must be a dict")
    checked: dict[str, Any] = {}
    for name, raw in content.items():
        if name in ("ACTION", "REPLACE"):
            checked[name] = raw
            continue
        key = canonical(name)
        if key is None:
            raise ConfigError(origin, f"policy_bank[{bank!r}][{name!r}]", "unknown setting")
        entry = REGISTRY[key]
        if entry.scope != BANK:
            raise ConfigError(origin, f"policy_bank[{bank!r}][{name!r}]",
                              "a global setting cannot be set in a policy bank")
        if isinstance(raw, dict) and entry.sigil == "%":
            checked[key] = raw
            continue
        try:
            checked[key] = entry.parse(raw)
        except ValueError as exc:
            raise ConfigError(origin, f"policy_bank[{bank!r}][{name!r}]", str(exc)) from None
    return checked


class BankView:
    """Read-only settings with policy banks laid over the base (pipeline.md section 16).

    Building one costs a dict copy of the bank keys a bank touches, so the child
    builds a view per connection and per transaction without concern.
    """

    def __init__(self, config: Config, banks: list[str]):
        self._config = config
        self._over: dict[str, Any] = {}
        self._path: list[str] = []
        for bank in banks:
            self.load(bank)

    def load(self, bank: str) -> bool:
        """Load ``bank`` on top; a bank that does not exist is ignored, as in amavis."""
        if self._path and self._path[-1] == bank:
            return False
        content = self._config.values["policy_bank"].get(bank)
        if content is None:
            return False
        for key, value in content.items():
            if key in ("ACTION", "REPLACE"):
                continue
            current = self._over.get(key, self._config.values.get(key))
            if isinstance(value, dict) and isinstance(current, dict) and not value.get("REPLACE"):
                merged = dict(current)
                merged.update(value)
                self._over[key] = merged
            else:
                self._over[key] = copy.copy(value)
        if bank == "MYNETS":
            self._over["originating"] = True
        self._path.append(bank)
        return True

    @property
    def policy_bank_path(self) -> str:
        return "/".join(self._path)

    @property
    def banks(self) -> list[str]:
        return list(self._path)

    def set(self, name: str, value: Any) -> None:
        """Override one bank setting in this view only (AM.PDP: forward_method, originating)."""
        self._over[canonical(name) or name] = value

    def copy(self) -> BankView:
        clone = BankView(self._config, [])
        clone._over = dict(self._over)
        clone._path = list(self._path)
        return clone

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = canonical(name) or name
        if key in BANK_KEYS and key in self._over:
            return self._over[key]
        return getattr(self._config, key)
