"""server.tlsutil: names, loading the tls block (and its refusals), and what gRPC does with
``grpc.ssl_target_name_override`` on loopback sockets with certificates from our own
``tls ca create`` / ``tls cert create``.

The SNI tests pin the fact the WAN federation design rests on: the override is sent as the
ClientHello's SNI (a mesh gateway routes on it) AND is the name the server certificate is
verified against; with an IP target and no override, no SNI is sent at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.clicmd.base import COMMANDS, run_command
from server.config.load import ConfigError
from server.config.runtime import RuntimeConfig
from server.tlsutil import (
    TLSSettings,
    channel_options,
    grpc_channel_credentials,
    grpc_server_credentials,
    raft_tls_config,
    server_sni,
)

BOUND = 10.0


@dataclass(frozen=True)
class PKI:
    ca: Path
    cert: Path
    key: Path


def _cli(cwd: Path, *argv: str) -> None:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        out, err = io.StringIO(), io.StringIO()
        words = list(argv)
        code = run_command(COMMANDS[" ".join(words[:3])](), words[3:], out, err)
        assert code == 0, (out.getvalue(), err.getvalue())
    finally:
        os.chdir(old)


def make_pki(directory: Path, *cert_args: str) -> PKI:
    """A new CA in ``directory`` and one certificate it signs (``tls cert create`` args)."""
    directory.mkdir(parents=True, exist_ok=True)
    _cli(directory, "tls", "ca", "create")
    _cli(directory, "tls", "cert", "create", *cert_args)
    kind = "server" if "-server" in cert_args else "client"
    dc = cert_args[cert_args.index("-dc") + 1] if "-dc" in cert_args else "dc1"
    return PKI(
        directory / "consul-agent-ca.pem",
        directory / f"{dc}-{kind}-consul-0.pem",
        directory / f"{dc}-{kind}-consul-0-key.pem",
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), "-server", "-dc", "dc1", "-node", "s1")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """Same names, another CA."""
    return make_pki(tmp_path_factory.mktemp("other"), "-server", "-dc", "dc1", "-node", "s1")


def cfg_with(tls: dict[str, Any], sources: dict[str, str] | None = None) -> RuntimeConfig:
    return RuntimeConfig(node_name="n1", tls=tls, sources=sources or {})


def settings(p: PKI, **extra: Any) -> TLSSettings:
    s = TLSSettings.from_config(
        cfg_with(
            {"defaults": {"ca_file": str(p.ca), "cert_file": str(p.cert), "key_file": str(p.key)}}
            | extra
        )
    )
    assert s is not None
    return s


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("dc", "node", "domain", "want"),
    [
        ("dc1", "", "consul.", "server.dc1.consul"),
        ("dc1", "*", "consul", "server.dc1.consul"),
        ("east", "s1", "consul.", "s1.server.east.consul"),
        ("east", "s1", "example.org.", "s1.server.east.example.org"),
    ],
)
def test_server_sni(dc: str, node: str, domain: str, want: str) -> None:
    assert server_sni(dc, node, domain) == want


def test_channel_options() -> None:
    assert ("grpc.ssl_target_name_override", "server.dc1.consul") in channel_options(
        "server.dc1.consul"
    )
    opts = dict(channel_options(None))
    assert "grpc.ssl_target_name_override" not in opts
    assert opts["grpc.keepalive_time_ms"] == 10_000


# --------------------------------------------------------------------------- loading


def test_no_tls_is_none() -> None:
    assert TLSSettings.from_config(cfg_with({})) is None
    assert TLSSettings.from_config(cfg_with({"defaults": {"verify_incoming": True}})) is None
    ca_only = {"defaults": {"ca_file": "/nonexistent/ca.pem", "verify_outgoing": True}}
    assert TLSSettings.from_config(cfg_with(ca_only)) is None


def test_loads_files_once(pki: PKI) -> None:
    s = settings(
        pki,
        internal_rpc={"verify_server_hostname": True, "verify_incoming": True},
    )
    assert s.ca_pem == pki.ca.read_bytes()
    assert s.cert_pem == pki.cert.read_bytes()
    assert s.key_pem == pki.key.read_bytes()
    assert s.verify_incoming and s.verify_server_hostname and not s.verify_outgoing
    raft = raft_tls_config(s, "dc1", "consul.")
    assert raft.server_name_override == "server.dc1.consul"
    assert (raft.ca_file, raft.cert_file, raft.key_file) == (
        str(pki.ca),
        str(pki.cert),
        str(pki.key),
    )


def test_internal_rpc_overrides_defaults(pki: PKI, tmp_path: Path) -> None:
    s = TLSSettings.from_config(
        cfg_with(
            {
                "defaults": {"ca_file": str(tmp_path / "nope"), "verify_incoming": False},
                "internal_rpc": {
                    "ca_file": str(pki.ca),
                    "cert_file": str(pki.cert),
                    "key_file": str(pki.key),
                    "verify_incoming": True,
                },
            }
        )
    )
    assert s is not None and s.ca_file == str(pki.ca) and s.verify_incoming


def test_ca_path_directory(pki: PKI, other_pki: PKI, tmp_path: Path) -> None:
    d = tmp_path / "cas"
    d.mkdir()
    (d / "a.pem").write_bytes(pki.ca.read_bytes())
    (d / "b.pem").write_bytes(other_pki.ca.read_bytes())
    (d / "README").write_text("not a certificate\n")
    s = TLSSettings.from_config(
        cfg_with(
            {"defaults": {"ca_path": str(d), "cert_file": str(pki.cert), "key_file": str(pki.key)}}
        )
    )
    assert s is not None
    assert s.ca_pem == pki.ca.read_bytes() + other_pki.ca.read_bytes()
    with pytest.raises(ConfigError, match="set ca_file"):
        raft_tls_config(s, "dc1", "consul")


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"cert_file": "MISSING"}, r"^config file a\.hcl: tls\.defaults\.cert_file: cannot read"),
        (
            {"key_file": "MISSING"},
            r"^tls\.defaults\.key_file: cannot read '.*missing\.pem': No such file",
        ),
        ({"ca_file": "MISSING"}, r"^tls\.defaults\.ca_file: cannot read"),
        ({"ca_file": "EMPTY"}, r"^tls\.defaults\.ca_file: '.*EMPTY' is empty"),
        ({"cert_file": "KEY"}, r"^config file a\.hcl: tls\.defaults\.cert_file: .* no PEM cert"),
        ({"key_file": "CA"}, r"^tls\.defaults\.key_file: .* no PEM private key"),
        ({"key_file": None}, r"^tls\.defaults\.key_file: cert_file and key_file must be set"),
        ({"cert_file": None}, r"^config file a\.hcl: tls\.defaults\.cert_file: cert_file and"),
        ({"ca_file": None}, r"^tls\.defaults\.ca_file: a CA \(ca_file or ca_path\) is required"),
        ({"ca_file": None, "ca_path": "MISSING"}, r"^tls\.defaults\.ca_path: cannot read dir"),
    ],
)
def test_refusals_name_the_key(
    pki: PKI, tmp_path: Path, broken: dict[str, str | None], message: str
) -> None:
    (tmp_path / "EMPTY").write_bytes(b"")
    paths = {
        "MISSING": str(tmp_path / "missing.pem"),
        "EMPTY": str(tmp_path / "EMPTY"),
        "KEY": str(pki.key),
        "CA": str(pki.ca),
    }
    block: dict[str, Any] = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.cert),
        "key_file": str(pki.key),
    }
    for key, value in broken.items():
        if value is None:
            block.pop(key)
        else:
            block[key] = paths[value]
    cfg = cfg_with({"defaults": block}, {"tls.defaults.cert_file": "config file a.hcl"})
    with pytest.raises(ConfigError, match=message):
        TLSSettings.from_config(cfg)


# --------------------------------------------------------------------------- SNI on the wire


async def _sni_seen(pki: PKI, override: str | None) -> str | None:
    """Connect a grpc.aio secure channel to a raw asyncio TLS server (our server cert) with
    ``override``; return the SNI the server's ``sni_callback`` saw (the raw server speaks no
    HTTP/2: the channel never gets READY, the handshake is all we look at)."""
    seen: list[str | None] = []
    got = asyncio.Event()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert, pki.key)
    ctx.set_alpn_protocols(["h2"])

    def on_sni(_obj: Any, name: str | None, _ctx: Any) -> None:
        seen.append(name)
        got.set()

    ctx.sni_callback = on_sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.TimeoutError, OSError):
            await asyncio.wait_for(reader.read(1), 0.5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=channel_options(override))
    try:
        channel.get_state(try_to_connect=True)
        await asyncio.wait_for(got.wait(), BOUND)
    finally:
        await channel.close(None)
        server.close()
        await server.wait_closed()
    return seen[0]


@pytest.mark.parametrize(
    "name", ["s1.server.dc1.consul", "server.dc1.consul", "bogus.server.dc9.consul"]
)
async def test_target_name_override_is_sent_as_sni(pki: PKI, name: str) -> None:
    assert await _sni_seen(pki, name) == name


async def test_ip_target_without_override_sends_no_sni(pki: PKI) -> None:
    assert await _sni_seen(pki, None) is None


# --------------------------------------------------------------------------- mTLS and names

_METHOD = "/proconsul.test.Echo/Echo"


async def _echo_server(s: TLSSettings) -> tuple[Any, int]:
    async def echo(request: bytes, _context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "proconsul.test.Echo",
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(
                        echo, request_deserializer=None, response_serializer=None
                    )
                },
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(s))
    await server.start()
    return server, port


async def _call(port: int, creds: Any, name: str | None) -> bytes:
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=channel_options(name))
    try:
        reply: bytes = await channel.unary_unary(_METHOD)(b"ping", timeout=5)
        return reply
    finally:
        await channel.close(None)


async def test_name_verified_and_client_cert_required(pki: PKI, other_pki: PKI) -> None:
    s = settings(pki)
    server, port = await _echo_server(s)
    try:
        ours = grpc_channel_credentials(s)
        assert await _call(port, ours, "server.dc1.consul") == b"ping"
        assert await _call(port, ours, "s1.server.dc1.consul") == b"ping"
        # The override is also the verified name: one the certificate lacks fails.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(port, ours, "s2.server.dc1.consul")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # No client certificate: refused (mTLS).
        anonymous = grpc.ssl_channel_credentials(root_certificates=s.ca_pem)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(port, anonymous, "server.dc1.consul")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # A client certificate from another CA (same names): refused.
        foreign = grpc.ssl_channel_credentials(
            root_certificates=s.ca_pem,
            private_key=other_pki.key.read_bytes(),
            certificate_chain=other_pki.cert.read_bytes(),
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _call(port, foreign, "server.dc1.consul")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
