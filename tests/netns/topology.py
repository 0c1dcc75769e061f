"""Network namespaces, veths and bridges for the isolated-network tests (root only).

A ``Topology`` owns everything it creates and removes all of it in ``teardown()``, which is
safe to call at any point (also half-way through ``build``) and more than once:

- every name starts with a per-run prefix (``"pc"`` + 6 hex characters), so two runs never
  collide and a leftover of a crashed run is recognisable (``ip netns list | grep ^pc``);
- one *switch* namespace holds the bridges; bridges have no IP address, so nothing is routed
  between them (and ``ip_forward`` is 0 in every namespace made here, which ``build`` checks);
- every node namespace (a server, a gateway) gets ``lo`` up, one veth per network it is on
  (its other end enslaved to that network's bridge) and a point-to-point *management* veth to
  the root namespace (root side ``198.19.<k>.1/30``, node side ``198.19.<k>.2/30``) through
  which the test reaches the node's HTTP API. No namespace has a default route, so a node can
  reach exactly the subnets of its own links.

Addresses are all inside 198.18.0.0/15 (RFC 2544 benchmarking space). The management ``k``
values are picked among the /30s not already on a root-namespace interface, under a lock
file, so concurrent runs do not take the same ones. Nothing is ever sent from the root
namespace to a LAN or WAN address: those have no route from the root namespace other than its
default route, which would leave the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The only addresses these tests use (RFC 2544).
ALLOWED = ipaddress.ip_network("198.18.0.0/15")
MGMT_NET = ipaddress.ip_network("198.19.0.0/16")
LOCK_FILE = Path("/run/lock/proconsul-netns.lock")


class CommandError(RuntimeError):
    """An ``ip`` command failed; the message carries its stderr."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip <args>`` and return stdout; raise ``CommandError`` with stderr on failure."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise CommandError(f"ip {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``), capturing its output."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def netns_available() -> str:
    """Why these tests cannot run here ("" when they can): root and iproute2 are needed."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace tests need root"
    try:
        subprocess.run(["ip", "-V"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "network namespace tests need the ip command (iproute2)"
    return ""


def check_allowed(address: str) -> str:
    """``address`` (an IP, optionally with a prefix length) if it is inside 198.18.0.0/15."""
    if ipaddress.ip_interface(address).ip not in ALLOWED:
        raise ValueError(f"{address} is outside {ALLOWED}")
    return address


@dataclass
class Link:
    """One veth from a node namespace to a bridge: the node-side name and its address."""

    bridge: str
    ifname: str
    address: str  # "198.18.1.10/24"

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


@dataclass
class Node:
    """A namespace for one node; ``links`` maps a network name ("lan", "wan") to its link."""

    name: str  # short role name: "s1-dc1", "g1-dc2"
    ns: str  # the namespace name (prefixed)
    mgmt_k: int = 0
    links: dict[str, Link] = field(default_factory=dict)

    @property
    def mgmt_ip(self) -> str:
        """The node side of the management link (reachable from the root namespace)."""
        return f"198.19.{self.mgmt_k}.2"

    @property
    def root_ip(self) -> str:
        return f"198.19.{self.mgmt_k}.1"

    def ip_on(self, network: str) -> str:
        return self.links[network].ip


@contextlib.contextmanager
def _mgmt_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _used_mgmt_k() -> set[int]:
    """Third octets of 198.19.<k>.0/30 networks already on a root-namespace interface."""
    used = set()
    for line in ip("-4", "-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" not in parts:
            continue
        iface = ipaddress.ip_interface(parts[parts.index("inet") + 1])
        if iface.ip in MGMT_NET:
            used.add(int(str(iface.ip).split(".")[2]))
    return used


class Topology:
    """Namespaces, bridges and links of one test run; see the module docstring."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or "pc" + secrets.token_hex(3)
        self.switch = f"{self.prefix}-sw"
        self.bridges: list[str] = []
        self.nodes: dict[str, Node] = {}
        self._namespaces: list[str] = []  # creation order
        self._root_links: list[str] = []
        self._veth_seq = 0

    # -- building ------------------------------------------------------------------------------

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _veth_name(self) -> str:
        # Interface names are at most 15 bytes: "pcXXXXXX" + "v" + up to 3 digits + "a".
        self._veth_seq += 1
        return f"{self.prefix}v{self._veth_seq}"

    def add_bridge(self, name: str) -> None:
        """A bridge ``name`` (e.g. "br-dc1") in the switch namespace, up, without addresses."""
        if not self._namespaces or self._namespaces[0] != self.switch:
            self._add_ns(self.switch)
        ip("-n", self.switch, "link", "add", name, "type", "bridge")
        ip("-n", self.switch, "link", "set", name, "up")
        self.bridges.append(name)

    def add_node(self, name: str) -> Node:
        """A node namespace with ``lo`` up and a management link to the root namespace."""
        node = Node(name=name, ns=f"{self.prefix}-{name}")
        self._add_ns(node.ns)
        self.nodes[name] = node
        with _mgmt_lock():
            used = _used_mgmt_k()
            free = [k for k in range(1, 255) if k not in used]
            if not free:
                raise CommandError("no free 198.19.<k>.0/30 management network")
            node.mgmt_k = free[0]
            root_if = self._veth_name()
            ip("link", "add", root_if, "type", "veth", "peer", "name", "mgmt0", "netns", node.ns)
            self._root_links.append(root_if)
            ip("addr", "add", f"{node.root_ip}/30", "dev", root_if)
        ip("link", "set", root_if, "up")
        ip("-n", node.ns, "addr", "add", f"{node.mgmt_ip}/30", "dev", "mgmt0")
        ip("-n", node.ns, "link", "set", "mgmt0", "up")
        return node

    def attach(self, node: Node, network: str, bridge: str, address: str) -> Link:
        """A veth from ``node`` (``<network>0`` inside it, with ``address``) to ``bridge``."""
        check_allowed(address)
        ifname = f"{network}0"
        sw_if = self._veth_name()
        ip(
            "link", "add", sw_if, "netns", self.switch,
            "type", "veth", "peer", "name", ifname, "netns", node.ns,
        )  # fmt: skip
        ip("-n", self.switch, "link", "set", sw_if, "master", bridge)
        ip("-n", self.switch, "link", "set", sw_if, "up")
        ip("-n", node.ns, "addr", "add", address, "dev", ifname)
        ip("-n", node.ns, "link", "set", ifname, "up")
        link = Link(bridge=bridge, ifname=ifname, address=address)
        node.links[network] = link
        return link

    def readdress(self, node: Node, network: str, address: str) -> None:
        """Replace ``node``'s address on ``network`` (the veth stays)."""
        check_allowed(address)
        link = node.links[network]
        ip("-n", node.ns, "addr", "del", link.address, "dev", link.ifname)
        ip("-n", node.ns, "addr", "add", address, "dev", link.ifname)
        link.address = address

    def ip_forward(self, ns: str) -> str:
        """``/proc/sys/net/ipv4/ip_forward`` as seen inside ``ns``."""
        out = in_ns(ns, "cat", "/proc/sys/net/ipv4/ip_forward")
        if out.returncode != 0:
            raise CommandError(f"reading ip_forward in {ns}: {out.stderr.strip()}")
        return out.stdout.strip()

    def check_no_forwarding(self) -> None:
        """Every namespace made here has IPv4 forwarding off (new namespaces start at 0)."""
        for ns in self._namespaces:
            value = self.ip_forward(ns)
            assert value == "0", f"ip_forward is {value} in {ns}"

    @property
    def namespaces(self) -> Sequence[str]:
        return tuple(self._namespaces)

    # -- teardown ------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Kill what still runs in our namespaces (by PID), delete the root ends of the
        management links and the namespaces (their interfaces go with them). Idempotent;
        errors are collected and raised after everything was attempted."""
        errors: list[str] = []
        for ns in reversed(self._namespaces):
            pids = ip("netns", "pids", ns, check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        for ns in self._namespaces:
            while ip("netns", "pids", ns, check=False).split() and time.monotonic() < deadline:
                time.sleep(0.05)
        for link in self._root_links:
            if ip("link", "show", link, check=False):
                try:
                    ip("link", "del", link)
                except CommandError as exc:
                    errors.append(str(exc))
        self._root_links.clear()
        for ns in reversed(self._namespaces):
            try:
                ip("netns", "del", ns)
            except CommandError as exc:
                if "No such file" not in str(exc):
                    errors.append(str(exc))
        self._namespaces.clear()
        if errors:
            raise CommandError("teardown: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# The two topologies of the tests


def lan_ip(dc: int, host: int) -> str:
    """The LAN address of host ``host`` in datacenter ``dc`` (1-based): 198.18.<dc>.<host>."""
    return f"198.18.{dc}.{host}"


def wan_ip(host: int) -> str:
    """An address on the WAN link between the datacenters: 198.18.0.<host>."""
    return f"198.18.0.{host}"


@dataclass
class DC:
    name: str  # "dc1"
    index: int  # 1
    servers: list[Node] = field(default_factory=list)
    gateways: list[Node] = field(default_factory=list)


def build_wanfed(topo: Topology, servers_per_dc: int, gateways_per_dc: int = 2) -> list[DC]:
    """Two datacenters whose server addresses are only on their own LAN bridge; their gateways
    are on the LAN bridge and on the shared WAN bridge.

    Addresses: servers 198.18.<dc>.1x (``lan``); gateways 198.18.<dc>.10x (``lan``) and
    198.18.0.<dc>x (``wan``). The secondary's (dc2's) servers also get an *egress* link on the
    WAN bridge (198.18.0.2<dc>x, network name ``egress``): Consul's handshake needs a secondary
    server to dial the primary's gateways (``primary_gateways``, their WAN addresses) directly,
    at cold start and in the leader's fallback. Their server address stays the LAN one, and the
    primary's servers have no WAN link at all, so no server can reach a server address of the
    other datacenter."""
    dcs = [DC("dc1", 1), DC("dc2", 2)]
    for dc in dcs:
        topo.add_bridge(f"br-{dc.name}")
    topo.add_bridge("br-wan")
    for dc in dcs:
        for i in range(1, servers_per_dc + 1):
            node = topo.add_node(f"s{i}-{dc.name}")
            topo.attach(node, "lan", f"br-{dc.name}", f"{lan_ip(dc.index, 10 + i)}/24")
            if dc.index > 1:
                topo.attach(node, "egress", "br-wan", f"{wan_ip(200 + 10 * dc.index + i)}/24")
            dc.servers.append(node)
        for i in range(1, gateways_per_dc + 1):
            node = topo.add_node(f"g{i}-{dc.name}")
            topo.attach(node, "lan", f"br-{dc.name}", f"{lan_ip(dc.index, 100 + i)}/24")
            topo.attach(node, "wan", "br-wan", f"{wan_ip(10 * dc.index + i)}/24")
            dc.gateways.append(node)
    topo.check_no_forwarding()
    return dcs


def build_routable(topo: Topology, servers_per_dc: int) -> list[DC]:
    """Two datacenters whose servers share one routable network (198.18.4.0/22 on one
    bridge): dc1's servers are 198.18.5.1x and dc2's 198.18.6.1x, each on its ``lan`` link."""
    dcs = [DC("dc1", 1), DC("dc2", 2)]
    topo.add_bridge("br-all")
    for dc in dcs:
        for i in range(1, servers_per_dc + 1):
            node = topo.add_node(f"s{i}-{dc.name}")
            topo.attach(node, "lan", "br-all", f"198.18.{4 + dc.index}.{10 + i}/22")
            dc.servers.append(node)
    topo.check_no_forwarding()
    return dcs
