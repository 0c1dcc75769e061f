"""A small HTTP client for the agent's ``/v1`` API, configured as Consul's ``api`` package is
(``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_HTTP_SSL``,
``CONSUL_CACERT``, ``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT``, ``CONSUL_CLIENT_KEY``,
``CONSUL_TLS_SERVER_NAME``, ``CONSUL_HTTP_SSL_VERIFY``; flags override the environment).

A non-2xx answer raises ``APIError`` with the ``api`` package's text
(``Unexpected response code: 500 (message)``); a connection failure raises ``APIError`` too.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.client import HTTPResponse
from typing import Any

from server.clicmd.flags import FlagSet

__all__ = ["APIError", "Client", "Response", "client_from_flags", "parse_address"]


class APIError(Exception):
    """A failed request; ``str()`` is one line (the ``api`` package's text)."""

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    @property
    def index(self) -> int:
        try:
            return int(self.headers.get("X-Consul-Index", "0"))
        except ValueError:
            return 0


def parse_address(addr: str, ssl_default: bool = False) -> tuple[str, str]:
    """(scheme, host:port) from ``CONSUL_HTTP_ADDR``-style text: ``host:port``,
    ``http://host:port``, ``https://host:port`` or ``unix:///path``."""
    scheme = "https" if ssl_default else "http"
    text = addr.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https", "unix"):
            raise APIError(f"Unknown protocol scheme: {scheme}")
    text = text.rstrip("/")
    if not text:
        raise APIError(f"invalid HTTP address: {addr!r}")
    return scheme, text


@dataclass
class Client:
    address: str = "127.0.0.1:8500"
    scheme: str = "http"
    token: str = ""
    datacenter: str = ""
    stale: bool = False
    namespace: str = ""
    partition: str = ""
    ca_file: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""
    tls_server_name: str = ""
    verify: bool = True
    _ctx: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.address}"

    def _ssl(self) -> ssl.SSLContext | None:
        if self.scheme != "https":
            return None
        if self._ctx is None:
            ctx = ssl.create_default_context(
                cafile=self.ca_file or None, capath=self.ca_path or None
            )
            if self.client_cert:
                ctx.load_cert_chain(self.client_cert, self.client_key or None)
            if not self.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ctx = ctx
        return self._ctx

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener for this client: TLS with this client's CA and certificate, and
        ``-tls-server-name`` as the SNI and verified name."""
        ctx = self._ssl()
        if ctx is None:
            return urllib.request.build_opener()
        return urllib.request.build_opener(_SNIHandler(ctx, self.tls_server_name))

    def url(self, path: str, params: Mapping[str, Any] | None = None, dc: bool = True) -> str:
        query: list[tuple[str, str]] = []
        if dc and self.datacenter:
            query.append(("dc", self.datacenter))
        if dc and self.stale:
            query.append(("stale", ""))
        if dc and self.namespace:
            query.append(("ns", self.namespace))
        if dc and self.partition:
            query.append(("partition", self.partition))
        for key, value in (params or {}).items():
            if value is None or value is False:
                continue
            if isinstance(value, (list, tuple)):
                query.extend((key, str(v)) for v in value)
            else:
                query.append((key, "" if value is True else str(value)))
        qs = "&".join(
            urllib.parse.quote(k, safe="") + ("=" + urllib.parse.quote(v, safe="") if v else "")
            for k, v in query
        )
        return self.base + path + ("?" + qs if qs else "")

    def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: bytes | None,
        timeout: float | None,
        dc: bool,
    ) -> HTTPResponse:
        headers = {"User-Agent": "proconsul-cli"}
        if self.token:
            headers["X-Consul-Token"] = self.token
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(
            self.url(path, params, dc), data=body, method=method, headers=headers
        )
        try:
            resp: HTTPResponse = self.opener().open(req, timeout=timeout)
        except urllib.error.HTTPError as err:
            # One line, as every CLI error is (multi-errors arrive as several lines).
            raw = err.read().decode("utf-8", "replace")
            text = " ".join(line.strip() for line in raw.splitlines() if line.strip())
            if err.code == 404 and not text:
                raise APIError(f"Unexpected response code: {err.code}", err.code, text) from None
            raise APIError(
                f"Unexpected response code: {err.code} ({text})", err.code, text
            ) from None
        except urllib.error.URLError as err:
            raise APIError(
                f'{method.capitalize()} "{self.url(path, params, dc)}": '
                f"{_dial_error(self.address, err.reason)}"
            ) from None
        except (OSError, ValueError) as err:
            raise APIError(f'{method.capitalize()} "{self.url(path, params, dc)}": {err}') from None
        return resp

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        timeout: float | None = 600,
        dc: bool = True,
        allow: tuple[int, ...] = (),
    ) -> Response:
        try:
            with self._open(method, path, params, body, timeout, dc) as resp:
                return Response(resp.status, dict(resp.headers.items()), resp.read())
        except APIError as err:
            if err.status and err.status in allow:
                return Response(err.status, {}, err.body.encode())
            raise
        except OSError as err:
            raise APIError(f'{method.capitalize()} "{self.url(path, params, dc)}": {err}') from None

    def stream(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        dc: bool = True,
        chunk: int = 65536,
    ) -> Iterator[bytes]:
        """The body piece by piece (monitor, snapshot save)."""
        with self._open(method, path, params, None, None, dc) as resp:
            while True:
                try:
                    piece = resp.read1(chunk)
                except OSError as err:
                    raise APIError(f"error reading response: {err}") from None
                if not piece:
                    return
                yield piece

    def get(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Response:
        return self.request("GET", path, params, **kw)

    def get_json(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        return self.request("GET", path, params, **kw).json()

    def put(
        self,
        path: str,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> Response:
        return self.request("PUT", path, params, body if body is not None else b"", **kw)

    def put_json(
        self, path: str, data: Any, params: Mapping[str, Any] | None = None, **kw: Any
    ) -> Response:
        return self.put(path, json.dumps(data).encode(), params, **kw)

    def delete(self, path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Response:
        return self.request("DELETE", path, params, **kw)


class _SNIConnection(http.client.HTTPSConnection):
    server_name = ""

    def connect(self) -> None:
        if not self.server_name:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        ctx: ssl.SSLContext = self._context  # type: ignore[attr-defined]
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_name)


class _SNIHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(context=context)
        self._sni_context = context
        self._server_name = server_name

    def https_open(self, req: urllib.request.Request) -> HTTPResponse:
        name = self._server_name

        class Conn(_SNIConnection):
            server_name = name

        response: HTTPResponse = self.do_open(Conn, req, context=self._sni_context)
        return response


def _dial_error(address: str, reason: object) -> str:
    """Go's net error text for a failed dial (``dial tcp host:port: connect: connection
    refused``)."""
    if isinstance(reason, ConnectionRefusedError):
        return f"dial tcp {address}: connect: connection refused"
    if isinstance(reason, TimeoutError):
        return f"dial tcp {address}: i/o timeout"
    if isinstance(reason, OSError) and reason.strerror:
        if isinstance(reason, socket.gaierror):
            return f"dial tcp: lookup {address.rsplit(':', 1)[0]}: no such host"
        return f"dial tcp {address}: {reason.strerror.lower()}"
    return f"dial tcp {address}: {reason}"


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    return raw.lower() in ("1", "t", "true", "yes")


def client_from_flags(fs: FlagSet) -> Client:
    """The client the ``HTTPFlags`` describe: flags first, then the environment."""
    addr = fs.values.get("http-addr") or os.environ.get("CONSUL_HTTP_ADDR", "") or "127.0.0.1:8500"
    scheme, address = parse_address(addr, _env_bool("CONSUL_HTTP_SSL", False))
    if scheme == "unix":
        raise APIError("unix socket addresses are not supported by this CLI")
    token = fs.values.get("token") or ""
    token_file = fs.values.get("token-file") or ""
    if not token and token_file:
        token = _read_token(token_file)
    if not token:
        token = os.environ.get("CONSUL_HTTP_TOKEN", "")
    if not token and os.environ.get("CONSUL_HTTP_TOKEN_FILE"):
        token = _read_token(os.environ["CONSUL_HTTP_TOKEN_FILE"])
    return Client(
        address=address,
        scheme=scheme,
        token=token,
        datacenter=fs.values.get("datacenter") or "",
        stale=bool(fs.values.get("stale")),
        namespace=fs.values.get("namespace") or os.environ.get("CONSUL_NAMESPACE", ""),
        partition=fs.values.get("partition") or os.environ.get("CONSUL_PARTITION", ""),
        ca_file=fs.values.get("ca-file") or os.environ.get("CONSUL_CACERT", ""),
        ca_path=fs.values.get("ca-path") or os.environ.get("CONSUL_CAPATH", ""),
        client_cert=fs.values.get("client-cert") or os.environ.get("CONSUL_CLIENT_CERT", ""),
        client_key=fs.values.get("client-key") or os.environ.get("CONSUL_CLIENT_KEY", ""),
        tls_server_name=fs.values.get("tls-server-name")
        or os.environ.get("CONSUL_TLS_SERVER_NAME", ""),
        verify=_env_bool("CONSUL_HTTP_SSL_VERIFY", True),
    )


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise APIError(f"Error loading token file: {exc.strerror or exc}") from None
