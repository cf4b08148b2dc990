"""CPU cost of the content checks per message, in process, with an optional profile.

Why: the side-by-side run (compare.py) gives whole-system figures; to decide what
to optimise we need the child's own CPU per stage for one message, without the
network.  This runs ``check_content`` (decode, header and banned checks, decide)
on the load generator's message N times and prints CPU ms per message; with
``--profile`` it prints the top functions (cProfile, sorted by own time).

    python bench/profile_checks.py --size 4k --count 1000 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amavisd.checks.banned import DEBIAN_BANNED_FILENAME_RE
from amavisd.config.model import Config
from amavisd.content import check_content
from amavisd.header import read_header_block
from amavisd.message import Message, Recipient
from bench.loadgen import make_message, parse_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="4k")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    config = Config()
    config.assign("banned_filename_re", DEBIAN_BANNED_FILENAME_RE, "bench")
    config.assign("myhostname", "mx.anchor.test", "bench")
    config.finish()
    view = config.view()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "email.txt"
        wire = make_message(parse_size(args.size), "prof", 1, "alice@anchor.test",
                            "bob@anchor.test")
        spool.write_bytes(wire.replace(b"\r\n", b"\n"))
        block = read_header_block(spool)

        def one() -> None:
            msg = Message(sender="alice@anchor.test", sender_quoted="alice@anchor.test",
                          recipients=[Recipient("bob@anchor.test", "bob@anchor.test")],
                          spool_path=spool, size=len(wire), log_id="00001-01")
            check_content(msg, view, config, tmp, block, False)

        one()                                   # warm: libmagic loads its database
        profiler = cProfile.Profile() if args.profile else None
        start = time.process_time()
        if profiler:
            profiler.enable()
        for _ in range(args.count):
            one()
        if profiler:
            profiler.disable()
        used = time.process_time() - start
    print(f"size {len(wire)} B: {1000 * used / args.count:.3f} ms CPU per message "
          f"({args.count} runs)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
