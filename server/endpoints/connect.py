"""Connect CA over HTTP: ``GET /v1/connect/ca/roots`` and ``GET``/``PUT
/v1/connect/ca/configuration`` (Consul's ``agent/connect_ca_endpoint.go``).

The built-in ``consul`` provider only. The leader initialises the CA when it gains leadership
(and, should that not have happened yet, at the first request that needs it): a cluster ID
(a UUID, generated once), the default configuration and a self-signed root — an EC P-256 key,
as Consul's default ``PrivateKeyType``/``PrivateKeyBits`` — written through Raft
(``MessageType.CONNECT_CA``) so every server holds the same root.

Roots answer Consul's ``IndexedCARoots``: ``ActiveRootID``, ``TrustDomain``
(``<cluster-id>.consul``) and ``Roots`` (``CARoot``: ``ID`` is the SHA-1 fingerprint of the
certificate, ``SigningKeyID`` its subject key ID, both colon-separated hex); ``?pem=true``
answers the PEM bundle instead (``application/pem-certificate-chain``).

``PUT`` configuration takes ``Provider``, ``Config``, ``ForceWithoutCrossSigning``; the
``consul`` provider's ``Config`` is merged over the current one, durations are checked, and a
change of ``PrivateKeyType``/``PrivateKeyBits`` or a given ``RootCert``/``PrivateKey`` rotates
the root (the old one stays listed, inactive). Other providers (vault, aws-pca) are refused.
Intentions (``/v1/connect/intentions``) are not here yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import secrets
import uuid
import weakref
from typing import Any

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from server.commands.types import MessageType
from server.endpoints.context import ServerContext
from server.endpoints.http import (
    HTTPError,
    fold_keys,
    json_response,
    parse_bool_param,
    read_json,
)
from server.state import parse_duration
from server.state.connect_ca import api_root

__all__ = ["DEFAULT_CA_CONFIG", "CAManager", "ensure_ca", "generate_root", "register"]

DEFAULT_CA_CONFIG: dict[str, Any] = {
    "LeafCertTTL": "72h",
    "IntermediateCertTTL": "8760h",
    "RootCertTTL": "87600h",
    "RotationPeriod": "2160h",
    "PrivateKeyType": "ec",
    "PrivateKeyBits": 256,
}
_DURATION_KEYS = ("LeafCertTTL", "IntermediateCertTTL", "RootCertTTL", "RotationPeriod")
_CONFIG_KEYS = (
    *DEFAULT_CA_CONFIG,
    "PrivateKey",
    "RootCert",
    "CSRMaxPerSecond",
    "CSRMaxConcurrent",
)

log = structlog.get_logger("connect.ca")

_MANAGERS: weakref.WeakKeyDictionary[ServerContext, CAManager] = weakref.WeakKeyDictionary()


def _hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_root(
    cluster_id: str,
    config: dict[str, Any],
    *,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """A new self-signed root as a ``CARoot`` (with its ``SigningKey``)."""
    key_type = str(config.get("PrivateKeyType", "ec")).lower()
    bits = int(config.get("PrivateKeyBits", 256))
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        curve: ec.EllipticCurve = {
            224: ec.SECP224R1(),
            384: ec.SECP384R1(),
            521: ec.SECP521R1(),
        }.get(bits, ec.SECP256R1())
        key = ec.generate_private_key(curve)
    now = now or datetime.datetime.now(datetime.UTC)
    not_before = now.replace(microsecond=0) - datetime.timedelta(minutes=1)
    ttl_ns = parse_duration(str(config.get("RootCertTTL", "87600h")))
    not_after = not_before + datetime.timedelta(microseconds=ttl_ns // 1000)
    trust_domain = f"{cluster_id}.consul"
    serial = secrets.randbits(63) or 1
    common_name = f"pri-{secrets.token_hex(4)}.consul.ca.{cluster_id[:8]}.consul"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(ski.digest, None, None),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8
        if key_type == "rsa"
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return {
        "ID": _hex(hashlib.sha1(der).digest()),
        "Name": "Consul CA Primary Cert",
        "SerialNumber": serial,
        "SigningKeyID": _hex(ski.digest),
        "ExternalTrustDomain": cluster_id,
        "NotBefore": _rfc3339(not_before),
        "NotAfter": _rfc3339(not_after),
        "RootCert": pem,
        "IntermediateCerts": None,
        "Active": True,
        "RotatedOutAt": "0001-01-01T00:00:00Z",
        "PrivateKeyType": "rsa" if key_type == "rsa" else "ec",
        "PrivateKeyBits": bits,
        "SigningKey": key_pem,
    }


_ROOT_ORDER = (
    "ID",
    "Name",
    "SerialNumber",
    "SigningKeyID",
    "ExternalTrustDomain",
    "NotBefore",
    "NotAfter",
    "RootCert",
    "IntermediateCerts",
    "Active",
    "RotatedOutAt",
    "PrivateKeyType",
    "PrivateKeyBits",
    "CreateIndex",
    "ModifyIndex",
)
_CONFIG_ORDER = (
    "Provider",
    "Config",
    "State",
    "ForceWithoutCrossSigning",
    "CreateIndex",
    "ModifyIndex",
)


def _reorder(value: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Fields in Go's order (Raft stores them with sorted keys)."""
    out = {k: value[k] for k in keys if k in value}
    out.update({k: v for k, v in value.items() if k not in keys})
    return out


def _validate_config(config: dict[str, Any]) -> None:
    for key in _DURATION_KEYS:
        if key in config:
            try:
                parse_duration(str(config[key]))
            except ValueError as exc:
                raise HTTPError(500, f"error decoding '{key}': {exc}") from None
    leaf = parse_duration(str(config.get("LeafCertTTL", "72h")))
    if leaf < 3_600_000_000_000:
        raise HTTPError(500, "leaf cert TTL must be greater than 1h")
    if leaf > 365 * 24 * 3_600_000_000_000:
        raise HTTPError(500, "leaf cert TTL must be less than 1 year")
    key_type = str(config.get("PrivateKeyType", "ec")).lower()
    bits = int(config.get("PrivateKeyBits", 256))
    if key_type == "ec" and bits not in (224, 256, 384, 521):
        raise HTTPError(500, "ECDSA key length must be one of (224, 256, 384, 521) bits")
    if key_type == "rsa" and bits not in (2048, 4096):
        raise HTTPError(500, "RSA key length must be 2048 or 4096 bits")
    if key_type not in ("ec", "rsa"):
        raise HTTPError(500, "private key type must be either 'ecdsa' or 'rsa'")


class CAManager:
    """Initialises the CA on the leader (a ``Service``: told about leadership changes)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def leadership_changed(self, is_leader: bool) -> None:
        if is_leader and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._initialize_quietly(), name="ca-init")

    async def _initialize_quietly(self) -> None:
        try:
            await self.initialize()
        except Exception as exc:  # a lost leadership or shutdown: the next leader tries again
            log.warning("ca_initialization_failed", error=str(exc))

    def _needs_init(self) -> bool:
        table = self.ctx.store.connect_ca
        _, config = table.config(None)
        return config is None or table.active_root() is None or not table.cluster_id()

    async def initialize(self) -> None:
        """Write the cluster ID, default configuration and a root unless they exist."""
        raft = self.ctx.raft
        if raft is None or not raft.is_leader:
            return
        async with self._lock:
            if not self._needs_init():
                return
            table = self.ctx.store.connect_ca
            _, config = table.config(None)
            cluster_id = table.cluster_id() or str(uuid.uuid4())
            if config is None:
                config = {
                    "Provider": "consul",
                    "Config": dict(DEFAULT_CA_CONFIG),
                    "State": None,
                    "ForceWithoutCrossSigning": False,
                }
            config = {k: v for k, v in config.items() if k not in ("CreateIndex", "ModifyIndex")}
            root = generate_root(cluster_id, config.get("Config") or DEFAULT_CA_CONFIG)
            _, roots = table.roots(None)
            for old in roots:
                old["Active"] = False
            await self.ctx.apply(
                MessageType.CONNECT_CA,
                {
                    "Op": "set-roots-config",
                    "Index": table.roots_index(),
                    "Roots": [*roots, root],
                    "Config": config,
                    "ClusterID": cluster_id,
                },
            )
            log.info("ca_initialized", root_id=root["ID"], cluster_id=cluster_id)


def _manager(ctx: ServerContext) -> CAManager:
    manager = _MANAGERS.get(ctx)
    if manager is None:
        manager = CAManager(ctx)
        _MANAGERS[ctx] = manager
    return manager


async def ensure_ca(ctx: ServerContext) -> None:
    """Make sure the CA exists when this server is the leader (no-op elsewhere)."""
    manager = _manager(ctx)
    if ctx.fsm is None or not manager._needs_init():
        return
    await manager.initialize()


class ConnectCAEndpoint:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    async def roots(self, request: web.Request) -> web.Response:
        opts = self.ctx.options(request)
        pem = parse_bool_param(request, "pem")
        await ensure_ca(self.ctx)

        def read(store: Any, ws: Any) -> tuple[int, dict[str, Any]]:
            index, roots = store.connect_ca.roots(ws)
            active = next((r["ID"] for r in roots if r.get("Active")), "")
            return index, {
                "ActiveRootID": active,
                "TrustDomain": store.connect_ca.trust_domain(),
                "Roots": [_reorder(api_root(root), _ROOT_ORDER) for root in roots],
            }

        result, meta = await self.ctx.read(opts, read)
        headers = self.ctx.headers(meta)
        if pem:
            chunks: list[str] = []
            for root in result["Roots"]:
                chunks.append(root["RootCert"].rstrip("\n") + "\n")
                for intermediate in root.get("IntermediateCerts") or []:
                    chunks.append(str(intermediate).rstrip("\n") + "\n")
            return web.Response(
                body="".join(chunks).encode(),
                headers={**headers, "Content-Type": "application/pem-certificate-chain"},
            )
        return json_response(request, result, headers=headers)

    async def configuration(self, request: web.Request) -> web.Response:
        if request.method == "PUT":
            return await self._set_configuration(request)
        opts = self.ctx.options(request)
        await ensure_ca(self.ctx)
        config, meta = await self.ctx.read(opts, lambda s, ws: s.connect_ca.config(ws))
        if config is None:
            raise HTTPError(500, "internal error: CA provider is nil")
        config = _reorder(config, _CONFIG_ORDER)
        config["Config"] = _reorder(dict(config.get("Config") or {}), tuple(DEFAULT_CA_CONFIG))
        return json_response(request, config, headers=self.ctx.headers(meta))

    async def _set_configuration(self, request: web.Request) -> web.Response:
        self.ctx.check_datacenter(request.query.get("dc", ""))
        raw = await read_json(request, empty={})
        body = fold_keys(
            raw, ("Provider", "Config", "State", "ForceWithoutCrossSigning"), what="body"
        )
        provider = body.get("Provider") or "consul"
        if not isinstance(provider, str):
            raise HTTPError(400, "Request decode failed: Provider must be a string")
        if provider != "consul":
            raise HTTPError(500, f'unknown CA provider "{provider}"')
        given = body.get("Config") or {}
        if not isinstance(given, dict):
            raise HTTPError(400, "Request decode failed: Config must be an object")
        await ensure_ca(self.ctx)
        table = self.ctx.store.connect_ca
        _, current = table.config(None)
        base = dict((current or {}).get("Config") or DEFAULT_CA_CONFIG)
        given_folded = fold_keys(
            {str(k).replace("_", ""): v for k, v in given.items()}, _CONFIG_KEYS
        )
        merged = {**base, **given_folded}
        _validate_config(merged)
        new_config = {k: v for k, v in merged.items() if k not in ("PrivateKey", "RootCert")}
        config = {
            "Provider": "consul",
            "Config": new_config,
            "State": body.get("State"),
            "ForceWithoutCrossSigning": bool(body.get("ForceWithoutCrossSigning", False)),
        }
        rotate = (
            str(merged.get("PrivateKeyType")).lower()
            != str(base.get("PrivateKeyType", "ec")).lower()
            or int(merged.get("PrivateKeyBits", 256)) != int(base.get("PrivateKeyBits", 256))
            or bool(given_folded.get("PrivateKey") or given_folded.get("RootCert"))
        )
        cluster_id = table.cluster_id() or str(uuid.uuid4())
        if rotate:
            if given_folded.get("RootCert") or given_folded.get("PrivateKey"):
                raise HTTPError(
                    500, "importing an existing RootCert/PrivateKey is not supported yet"
                )
            root = generate_root(cluster_id, new_config)
            _, roots = table.roots(None)
            for old in roots:
                if old.get("Active"):
                    old["Active"] = False
                    old["RotatedOutAt"] = _rfc3339(datetime.datetime.now(datetime.UTC))
            await self.ctx.apply(
                MessageType.CONNECT_CA,
                {
                    "Op": "set-roots-config",
                    "Index": table.roots_index(),
                    "Roots": [*roots, root],
                    "Config": config,
                    "ClusterID": cluster_id,
                },
            )
        else:
            await self.ctx.apply(
                MessageType.CONNECT_CA_CONFIG,
                {"Op": "set", "Config": config, "ClusterID": cluster_id},
            )
        return web.Response(status=200)


def register(app: web.Application, ctx: ServerContext) -> None:
    manager = _manager(ctx)
    ctx.add_service(manager)
    endpoint = ConnectCAEndpoint(ctx)
    app.router.add_get("/v1/connect/ca/roots", endpoint.roots)
    app.router.add_get("/v1/connect/ca/configuration", endpoint.configuration)
    app.router.add_put("/v1/connect/ca/configuration", endpoint.configuration)
