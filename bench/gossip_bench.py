"""Gossip benchmark: the full-size simulator figures of the gossip issue, in one command.

    .venv/bin/python bench/gossip_bench.py [--members 1000] [--seed 1] [--quick]

Runs ``python -m gossip.sim`` (deterministic: a seed gives the same figures on any machine;
only the wall time varies) for:

1. 1,000 members, LAN defaults, no loss: dissemination percentiles (target: 99.99% within
   2.2 s, the Serf convergence simulator's figure for memberlist's defaults), detection time
   against the suspicion-timeout bound, bandwidth per member;
2. the same with WAN defaults;
3. 10% slow members, Lifeguard on and off in the same run (``--compare``): the peer measured
   in the same run is the cluster without Lifeguard, and the printed ratio is false positives
   about healthy members, off / on (target: at least 50x).

Each run's summary line is printed as the simulator prints it. ``--quick`` uses 200 members
(minutes become seconds) for a smoke run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def run(args: list[str]) -> str:
    cmd = [sys.executable, "-m", "gossip.sim", *args]
    print("$ " + " ".join(["python", "-m", "gossip.sim", *args]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr, file=sys.stderr)
        raise SystemExit(f"gossip.sim failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("gossip.sim:")]
    for line in lines:
        print("  " + line)
    print(f"  ({time.monotonic() - started:.0f} s wall)", flush=True)
    return lines[-1] if lines else ""


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="200 members")
    args = p.parse_args()
    n = str(200 if args.quick else args.members)
    seed = str(args.seed)
    run(["--members", n, "--seed", seed])
    run(["--members", n, "--seed", seed, "--config", "wan"])
    run(["--members", n, "--seed", seed, "--slow", "0.1", "--compare"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
