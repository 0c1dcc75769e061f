"""``python -m raft.sim``: run seeded whole-cluster simulations and check them.

Exits non-zero on any violation, printing the failing seed and the command that replays it.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from raft.sim.cluster import BUGS, SimCluster, SimOptions, Violation
from raft.sim.lincheck import check_history


def run_seed(opts: SimOptions) -> tuple[int, str | None]:
    """Run one seed. Returns (operations checked, failure description or None)."""
    cluster = SimCluster(opts)
    try:
        cluster.run()
    except Violation as exc:
        return len(cluster.history), str(exc)
    except Exception:  # a crash of the core is a failure too, with its traceback
        return len(cluster.history), "exception:\n" + traceback.format_exc()
    result = check_history(cluster.history)
    if not result.ok:
        return (
            result.operations,
            f"history not linearizable (key {result.failing_key}):\n" + result.detail,
        )
    return result.operations, None


def replay_command(opts: SimOptions) -> str:
    cmd = (
        f"python -m raft.sim --seeds 1 --seed-start {opts.seed} --nodes {opts.nodes} "
        f"--steps {opts.steps}"
    )
    if opts.bug:
        cmd += f" --bug {opts.bug}"
    return cmd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raft.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed")
    parser.add_argument(
        "--nodes",
        type=int,
        choices=range(1, 8),
        default=3,
        metavar="{3,5}",
        help="cluster size (3 or 5; 1..7 accepted)",
    )
    parser.add_argument("--steps", type=int, default=600, help="ticks of the fault phase per seed")
    parser.add_argument(
        "--bug", choices=BUGS, default=None, help="plant a known bug (the simulator must catch it)"
    )
    parser.add_argument(
        "--stop-on-failure", action="store_true", help="stop at the first failing seed"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    if args.steps < 10:
        parser.error("--steps must be >= 10")
    started = time.monotonic()
    failures = 0
    operations = 0
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        opts = SimOptions(seed=seed, nodes=args.nodes, steps=args.steps, bug=args.bug)
        ops, failure = run_seed(opts)
        operations += ops
        if failure is not None:
            failures += 1
            print(f"raft.sim: seed {seed} FAILED: {failure}", file=sys.stderr)
            print(f"raft.sim: replay with: {replay_command(opts)}", file=sys.stderr)
            if args.stop_on_failure:
                break
        elif args.verbose:
            print(f"raft.sim: seed {seed} ok ({ops} operations)")
    elapsed = time.monotonic() - started
    print(
        f"raft.sim: {args.seeds} seeds, {failures} violations, {operations} operations "
        f"linearizable ({elapsed:.1f}s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
