"""Start OUR amavisd as a subprocess for integration tests.

Why a plain module and not a fixture: tests differ in config, port and extra arguments,
and several tests need more than one daemon at a time; a function returning a handle
(plus a context manager) composes better than a fixture, and keeps conftest.py untouched.

    from t.helpers.daemon import free_port, running_daemon

    def test_relay(tmp_path):
        port = free_port()
        conf = f'''
    daemon_user = 'nobody'
    MYHOME = {str(tmp_path / 'home')!r}
    TEMPBASE = MYHOME + '/tmp'
    inet_socket_bind = '127.0.0.1'
    inet_socket_port = {port}
    '''
        with running_daemon(conf, tmp_path, extra_args=('-m', '2')) as d:
            ...   # talk SMTP to 127.0.0.1:port; d.children(), d.log_text()

The daemon is started as ``[sys.executable, '-m', 'amavisd', '-c', CONF, *extra_args,
'foreground']`` with the repository root as working directory and first on PYTHONPATH,
so the checkout under test is what runs, installed or not.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal as _signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PREFIX: tuple[str, ...] = (sys.executable, "-m", "amavisd")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class DaemonStartError(RuntimeError):
    """The daemon exited or did not answer 220 in time; the message holds the log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind to port 0 and ask the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Lenient(dict):
    """Namespace for reading a config: unknown names (constants such as D_PASS, helper
    functions) evaluate to None instead of failing, since the helper only needs a few
    plain settings and must not depend on the daemon's own config machinery."""

    def __missing__(self, key: str) -> Any:
        return None


def config_values(config_text: str) -> dict[str, Any]:
    """The values a native (Python) config assigns, statement by statement.

    Each top-level statement runs on its own so that one line the helper cannot evaluate
    (it is not the daemon) does not hide the settings after it."""
    import ast

    ns = _Lenient()
    tree = ast.parse(config_text)
    for node in tree.body:
        code = compile(ast.Module(body=[node], type_ignores=[]), "<config>", "exec")
        with contextlib.suppress(Exception):
            exec(code, {"__builtins__": __builtins__}, ns)  # the test's own config text
    return dict(ns)


def _first_port(value: Any) -> int | None:
    """``inet_socket_port`` may be an int, a string or a list of them."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None
    try:
        return int(str(value).rsplit(":", 1)[-1])
    except ValueError:
        return None


def _proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _make_traversable(path: Path) -> None:
    """Let an unprivileged daemon user reach `path`: pytest makes its base temp dir 0700,
    so add o+x to the ancestors inside the system temp dir (and only there)."""
    tmp_root = Path(tempfile.gettempdir()).resolve()
    for parent in reversed(path.resolve().parents):
        if parent == tmp_root or tmp_root not in parent.parents:
            continue
        with contextlib.suppress(OSError):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, (mode & 0o7777) | 0o001)


def _wait_banner(host: str, port: int, timeout: float, proc: subprocess.Popen) -> str | None:
    """Poll until the port greets with 220; None if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                s.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                banner = s.recv(1024)
                if banner.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(1024)
                    return banner.decode("utf-8", "replace").strip()
        except OSError:
            pass
        time.sleep(0.1)
    return None


class Daemon:
    """Handle of one started daemon (the master process and its log)."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, conf_path: Path,
                 log_path: Path, values: dict[str, Any], banner: str = "") -> None:
        self.proc = proc
        self.host = host
        self.port = port
        self.conf_path = conf_path
        self.log_path = log_path
        self.values = values
        self.banner = banner

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        """Pids whose parent is the master, read from /proc (the prefork children)."""
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit() and _proc_ppid(int(name)) == self.pid:
                out.append(int(name))
        return sorted(out)

    def signal(self, sig: int) -> None:
        """Send `sig` to the master (e.g. SIGHUP to test reload)."""
        self.proc.send_signal(sig)

    def log_text(self) -> str:
        """Everything the master and its children wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def logfile_text(self) -> str:
        """The daemon's own ``LOGFILE``, when the config sets one."""
        path = self.values.get("LOGFILE")
        if not path:
            return ""
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; children that outlive the
        master are killed by pid so no test leaves processes behind.  Returns the
        master's exit status; safe to call twice."""
        kids = self.children() if self.alive() else []
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(_signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + min(timeout, 5.0)
        for pid in kids:
            while _proc_ppid(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)  # give the child its own clean exit first
            if _proc_ppid(pid) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, _signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_daemon(config_text: str, tmp_path: Path | str, extra_args: Sequence[str] = (),
                 *, port: int | None = None, timeout: float = START_TIMEOUT,
                 argv_prefix: Sequence[str] = DEFAULT_PREFIX,
                 env: dict[str, str] | None = None) -> Daemon:
    """Write the config, prepare MYHOME/TEMPBASE, start the daemon in the foreground and
    wait for its 220 banner.

    * config: ``tmp_path/amavisd.conf``, mode 0644 and root-owned when we are root,
      because amavisd refuses config files its daemon user could change;
    * MYHOME and TEMPBASE (when the config sets them) are created and given to
      ``daemon_user`` (and ``daemon_group`` or the user's group);
    * ``port`` defaults to the first ``inet_socket_port`` of the config, the host to
      ``inet_socket_bind`` or 127.0.0.1;
    * raises DaemonStartError with the log tail when the daemon exits or stays silent
      for `timeout` seconds (the process is stopped first).
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "amavisd.conf"
    conf.write_text(config_text, encoding="utf-8")
    is_root = os.geteuid() == 0
    if is_root:
        os.chown(conf, 0, 0)
    os.chmod(conf, 0o644)

    values = config_values(config_text)
    user = values.get("daemon_user")
    uid = gid = None
    if is_root and user not in (None, "", "root", 0):
        pw = pwd.getpwuid(int(user)) if str(user).isdigit() else pwd.getpwnam(str(user))
        uid, gid = pw.pw_uid, pw.pw_gid
        group = values.get("daemon_group")
        if group:
            import grp

            gid = grp.getgrgid(int(group)).gr_gid if str(group).isdigit() \
                else grp.getgrnam(str(group)).gr_gid
        _make_traversable(conf)
    for key in ("MYHOME", "TEMPBASE"):
        d = values.get(key)
        if isinstance(d, str) and d:
            Path(d).mkdir(parents=True, exist_ok=True)
            if uid is not None:
                os.chown(d, uid, gid if gid is not None else -1)
                _make_traversable(Path(d))

    port = port or _first_port(values.get("inet_socket_port"))
    if not port:
        raise ValueError("no port: set inet_socket_port in the config or pass port=")
    bind = values.get("inet_socket_bind")
    if isinstance(bind, (list, tuple)):
        bind = bind[0] if bind else None
    host = bind if isinstance(bind, str) and bind not in ("", "*", "0.0.0.0") else "127.0.0.1"
    host = host.strip("[]")

    argv = [*argv_prefix, "-c", str(conf), *extra_args, "foreground"]
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), run_env.get("PYTHONPATH", "")) if p)
    run_env.setdefault("PYTHONUNBUFFERED", "1")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=run_env)
    daemon = Daemon(proc, host, port, conf, log_path, values)
    banner = _wait_banner(host, port, timeout, proc)
    if banner is None:
        died = proc.poll() is not None
        daemon.stop(timeout=5)
        why = f"exited with status {proc.returncode}" if died else \
            f"did not answer 220 on {host}:{port} within {timeout:.0f}s"
        raise DaemonStartError(f"daemon {why}: {' '.join(argv)}\n--- log tail ---\n"
                               f"{_tail(daemon.log_text())}")
    daemon.banner = banner
    return daemon


@contextlib.contextmanager
def running_daemon(config_text: str, tmp_path: Path | str, extra_args: Sequence[str] = (),
                   **kwargs: Any) -> Iterator[Daemon]:
    """``with running_daemon(...) as d:`` starts the daemon and always stops it."""
    daemon = start_daemon(config_text, tmp_path, extra_args, **kwargs)
    try:
        yield daemon
    finally:
        daemon.stop()
