"""The gossip simulator: deterministic, and its reports say what SWIM + Lifeguard should do.

Sizes are reduced for CI (tens of members, tens of virtual seconds); the full-size targets
(1,000 members) are run by hand with ``python -m gossip.sim``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gossip.config import default_lan_config, default_wan_config
from gossip.sim import SimOptions, Simulation, detection_bound, run_simulation
from gossip.sim.__main__ import main
from gossip.sim.cluster import percentile_time

SUMMARY = re.compile(
    r"^gossip\.sim: members=(\d+) config=(lan|wan|local) seed=(-?\d+) loss=(\d\.\d\d) "
    r"slow=(\d\.\d\d) lifeguard=(on|off) p50=(\S+) p99=(\S+) p99\.99=(\S+) "
    r"detect_all=(\S+) \(bound (\S+)\) false_positives=(\d+) "
    r"bandwidth=(\d+\.\d\d)kB/s/member streams=(\d+\.\d\d)kB/s/member$"
)


def test_percentiles_count_members_that_never_learnt() -> None:
    times = [0.3, 0.1, 0.2]
    assert percentile_time(times, 3, 0.5) == 0.2
    assert percentile_time(times, 3, 0.9999) == 0.3
    assert percentile_time(times, 4, 0.50) == 0.2
    assert percentile_time(times, 4, 0.99) is None  # the fourth never knew
    assert percentile_time([], 0, 0.5) is None


def test_detection_bound_is_the_maximal_suspicion_timeout_plus_two_probes() -> None:
    # LAN, 1,000 members: 6 * (4 * log10(1000) * 1 s) + 2 * 1 s
    assert detection_bound(default_lan_config("a"), 1000) == pytest.approx(74.0)
    # WAN, 100 members: 6 * (6 * 2 * 5 s) + 2 * 5 s
    assert detection_bound(default_wan_config("a"), 100) == pytest.approx(370.0)


def test_same_seed_same_results() -> None:
    opts = SimOptions(members=50, seed=11, loss=0.05, slow=0.1, duration=25.0)
    first, second = Simulation(opts), Simulation(opts)
    a, b = first.run(), second.run()
    assert a == b  # every measured number (wall time excluded)
    assert first.fp_events == second.fp_events
    assert first.informed_at == second.informed_at
    assert first.detected_at == second.detected_at
    assert first.bytes_sent == second.bytes_sent
    assert a.packets_lost > 0 and a.slow_members == 5
    other = run_simulation(SimOptions(members=50, seed=12, loss=0.05, slow=0.1, duration=25.0))
    assert other != a


def test_update_reaches_every_member_quickly() -> None:
    r = run_simulation(SimOptions(members=100, seed=3, duration=20.0))
    assert r.informed == r.observers == 98
    assert r.p50 is not None and r.p99 is not None and r.p9999 is not None
    assert 0 < r.p50 <= r.p99 <= r.p9999 <= 2.2
    assert r.fp_events == 0
    assert r.bandwidth_mean > 0 and r.bandwidth_max >= r.bandwidth_mean


@pytest.mark.parametrize("lifeguard", [True, False])
def test_crash_is_detected_by_all_within_the_bound(lifeguard: bool) -> None:
    r = run_simulation(SimOptions(members=80, seed=5, lifeguard=lifeguard, duration=20.0))
    assert r.detected_by == 79
    assert r.detect_all is not None and r.detect_first is not None
    assert 0 < r.detect_first <= r.detect_all <= r.detect_bound
    assert r.fp_events == 0


def test_loss_still_converges_and_detects() -> None:
    r = run_simulation(SimOptions(members=80, seed=8, loss=0.10, duration=30.0))
    assert r.packets_lost > 0.05 * r.packets
    assert r.informed == r.observers
    assert r.detect_all is not None and r.detect_all <= r.detect_bound


def test_wan_defaults() -> None:
    r = run_simulation(SimOptions(members=40, seed=2, config="wan"))
    assert r.informed == r.observers
    assert r.p9999 is not None and r.p9999 < 10.0
    assert r.detect_all is not None and r.detect_all <= r.detect_bound
    assert r.detect_bound == pytest.approx(detection_bound(default_wan_config("a"), 40))


@pytest.mark.parametrize("seed", [1, 2])
def test_lifeguard_prevents_slow_members_from_killing_healthy_ones(seed: int) -> None:
    """10% slow members (inbound lag 5-15 s, beyond the suspicion timeout): without
    Lifeguard they declare healthy members dead; with it (local health, a long timeout for
    a lone accuser) they do not. Detection of a real crash stays within the bound."""
    on = run_simulation(SimOptions(members=60, seed=seed, slow=0.1, duration=30.0))
    off = run_simulation(
        SimOptions(members=60, seed=seed, slow=0.1, duration=30.0, lifeguard=False)
    )
    assert on.slow_members == off.slow_members == 6
    assert off.fp_events_healthy >= 30
    assert on.fp_events_healthy * 10 <= off.fp_events_healthy
    for r in (on, off):
        assert r.detect_all is not None and r.detect_all <= r.detect_bound


def test_slow_members_hear_late() -> None:
    healthy = run_simulation(SimOptions(members=50, seed=4, duration=20.0))
    slowed = run_simulation(SimOptions(members=50, seed=4, slow=0.2, duration=20.0))
    assert healthy.p99 is not None and slowed.p99 is not None
    assert slowed.p99 > 5.0 > healthy.p99  # a slow member reads the update >= 5 s late


def test_cli_summary_is_the_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--members", "40", "--seed", "5", "--duration", "20", "--loss", "0.02"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    assert m.group(1, 2, 3, 4, 5, 6) == ("40", "lan", "5", "0.02", "0.00", "on")
    assert float(m.group(11).removesuffix("s")) == pytest.approx(
        detection_bound(default_lan_config("a"), 40), abs=0.05
    )
    assert any(line.startswith("dissemination:") for line in lines)
    assert any(line.startswith("detection:") for line in lines)


def test_cli_compare_ends_with_the_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--members", "30", "--slow", "0.1", "--duration", "20", "--compare"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summaries = [line for line in lines if SUMMARY.match(line)]
    assert [SUMMARY.match(s).group(6) for s in summaries] == ["on", "off"]  # type: ignore[union-attr]
    assert re.match(
        r"^gossip\.sim: compare members=30 config=lan seed=1 loss=0\.00 slow=0\.10 "
        r"false_positives on=\d+ off=\d+ ratio=\S+ healthy_victims on=\d+ off=\d+ "
        r"ratio=\S+ .*\(bound \S+s\)$",
        lines[-1],
    ), lines[-1]


@pytest.mark.parametrize(
    "bad", [["--loss", "1.5"], ["--slow-delay", "3"], ["--lifeguard", "maybe"], ["--members", "2"]]
)
def test_cli_rejects_bad_options(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--members", "30", *bad])
    assert exc.value.code == 2


def test_runs_as_a_module() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gossip.sim",
            "--members",
            "20",
            "--duration",
            "15",
            "--config",
            "local",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert SUMMARY.match(out.strip().splitlines()[-1])
