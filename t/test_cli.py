# tests: amavisd/cli.py (parsing) and the daemon's start/stop/reload through the pid file
"""The command line behaves like the Perl amavisd's (protocols.md section 1.7)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from amavisd.cli import parse_args
from amavisd.errors import UsageError
from t.helpers.daemon import free_port
from t.integration.conftest import base_config, tmp_path  # noqa: F401 - the fixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amavisd", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_options_and_command():
    opts = parse_args(["-c", "a.conf", "-c", "b.conf", "-d", "3,all", "-m", "4", "-P", "",
                       "-p", "10024", "-p", "unix:/x.sock", "-i", "inst1", "debug"])
    assert opts.config_files == ["a.conf", "b.conf"]
    assert (opts.log_level, opts.max_servers, opts.pid_file) == (3, 4, "")
    assert opts.listen == ["10024", "unix:/x.sock"] and opts.instance == "inst1"
    assert opts.command == "debug"
    assert parse_args(["test-config"]).command == "testconfig"
    assert parse_args([]).command == "start"


@pytest.mark.parametrize("argv, why", [
    (["bogus"], "Unknown command line parameter: bogus"),
    (["-m", "x"], "positive number"),
    (["-i", "Bad Name"], "Invalid instance name"),
    (["-Z"], "Unknown option -Z"),
    (["start", "stop"], "Only one command"),
])
def test_bad_command_lines(argv, why):
    with pytest.raises(UsageError) as err:
        parse_args(argv)
    assert why in str(err.value)


def test_version_and_help_print_to_stdout_and_exit_1():
    out = run("-V")
    assert out.returncode == 1
    assert out.stdout.startswith("amavis-2.13.0 (20230106)")
    out = run("-h")
    assert out.returncode == 1 and "Usage:" in out.stdout
    out = run("frobnicate")
    assert out.returncode == 1
    assert "Unknown command line parameter: frobnicate" in out.stdout


def test_testconfig_and_config_errors(tmp_path):  # noqa: F811 - the fixture
    conf = tmp_path / "amavisd.conf"
    conf.write_text("myhostname = 'mx.example.com'\n")
    os.chmod(conf, 0o644)
    out = run("-c", str(conf), "testconfig")
    assert out.returncode == 0, out.stdout
    conf.write_text("myhostname = 'mx.example.com'\nmax_servrs = 3\n")
    out = run("-c", str(conf), "testconfig")
    assert out.returncode == 78
    assert out.stdout.strip() == f"amavisd: config error: {conf}:2: max_servrs: unknown setting"


def test_showconfig_names_origins(tmp_path):  # noqa: F811
    conf = tmp_path / "amavisd.conf"
    conf.write_text("myhostname = 'mx.example.com'\nmax_servers = 5\n")
    os.chmod(conf, 0o644)
    out = run("-c", str(conf), "-d", "2", "showconfig")
    assert out.returncode == 0
    assert f"$max_servers = 5;  # {conf}:2" in out.stdout
    assert "$log_level = 2;  # command line" in out.stdout
    assert "$child_timeout = 480;  # default" in out.stdout


def daemon_config(folder):
    """MYHOME (owned by nobody) and a root-owned config with a pid file; (home, conf)."""
    port = free_port()
    home = folder / "home"
    (home / "tmp").mkdir(parents=True)
    for path in (home, home / "tmp"):
        os.chown(path, 65534, 65534)
    conf = folder / "amavisd.conf"
    conf.write_text(base_config(folder, port, "smtp:[127.0.0.1]:9")
                    + f"pid_file = {str(home / 'amavisd.pid')!r}\n")
    os.chmod(conf, 0o644)
    return home, conf


def test_start_reload_stop_through_the_pid_file(tmp_path):  # noqa: F811
    """start daemonizes and writes the pid file; a second start refuses; reload is HUP;
    stop terminates; stop again says it is not running (protocols.md 1.7, 10)."""
    home, conf = daemon_config(tmp_path)
    out = run("-c", str(conf), "start")
    assert out.returncode == 0, out.stdout + out.stderr
    pid_file = home / "amavisd.pid"
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        out = run("-c", str(conf), "start")
        assert out.returncode == 1
        assert out.stdout.strip() == f"The amavisd daemon is already running, PID: [{pid}]"
        out = run("-c", str(conf), "reload")
        assert out.returncode == 0 and out.stdout == ""
        log = home / "amavis.log"
        deadline = time.monotonic() + 20
        while "(warm)" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "(warm)" in log.read_text()
        assert int(pid_file.read_text()) == pid
        out = run("-c", str(conf), "stop")
        assert out.returncode == 0
        assert out.stdout.strip().endswith(f"Daemon [{pid}] terminated by SIGTERM")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    out = run("-c", str(conf), "stop")
    assert out.returncode == 1
    assert re.match(r"(No PID file|The amavisd daemon is apparently not running)", out.stdout)


def test_hup_right_after_start_does_not_kill_the_master(tmp_path):  # noqa: F811
    """Regression: a HUP that arrived before the master's handlers existed killed it
    (default action); signals are now blocked from the pid file's creation on."""
    import signal

    home, conf = daemon_config(tmp_path)
    assert run("-c", str(conf), "start").returncode == 0
    pid_file = home / "amavisd.pid"
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()) \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGHUP)                       # as early as a script could
        time.sleep(1.5)
        os.kill(pid, 0)                                   # still alive
        log = home / "amavis.log"
        deadline = time.monotonic() + 20
        while "(warm)" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "(warm)" in log.read_text()
    finally:
        run("-c", str(conf), "stop")
