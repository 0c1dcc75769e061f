"""TLS for the server port (Raft + server RPC, and everything that crosses a mesh gateway).

``TLSSettings.from_config(cfg)`` reads the agent's ``tls`` block once, at start: the CA, the
agent's certificate and its key are loaded into memory here (no reload). A missing or
unreadable file is a ``ConfigError`` naming the key and where it was set
(``config file a.hcl: tls.defaults.cert_file: cannot read "/x.pem": ...``).

Settings: ``tls.defaults`` (legacy top-level ``ca_file``, ``cert_file``, ``verify_*`` ... are
mapped into it by ``server.config.load``), overridden key by key by ``tls.internal_rpc``, as
Consul's per-protocol blocks are.

Names (Consul's ``tlsutil.ServerSNI``): ``server_sni(dc, node, domain)`` is
``server.<dc>.<domain>`` when ``node`` is "" or "*", else ``<node>.server.<dc>.<domain>``;
the trailing dot of the domain is dropped. ``tls cert create -server -dc <dc> -node <node>``
puts both names in the certificate.

How gRPC uses them (verified against grpcio 1.85, ``grpc.aio``; see
tests/unit/test_tlsutil.py): the channel option ``grpc.ssl_target_name_override`` sets BOTH
the SNI sent in the ClientHello and the name the server's certificate is verified against.
Without the override and with an IP-address target, no SNI is sent at all (RFC 6066 forbids
IP literals as SNI), so every secure channel we open carries an override: intra-DC dials use
``server.<dc>.<domain>``, dials through a mesh gateway the SNI of the server wanted.

Invariants:
- with TLS configured, the server port always requires a client certificate signed by our
  CA (mTLS; Raft's transport requires it regardless of ``verify_incoming``);
- channels always verify the server's chain against our CA and the name given by the
  override (gRPC has no way to skip the name check; our server certificates always carry
  ``server.<dc>.<domain>``, so ``verify_server_hostname = false`` changes nothing here);
- the files are read once; the settings object holds the PEM bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import grpc

from raft.transport.grpc import TlsConfig
from server.config.load import ConfigError
from server.config.runtime import RuntimeConfig

__all__ = [
    "TLSSettings",
    "channel_options",
    "grpc_channel_credentials",
    "grpc_server_credentials",
    "raft_tls_config",
    "server_sni",
]

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def server_sni(dc: str, node: str, domain: str) -> str:
    """Consul's server TLS name: ``server.<dc>.<domain>`` for any server of ``dc`` (node ""
    or "*"), ``<node>.server.<dc>.<domain>`` for one server."""
    domain = domain.rstrip(".")
    if node in ("", "*"):
        return f"server.{dc}.{domain}"
    return f"{node}.server.{dc}.{domain}"


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The agent's TLS material and policy for the server port (see the module docstring)."""

    ca_pem: bytes  # one or more PEM certificates: the roots we trust
    cert_pem: bytes  # our certificate chain (presented as server and as client)
    key_pem: bytes
    ca_file: str
    cert_file: str
    key_file: str
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False

    @classmethod
    def from_config(cls, cfg: RuntimeConfig) -> TLSSettings | None:
        """The settings from ``cfg.tls``; None when neither cert_file nor key_file is set (a
        CA alone gives the server port nothing to present). Raises ``ConfigError`` for a
        half configuration (one of cert/key, or no CA) or an unreadable file."""
        tls = cfg.tls or {}
        defaults: dict[str, Any] = dict(tls.get("defaults") or {})
        internal: dict[str, Any] = dict(tls.get("internal_rpc") or {})

        def pick(key: str) -> tuple[Any, str]:
            """The value of ``key`` and its config path (internal_rpc wins over defaults)."""
            if internal.get(key) not in (None, ""):
                return internal[key], f"tls.internal_rpc.{key}"
            return defaults.get(key), f"tls.defaults.{key}"

        def fail(path: str, msg: str) -> ConfigError:
            origin = cfg.sources.get(path)
            return ConfigError(f"{origin}: {path}: {msg}" if origin else f"{path}: {msg}")

        ca_file, ca_file_key = pick("ca_file")
        ca_path, ca_path_key = pick("ca_path")
        cert_file, cert_key = pick("cert_file")
        key_file, key_key = pick("key_file")
        if not cert_file and not key_file:
            # Nothing to present (a CA alone serves HTTPS clients, not the server port).
            return None
        if not cert_file or not key_file:
            missing = cert_key if not cert_file else key_key
            raise fail(missing, "cert_file and key_file must be set together")
        if not ca_file and not ca_path:
            raise fail(ca_file_key, "a CA (ca_file or ca_path) is required with cert_file")

        def read(path: str, key: str) -> bytes:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise fail(key, f"cannot read {path!r}: {exc.strerror or exc}") from None
            if not data.strip():
                raise fail(key, f"{path!r} is empty")
            return data

        if ca_file:
            ca_pem = read(str(ca_file), ca_file_key)
        else:
            ca_pem = _read_ca_dir(str(ca_path), lambda msg: fail(ca_path_key, msg))
        if _PEM_CERT not in ca_pem:
            raise fail(ca_file_key if ca_file else ca_path_key, "no PEM certificate found")
        cert_pem = read(str(cert_file), cert_key)
        if _PEM_CERT not in cert_pem:
            raise fail(cert_key, f"{cert_file!r} holds no PEM certificate")
        key_pem = read(str(key_file), key_key)
        if b"PRIVATE KEY-----" not in key_pem:
            raise fail(key_key, f"{key_file!r} holds no PEM private key")

        def flag(key: str) -> bool:
            return bool(pick(key)[0])

        return cls(
            ca_pem=ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            ca_file=str(ca_file or ""),
            cert_file=str(cert_file),
            key_file=str(key_file),
            verify_incoming=flag("verify_incoming"),
            verify_outgoing=flag("verify_outgoing"),
            verify_server_hostname=bool(internal.get("verify_server_hostname", False)),
        )


def _read_ca_dir(path: str, fail: Any) -> bytes:
    """Every PEM certificate of the regular files in ``path``, in name order (Consul's
    ``ca_path``)."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise fail(f"cannot read directory {path!r}: {exc.strerror or exc}") from None
    parts: list[bytes] = []
    for name in names:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        try:
            with open(full, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise fail(f"cannot read {full!r}: {exc.strerror or exc}") from None
        if _PEM_CERT in data:
            parts.append(data if data.endswith(b"\n") else data + b"\n")
    if not parts:
        raise fail(f"no PEM certificate in {path!r}")
    return b"".join(parts)


def grpc_server_credentials(s: TLSSettings, *, require_client_cert: bool = True) -> Any:
    """Server credentials presenting our certificate. Client certificates signed by our CA
    are required when ``require_client_cert`` (the default: the server port is always mTLS)
    or when ``verify_incoming`` is set."""
    return grpc.ssl_server_credentials(
        [(s.key_pem, s.cert_pem)],
        root_certificates=s.ca_pem,
        require_client_auth=require_client_cert or s.verify_incoming,
    )


def grpc_channel_credentials(s: TLSSettings) -> Any:
    """Channel credentials: trust our CA, present our certificate (mTLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=s.ca_pem, private_key=s.key_pem, certificate_chain=s.cert_pem
    )


def raft_tls_config(s: TLSSettings, dc: str, domain: str) -> TlsConfig:
    """Raft's transport TLS: intra-DC peers are dialled by IP, so the name verified (and sent
    as SNI) is ``server.<dc>.<domain>``, which every server certificate of ``dc`` carries.

    The transport reads the files itself when it starts; with only ``ca_path`` set there is
    no single CA file to hand it, which ``from_config`` callers see as a ``ConfigError``."""
    if not s.ca_file:
        raise ConfigError(
            "tls.defaults.ca_path: the server port needs a single CA file: set ca_file"
        )
    return TlsConfig(
        ca_file=s.ca_file,
        cert_file=s.cert_file,
        key_file=s.key_file,
        server_name_override=server_sni(dc, "", domain),
    )


def channel_options(sni: str | None) -> list[tuple[str, Any]]:
    """Options for a channel to a server port: the TLS name (SNI and verified name) when
    ``sni``, and keepalive pings so a frozen or partitioned peer is noticed in ~15 s (the
    server port accepts them). Reconnect backoff is capped at 2 s (gRPC's default grows to
    120 s): a gateway or server that comes back is used again within seconds, which the
    fail-over paths (another gateway, the primary's gateways) rely on."""
    options: list[tuple[str, Any]] = [
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if sni:
        options.append(("grpc.ssl_target_name_override", sni))
    return options
