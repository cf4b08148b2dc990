#!/usr/bin/env python3
"""Side-by-side benchmark: the Perl amavisd (via the anchor harness) against our daemon.

Why: "as fast as the Perl one" is only meaningful when both run on the same machine, with
the same messages, the same sink and the same client, one after the other.  This script
does exactly that and prints a markdown table (msgs/s, p50, p99, CPU busy %, ratio
ours/Perl per cell) to stdout; progress goes to stderr.

    python bench/compare.py                    # anchor from $ANCHOR or ../shared/anchor
    ANCHOR=/tmp/anchor python bench/compare.py --repeat 3
    python bench/compare.py --skip-perl        # only our daemon
    python bench/compare.py --profile clamd    # + virus scan (the anchor's clamd, both sides)
    python bench/compare.py --profile full --sizes 4k --count-4k 120   # + spam checks
    python bench/compare.py --profile sql      # pass + SQL logging on PostgreSQL, both sides
    python bench/compare.py --profile dkim --sizes 4k --concs 2   # pass + DKIM signing

Profiles as in the anchor: ``pass`` (no scanners), ``clamd`` (virus scan with the anchor's
private clamd, which both daemons ask), ``full`` (clamd + SpamAssassin: Perl loads it in
its children, ours asks a private spamd that this script starts, 2 children, local tests
only; its memory is sampled during our runs and reported next to our children's), ``sql``
(``pass`` plus ``@storage_sql_dsn`` on the local PostgreSQL, database ``test``: each side
writes msgs/msgrcpt/maddr rows into its own fresh schema, ``amavis_bench_perl`` and
``amavis_bench_ours``, made from sql/schema-pg.sql; the Perl side needs DBD::Pg, Debian's
libdbd-pg-perl; after each side the rows are counted against the messages sent), ``dkim``
(``pass`` plus DKIM signing of all mail, which is originating on both filter ports, with
the anchor's 2048-bit key ``$ANCHOR/conf/dkim/anchor.test.pem``, d=anchor.test s=anchor,
relaxed/simple; after each side a sample of the signed messages in the sink is verified
with dkimpy against the anchor's published record ``conf/dkim/anchor.test.txt``).

Sink: both daemons forward to OUR sink (bench/sink.py) on 127.0.0.1:31025, the port the
anchor's Perl config forwards to; the anchor's own smtp-sink must not be running (the
script refuses to start when 31025 is taken).  One sink for both keeps the far side equal.

The anchor dir is only read here to start the Perl amavisd; when it is not writable by
mode (the shared copy is read-only) it is copied to /tmp/anchor and its setup.sh is run
there, because setup.sh writes keys and DB files below its own directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.loadgen import MemSampler

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SINK_PORT = 31025
PERL_PORT = 31024
OURS_PORT = 32024
PERL_PIDFILE = "/tmp/anchor-amavis.pid"
OURS_HOME = "/tmp/amavisd-bench"
ANCHOR_COPY = Path("/tmp/anchor")
PROFILES = ("pass", "clamd", "full", "sql", "dkim")
PG = {"host": "127.0.0.1", "port": 5432, "dbname": "test", "user": "postgres"}
SPAMD = "/usr/sbin/spamd"
SPAMD_PORT = 32783          # must match spamd_address in bench/conf/amavisd-full.conf
SPAMD_USER = "amavis"       # as the Perl children that run SpamAssassin in process
SPAMD_CHILDREN = 2          # = max_servers of both daemons: two SpamAssassin processes
SPAMD_HOME = "/tmp/amavisd-bench-spamd"


def ours_conf(profile: str) -> Path:
    if profile == "sql":
        return SQL_WORK / "amavisd-sql.conf"
    return BENCH / "conf" / f"amavisd-{profile}.conf"


# ------------------------------------------------------------------------------ sql profile
SQL_WORK = Path("/tmp/amavisd-bench-sql")


def sql_dsn(schema: str) -> str:
    return (f"DBI:Pg:dbname={PG['dbname']};host={PG['host']};port={PG['port']};"
            f"options=-csearch_path={schema}")


def sql_reset(schema: str) -> None:
    """A fresh schema with the amavis tables (psql, so the bench needs no driver)."""
    ddl = (REPO / "sql" / "schema-pg.sql").read_text()
    script = f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};\n" \
             f"SET search_path TO {schema};\n{ddl}"
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG["host"], "-p",
                    str(PG["port"]), "-U", PG["user"], "-d", PG["dbname"]],
                   input=script, text=True, check=True, capture_output=True)


def sql_counts(schema: str) -> str:
    """Rows written by one side: finished msgs (content set), msgrcpt, maddr."""
    query = (f"SELECT (SELECT count(*) FROM {schema}.msgs WHERE content IS NOT NULL),"
             f" (SELECT count(*) FROM {schema}.msgs),"
             f" (SELECT count(*) FROM {schema}.msgrcpt), (SELECT count(*) FROM {schema}.maddr)")
    r = subprocess.run(["psql", "-At", "-h", PG["host"], "-p", str(PG["port"]), "-U",
                        PG["user"], "-d", PG["dbname"], "-c", query],
                       text=True, capture_output=True, check=False)
    done, total, rcpt, addr = (r.stdout.strip() or "?|?|?|?").split("|")
    return f"msgs {done} finished of {total}, msgrcpt {rcpt}, maddr {addr}"


def sql_prepare() -> str:
    """Config files of both sides for the sql profile; returns Perl's extra amavisd args."""
    SQL_WORK.mkdir(parents=True, exist_ok=True)
    os.chmod(SQL_WORK, 0o755)
    perl_conf = SQL_WORK / "perl-sql.conf"
    perl_conf.write_text("use strict;\n# bench/compare.py profile sql: SQL logging\n"
                         f"@storage_sql_dsn = (['{sql_dsn('amavis_bench_perl')}', "
                         f"'{PG['user']}', '']);\n"
                         "# bytea email columns (sql/schema-pg.sql): README.sql-pg asks for this\n"
                         "$sql_allow_8bit_address = 1;\n1;\n")
    ours = (BENCH / "conf" / "amavisd-pass.conf").read_text()
    ours_conf("sql").write_text(ours + "\n# bench/compare.py profile sql: SQL logging\n"
                                f"storage_sql_dsn = [[{sql_dsn('amavis_bench_ours')!r}, "
                                f"{PG['user']!r}, '']]\nsql_allow_8bit_address = 1\n")
    for path in (perl_conf, ours_conf("sql")):
        os.chmod(path, 0o644)
    return f"-c {perl_conf}"


# ----------------------------------------------------------------------------- dkim profile
DKIM_SAMPLE = 6                     # signed messages verified per side
DKIM_FALLBACK = REPO / "t" / "data" / "dkim"    # the same fixed test key as the anchor's


def dkim_record(anchor: Path | None) -> str:
    """The TXT record the anchor published for its key (setup.sh), or the test copy's."""
    folder = anchor / "conf" / "dkim" if anchor else DKIM_FALLBACK
    text = (folder / "anchor.test.txt").read_text()
    return text[text.index('"') + 1:text.rindex('"')]


def sink_files(sink: Sink) -> set[str]:
    return {p.name for p in sink.dir.iterdir() if p.suffix == ".eml"}


def dkim_check(sink: Sink, before: set[str], record: str) -> tuple[int, int, list[str]]:
    """(verified, sampled, problems): dkimpy on up to DKIM_SAMPLE of the messages this side
    delivered, spread over its runs; each must carry exactly one signature, d=anchor.test
    s=anchor, that verifies against ``record`` (no DNS: the record is given)."""
    import dkim

    new = sorted(sink_files(sink) - before, key=lambda n: (sink.dir / n).stat().st_mtime)
    if not new:
        return 0, 0, ["no messages in the sink"]
    step = max(1, len(new) // DKIM_SAMPLE)
    sample = new[::step][:DKIM_SAMPLE]
    ok, problems = 0, []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name.rstrip(b".") == b"anchor._domainkey.anchor.test" else None

    for name in sample:
        lines = (sink.dir / name).read_bytes().split(b"\r\n")
        while lines and lines[0].startswith(b"X-Sink-"):     # the sink's envelope lines
            lines.pop(0)
        raw = b"\r\n".join(lines)
        head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").split(b"\r\n")
        sigs = [f for f in head if f.lower().startswith(b"dkim-signature:")]
        if len(sigs) != 1 or b" d=anchor.test;" not in sigs[0] or b" s=anchor;" not in sigs[0]:
            problems.append(f"{name}: {len(sigs)} DKIM-Signature field(s) of anchor.test")
        elif dkim.verify(raw, dnsfunc=dns):
            ok += 1
        else:
            problems.append(f"{name}: signature does not verify")
    return ok, len(sample), problems


def log(msg: str) -> None:
    print("[compare] " + msg, file=sys.stderr, flush=True)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def wait_banner(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once 127.0.0.1:port answers 220; False on timeout or when proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), 1) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


# ------------------------------------------------------------------------------ anchor
def writable_by_mode(path: Path) -> bool:
    """Root passes os.access() everywhere, so look at the mode bits: the shared anchor is
    laid out without write bits and must not be written to even by root."""
    try:
        return all(os.stat(p).st_mode & stat.S_IWUSR for p in (path, path / "conf"))
    except OSError:
        return False


def prepare_anchor(anchor: Path) -> Path | None:
    """Return a usable anchor dir (set up), or None with a message when there is none."""
    if not (anchor / "amavisd.sh").is_file():
        log(f"anchor dir {anchor} not found (no amavisd.sh): skipping the Perl side; "
            "pass --anchor DIR or ANCHOR=DIR")
        return None
    if not writable_by_mode(anchor) and anchor.resolve() != ANCHOR_COPY.resolve():
        log(f"anchor {anchor} is read-only: copying it to {ANCHOR_COPY}")
        shutil.rmtree(ANCHOR_COPY, ignore_errors=True)
        shutil.copytree(anchor, ANCHOR_COPY, symlinks=True)
        for root, dirs, files in os.walk(ANCHOR_COPY):
            for n in dirs + files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)
        os.chmod(ANCHOR_COPY, os.stat(ANCHOR_COPY).st_mode | stat.S_IWUSR)
        anchor = ANCHOR_COPY
    log(f"running {anchor}/setup.sh")
    r = subprocess.run([str(anchor / "setup.sh")], capture_output=True, text=True, check=False)
    if r.returncode:
        tail = (r.stdout + r.stderr).strip()[-800:]
        log(f"anchor setup.sh failed (rc {r.returncode}): {tail}: skipping the Perl side")
        return None
    return anchor


# ------------------------------------------------------------------------------- sink
class Sink:
    """Our bench sink on 127.0.0.1:31025, started fresh (empty dir) for the whole run."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "sink"
        self.proc: subprocess.Popen | None = None
        self.logf = work / "sink.log"

    def start(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        with open(self.logf, "wb") as lf:
            self.proc = subprocess.Popen(
                [sys.executable, str(BENCH / "sink.py"), "--port", str(SINK_PORT),
                 "--dir", str(self.dir)], stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        if not wait_banner(SINK_PORT, 10, self.proc):
            raise SystemExit(f"sink did not start: {self.logf.read_text()[-500:]}")
        log(f"sink pid {self.proc.pid} on 127.0.0.1:{SINK_PORT} -> {self.dir}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- daemons
class PerlDaemon:
    """The Perl amavisd through the anchor's amavisd.sh, in the anchor's profile."""

    name = "perl"
    port = PERL_PORT
    extra_mem = None

    def __init__(self, anchor: Path, max_servers: int, profile: str = "pass") -> None:
        self.anchor = anchor
        self.max_servers = max_servers
        self.profile = profile

    def start(self) -> int:
        env = dict(os.environ)
        profile = self.profile
        if profile == "sql":            # the anchor has no such profile: pass + our file
            profile = "pass"
            sql_reset("amavis_bench_perl")
            env["AMAVISD_EXTRA_ARGS"] = sql_prepare()
        r = subprocess.run([str(self.anchor / "amavisd.sh"), "start", profile,
                            str(self.max_servers)], capture_output=True, text=True,
                           check=False, env=env)
        out = (r.stdout + r.stderr).strip()
        log("perl: " + out.replace("\n", " | "))
        if r.returncode or not port_open(self.port):
            raise RuntimeError("Perl amavisd did not start")
        return int(Path(PERL_PIDFILE).read_text().split()[0])

    def stop(self) -> None:
        r = subprocess.run([str(self.anchor / "amavisd.sh"), "stop"],
                           capture_output=True, text=True, check=False)
        log("perl: " + (r.stdout + r.stderr).strip())


def find_our_amavisd() -> list[str] | None:
    """Command prefix for OUR daemon, or None.  /usr/sbin/amavisd is the Perl one (Debian
    package), so a plain PATH lookup is not enough: accept a script whose first line does
    not mention perl, preferring the one installed next to this Python."""
    env = os.environ.get("AMAVISD_CMD")
    if env:
        return env.split()
    candidates = [Path(sysconfig.get_path("scripts")) / "amavisd"]
    found = shutil.which("amavisd")
    if found:
        candidates.append(Path(found))
    for c in candidates:
        try:
            first = c.open("rb").readline()
        except OSError:
            continue
        if b"perl" not in first and os.access(c, os.X_OK):
            return [str(c)]
    return None


class OurDaemon:
    """Our daemon in the foreground, in the background of this script."""

    name = "ours"
    port = OURS_PORT

    def __init__(self, cmd: list[str], max_servers: int, work: Path,
                 profile: str = "pass", extra_mem: int | None = None) -> None:
        self.cmd = cmd + ["-c", str(ours_conf(profile)), "-m", str(max_servers), "foreground"]
        self.profile = profile
        self.extra_mem = extra_mem      # pid of spamd: its tree is sampled during our runs
        self.work = work
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        if self.profile == "sql":
            sql_reset("amavis_bench_ours")
            sql_prepare()
        shutil.rmtree(OURS_HOME, ignore_errors=True)
        for d in (OURS_HOME, OURS_HOME + "/tmp", OURS_HOME + "/db"):
            os.makedirs(d, exist_ok=True)
            shutil.chown(d, "amavis", "amavis")
        logf = self.work / "ours.stdout"
        log("ours: " + " ".join(self.cmd))
        with open(logf, "wb") as lf:
            self.proc = subprocess.Popen(self.cmd, stdout=lf, stderr=lf, cwd=REPO,
                                         stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        if not wait_banner(self.port, 60, self.proc):
            self.stop()
            tail = logf.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"our amavisd did not answer on {self.port}: {tail}")
        log(f"ours: pid {self.proc.pid} up in {time.monotonic() - t0:.1f}s")
        return self.proc.pid

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        kids = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log("ours: stopped")


# ----------------------------------------------------------------------- clamd, spamd
class Clamd:
    """The anchor's private clamd (unix:/tmp/anchor-clamd/clamd.sock, user amavis), asked by
    both daemons.  Started here unless it already runs; stopped only if started here."""

    def __init__(self, anchor: Path) -> None:
        self.script = str(anchor / "clamd.sh")
        self.started = False

    def start(self) -> None:
        if subprocess.run([self.script, "status"], capture_output=True,
                          check=False).returncode == 0:
            log("clamd: the anchor's clamd already runs: using it")
            return
        r = subprocess.run([self.script, "start"], capture_output=True, text=True, check=False)
        log("clamd: " + (r.stdout + r.stderr).strip().replace("\n", " | "))
        if r.returncode:
            raise RuntimeError("the anchor's clamd did not start")
        self.started = True

    def stop(self) -> None:
        if self.started:
            r = subprocess.run([self.script, "stop"], capture_output=True, text=True,
                               check=False)
            log("clamd: " + (r.stdout + r.stderr).strip())


def ping_spamd(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return b"PONG" in s.recv(256)
    except OSError:
        return False


class Spamd:
    """A private spamd for our daemon in profile full: Debian's /usr/sbin/spamd on
    127.0.0.1:SPAMD_PORT, local tests only (-L, as the anchor's sa_local_tests_only),
    no user config (-x), as user amavis with a private helper home (bayes, like the Perl
    children's helpers_home), and exactly SPAMD_CHILDREN children."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen | None = None

    def start(self) -> int:
        shutil.rmtree(SPAMD_HOME, ignore_errors=True)
        os.makedirs(SPAMD_HOME)
        shutil.chown(SPAMD_HOME, SPAMD_USER, SPAMD_USER)
        n = str(SPAMD_CHILDREN)
        cmd = [SPAMD, "-L", "-x", "-u", SPAMD_USER, "-H", SPAMD_HOME,
               "-i", f"127.0.0.1:{SPAMD_PORT}", "-A", "127.0.0.1",
               "--min-children", n, "--max-children", n, "--min-spare", "1",
               "--max-spare", n, "-s", SPAMD_HOME + "/spamd.log",
               "-r", SPAMD_HOME + "/spamd.pid"]
        logf = self.work / "spamd.stdout"
        log("spamd: " + " ".join(cmd))
        with open(logf, "wb") as lf:
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not ping_spamd(SPAMD_PORT):
            if self.proc.poll() is not None or time.monotonic() - t0 > 90:
                self.stop()
                raise RuntimeError("spamd did not start: "
                                   + logf.read_text(errors="replace")[-1500:])
            time.sleep(0.3)
        while len(children_of(self.proc.pid)) < SPAMD_CHILDREN and time.monotonic() - t0 < 90:
            time.sleep(0.3)
        log(f"spamd: pid {self.proc.pid} up in {time.monotonic() - t0:.1f}s, children "
            f"{children_of(self.proc.pid)}")
        return self.proc.pid

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        kids = children_of(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log("spamd: stopped")


def uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            la = f.read().split()[:3]
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except OSError:
        return "?"
    return f"load average {', '.join(la)} (up {up / 3600:.1f} h)"


# ------------------------------------------------------------------------------- runs
def smaps(pid: int) -> dict[str, int] | None:
    """Rss, Pss and Private (clean + dirty) kB of one process from smaps_rollup."""
    out = {"Rss": 0, "Pss": 0, "Private": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key] = int(val.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    out["Private"] += int(val.split()[0])
    except (OSError, ValueError):
        return None
    return out


def tree_smaps(pid: int) -> dict:
    """Snapshot (right after a run, so the children are idle but warm) of a daemon's
    parent and children: RSS counts the pages shared with the parent in every child,
    PSS shares them out, so PSS is the fair 'memory per child' of a preforking daemon."""
    kids = [s for s in (smaps(c) for c in children_of(pid)) if s]
    return {"parent": smaps(pid), "children": kids,
            "max_child_pss_kB": max((k["Pss"] for k in kids), default=None),
            "max_child_private_kB": max((k["Private"] for k in kids), default=None)}


def run_matrix(daemon, pid: int, args: argparse.Namespace, sink: Sink,
               results: list[dict], target_port: int | None = None) -> None:
    port = target_port or daemon.port
    for size in args.sizes:
        for conc in args.concs:
            for rep in range(args.repeat):
                label = f"{daemon.name}-{size}-c{conc}-r{rep + 1}"
                count = args.count_100k if size == "100k" else args.count_4k
                cmd = [sys.executable, str(BENCH / "loadgen.py"), f"127.0.0.1:{port}",
                       "--size", size, "--count", str(count), "--concurrency", str(conc),
                       "--sink-dir", str(sink.dir), "--label", label,
                       "--json", str(args.json)]
                if pid:
                    cmd += ["--mem-pid", str(pid)]
                extra = getattr(daemon, "extra_mem", None)
                sampler = MemSampler(extra) if extra else None
                if sampler:
                    sampler.start()
                r = subprocess.run(cmd, capture_output=True, text=True, check=False)
                extra_rec: dict = {}
                if pid:
                    extra_rec["smaps"] = tree_smaps(pid)
                if sampler:
                    smem = sampler.finish()
                    extra_rec["spamd_mem"] = smem
                    extra_rec["spamd_smaps"] = tree_smaps(extra)
                    log(f"  spamd: max child peak {smem['max_child_peak_kB']} kB, "
                        f"child PSS {extra_rec['spamd_smaps']['max_child_pss_kB']} kB, "
                        f"parent RSS {smem['parent_rss_kB']} kB")
                if "smaps" in extra_rec:
                    log(f"  {daemon.name}: child PSS {extra_rec['smaps']['max_child_pss_kB']} "
                        f"kB, private {extra_rec['smaps']['max_child_private_kB']} kB")
                log((r.stdout.strip() or r.stderr.strip()) + ("" if r.returncode == 0
                                                              else "  [FAILED]"))
                if r.stderr.strip() and r.returncode:
                    log(r.stderr.strip()[-500:])
                with open(args.json) as f:
                    last = f.read().splitlines()[-1:]
                rec = json.loads(last[0]) if last else {}
                if rec.get("label") == label:
                    if extra_rec:  # keep PSS and spamd's memory in the run's JSON line
                        rec.update(extra_rec)
                        with open(args.json) as f:
                            lines = f.read().splitlines()
                        lines[-1] = json.dumps(rec)
                        Path(args.json).write_text("\n".join(lines) + "\n")
                    rec["profile"] = args.profile
                    rec["who"] = daemon.name
                    rec["size"] = size
                    rec["rc"] = r.returncode
                    results.append(rec)


def load_results(paths: list[str]) -> list[dict]:
    """Records of earlier runs; who/size come from the label compare.py gave each run
    (``perl-4k-c2-r1``), so Perl and our runs can be measured at different times."""
    out = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            parts = str(rec.get("label", "")).split("-")
            if len(parts) < 2 or parts[0] not in ("perl", "ours", "sink"):
                continue
            rec["who"], rec["size"] = parts[0], parts[1]
            rec["rc"] = int(bool(rec.get("errors") or rec.get("lost") or rec.get("duplicates")))
            out.append(rec)
    return out


def median_cell(results: list[dict], who: str, size: str, conc: int) -> dict | None:
    rs = [r for r in results if r["who"] == who and r["size"] == size
          and r["concurrency"] == conc]
    if not rs:
        return None
    return {"msgs": statistics.median(r["msgs_per_s"] for r in rs),
            "p50": statistics.median(r["lat_ms"]["p50"] for r in rs),
            "p99": statistics.median(r["lat_ms"]["p99"] for r in rs),
            "cpu": statistics.median(r["cpu_busy_pct"] or 0 for r in rs),
            "n": len(rs), "bad": sum(1 for r in rs if r["rc"]),
            "peak": max((r.get("mem", {}).get("max_child_peak_kB") or 0) for r in rs),
            "parent": max((r.get("mem", {}).get("parent_rss_kB") or 0) for r in rs),
            "spamd": max(((r.get("spamd_mem") or {}).get("max_child_peak_kB") or 0)
                         for r in rs),
            "spamd_parent": max(((r.get("spamd_mem") or {}).get("parent_rss_kB") or 0)
                                for r in rs),
            "pss": max(((r.get("smaps") or {}).get("max_child_pss_kB") or 0) for r in rs),
            "spamd_pss": max(((r.get("spamd_smaps") or {}).get("max_child_pss_kB") or 0)
                             for r in rs)}


def fmt(v: float | None, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def ratio(a: dict | None, b: dict | None, key: str) -> str:
    if not a or not b or not b[key]:
        return "-"
    return "%.2f" % (a[key] / b[key])


def table(results: list[dict], args: argparse.Namespace) -> str:
    head = ("| size | conc | Perl msgs/s | ours msgs/s | ratio | Perl p50 ms | ours p50 ms | "
            "ratio | Perl p99 ms | ours p99 ms | ratio | Perl CPU % | ours CPU % | "
            "runs (failed) |\n" + "|---" * 14 + "|")
    rows = [head]
    for size in args.sizes:
        for conc in args.concs:
            p = median_cell(results, "perl", size, conc)
            o = median_cell(results, "ours", size, conc)
            if not p and not o:
                continue
            runs = " / ".join(f"{w} {c['n']} ({c['bad']})"
                              for w, c in (("P", p), ("O", o)) if c)
            cells = [size, str(conc), fmt(p and p["msgs"]), fmt(o and o["msgs"]),
                     ratio(o, p, "msgs"), fmt(p and p["p50"]), fmt(o and o["p50"]),
                     ratio(o, p, "p50"), fmt(p and p["p99"]), fmt(o and o["p99"]),
                     ratio(o, p, "p99"), fmt(p and p["cpu"], 0), fmt(o and o["cpu"], 0), runs]
            rows.append("| " + " | ".join(cells) + " |")
    if any(r.get("mem") for r in results if r["who"] != "sink"):
        rows += ["", memory_table(results, args)]
    sinks = [r for r in results if r["who"] == "sink"]
    if sinks:
        rows.append("")
        rows.append("Sink alone (loadgen -> bench/sink.py, no filter): " + ", ".join(
            f"{r['size']} c={r['concurrency']} {r['msgs_per_s']:.0f} msgs/s"
            for r in sinks))
    return "\n".join(rows)


def mb(kb: float | None) -> str:
    return "-" if not kb else f"{kb / 1024:.0f}"


def memory_table(results: list[dict], args: argparse.Namespace) -> str:
    """Largest child peak RSS (VmHWM, sampled during the runs) and largest child PSS
    (snapshot after each run) over the runs of each cell; for ours in profile full also
    spamd's children, and the sums = memory per scanning child (one amavisd child + the
    spamd child it keeps busy)."""
    spam = any(r.get("spamd_mem") for r in results)
    head = ("| size | conc | Perl child peak RSS MB | ours child peak RSS MB |"
            " Perl child PSS MB | ours child PSS MB |")
    if spam:
        head += (" spamd child peak RSS MB | spamd child PSS MB | ours + spamd peak RSS MB |"
                 " ours + spamd PSS MB |")
    head += " Perl parent RSS MB | ours parent RSS MB |"
    if spam:
        head += " spamd parent RSS MB |"
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for size in args.sizes:
        for conc in args.concs:
            p = median_cell(results, "perl", size, conc)
            o = median_cell(results, "ours", size, conc)
            if not p and not o:
                continue
            cells = [size, str(conc), mb(p and p["peak"]), mb(o and o["peak"]),
                     mb(p and p["pss"]), mb(o and o["pss"])]
            if spam:
                cells += [mb(o and o["spamd"]), mb(o and o["spamd_pss"]),
                          mb(o and o["spamd"] and o["peak"] + o["spamd"]),
                          mb(o and o["spamd_pss"] and o["pss"] + o["spamd_pss"])]
            cells += [mb(p and p["parent"]), mb(o and o["parent"])]
            if spam:
                cells += [mb(o and o["spamd_parent"])]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", default=os.environ.get("ANCHOR",
                                                       str(REPO.parent / "shared" / "anchor")),
                    help="anchor harness dir (default $ANCHOR or ../shared/anchor)")
    ap.add_argument("--profile", choices=PROFILES, default="pass",
                    help="anchor profile for Perl, bench/conf/amavisd-PROFILE.conf for ours")
    ap.add_argument("--sizes", default="4k,100k")
    ap.add_argument("--concs", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--count-4k", type=int, default=300)
    ap.add_argument("--count-100k", type=int, default=150)
    ap.add_argument("--max-servers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/amavisd-bench-compare",
                    help="sink dir, logs and raw JSON lines go here")
    ap.add_argument("--json", help="raw results (default WORK/results.jsonl)")
    ap.add_argument("--skip-perl", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--no-sink-baseline", action="store_true",
                    help="do not measure the sink alone first")
    ap.add_argument("--report", nargs="+", metavar="JSONL",
                    help="no runs: print the table from results.jsonl files of earlier runs")
    args = ap.parse_args(argv)
    args.sizes = args.sizes.split(",")
    args.concs = [int(c) for c in args.concs.split(",")]
    if args.report:
        print(table(load_results(args.report), args))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    args.json = Path(args.json or work / "results.jsonl")
    args.json.write_text("")
    if os.geteuid() != 0:
        log("must run as root (the daemons drop privileges to user amavis themselves)")
        return 2
    ports = (SINK_PORT, PERL_PORT, OURS_PORT) + ((SPAMD_PORT,) if args.profile == "full"
                                                  else ())
    busy = [p for p in ports if port_open(p)]
    if busy:
        log(f"ports already in use: {busy} (stop the anchor sink/amavisd or other runs first)")
        return 2

    load = uptime()
    log(f"profile {args.profile}; machine: {load}")
    results: list[dict] = []
    skipped: list[str] = []
    sql_rows: list[tuple[str, str]] = []
    dkim_rows: list[tuple[str, int, int, list[str]]] = []
    failed = False
    anchor: Path | None = None
    clamd: Clamd | None = None
    needs_clamd = args.profile in ("clamd", "full")
    if not args.skip_perl or needs_clamd:
        anchor = prepare_anchor(Path(args.anchor))
        if anchor is None and needs_clamd:
            log(f"profile {args.profile} needs the anchor's clamd: no anchor, giving up")
            return 2
    if needs_clamd:
        clamd = Clamd(anchor)
        try:
            clamd.start()
        except RuntimeError as e:
            log(str(e))
            return 2
    sink = Sink(work)
    sink.start()
    try:
        if not args.no_sink_baseline:
            class _S:  # the sink alone, as the physical limit of client + sink
                name, port = "sink", SINK_PORT
            run_matrix(_S, 0, argparse.Namespace(**{**vars(args), "repeat": 1}), sink,
                       results)
        if args.skip_perl:
            skipped.append("Perl (--skip-perl)")
        else:
            if anchor is None:
                skipped.append("Perl (anchor missing or setup failed)")
            else:
                perl = PerlDaemon(anchor, args.max_servers, args.profile)
                before = sink_files(sink)
                try:
                    run_matrix(perl, perl.start(), args, sink, results)
                finally:
                    perl.stop()
                if args.profile == "dkim":
                    dkim_rows.append(("Perl", *dkim_check(sink, before, dkim_record(anchor))))
                    if args.profile == "sql":
                        sql_rows.append(("Perl", sql_counts("amavis_bench_perl")))
        if args.skip_ours:
            skipped.append("ours (--skip-ours)")
        else:
            cmd = find_our_amavisd()
            if cmd is None:
                log(f"OUR amavisd is not installed (no non-Perl 'amavisd' next to "
                    f"{sys.executable} or in PATH; `pip install -e .` or set AMAVISD_CMD): "
                    "skipping our side")
                skipped.append("ours (not installed)")
            else:
                spamd = Spamd(work) if args.profile == "full" else None
                ours = None
                try:
                    spamd_pid = spamd.start() if spamd else None
                    if args.profile == "dkim" and anchor is not None:
                        os.environ["ANCHOR_DIR"] = str(anchor)   # the Perl side's key file
                    ours = OurDaemon(cmd, args.max_servers, work, args.profile, spamd_pid)
                    before = sink_files(sink)
                    run_matrix(ours, ours.start(), args, sink, results)
                    if args.profile == "dkim":
                        dkim_rows.append(("ours", *dkim_check(sink, before,
                                                              dkim_record(anchor))))
                except RuntimeError as e:
                    log(str(e))
                    skipped.append("ours (failed to start)")
                    failed = True
                finally:
                    if ours:
                        ours.stop()
                        if args.profile == "sql":
                            sql_rows.append(("ours", sql_counts("amavis_bench_ours")))
                    if spamd:
                        spamd.stop()
    finally:
        sink.stop()
        if clamd:
            clamd.stop()

    when = time.strftime("%Y-%m-%d %H:%M")
    spam_note = (f"; ours asks spamd -L -x -u {SPAMD_USER} with {SPAMD_CHILDREN} children"
                 if args.profile == "full" else "")
    print(f"<!-- bench/compare.py {when}, {os.uname().nodename}, profile {args.profile}, "
          f"repeats {args.repeat}, counts 4k={args.count_4k} 100k={args.count_100k}, "
          f"max_servers {args.max_servers}{spam_note}; machine at start: {load}; "
          "medians; ratio = ours/Perl -->")
    print(table(results, args))
    if args.profile == "sql":
        print("\nSQL rows after each side (every message sent must have a finished msgs row): "
              + "; ".join(f"{who}: {rows}" for who, rows in sql_rows))
    if args.profile == "dkim":
        print("\nDKIM signatures in the sink, verified with dkimpy against the anchor's "
              "record: " + "; ".join(f"{who}: {ok}/{n} pass" + (f" ({'; '.join(p[:3])})"
                                                               if p else "")
                                    for who, ok, n, p in dkim_rows))
    if skipped:
        print("\nNot measured: " + "; ".join(skipped))
    bad = failed or any(r["rc"] for r in results) or any(
        ok != n or not n for _, ok, n, _ in dkim_rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
