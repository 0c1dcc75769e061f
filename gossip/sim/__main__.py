"""``python -m gossip.sim``: simulate a SWIM + Lifeguard cluster and report how it behaves.

Reports the time until 50/99/99.99% of the members know of an update, the time until every
live member marks a crashed member failed (against the suspicion-timeout bound), false
positives (live members declared failed) and bandwidth per member. The last line summarises
the run; with ``--compare`` it runs Lifeguard on and off with the same seed and the last line
gives the ratio of false positives. The model (network, slow members, bootstrap, scenario)
is described in ``gossip.sim.cluster``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from gossip.sim.cluster import SimOptions, SimResult, fmt_seconds, run_simulation


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


def _delay_range(text: str) -> tuple[float, float]:
    try:
        lo_text, hi_text = text.split(":")
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not MIN:MAX (seconds)") from None
    if not 0.0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= MIN <= MAX")
    return lo, hi


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


def build_parser() -> argparse.ArgumentParser:
    default = SimOptions()
    p = argparse.ArgumentParser(
        prog="python -m gossip.sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--members", type=int, default=1000, help="cluster size (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--loss", type=_fraction, default=0.0, help="packet loss probability")
    p.add_argument("--slow", type=_fraction, default=0.0, help="fraction of slow members")
    p.add_argument(
        "--slow-delay",
        type=_delay_range,
        default=default.slow_delay,
        metavar="MIN:MAX",
        help="seconds a slow member handles each inbound packet or stream late, drawn "
        "uniformly (default %(default)s)",
    )
    p.add_argument("--lifeguard", type=_on_off, default=True, metavar="on|off", help="default on")
    p.add_argument("--config", choices=("lan", "wan", "local"), default="lan")
    p.add_argument(
        "--network", choices=("lan", "wan"), default=None, help="latency model (default: config)"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="virtual seconds to simulate (default 60, 240 for wan; longer if the crash is "
        "not yet detected)",
    )
    p.add_argument("--compare", action="store_true", help="run with Lifeguard on and off; compare")
    p.add_argument("--json", action="store_true", help="also print each result as JSON")
    return p


def describe(r: SimResult) -> list[str]:
    lines = [
        f"dissemination: {r.informed}/{r.observers} members learnt the update; "
        f"p50={fmt_seconds(r.p50)} p99={fmt_seconds(r.p99)} p99.99={fmt_seconds(r.p9999)}",
        f"detection: first marked dead after {fmt_seconds(r.detect_first)}, by all "
        f"{r.members - 1} live members after {fmt_seconds(r.detect_all)} "
        f"({r.detected_by} did); bound {fmt_seconds(r.detect_bound)} "
        f"({'within' if r.detect_all is not None and r.detect_all <= r.detect_bound else 'NOT within'})",
        f"false positives: {r.fp_events} events, {r.fp_pairs} (observer, victim) pairs, "
        f"{r.fp_victims} victims; healthy victims: {r.fp_events_healthy} events, "
        f"{r.fp_victims_healthy} victims; slow victims: {r.fp_events - r.fp_events_healthy} "
        f"events; declared by healthy members: {r.fp_events_by_healthy} events "
        f"({r.slow_members} slow members)",
        f"bandwidth: packets {r.bandwidth_mean / 1000:.2f} kB/s/member mean, "
        f"{r.bandwidth_max / 1000:.2f} kB/s max; streams (push-pull, TCP pings) "
        f"{r.stream_bandwidth_mean / 1000:.2f} kB/s/member mean",
        f"run: {r.duration:.1f} virtual s, {r.events} events, {r.packets} packets "
        f"({r.packets_lost} lost), {r.wall_seconds:.1f} s wall, {r.cpu_seconds:.1f} s CPU",
    ]
    if r.stuck_ticks:
        lines.append(
            f"warning: the core asked {r.stuck_ticks} times for a tick no later than the one "
            "it had just run (the simulator stepped 1 ms past it)"
        )
    return lines


def ratio_text(on: int, off: int) -> str:
    if on == 0:
        return f">={off}x" if off else "n/a (no false positives either way)"
    return f"{off / on:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    base = dict(
        members=args.members,
        seed=args.seed,
        loss=args.loss,
        slow=args.slow,
        slow_delay=args.slow_delay,
        config=args.config,
        network=args.network,
        duration=args.duration,
    )
    try:
        modes = [True, False] if args.compare else [args.lifeguard]
        options = [SimOptions(lifeguard=lg, **base) for lg in modes]
    except ValueError as exc:
        parser.error(str(exc))
    results = []
    for opts in options:
        r = run_simulation(opts)
        results.append(r)
        for line in describe(r):
            print(line)
        if args.json:
            print(json.dumps(dataclasses.asdict(r), sort_keys=True))
        print(r.summary(), flush=True)
    if args.compare:
        on, off = results
        print(
            f"gossip.sim: compare members={on.members} config={on.config} seed={on.seed} "
            f"loss={on.loss:.2f} slow={on.slow:.2f} false_positives on={on.fp_events} "
            f"off={off.fp_events} ratio={ratio_text(on.fp_events, off.fp_events)} "
            f"healthy_victims on={on.fp_events_healthy} off={off.fp_events_healthy} "
            f"ratio={ratio_text(on.fp_events_healthy, off.fp_events_healthy)} "
            f"detect_all on={fmt_seconds(on.detect_all)} off={fmt_seconds(off.detect_all)} "
            f"(bound {fmt_seconds(on.detect_bound)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
