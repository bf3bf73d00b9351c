"""Bind and release random loopback ports in the background, to prove that nothing in the test
suite or the local stack races for a port it picked as "free" (`make test-churn`).

It keeps about `--hold` ports of the kernel's ephemeral range bound and listening at any
moment, each for a random 10-500 ms, and stops by itself after `--seconds` (or on SIGTERM)."""

from __future__ import annotations

import argparse
import random
import signal
import socket
import sys
import time


def ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def churn(seconds: float, hold: int, seed: int | None) -> int:
    rng = random.Random(seed)
    lo, hi = ephemeral_range()
    held: list[tuple[float, socket.socket]] = []
    binds = 0
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        now = time.monotonic()
        for entry in [e for e in held if e[0] <= now]:
            entry[1].close()
            held.remove(entry)
        while len(held) < hold:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", rng.randint(lo, hi)))
                s.listen()
            except OSError:
                s.close()
                continue
            held.append((now + rng.uniform(0.01, 0.5), s))
            binds += 1
        time.sleep(0.005)
    for _, s in held:
        s.close()
    return binds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python tools/port_churn.py --seconds 600 --hold 300 &",
    )
    p.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    p.add_argument("--hold", type=int, default=200, help="ports held at any moment")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    binds = churn(args.seconds, args.hold, args.seed)
    print(f"port churn: {binds} binds in {args.seconds:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
