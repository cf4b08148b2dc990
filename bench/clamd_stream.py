"""INSTREAM of one big part: our chunked file streamer against pyclamd's scan_stream.

    python -m bench.clamd_stream [--size-mb 20] [--rounds 3] [--tcp HOST:PORT]

Without ``--tcp`` a private clamd is started with the test suite's signature DB
(t/helpers/clamd.py).  Both clients send the same file of random bytes (clean) over
TCP and must get ``stream: OK``; the best of ``--rounds`` wall-clock times is
printed, with peak memory the client needed for the data (pyclamd reads the whole
file into memory first; ours streams 1 MiB chunks from the file).
libraries.md 4.6: pyclamd's ``scan_stream`` re-slices a bytes buffer into 4 KiB
chunks and calls ``send`` twice per chunk.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyclamd

from amavisd.scanners import clamd


def ours(address: tuple[str, int], path: str) -> str:
    return clamd.instream_bytes(address, path, timeout=300)


def theirs(address: tuple[str, int], path: str) -> str:
    client = pyclamd.ClamdNetworkSocket(address[0], address[1], timeout=300)
    data = Path(path).read_bytes()
    result = client.scan_stream(data)
    return "stream: OK" if result is None else repr(result)


def best_of(rounds: int, fn, *args) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tcp", help="an existing clamd's HOST:PORT (default: start one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clamd-bench-") as tmp:
        path = os.path.join(tmp, "part.bin")
        with open(path, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        server = None
        if args.tcp:
            host, _, port = args.tcp.rpartition(":")
            address = (host, int(port))
        else:
            from t.helpers.clamd import ClamdServer

            server = ClamdServer(Path(tmp))
            server.start()
            address = ("127.0.0.1", server.tcp_port)
        try:
            t_ours, r_ours = best_of(args.rounds, ours, address, path)
            t_theirs, r_theirs = best_of(args.rounds, theirs, address, path)
        finally:
            if server is not None:
                server.stop()
    print(f"file: {args.size_mb} MiB random bytes, best of {args.rounds}, TCP {address[0]}")
    print(f"amavisd.scanners.clamd.instream_bytes (1 MiB chunks from the file): "
          f"{t_ours:.3f} s  [{r_ours}]")
    print(f"pyclamd scan_stream (whole file in memory, 4 KiB slices):          "
          f"{t_theirs:.3f} s  [{r_theirs}]")


if __name__ == "__main__":
    main()
