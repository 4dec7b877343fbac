"""Cancellation trials: how often does ``task.cancel()`` fail to end a retrying connect?

Cancels tasks waiting in every async entry point (psycopg, SQLAlchemy, redis, the core
helper) at random moments against a refused loopback port, with a hot policy
(``initial=0``) and a slow one, and counts the tasks still running ``--grace`` seconds
later. Run it with each Python the README names::

    python3.10 benchmarks/cancellation.py --trials 200

(from a virtualenv of that Python with ``-e '.[all]'`` installed). Expect ``lost 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.cancel import run_trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="per adapter and policy")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--grace", type=float, default=1.0, help="seconds a cancel may take")
    args = parser.parse_args()
    with socket.socket() as sock:  # a loopback port that refuses: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://app:pw@127.0.0.1:{port}/app"
    start = time.perf_counter()
    tally = asyncio.run(run_trials(url, args.trials, seed=args.seed, grace=args.grace))
    elapsed = time.perf_counter() - start
    version = ".".join(map(str, sys.version_info[:3]))
    for name, count in tally.trials.items():
        print(f"python {version}  {name:<11} trials {count:5d}  lost {tally.lost.get(name, 0)}")
    for name, errors in tally.wrong_error.items():
        print(f"python {version}  {name:<11} ended with an error instead: {errors[:3]}")
    total = sum(tally.trials.values())
    print(
        f"python {version}  all         trials {total:5d}  lost {tally.total_lost}  "
        f"({elapsed:.1f} s)"
    )
    return 1 if tally.total_lost or tally.wrong_error else 0


if __name__ == "__main__":
    raise SystemExit(main())
