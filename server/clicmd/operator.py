"""``operator raft list-peers|remove-peer|transfer-leader`` and ``operator autopilot
get-config|set-config|state``."""

from __future__ import annotations

import json
from typing import Any

from server.clicmd.api import APIError
from server.clicmd.base import Command, Context, Fail, columnize, register
from server.clicmd.flags import FlagSet, format_duration, parse_duration

__all__ = ["format_autopilot_config", "format_autopilot_state", "format_peers"]


def format_peers(servers: list[dict[str, Any]]) -> str:
    rows = [["Node", "ID", "Address", "State", "Voter", "RaftProtocol"]]
    for s in servers:
        proto = s.get("ProtocolVersion") or "<=1"
        state = "leader" if s.get("Leader") else "follower"
        voter = "true" if s.get("Voter") else "false"
        rows.append([s.get("Node", ""), s.get("ID", ""), s.get("Address", ""), state, voter, proto])
    return columnize(rows)


@register
class RaftListPeers(Command):
    name = "operator raft list-peers"
    synopsis = "Display the current Raft peer configuration"
    usage = """
Usage: consul operator raft list-peers [options]

  Displays the current Raft peer configuration.
"""

    def run(self, ctx: Context) -> int:
        try:
            reply = ctx.client.get_json("/v1/operator/raft/configuration") or {}
        except APIError as exc:
            raise Fail(
                f"Error getting peers: Failed to retrieve raft configuration: {exc}"
            ) from None
        ctx.out(format_peers(reply.get("Servers") or []))
        return 0


@register
class RaftRemovePeer(Command):
    name = "operator raft remove-peer"
    synopsis = "Remove a Consul server from the Raft configuration"
    usage = """
Usage: consul operator raft remove-peer [options]

Remove the Consul server with given -address from the Raft configuration.

There are rare cases where a peer may be left behind in the Raft quorum even
though the server is no longer present and known to the cluster. This command
can be used to remove the failed server so that it is no longer affects the Raft
quorum. If the server still shows in the output of the "consul members" command,
it is preferable to clean up by simply running "consul force-leave" instead of
this command.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "address",
            "",
            "The address to remove from the Raft configuration.",
        )
        fs.string("id", "", "The ID to remove from the Raft configuration.")

    def run(self, ctx: Context) -> int:
        address, node_id = ctx["address"], ctx["id"]
        if not address and not node_id:
            raise Fail("Error removing peer: an address or id is required for the peer to remove")
        if address and node_id:
            raise Fail("Error removing peer: cannot give both an address and id")
        params = {"address": address} if address else {"id": node_id}
        try:
            ctx.client.delete("/v1/operator/raft/peer", params)
        except APIError as exc:
            raise Fail(f"Error removing peer: {exc}") from None
        if address:
            ctx.out(f'Removed peer with address "{address}"')
        else:
            ctx.out(f'Removed peer with id "{node_id}"')
        return 0


@register
class RaftTransferLeader(Command):
    name = "operator raft transfer-leader"
    synopsis = "Transfer raft leadership to another node"
    usage = """
Usage: consul operator raft transfer-leader [options]

  Transfer raft leadership to another node.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string("id", "", "The ID of the node to transfer leadership to.")

    def run(self, ctx: Context) -> int:
        params = {"id": ctx["id"] or None}
        try:
            reply = ctx.client.request("POST", "/v1/operator/raft/transfer-leader", params, b"")
        except APIError as exc:
            raise Fail(
                f"Error transfering leadership: Failed to transfer leadership {exc}"
            ) from None
        if not (reply.json() or {}).get("Success"):
            raise Fail("Error transfering leadership: Failed to transfer leadership")
        ctx.out("Success")
        return 0


def _duration_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            return format_duration(parse_duration(value))
        except ValueError:
            return value
    if isinstance(value, int | float):
        return format_duration(value / 1e9)
    return "0s"


def format_autopilot_config(conf: dict[str, Any]) -> str:
    def b(v: Any) -> str:
        return "true" if v else "false"

    return "\n".join(
        [
            f"CleanupDeadServers = {b(conf.get('CleanupDeadServers'))}",
            f"LastContactThreshold = {_duration_text(conf.get('LastContactThreshold'))}",
            f"MaxTrailingLogs = {conf.get('MaxTrailingLogs', 0)}",
            f"MinQuorum = {conf.get('MinQuorum', 0)}",
            f"ServerStabilizationTime = {_duration_text(conf.get('ServerStabilizationTime'))}",
            f"RedundancyZoneTag = {json.dumps(conf.get('RedundancyZoneTag') or '')}",
            f"DisableUpgradeMigration = {b(conf.get('DisableUpgradeMigration'))}",
            f"UpgradeVersionTag = {json.dumps(conf.get('UpgradeVersionTag') or '')}",
        ]
    )


@register
class AutopilotGetConfig(Command):
    name = "operator autopilot get-config"
    synopsis = "Display the current Autopilot configuration"
    usage = """
Usage: consul operator autopilot get-config [options]

  Displays the current Autopilot configuration.
"""

    def run(self, ctx: Context) -> int:
        try:
            conf = ctx.client.get_json("/v1/operator/autopilot/configuration") or {}
        except APIError as exc:
            raise Fail(f"Error querying Autopilot configuration: {exc}") from None
        ctx.out(format_autopilot_config(conf))
        return 0


@register
class AutopilotSetConfig(Command):
    name = "operator autopilot set-config"
    synopsis = "Modify the current Autopilot configuration"
    usage = """
Usage: consul operator autopilot set-config [options]

  Modifies the current Autopilot configuration.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "cleanup-dead-servers",
            "",
            "Controls whether Consul will automatically remove dead servers when new ones "
            "are successfully added. Must be one of `true|false`.",
        )
        fs.integer(
            "max-trailing-logs",
            0,
            "Controls the maximum number of log entries that a server can trail the leader by "
            "before being considered unhealthy.",
            unsigned=True,
        )
        fs.integer(
            "min-quorum",
            0,
            "Sets the minimum number of servers required in a cluster before autopilot can "
            "prune dead servers.",
            unsigned=True,
        )
        fs.duration(
            "last-contact-threshold",
            0,
            "Controls the maximum amount of time a server can go without contact from the "
            "leader before being considered unhealthy. Must be a duration value such as `200ms`.",
        )
        fs.duration(
            "server-stabilization-time",
            0,
            "Controls the minimum amount of time a server must be stable in the 'healthy' "
            "state before being added to the cluster. Only takes effect if all servers are "
            "running Raft protocol version 3 or higher. Must be a duration value such as `10s`.",
        )
        fs.string(
            "redundancy-zone-tag",
            "",
            "(Enterprise-only) Controls the node_meta tag name used for separating servers "
            "into different redundancy zones.",
        )
        fs.string(
            "disable-upgrade-migration",
            "",
            "(Enterprise-only) Controls whether Consul will avoid promoting new servers until "
            "it can perform a migration. Must be one of `true|false`.",
        )
        fs.string(
            "upgrade-version-tag",
            "",
            "(Enterprise-only) The node_meta tag to use for version info when performing "
            "upgrade migrations. If left blank, the Consul version will be used.",
        )

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        bools: dict[str, bool] = {}
        for flag, field in (
            ("cleanup-dead-servers", "CleanupDeadServers"),
            ("disable-upgrade-migration", "DisableUpgradeMigration"),
        ):
            raw = ctx[flag]
            if ctx.fs.was_set(flag):
                low = raw.lower()
                if low not in ("1", "t", "true", "0", "f", "false"):
                    raise Fail(
                        f'invalid value "{raw}" for flag -{flag}: parse error: '
                        f'strconv.ParseBool: parsing "{raw}": invalid syntax'
                    )
                bools[field] = low in ("1", "t", "true")
        client = ctx.client
        try:
            conf = client.get_json("/v1/operator/autopilot/configuration") or {}
        except APIError as exc:
            raise Fail(f"Error querying Autopilot configuration: {exc}") from None
        conf.update(bools)
        fs = ctx.fs
        if fs.was_set("max-trailing-logs"):
            conf["MaxTrailingLogs"] = ctx["max-trailing-logs"]
        if fs.was_set("min-quorum"):
            conf["MinQuorum"] = ctx["min-quorum"]
        if fs.was_set("last-contact-threshold"):
            conf["LastContactThreshold"] = format_duration(ctx["last-contact-threshold"])
        if fs.was_set("server-stabilization-time"):
            conf["ServerStabilizationTime"] = format_duration(ctx["server-stabilization-time"])
        for flag, field in (
            ("redundancy-zone-tag", "RedundancyZoneTag"),
            ("upgrade-version-tag", "UpgradeVersionTag"),
        ):
            if fs.was_set(flag):
                conf[field] = ctx[flag]
        params = {"cas": conf.get("ModifyIndex", 0)}
        try:
            ok = client.put_json("/v1/operator/autopilot/configuration", conf, params).json()
        except APIError as exc:
            raise Fail(f"Error updating Autopilot configuration: {exc}") from None
        if ok:
            ctx.out("Configuration updated!")
            return 0
        ctx.out("Configuration could not be atomically updated, please try again")
        return 1


def format_autopilot_state(state: dict[str, Any]) -> str:
    """Consul's pretty formatter for ``operator autopilot state``."""
    out: list[str] = [
        f"Healthy:                      {_tf(state.get('Healthy'))}",
        f"Failure Tolerance:            {state.get('FailureTolerance', 0)}",
        f"Optimistic Failure Tolerance: {state.get('OptimisticFailureTolerance', 0)}",
        f"Leader:                       {state.get('Leader', '')}",
        "Voters:",
    ]
    out += [f"   {v}" for v in state.get("Voters") or []]
    if state.get("ReadReplicas"):
        out.append("Read Replicas:")
        out += [f"   {v}" for v in state["ReadReplicas"]]
    zones = state.get("RedundancyZones") or {}
    if zones:
        out.append("Redundancy Zones:")
        for name in sorted(zones):
            zone = zones[name] or {}
            out.append(f"   {name}:")
            out.append(f"      Failure Tolerance: {zone.get('FailureTolerance', 0)}")
            out.append("      Voters:")
            out += [f"         {v}" for v in zone.get("Voters") or []]
            out.append("      Servers:")
            out += [f"         {v}" for v in zone.get("Servers") or []]
    upgrade = state.get("Upgrade")
    if upgrade:
        out.append("Upgrade:")
        out.append(f"   Status:         {upgrade.get('Status', '')}")
        out.append(f"   Target Version: {upgrade.get('TargetVersion', '')}")
        for key, title in (
            ("TargetVersionVoters", "Target Version Voters"),
            ("TargetVersionNonVoters", "Target Version Non-Voters"),
            ("TargetVersionReadReplicas", "Target Version ReadReplicas"),
            ("OtherVersionVoters", "Other Version Voters"),
            ("OtherVersionNonVoters", "Other Version Non-Voters"),
            ("OtherVersionReadReplicas", "Other Version ReadReplicas"),
        ):
            if upgrade.get(key):
                out.append(f"   {title}:")
                out += [f"      {v}" for v in upgrade[key]]
    out.append("Servers:")
    servers = state.get("Servers") or {}
    for sid in sorted(servers):
        srv = servers[sid] or {}
        out.append(f"   {srv.get('ID', sid)}")
        out.append(f"      Name:            {srv.get('Name', '')}")
        out.append(f"      Address:         {srv.get('Address', '')}")
        out.append(f"      Version:         {srv.get('Version', '')}")
        out.append(f"      Status:          {srv.get('Status', '')}")
        out.append(f"      Node Type:       {srv.get('NodeType', '')}")
        out.append(f"      Node Status:     {srv.get('NodeStatus', '')}")
        out.append(f"      Healthy:         {_tf(srv.get('Healthy'))}")
        out.append(f"      Last Contact:    {_duration_text(srv.get('LastContact'))}")
        out.append(f"      Last Term:       {srv.get('LastTerm', 0)}")
        out.append(f"      Last Index:      {srv.get('LastIndex', 0)}")
        if srv.get("RedundancyZone"):
            out.append(f"      Redundancy Zone: {srv['RedundancyZone']}")
        if srv.get("UpgradeVersion"):
            out.append(f"      Upgrade Version: {srv['UpgradeVersion']}")
        if srv.get("ReadReplica"):
            out.append("      Read Replica:    true")
        meta = srv.get("Meta") or {}
        if meta:
            out.append("      Meta")
            out += [f"         {json.dumps(k)}: {json.dumps(meta[k])}" for k in sorted(meta)]
    return "\n".join(out)


def _tf(v: Any) -> str:
    return "true" if v else "false"


@register
class AutopilotState(Command):
    name = "operator autopilot state"
    synopsis = "Display the current Autopilot state"
    usage = """
Usage: consul operator autopilot state [options]

  Displays the current Autopilot state.
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string("format", "pretty", "Output format {pretty|json}")

    def run(self, ctx: Context) -> int:
        if ctx["format"] not in ("pretty", "json"):
            raise Fail(f"Error parsing format: Unknown format: {ctx['format']}")
        try:
            state = ctx.client.get_json("/v1/operator/autopilot/state") or {}
        except APIError as exc:
            raise Fail(f"Error querying Autopilot state: {exc}") from None
        if ctx["format"] == "json":
            ctx.out(json.dumps(state, indent=4))
        else:
            ctx.out(format_autopilot_state(state))
        return 0
