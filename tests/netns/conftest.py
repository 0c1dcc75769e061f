"""Fixtures of the isolated-network tests (issue 6, "Proof on isolated networks").

Everything here needs root and iproute2's ``ip``; without them every test of this directory
is skipped with the reason. ``topo`` is a fresh ``Topology`` (torn down after the test, even
when it failed); ``procs`` collects the test's processes and kills them by PID before the
namespaces go away; proxy variables are unset for every test here. ``start_listener`` and
``tcp_probe`` test plain reachability.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from netns.procs import NsProc, Procs, wait_until
from netns.topology import Topology, in_ns, netns_available

HERE = Path(__file__).parent
SKIP_REASON = netns_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SKIP_REASON:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a federation (``fed``) gets its processes' log tails."""
    report: pytest.TestReport = yield
    if report.failed and report.when in ("setup", "call"):
        fed = getattr(item, "funcargs", {}).get("fed")
        if fed is not None:
            report.sections.append(("netns process logs (tails)", fed.tails(40)))
    return report


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib must talk to the management addresses directly, never through a proxy (which
    would send the traffic off this machine)."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        yield t
    finally:
        t.teardown()


@pytest.fixture
def procs(topo: Topology, request: pytest.FixtureRequest) -> Iterator[Procs]:
    """Depends on ``topo`` so that processes stop (by PID) before the namespaces go."""
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


# ---------------------------------------------------------------------------------------------
# Plain TCP reachability

PROBE_PORT = 7000

_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

_PROBE = """
import json, socket, sys
timeout = float(sys.argv[1])
out = {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        out[target] = "ok"
    except OSError as exc:
        out[target] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def start_listener(procs: Procs, ns: str, name: str, log_dir: Path) -> NsProc:
    """A TCP listener on 0.0.0.0:PROBE_PORT in ``ns`` that accepts and closes."""
    p = procs.add(
        NsProc(
            name=f"listen-{name}",
            ns=ns,
            args=[sys.executable, "-c", _LISTENER, str(PROBE_PORT)],
            log=log_dir / f"listen-{name}.log",
        )
    )
    p.start()
    wait_until(f"listener in {ns}", lambda: "listening" in p.tail(), timeout=10, interval=0.05)
    return p


def tcp_probe(ns: str, hosts: list[str], timeout: float = 2.0) -> dict[str, str]:
    """Try a TCP connection from inside ``ns`` to each ``host:PROBE_PORT``; per host "ok" or
    the error (``OSError`` subclass and text)."""
    targets = [f"{h}:{PROBE_PORT}" for h in hosts]
    out = in_ns(
        ns, sys.executable, "-c", _PROBE, str(timeout), *targets, timeout=10 + timeout * len(hosts)
    )
    assert out.returncode == 0, f"probe in {ns} failed: {out.stderr}"
    result: dict[str, str] = json.loads(out.stdout)
    return {t.rsplit(":", 1)[0]: v for t, v in result.items()}
