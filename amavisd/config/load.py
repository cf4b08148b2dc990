"""Build the effective ``Config``: defaults, then each config file, then the command line.

The precedence is written once, here.  Each config file is either the native
Python format or a Perl ``amavisd.conf``.  Consecutive Perl files are evaluated
together in one perl (a later file sees what an earlier one set, as in amavisd);
a native file sees everything loaded before it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from amavisd.config.model import Config
from amavisd.config.perlconf import load_perl_config
from amavisd.config.pyconf import load_python_config
from amavisd.errors import ConfigError

#: Where the Perl amavisd looks when no -c is given (Debian first, then upstream).
DEBIAN_CONF_DIRS = ("/usr/share/amavis/conf.d", "/etc/amavis/conf.d")
DEFAULT_FILES = ("/etc/amavisd.conf", "/etc/amavis/amavisd.conf")

_PERL_HINTS = re.compile(
    rb"^\s*(use\s+strict\s*;|[$@%][A-Za-z_]\w*(\{[^}]*\})?\s*=[^=]|1;\s*$)", re.M)


def looks_like_perl(data: bytes) -> bool:
    """True for amavisd.conf-style Perl: sigil assignments, ``use strict;``, ``1;``."""
    return bool(_PERL_HINTS.search(data))


def default_config_files() -> list[str]:
    """The files the Perl daemon would read with no -c (protocols.md section 1.6 step 4)."""
    found: list[str] = []
    for folder in DEBIAN_CONF_DIRS:
        if os.path.isdir(folder):
            found += sorted(str(p) for p in Path(folder).iterdir()
                            if re.fullmatch(r"[A-Za-z0-9_-]+", p.name) and p.is_file())
    if found:
        return found
    return [f for f in DEFAULT_FILES if os.path.exists(f)]


def check_ownership(path: str) -> None:
    """Config files must be owned by root and writable by nobody else (section 1.6)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read config file: {exc.strerror}") from None
    if os.geteuid() == 0 and st.st_uid != 0:
        raise ConfigError(path, "", f'Config file "{path}" should be owned by root (uid 0)')
    if os.geteuid() != 0 and st.st_uid == os.geteuid():
        raise ConfigError(path, "", f'Config file "{path}" must not be owned by the daemon user')
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(path, "", f'Config file "{path}" is writable by group or others')


def is_perl_file(path: str) -> bool:
    """A Perl amavisd.conf (by content); ``*.py`` files are always native."""
    if path.endswith(".py"):
        return False
    try:
        head = Path(path).read_bytes()[:65536]
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read config file: {exc.strerror}") from None
    return looks_like_perl(head)


def load_files(paths: list[str], config: Config, preset: dict[str, str]) -> None:
    """Load files in order; runs of Perl files go to one perl evaluation."""
    perl_run: list[str] = []
    for path in paths:
        check_ownership(path)
        if is_perl_file(path):
            perl_run.append(path)
            continue
        if perl_run:
            load_perl_config(perl_run, config, preset)
            perl_run = []
        load_python_config(path, config)
    if perl_run:
        load_perl_config(perl_run, config, preset)


def load_file(path: str, config: Config) -> None:
    load_files([path], config, {})


def perl_preset(opts) -> dict[str, str]:
    """What amavisd's command line sets before the files run (-H, -T, -Q, -i)."""
    preset = {"MYHOME": opts.home, "TEMPBASE": opts.tempbase,
              "QUARANTINEDIR": opts.quarantine_dir, "instance_name": opts.instance}
    return {name: value for name, value in preset.items() if value is not None}


def apply_command_line(config: Config, opts) -> None:
    """Command-line values win over the files (protocols.md section 1.6 step 7)."""
    origin = "command line"
    pairs = {
        "log_level": opts.log_level,
        "max_servers": opts.max_servers,
        "daemon_user": opts.user,
        "instance_name": opts.instance,
        "lock_file": opts.lock_file,
        "pid_file": opts.pid_file,
        "MYHOME": opts.home,
        "db_home": opts.db_home,
        "QUARANTINEDIR": opts.quarantine_dir,
        "TEMPBASE": opts.tempbase,
        "listen_sockets": opts.listen,
    }
    for name, value in pairs.items():
        if value is not None:
            config.assign(name, value, origin)
    if opts.groups:
        config.assign("daemon_groups", opts.groups, origin)
    if opts.listen is not None:
        config.assign("inet_socket_port", [], origin)
        config.assign("unix_socketname", None, origin)
    if opts.chroot is not None:
        config.assign("daemon_chroot_dir", None if opts.chroot in ("", "/") else opts.chroot,
                      origin)
    if opts.db_home == "":
        config.assign("enable_db", 0, origin)
    if opts.command in ("debug", "foreground", "demo"):
        config.assign("daemonize", 0, origin)
    if opts.command == "debug":
        config.assign("DEBUG", 1, origin)


def load_config(opts) -> Config:
    """Defaults, each -c file in order (or the default locations), then the command line."""
    config = Config()
    files = opts.config_files or default_config_files()
    if not files:
        raise ConfigError("amavisd", "", "no config file given (-c) and none found in "
                          + ", ".join(DEBIAN_CONF_DIRS + DEFAULT_FILES))
    load_files(list(files), config, perl_preset(opts))
    apply_command_line(config, opts)
    config.finish()
    validate(config)
    return config


def load_demo_config(opts) -> Config:
    """The embedded demo config: no MTA needed, passed mail lands in bsmtp files."""
    from amavisd.config.demo import demo_settings

    config = Config()
    for name, value in demo_settings().items():
        config.assign(name, value, "demo config")
    load_files(list(opts.config_files), config, perl_preset(opts))
    apply_command_line(config, opts)
    config.finish()
    validate(config)
    return config


def _check_ip_lists(config: Config) -> None:
    """An IP list entry amavis would die on at lookup time is a config error at load."""
    from amavisd.config.lookup import check_ip_acl

    places = [(name, config.origin(name), getattr(config, name)) for name in
              ("inet_acl", "mynetworks")]
    for bank, content in config.policy_bank.items():
        for name in ("inet_acl", "mynetworks"):
            if name in content:
                places.append((f"policy_bank[{bank!r}][{name!r}]", config.origin("policy_bank"),
                               content[name]))
    for name, origin, value in places:
        if isinstance(value, (list, tuple)):
            try:
                check_ip_acl(value)
            except ValueError as exc:
                raise ConfigError(origin, name, str(exc)) from None


def validate(config: Config) -> None:
    """Cross-setting checks the Perl daemon makes at startup (section 1.6 step 11)."""
    host = config.myhostname or ""
    if host != "localhost" and not re.search(r"[^.]\.[^.]", host):
        raise ConfigError(config.origin("myhostname"), "myhostname",
                          f"must be a fully qualified domain name, got {host!r}")
    if config.mail_id_size_bits % 24:
        raise ConfigError(config.origin("mail_id_size_bits"), "mail_id_size_bits",
                          "must be a multiple of 24")
    if config.min_servers is not None and config.min_servers > config.max_servers:
        raise ConfigError(config.origin("min_servers"), "min_servers",
                          "must not exceed max_servers")
    _check_ip_lists(config)
    for name in ("forward_method", "notify_method"):
        method = getattr(config, name)
        if method is None:
            continue
        from amavisd.config.types import delivery_method

        try:
            delivery_method(method)
        except ValueError as exc:
            raise ConfigError(config.origin(name), name, str(exc)) from None
