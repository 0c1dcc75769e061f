"""Commands acting on the local agent: ``members``, ``join``, ``leave``, ``force-leave``,
``reload``, ``info``, ``monitor``, ``maint``, ``keygen``, ``keyring``, ``event``."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from typing import Any
from urllib.parse import quote

from server.clicmd.api import APIError
from server.clicmd.base import Command, Context, Fail, columnize, register, sigterm_as_interrupt
from server.clicmd.flags import FlagSet

__all__ = ["format_members", "member_status"]

_STATUS = {0: "none", 1: "alive", 2: "leaving", 3: "left", 4: "failed"}


def member_status(code: Any) -> str:
    """serf's ``MemberStatus.String()``."""
    try:
        return _STATUS.get(int(code), "unknown")
    except (TypeError, ValueError):
        return "unknown"


def _host_port(addr: str, port: Any) -> str:
    """Go's ``net.TCPAddr.String()``: IPv6 in brackets."""
    try:
        if isinstance(ipaddress.ip_address(addr), ipaddress.IPv6Address):
            return f"[{addr}]:{port}"
    except ValueError:
        pass
    return f"{addr}:{port}"


def _sort_key(m: dict[str, Any]) -> tuple[Any, ...]:
    tags = m.get("Tags") or {}
    partition = tags.get("ap", "")
    default = partition in ("", "default")
    return (
        tags.get("role") != "consul",
        not default,
        tags.get("segment", ""),
        partition,
        m.get("Name", ""),
    )


def format_members(
    members: list[dict[str, Any]], detailed: bool = False, status: str = ".*"
) -> tuple[str, int]:
    """``consul members`` output and exit status (2 when no member matches ``status``)."""
    pattern = re.compile(status)
    shown: list[dict[str, Any]] = []
    for m in members:
        tags = dict(m.get("Tags") or {})
        if not tags.get("ap"):
            tags["ap"] = "default"
        if tags["ap"] == "default":
            if tags.get("role") == "consul":
                tags["segment"] = "<all>"
            elif not tags.get("segment"):
                tags["segment"] = "<default>"
        else:
            tags["segment"] = ""
        if not pattern.search(member_status(m.get("Status"))):
            continue
        shown.append({**m, "Tags": tags})
    if not shown:
        return "", 2
    shown.sort(key=_sort_key)
    rows: list[list[str]] = []
    if detailed:
        rows.append(["Node", "Address", "Status", "Tags"])
        for m in shown:
            tags = m["Tags"]
            pairs = ",".join(f"{k}={tags[k]}" for k in sorted(tags))
            addr = _host_port(m.get("Addr", ""), m.get("Port", 0))
            rows.append([m.get("Name", ""), addr, member_status(m.get("Status")), pairs])
        return columnize(rows), 0
    rows.append(
        ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]
    )
    for m in shown:
        tags = m["Tags"]
        addr = _host_port(m.get("Addr", ""), m.get("Port", 0))
        st = member_status(m.get("Status"))
        build = tags.get("build", "")
        build = "< 0.3" if not build else build.split(":", 1)[0]
        role = tags.get("role")
        kind = {"node": "client", "consul": "server"}.get(role or "", "")
        if kind:
            rows.append(
                [
                    m.get("Name", ""),
                    addr,
                    st,
                    kind,
                    build,
                    tags.get("vsn", ""),
                    tags.get("dc", ""),
                    tags.get("ap", ""),
                    tags.get("segment", ""),
                ]
            )
        else:
            rows.append([m.get("Name", ""), addr, st, "unknown", "", "", "", "", ""])
    return columnize(rows), 0


@register
class Members(Command):
    name = "members"
    synopsis = "Lists the members of a Consul cluster"
    usage = """
Usage: consul members [options]

  Outputs the members of a running Consul agent.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.boolean("detailed", help="Provides detailed information about nodes.")
        fs.boolean(
            "wan",
            help="If the agent is in server mode, this can be used to return the other peers "
            "in the WAN pool.",
        )
        fs.string(
            "status",
            ".*",
            "If provided, output is filtered to only nodes matching the regular expression "
            "for status.",
        )
        fs.string(
            "segment",
            "",
            "(Enterprise-only) If provided, output is filtered to only nodes in the given segment.",
        )
        fs.string("filter", "", "Filter to use with the request")
        fs.string("partition", "", "(Enterprise-only) Specifies the admin partition to query.")

    def run(self, ctx: Context) -> int:
        try:
            re.compile(ctx["status"])
        except re.error as exc:
            raise Fail(f"Failed to compile status regexp: {exc}") from None
        params: dict[str, Any] = {"wan": "1" if ctx["wan"] else None}
        if ctx["segment"]:
            params["segment"] = ctx["segment"]
        if ctx["filter"]:
            params["filter"] = ctx["filter"]
        try:
            members = ctx.client.get_json("/v1/agent/members", params) or []
        except APIError as exc:
            raise Fail(f"Error retrieving members: {exc}") from None
        text, code = format_members(members, ctx["detailed"], ctx["status"])
        if code == 0:
            ctx.out(text)
        return code


@register
class Join(Command):
    name = "join"
    synopsis = "Tell Consul agent to join cluster"
    usage = """
Usage: consul join [options] address ...

  Tells a running Consul agent (with "consul agent") to join the cluster
  by specifying at least one existing member.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.boolean("wan", help="Joins a server to another server in the WAN pool.")

    def run(self, ctx: Context) -> int:
        if not ctx.args:
            raise Fail("At least one address to join must be specified.")
        joins = 0
        for addr in ctx.args:
            try:
                ctx.client.put(
                    "/v1/agent/join/" + quote(addr, safe=""),
                    None,
                    {"wan": "1" if ctx["wan"] else None},
                    dc=False,
                )
                joins += 1
            except APIError as exc:
                ctx.err(f"Error joining address '{addr}': {exc}")
        if joins == 0:
            raise Fail("Failed to join any nodes.")
        ctx.out(f"Successfully joined cluster by contacting {joins} nodes.")
        return 0


@register
class Leave(Command):
    name = "leave"
    synopsis = "Gracefully leaves the Consul cluster and shuts down"
    usage = """
Usage: consul leave [options]

  Causes the agent to gracefully leave the Consul cluster and shutdown.
"""
    http = "client"

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Error found unexpected args: [{' '.join(ctx.args)}]")
        try:
            ctx.client.put("/v1/agent/leave", None, dc=False)
        except APIError as exc:
            raise Fail(f"Error leaving: {exc}") from None
        ctx.out("Graceful leave complete")
        return 0


@register
class ForceLeave(Command):
    name = "force-leave"
    synopsis = 'Forces a member of the cluster to enter the "left" state'
    usage = """
Usage: consul force-leave [options] name

  Forces a member of a Consul cluster to enter the "left" state. Note
  that if the member is still actually alive, it will eventually rejoin
  the cluster. This command is most useful for cleaning out "failed" nodes
  that are never coming back. If you do not know a node's name, you can
  use the "consul members" command.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.boolean(
            "prune",
            help="Remove agent forcibly from list of members. Used in the event that an "
            "unwanted node has been left the cluster but is still showing.",
        )
        fs.boolean("wan", help="Exclusively leave the agent from the WAN serf pool.")

    def run(self, ctx: Context) -> int:
        if len(ctx.args) != 1:
            raise Fail("A single node name must be specified to force leave.")
        node = ctx.args[0]
        params = {"prune": ctx["prune"], "wan": ctx["wan"]}
        try:
            ctx.client.put("/v1/agent/force-leave/" + quote(node, safe=""), None, params, dc=False)
        except APIError as exc:
            raise Fail(f"Error force leaving: {exc}") from None
        return 0


@register
class Reload(Command):
    name = "reload"
    synopsis = "Triggers the agent to reload configuration files"
    usage = """
Usage: consul reload [options]

  Causes the agent to reload configurations. This can be used instead
  of sending the SIGHUP signal to the agent.
"""
    http = "client"

    def run(self, ctx: Context) -> int:
        try:
            ctx.client.put("/v1/agent/reload", None, dc=False)
        except APIError as exc:
            raise Fail(f"Error reloading: {exc}") from None
        ctx.out("Configuration reload triggered")
        return 0


def format_info(stats: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for key in sorted(stats):
        lines.append(f"{key}:")
        sub = stats[key] or {}
        for k in sorted(sub):
            lines.append(f"\t{k} = {sub[k]}")
    return "\n".join(lines)


@register
class Info(Command):
    name = "info"
    synopsis = "Provides debugging information for operators."
    usage = """
Usage: consul info [options]

  Provides debugging information for operators
"""
    http = "client"

    def run(self, ctx: Context) -> int:
        try:
            self_ = ctx.client.get_json("/v1/agent/self", dc=False) or {}
        except APIError as exc:
            raise Fail(f"Error querying agent: {exc}") from None
        ctx.out(format_info(self_.get("Stats") or {}))
        return 0


@register
class Monitor(Command):
    name = "monitor"
    synopsis = "Stream logs from a Consul agent"
    usage = """
Usage: consul monitor [options]

  Shows recent log messages of a Consul agent, and attaches to the agent,
  outputting log messages as they occur in real time. The monitor lets you
  listen for log levels that may be filtered out of the Consul agent. For
  example your agent may only be logging at INFO level, but with the monitor
  you can see the DEBUG level logs.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.string("log-level", "INFO", "Log level of the agent.")
        fs.boolean("log-json", help="Output logs in JSON format.")

    def run(self, ctx: Context) -> int:
        params: dict[str, Any] = {"loglevel": ctx["log-level"], "logjson": ctx["log-json"]}
        sigterm_as_interrupt()
        try:
            pieces = ctx.client.stream("GET", "/v1/agent/monitor", params, dc=False, chunk=4096)
            for piece in pieces:
                ctx.stdout.write(piece.decode("utf-8", "replace"))
                ctx.stdout.flush()
        except APIError as exc:
            raise Fail(f"Error starting monitor: {exc}") from None
        except KeyboardInterrupt:
            return 0
        ctx.out(
            "Remote side ended the monitor! This usually means that the\n"
            "remote side has exited or crashed."
        )
        return 0


@register
class Maint(Command):
    name = "maint"
    synopsis = "Controls node or service maintenance mode"
    usage = """
Usage: consul maint [options]

  Places a node or service into maintenance mode. During maintenance mode,
  the node or service will be excluded from all queries through the DNS
  or API interfaces, effectively taking it out of the pool of available
  nodes. This is done by registering an additional critical health check.

  When enabling maintenance mode for a node or service, you may optionally
  specify a reason string. This string will appear in the "Notes" field
  of the critical health check which is registered against the node or
  service. If no reason is provided, a default value will be used.

  Maintenance mode is persistent, and will be restored in the event of an
  agent restart. It is therefore required to disable maintenance mode on
  a given node or service before it will be placed back into any pool.

  By default, we operate on the node as a whole. By specifying the
  "-service" argument, this behavior can be changed to enable or disable
  only a specific service.

  If no arguments are given, the agent's maintenance status will be shown.
  This will return blank if nothing is currently under maintenance.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.boolean("enable", help="Enable maintenance mode.")
        fs.boolean("disable", help="Disable maintenance mode.")
        fs.string("reason", "", "Text describing the maintenance reason.")
        fs.string(
            "service",
            "",
            "Control maintenance mode for a specific service ID.",
        )

    def run(self, ctx: Context) -> int:
        enable, disable = ctx["enable"], ctx["disable"]
        reason, service = ctx["reason"], ctx["service"]
        if enable and disable:
            raise Fail("Only one of -enable or -disable may be provided")
        if not enable and reason:
            raise Fail("Reason may only be provided with -enable")
        if not enable and not disable and service:
            raise Fail("Service requires either -enable or -disable")
        client = ctx.client
        if not enable and not disable:
            try:
                self_ = client.get_json("/v1/agent/self", dc=False) or {}
                checks = client.get_json("/v1/agent/checks", dc=False) or {}
            except APIError as exc:
                raise Fail(f"Error getting checks: {exc}") from None
            node = (self_.get("Config") or {}).get("NodeName", "")
            for cid in sorted(checks):
                check = checks[cid]
                if cid == "_node_maintenance":
                    ctx.out("Node:")
                    ctx.out(f"  Name:   {node}")
                    ctx.out(f"  Reason: {check.get('Notes', '')}")
                    ctx.out("")
                elif cid.startswith("_service_maintenance:"):
                    ctx.out("Service:")
                    ctx.out(f"  ID:     {check.get('ServiceID', '')}")
                    ctx.out(f"  Reason: {check.get('Notes', '')}")
                    ctx.out("")
            return 0
        params: dict[str, Any] = {"enable": "true" if enable else "false"}
        if reason:
            params["reason"] = reason
        if not service:
            try:
                client.put("/v1/agent/maintenance", None, params, dc=False)
            except APIError as exc:
                what = "enabling" if enable else "disabling"
                raise Fail(f"Error {what} node maintenance: {exc}") from None
            ctx.out("Node entered maintenance mode" if enable else "Node left maintenance mode")
            return 0
        try:
            client.put(
                "/v1/agent/service/maintenance/" + quote(service, safe=""), None, params, dc=False
            )
        except APIError as exc:
            what = "enabling" if enable else "disabling"
            raise Fail(f"Error {what} service maintenance: {exc}") from None
        verb = "entered" if enable else "left"
        ctx.out(f"Service {verb} maintenance mode: {service}")
        return 0


@register
class Keygen(Command):
    name = "keygen"
    synopsis = "Generates a new encryption key"
    usage = """
Usage: consul keygen

  Generates a new 32-byte encryption key that can be used to configure the
  agent to encrypt traffic. The output of this command is already
  in the proper format that the agent expects.
"""
    http = ""

    def run(self, ctx: Context) -> int:
        ctx.out(base64.b64encode(os.urandom(32)).decode())
        return 0


def format_keyring_response(resp: dict[str, Any], keys: dict[str, int]) -> str:
    pool = "WAN" if resp.get("WAN") else f"{resp.get('Datacenter', '')} (LAN)"
    if resp.get("Partition"):
        pool = f"{pool} [partition: {resp['Partition']}]"
    if resp.get("Segment"):
        pool = f"{pool} [segment: {resp['Segment']}]"
    text = f"\n{pool}:\n"
    for src, msg in sorted((resp.get("Messages") or {}).items()):
        text += f"  ===> {src}: {msg}\n"
    total = resp.get("NumNodes", 0)
    for key, num in sorted(keys.items()):
        text += f"  {key} [{num}/{total}]\n"
    return text.rstrip("\n")


@register
class Keyring(Command):
    name = "keyring"
    synopsis = "Manages gossip layer encryption keys"
    usage = """
Usage: consul keyring [options]

  Manages encryption keys used for gossip messages. Gossip encryption is
  optional. When enabled, this command may be used to examine active encryption
  keys in the cluster, add new keys, and remove old ones. When combined, this
  functionality provides the ability to perform key rotation cluster-wide,
  without disrupting the cluster.

  All operations performed by this command can only be run against server nodes,
  and affect both the LAN and WAN keyrings in lock-step.

  All variations of the keyring command return 0 if all nodes reply and there
  are no errors. If any node fails to reply or reports failure, the exit code
  will be 1.
"""
    http = "client"

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "install",
            "",
            "Install a new encryption key. This will broadcast the new key to all members in "
            "the cluster.",
        )
        fs.string(
            "use",
            "",
            "Change the primary encryption key, which is used to encrypt messages. The key "
            "must already be installed before this operation can succeed.",
        )
        fs.string(
            "remove",
            "",
            "Remove the given key from the cluster. This operation may only be performed on "
            "keys which are not currently the primary key.",
        )
        fs.boolean("list", help="List all keys currently in use within the cluster.")
        fs.boolean(
            "list-primary", help="List all primary keys currently in use within the cluster."
        )
        fs.integer(
            "relay-factor",
            0,
            "Setting this to a non-zero value will cause nodes to relay their response to the "
            "operation through this many randomly-chosen other nodes in the cluster. The "
            "maximum allowed value is 5.",
        )
        fs.boolean(
            "local-only",
            help="Setting this to true will force the keyring query to only hit local servers (no WAN traffic). This flag can only be set for list queries.",
        )

    def run(self, ctx: Context) -> int:
        actions = [bool(ctx["install"]), bool(ctx["use"]), bool(ctx["remove"])]
        actions += [ctx["list"], ctx["list-primary"]]
        if sum(actions) != 1:
            raise Fail("Only a single action is allowed")
        relay = ctx["relay-factor"]
        if relay > 255 or relay < 0:
            raise Fail("Error parsing relay factor: value out of range")
        if ctx["local-only"] and not (ctx["list"] or ctx["list-primary"]):
            raise Fail("Local-only can only be used with -list")
        params: dict[str, Any] = {}
        if relay:
            params["relay-factor"] = relay
        client = ctx.client
        if ctx["list"] or ctx["list-primary"]:
            if ctx["local-only"]:
                params["local-only"] = "true"
            ctx.out(
                "==> Gathering installed encryption keys..."
                if ctx["list"]
                else "==> Gathering primary encryption keys..."
            )
            try:
                responses = client.get_json("/v1/operator/keyring", params, dc=False) or []
            except APIError as exc:
                raise Fail(f"error: {_one_line(exc)}") from None
            for resp in responses:
                keys = resp.get("Keys") or {}
                if ctx["list-primary"]:
                    keys = resp.get("PrimaryKeys") or {}
                ctx.out(format_keyring_response(resp, keys))
            return 0
        if ctx["install"]:
            method, key, info = (
                "POST",
                ctx["install"],
                "==> Installing new gossip encryption key...",
            )
        elif ctx["use"]:
            method, key, info = "PUT", ctx["use"], "==> Changing primary gossip encryption key..."
        else:
            method, key, info = "DELETE", ctx["remove"], "==> Removing gossip encryption key..."
        ctx.out(info)
        import json

        try:
            client.request(
                method, "/v1/operator/keyring", params, json.dumps({"Key": key}).encode(), dc=False
            )
        except APIError as exc:
            raise Fail(f"error: {_one_line(exc)}") from None
        return 0


def _one_line(exc: Exception) -> str:
    """A multi-line server error as one line (Consul's multierror text folded)."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


@register
class Event(Command):
    name = "event"
    synopsis = "Fire a new event"
    usage = """
Usage: consul event [options] [payload]

  Dispatches a custom user event across a datacenter. An event must provide
  a name, but a payload is optional. Events support filtering using
  regular expressions on node name, service, and tag definitions.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string("name", "", "Name of the event.")
        fs.string("node", "", "Regular expression to filter on node names.")
        fs.string("service", "", "Regular expression to filter on service instances.")
        fs.string(
            "tag",
            "",
            "Regular expression to filter on service tags. Must be used with -service.",
        )

    def run(self, ctx: Context) -> int:
        if not ctx["name"]:
            raise Fail("Event name must be specified")
        for flag in ("node", "service", "tag"):
            if ctx[flag]:
                try:
                    re.compile(ctx[flag])
                except re.error as exc:
                    raise Fail(f"Failed to compile {flag} filter regexp: {exc}") from None
        if ctx["tag"] and not ctx["service"]:
            raise Fail("Cannot provide tag filter without service filter.")
        if len(ctx.args) > 1:
            raise Fail("Too many command line arguments.")
        payload = ctx.args[0].encode() if ctx.args else b""
        client = ctx.client
        try:
            client.get("/v1/agent/self", dc=False)
        except APIError as exc:
            raise Fail(f"Error querying Consul agent: {exc}") from None
        params = {"node": ctx["node"] or None, "service": ctx["service"] or None}
        params["tag"] = ctx["tag"] or None
        try:
            event = client.put(
                "/v1/event/fire/" + quote(ctx["name"], safe=""), payload, params
            ).json()
        except APIError as exc:
            raise Fail(f"Error firing event: {exc}") from None
        ctx.out(f"Event ID: {(event or {}).get('ID', '')}")
        return 0
