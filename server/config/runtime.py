"""``RuntimeConfig``: the one frozen, validated configuration an agent runs with.

Built by ``server.config.load.load`` (``server.config.load_runtime_config`` from the agent's
command line) from config files (JSON/HCL) and command-line flags merged in
Consul's order; every field has Consul's default. Durations are seconds (float); ports of -1
mean "disabled", as in Consul.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RuntimeConfig"]


@dataclass(frozen=True)
class RuntimeConfig:
    node_name: str = ""
    node_id: str = ""
    datacenter: str = "dc1"
    primary_datacenter: str = ""
    domain: str = "consul."
    alt_domain: str = ""
    data_dir: str = ""
    dev: bool = False
    server: bool = False
    bootstrap: bool = False
    bootstrap_expect: int = 0
    ui: bool = False
    log_level: str = "info"
    log_json: bool = False
    pid_file: str = ""
    # Addresses: client_addr serves HTTP/DNS; bind_addr serves server RPC and serf;
    # advertise_addr is what other agents are told (defaults to bind_addr).
    client_addr: str = "127.0.0.1"
    bind_addr: str = "0.0.0.0"
    advertise_addr: str = ""
    advertise_addr_wan: str = ""
    http_addr: str = ""  # addresses { http }: overrides client_addr for HTTP when set
    dns_addr: str = ""
    # Ports (-1: disabled).
    http_port: int = 8500
    https_port: int = -1
    dns_port: int = 8600
    server_port: int = 8300
    serf_lan_port: int = 8301
    serf_wan_port: int = 8302
    grpc_port: int = -1
    grpc_tls_port: int = -1
    # Joining.
    retry_join: tuple[str, ...] = ()
    start_join: tuple[str, ...] = ()
    retry_join_wan: tuple[str, ...] = ()
    start_join_wan: tuple[str, ...] = ()
    retry_interval: float = 30.0
    retry_max: int = 0
    rejoin_after_leave: bool = False
    leave_on_terminate: bool = False
    skip_leave_on_interrupt: bool = False
    # Gossip encryption key (base64), "" when off.
    encrypt: str = ""
    # Timing.
    raft_multiplier: int = 5
    rpc_hold_timeout: float = 7.0
    # Sessions (Consul's session_ttl_min default 10 s).
    session_ttl_min: float = 10.0
    # Checks.
    enable_script_checks: bool = False
    enable_local_script_checks: bool = False
    check_update_interval: float = 300.0
    # Limits.
    kv_max_value_size: int = 512 * 1024
    txn_max_req_len: int = 512 * 1024
    # Feature blocks kept as validated dicts until their issue arrives.
    acl: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)
    tls: dict[str, Any] = field(default_factory=dict)
    dns_config: dict[str, Any] = field(default_factory=dict)
    autopilot: dict[str, Any] = field(default_factory=dict)
    telemetry: dict[str, Any] = field(default_factory=dict)
    node_meta: dict[str, str] = field(default_factory=dict)
    # Services and checks declared in config files (issue 5 runs them).
    services: tuple[dict[str, Any], ...] = ()
    checks: tuple[dict[str, Any], ...] = ()
    # Where each value came from, for messages (``key -> file or "flag"``).
    sources: dict[str, str] = field(default_factory=dict)
    # The files that were read, in order.
    config_files: tuple[str, ...] = ()
    # More of Consul's settings (parsed and validated; used as features arrive).
    https_addr: str = ""
    grpc_addr: str = ""
    retry_interval_wan: float = 30.0
    retry_max_wan: int = 0
    leave_drain_time: float = 5.0
    primary_gateways: tuple[str, ...] = ()
    primary_gateways_interval: float = 30.0
    recursors: tuple[str, ...] = ()
    encrypt_verify_incoming: bool = True
    encrypt_verify_outgoing: bool = True
    raft_protocol: int = 3
    disable_update_check: bool = False
    disable_remote_exec: bool = True
    disable_coordinates: bool = False
    translate_wan_addrs: bool = False
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    sidecar_min_port: int = 21000
    sidecar_max_port: int = 21255
    expose_min_port: int = 21500
    expose_max_port: int = 21755
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    ui_config: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    http_config: dict[str, Any] = field(default_factory=dict)
    # Every key as merged from all sources (Consul's snake_case names, values as written),
    # for endpoints that report the configuration (e.g. /v1/agent/self's DebugConfig).
    raw: dict[str, Any] = field(default_factory=dict)
    # What Consul only warns about (the agent logs each at start).
    warnings: tuple[str, ...] = ()

    @property
    def advertise(self) -> str:
        """The address other agents reach this one at."""
        if self.advertise_addr:
            return self.advertise_addr
        return "127.0.0.1" if self.bind_addr in ("", "0.0.0.0") else self.bind_addr

    @property
    def server_rpc_address(self) -> str:
        return f"{self.advertise}:{self.server_port}"

    @property
    def http_bind(self) -> str:
        return self.http_addr or self.client_addr
