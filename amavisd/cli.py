"""The ``amavisd`` command line (spec/protocols.md section 1.7).

``amavisd [-c file]... [-d level] [-m max_servers] [-u user] [-g group]
[-P pidfile] [-H home] [-T tempdir] [-R chroot] [-i instance] [-p socket]...
start|stop|reload|restart|debug|foreground|showconfig|testconfig|demo``, and the
DKIM key tools ``showkeys|testkeys [domains]`` and ``genrsa file [nbits]``
(amavisd/dkim_tools.py).

Like the Perl daemon, ``-h`` and ``-V`` print to stdout and exit 1, and fatal
startup messages go to stdout with exit status 1; a config error exits 78
(EX_CONFIG) after one line naming the file and line.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

from amavisd.constants import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, PY_VERSION, VERSION
from amavisd.errors import BootError, ConfigError, UsageError

COMMANDS = ("start", "stop", "reload", "restart", "debug", "foreground",
            "showconfig", "testconfig", "test-config", "demo")
#: DKIM key tools (pipeline.md 24.4): they take arguments after the command word.
KEY_COMMANDS = ("genrsa", "showkeys", "showkey", "testkeys", "testkey")
VALUE_OPTIONS = set("ugdimcpDHLPQRSTX")

USAGE = """\
Usage:
  amavisd
    [-u user] [-g group] [-i instance_name] {-c config_file}
    [-d log_level,area,...]
    [-m max_servers] {-p listen_port_or_socket}
    [-L lock_file] [-P pid_file] [-H home_dir]
    [-D db_home_dir | -D ''] [-Q quarantine_dir | -Q '']
    [-R chroot_dir | -R ''] [-S helpers_home_dir] [-T tempbase_dir]
    ( [start] | stop | reload | restart | debug | foreground |
      showconfig | testconfig | demo )
  amavisd [-c config_file] ( showkeys | testkeys ) [domain | .domain ...]
  amavisd genrsa file_name [nbits]

  where area is a SpamAssassin debug area, e.g. all,util,rules,plugin,dkim,dcc
  (accepted for compatibility; SpamAssassin runs out of process here)
or:
  amavisd (-h | -V)    ... show help or version, then exit
"""


@dataclass
class Options:
    """What the command line asked for; ``None`` means 'not given'."""

    config_files: list[str] = field(default_factory=list)
    command: str = "start"
    log_level: int | None = None
    max_servers: int | None = None
    user: str | None = None
    groups: list[str] | None = None
    instance: str | None = None
    listen: list[str] | None = None
    lock_file: str | None = None
    pid_file: str | None = None
    home: str | None = None
    db_home: str | None = None
    quarantine_dir: str | None = None
    chroot: str | None = None
    tempbase: str | None = None
    flags: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    command_args: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    """Parse options while the next word starts with '-', then one command word."""
    opts = Options(argv=list(argv))
    args = list(argv)
    while args and args[0].startswith("-"):
        word = args.pop(0)
        if word == "--":
            break
        if word in ("-h", "-V"):
            raise _EarlyExit(word)
        letter = word[1:2]
        if letter not in VALUE_OPTIONS:
            raise UsageError(f"Unknown option {word}")
        value = word[2:] if len(word) > 2 else (args.pop(0) if args else None)
        if value is None:
            raise UsageError(f"Option {word} requires a value")
        _apply_option(opts, letter, value)
    if args:
        command = args.pop(0)
        if command in KEY_COMMANDS:
            opts.command = {"showkey": "showkeys", "testkey": "testkeys"}.get(command, command)
            opts.command_args, args = args, []
        elif command not in COMMANDS:
            raise UsageError(f"Unknown command line parameter: {command}")
        else:
            opts.command = "testconfig" if command == "test-config" else command
    if args:
        raise UsageError(f"Only one command may be given: {' '.join(args)}")
    return opts


def _apply_option(opts: Options, letter: str, value: str) -> None:
    if letter == "c":
        opts.config_files.append(value)
    elif letter == "d":
        levels = [v for v in value.split(",") if v.strip().lstrip("-").isdigit()]
        if levels:
            opts.log_level = int(levels[-1])
    elif letter == "m":
        if not value.isdigit() or int(value) < 1:
            raise UsageError(f"Option -m requires a positive number, got {value!r}")
        opts.max_servers = int(value)
    elif letter == "u":
        opts.user = value
    elif letter == "g":
        opts.groups = value.split()
    elif letter == "i":
        if not value or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789._+-" for c in value):
            raise UsageError(f"Invalid instance name: {value!r}")
        opts.instance = value
    elif letter == "p":
        opts.listen = (opts.listen or []) + [value]
    elif letter == "L":
        opts.lock_file = value
    elif letter == "P":
        opts.pid_file = value
    elif letter == "H":
        opts.home = value
    elif letter == "D":
        opts.db_home = value
    elif letter == "Q":
        opts.quarantine_dir = value
    elif letter == "R":
        opts.chroot = value
    elif letter == "S":
        pass  # a no-op in amavisd 2.13.0 as well (protocols.md section 9.5)
    elif letter == "T":
        opts.tempbase = value
    elif letter == "X":
        opts.flags.extend(value.split(","))


class _EarlyExit(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``amavisd`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except _EarlyExit as flag:
        if str(flag) == "-V":
            print(f"{VERSION} (python amavisd {PY_VERSION})")
        else:
            print(f"{VERSION} (python amavisd {PY_VERSION})\n\n{USAGE}")
        return EXIT_FAILURE
    except UsageError as exc:
        print(f"{VERSION}:\n  {exc}\n{USAGE}")
        return EXIT_FAILURE
    try:
        return run_command(opts)
    except ConfigError as exc:
        print(f"amavisd: config error: {exc}")
        return EXIT_CONFIG
    except BootError as exc:
        print(str(exc))
        return EXIT_FAILURE


def run_command(opts: Options) -> int:
    from amavisd.config.load import load_config, load_demo_config

    if opts.command == "genrsa":
        from amavisd.dkim_tools import genrsa

        return genrsa(opts.command_args)
    if opts.command == "demo":
        config = load_demo_config(opts)
        from amavisd import daemon

        return daemon.run(config, opts, mode="demo")
    config = load_config(opts)
    if opts.command == "testconfig":
        print(f"config OK: {', '.join(config.files)}")
        return EXIT_OK
    if opts.command in ("showkeys", "testkeys"):
        from amavisd import dkim_tools

        tool = dkim_tools.showkeys if opts.command == "showkeys" else dkim_tools.testkeys
        return tool(config, opts.command_args)
    if opts.command == "showconfig":
        from amavisd.config.show import show_config

        sys.stdout.write(show_config(config))
        return EXIT_OK
    if opts.command == "stop":
        return stop_daemon(config)
    if opts.command == "reload":
        return signal_daemon(config, signal.SIGHUP)
    if opts.command == "restart":
        rc = stop_daemon(config, restarting=True)
        if rc != EXIT_OK:
            return rc
        opts.command = "start"
    from amavisd import daemon

    return daemon.run(config, opts, mode=opts.command)


def read_pid_file(path: str | None) -> int | None:
    """The master's pid from the first line of the pid file (1-10 digits), or None."""
    if not path:
        return None
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            first = handle.readline().strip()
    except OSError:
        return None
    if not first.isdigit() or len(first) > 10:
        return None
    return int(first)


def running_pid(config) -> int | None:
    """The pid of a live daemon according to the pid file (MAINPID under systemd)."""
    env_pid = os.environ.get("MAINPID")
    pid = int(env_pid) if env_pid and env_pid.isdigit() else read_pid_file(config.pid_file)
    if pid is None or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _not_running(config) -> int:
    if not config.pid_file or not os.path.exists(config.pid_file):
        print("No PID file, cannot determine a process ID of a running daemon.")
    else:
        print(f"The amavisd daemon is apparently not running, no process [PID file "
              f"{config.pid_file}]")
    return EXIT_FAILURE


def signal_daemon(config, signum: int) -> int:
    pid = running_pid(config)
    if pid is None:
        return _not_running(config)
    os.kill(pid, signum)
    return EXIT_OK


def stop_daemon(config, restarting: bool = False) -> int:
    """TERM, then wait (printing every 5 s); SIGKILL after 60 s (protocols.md 1.7)."""
    pid = running_pid(config)
    if pid is None:
        return _not_running(config)
    os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    last_note = started
    killed = False
    while _alive(pid):
        time.sleep(0.1)
        now = time.monotonic()
        if now - last_note >= 5:
            print(f"Waiting for the process [{pid}] to terminate")
            last_note = now
        if now - started > 60 and not killed:
            print(f"Sending SIGKILL to amavisd[{pid}]", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            killed = True
    how = "SIGKILL" if killed else "SIGTERM"
    if restarting:
        print(f"Daemon [{pid}] terminated by {how}, waiting for dust to settle...")
        time.sleep(1)
        print("becoming a new daemon...")
    else:
        print(f"Daemon [{pid}] terminated by {how}")
    return EXIT_OK


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie of ours would count as alive; the master is never our child here
    return True
