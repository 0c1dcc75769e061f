"""``tls ca create`` and ``tls cert create`` (Consul's ``command/tls``): the built-in helpers
that make an agent CA and the server, client and CLI certificates it signs.

What they produce follows Consul's ``tlsutil`` generator:

- keys: ECDSA P-256, PEM ``EC PRIVATE KEY`` (SEC 1), written with mode 0600;
- serial numbers: random below 2**128; signatures ECDSA with SHA-256 (SHA-256 with RSA when
  the CA key given with ``-key`` is RSA);
- the CA (``<domain>-agent-ca.pem``): subject ``CN=Consul Agent CA <serial>`` (or
  ``-common-name``) with HashiCorp's address, basic constraints CA (critical, no path length),
  key usage certSign + CRLSign + digitalSignature (critical), subject and authority key ids
  (SHA-256 of the public key), optional critical name constraints (``-name-constraint``:
  ``-domain``, ``localhost`` and every ``-additional-name-constraint``) and a SPIFFE signing URI
  (``-cluster-id``); 1825 days;
- certificates (``<dc>-<server|client|cli>-<domain>-<n>.pem`` and ``-<n>-key.pem``, ``n`` the
  first index for which neither file exists): ``CN=<server|client|cli>.<dc>.<domain>``, key
  usage digitalSignature + keyEncipherment (critical), basic constraints not CA (critical),
  extended key usages serverAuth + clientAuth (server and client certificates; none for the
  CLI), SANs as Consul's (server: the ``-additional-dnsname`` names, then
  ``<node>.server.<dc>.<domain>`` with ``-node``, ``server.<dc>.<domain>``, ``localhost``; the
  ``-additional-ipaddress`` addresses, then 127.0.0.1); 365 days. Each certificate is verified
  against the CA for its common name before anything is written, as Consul does.

Files are never overwritten: each is written to a temporary name, synced, then linked into
place, which fails if the name appeared in the meantime.

Where this differs from Consul, on purpose: ``-days`` below 1 is refused (Consul makes a
365-day CA from ``-days=0`` and an already expired certificate), an ``-additional-ipaddress``
that is not an IP address is refused (Consul writes an unusable SAN), and ``-cli`` keeps the
``-additional-dnsname`` names (Consul drops them silently).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import ipaddress
import os
import secrets
import tempfile
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.clicmd.base import Command, Context, Fail, register
from server.clicmd.flags import FlagSet

__all__ = [
    "CAOptions",
    "CertOptions",
    "TLSError",
    "generate_ca",
    "generate_cert",
    "generate_private_key",
    "next_free_names",
    "parse_signer",
    "verify_cert",
    "write_new_file",
]

SERVER_WARNING = """==> WARNING: Server Certificates grants authority to become a
    server and access all state in the cluster including root keys
    and all ACL tokens. Do not distribute them to production hosts
    that are not server nodes. Store them as securely as CA keys."""

#: How many indexes ``tls cert create`` tries before giving up (Consul's bound).
MAX_INDEX = 10000

Signer = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class TLSError(Exception):
    """A refusal with a one-line message (Consul's text where it has one)."""


# ---------------------------------------------------------------------------------------------
# Generation (no I/O)


def generate_serial() -> int:
    """A random serial number in [1, 2**128) (Consul draws below 2**128; zero is not a valid
    serial)."""
    return secrets.randbelow(2**128 - 1) + 1


def generate_private_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A new ECDSA P-256 key and its PEM (``EC PRIVATE KEY``), as Consul generates them."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return key, pem


def key_id(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    """Consul's key identifier: SHA-256 of the PKIX (SubjectPublicKeyInfo) DER encoding."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def parse_signer(pem: str) -> Signer:
    """The signing key in the first PEM block (EC, PKCS#1 RSA or PKCS#8), with Consul's
    error texts."""
    begin = pem.find("-----BEGIN ")
    if begin < 0:
        raise TLSError("no PEM-encoded data found")
    kind = pem[begin + len("-----BEGIN ") :].split("-----", 1)[0]
    end_marker = f"-----END {kind}-----"
    end = pem.find(end_marker, begin)
    if end < 0:
        raise TLSError("no PEM-encoded data found")
    block = pem[begin : end + len(end_marker)].encode()
    if kind not in ("EC PRIVATE KEY", "RSA PRIVATE KEY", "PRIVATE KEY"):
        raise TLSError(f"unknown PEM block type for signing key: {kind}")
    try:
        key = serialization.load_pem_private_key(block, password=None)
    except (ValueError, TypeError) as exc:
        raise TLSError(f"x509: failed to parse private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TLSError("private key is not a valid format")
    return key


def parse_cert(pem: str) -> x509.Certificate:
    """The first PEM block, which must be a certificate."""
    begin = pem.find("-----BEGIN ")
    if begin < 0:
        raise TLSError("no PEM-encoded data found")
    kind = pem[begin + len("-----BEGIN ") :].split("-----", 1)[0]
    if kind != "CERTIFICATE":
        raise TLSError("first PEM-block should be CERTIFICATE type")
    try:
        return x509.load_pem_x509_certificate(pem[begin:].encode())
    except ValueError as exc:
        raise TLSError(f"x509: malformed certificate: {exc}") from None


def _hash_for(key: Signer) -> hashes.SHA256:
    """SHA-256 for every key type (ECDSA with SHA-256 for P-256, SHA-256 with RSA)."""
    return hashes.SHA256()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class CAOptions:
    days: int = 1825
    domain: str = "consul"
    common_name: str = ""
    cluster_id: str = ""
    permitted_dns_domains: list[str] = field(default_factory=list)
    signer: Signer | None = None
    serial: int | None = None


def generate_ca(opts: CAOptions) -> tuple[str, str]:
    """A self-signed agent CA: ``(certificate PEM, key PEM)``; the key PEM is empty when
    ``opts.signer`` was given."""
    key_pem = ""
    signer = opts.signer
    if signer is None:
        signer, key_pem = generate_private_key()
    serial = opts.serial or generate_serial()
    name = opts.common_name or f"Consul Agent CA {serial}"
    kid = key_id(signer.public_key())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "San Francisco"),
            x509.NameAttribute(NameOID.STREET_ADDRESS, "101 Second Street"),
            x509.NameAttribute(NameOID.POSTAL_CODE, "94105"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(signer.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=opts.days))
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
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(kid), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(kid, None, None),
            critical=False,
        )
    )
    if opts.cluster_id:
        uri = f"spiffe://{opts.cluster_id}.{opts.domain}"
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    if opts.permitted_dns_domains:
        builder = builder.add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.DNSName(d) for d in opts.permitted_dns_domains],
                excluded_subtrees=None,
            ),
            critical=True,
        )
    try:
        cert = builder.sign(signer, _hash_for(signer))
    except ValueError as exc:
        raise TLSError(f"error generating CA certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@dataclass
class CertOptions:
    signer: Signer
    ca: str
    name: str
    days: int = 365
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)
    ext_key_usage: list[x509.ObjectIdentifier] = field(default_factory=list)
    serial: int | None = None


def generate_cert(opts: CertOptions) -> tuple[str, str]:
    """A certificate signed by the CA: ``(certificate PEM, new key PEM)``."""
    try:
        parent = parse_cert(opts.ca)
    except TLSError as exc:
        raise TLSError(f"failed to parse CA: {exc}") from None
    if not _same_public_key(parent.public_key(), opts.signer.public_key()):
        raise TLSError(
            "failed to create certificate: x509: provided PrivateKey doesn't match "
            "parent's PublicKey"
        )
    key, key_pem = generate_private_key()
    now = _now()
    try:
        parent_kid = parent.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        authority_kid = parent_kid.value.digest
    except x509.ExtensionNotFound:
        authority_kid = key_id(opts.signer.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, opts.name)]))
        .issuer_name(parent.subject)
        .public_key(key.public_key())
        .serial_number(opts.serial or generate_serial())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=opts.days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(key_id(key.public_key())), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(authority_kid, None, None), critical=False)
    )
    if opts.ext_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(opts.ext_key_usage), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in opts.dns_names]
    sans += [x509.IPAddress(ip) for ip in opts.ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    try:
        cert = builder.sign(opts.signer, _hash_for(opts.signer))
    except ValueError as exc:
        raise TLSError(f"failed to create certificate: {exc}") from None
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def _same_public_key(
    a: object,
    b: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> bool:
    if not isinstance(a, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return False
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return a.public_bytes(der, fmt) == b.public_bytes(der, fmt)


def verify_cert(ca_pem: str, cert_pem: str, dns_name: str) -> None:
    """Consul's ``tlsutil.Verify``: the certificate chains to the CA and is valid for
    ``dns_name`` (RFC 5280 path validation, name constraints included)."""
    from cryptography.x509.verification import (
        PolicyBuilder,
        Store,
        VerificationError,
    )

    try:
        root = parse_cert(ca_pem)
    except TLSError:
        raise TLSError("failed to parse root certificate") from None
    try:
        leaf = parse_cert(cert_pem)
    except TLSError:
        raise TLSError("failed to parse certificate") from None
    _check_name_constraints(root, leaf)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(leaf.not_valid_before_utc)
        .build_server_verifier(x509.DNSName(dns_name))
    )
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise TLSError(f"x509: certificate verification failed: {exc}") from None
    now = datetime.datetime.now(datetime.UTC)
    if not (leaf.not_valid_before_utc <= now + datetime.timedelta(seconds=1)):
        raise TLSError("x509: certificate has expired or is not yet valid")
    if now > leaf.not_valid_after_utc or now > root.not_valid_after_utc:
        raise TLSError("x509: certificate has expired or is not yet valid")


def _dns_permitted(name: str, constraint: str) -> bool:
    """RFC 5280 DNS name constraints as Go matches them: ``example.com`` permits itself and
    its subdomains, ``.example.com`` only its subdomains (case-insensitive)."""
    name = name.lower().rstrip(".")
    constraint = constraint.lower().rstrip(".")
    if not constraint:
        return True
    if constraint.startswith("."):
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)


def _check_name_constraints(root: x509.Certificate, leaf: x509.Certificate) -> None:
    """Refuse, with Go's message, a DNS SAN the CA's permitted subtrees do not cover."""
    try:
        nc = root.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    permitted = [n.value for n in nc.permitted_subtrees or [] if isinstance(n, x509.DNSName)]
    if not permitted:
        return
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    for name in san.get_values_for_type(x509.DNSName):
        if not any(_dns_permitted(name, c) for c in permitted):
            raise TLSError(
                "x509: a root or intermediate certificate is not authorized to sign for this "
                f'name: DNS name "{name}" is not permitted by any constraint'
            )


# ---------------------------------------------------------------------------------------------
# Files


def _exists(path: str) -> bool:
    """Consul's ``!FileDoesNotExist``: anything but "not found" counts as present."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def next_free_names(prefix: str, directory: str = ".") -> tuple[str, str]:
    """``(<prefix>-<n>.pem, <prefix>-<n>-key.pem)`` for the first ``n`` where neither exists."""
    for i in range(MAX_INDEX + 1):
        cert = f"{prefix}-{i}.pem"
        key = f"{prefix}-{i}-key.pem"
        if not _exists(os.path.join(directory, cert)) and not _exists(os.path.join(directory, key)):
            return cert, key
    raise TLSError("Could not find a filename that doesn't already exist")


def _go_error(exc: OSError, op: str, path: str) -> str:
    text = (exc.strerror or str(exc)).lower()
    return f"{op} {path}: {text}"


def write_new_file(path: str, data: str, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` (less the umask for a certificate; exactly
    ``0600`` for a key), atomically, and never over an existing file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode != 0o600:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        else:
            os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise TLSError(f"{path} already exists.") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # A filesystem without hard links: exclusive create, then copy.
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            except FileExistsError:
                raise TLSError(f"{path} already exists.") from None
            with os.fdopen(out, "w") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write(ctx: Context, path: str, data: str, mode: int) -> None:
    try:
        write_new_file(path, data, mode)
    except TLSError as exc:
        raise Fail(str(exc)) from None
    except OSError as exc:
        raise Fail(_go_error(exc, "open", path)) from None
    ctx.out("==> Saved " + path)


def _positive_days(days: int) -> None:
    if days < 1:
        raise Fail(f"-days must be at least 1 (got {days})")


# ---------------------------------------------------------------------------------------------
# Commands


@register
class TLSCACreate(Command):
    name = "tls ca create"
    synopsis = "Create a new consul CA"
    http = ""
    usage = """
Usage: consul tls ca create [options]

  Create a new consul CA:

  $ consul tls ca create
  ==> saved consul-agent-ca.pem
  ==> saved consul-agent-ca-key.pem
"""

    def setup(self, fs: FlagSet) -> None:
        fs.integer(
            "days",
            1825,
            "Number of days the CA is valid for. Defaults to 1825 days (approximately 5 years).",
        )
        fs.boolean(
            "name-constraint",
            False,
            "Enables X.509 name constraints for the CA. If used, the CA only signs "
            "certificates for localhost and the domains specified by -domain and "
            "-additional-name-constraint. If Consul's UI is served over HTTPS in your "
            "deployment, add its DNS name with -additional-constraint. Defaults to false.",
        )
        fs.string(
            "domain",
            "consul",
            "The DNS domain of the Consul cluster that agents are configured with. Defaults "
            "to consul. Only used when -name-constraint is set. Additional domains can be "
            "passed with -additional-name-constraint.",
        )
        fs.string(
            "cluster-id",
            "",
            "ID of the Consul cluster. Sets the CA's URI with the SPIFFEID composed of the "
            "cluster ID and domain (specified by -domain or 'consul' by default).",
        )
        fs.string("common-name", "", "Common Name of CA. Defaults to Consul Agent CA.")
        fs.repeated(
            "additional-name-constraint",
            "Add name constraints for the CA. Results in rejecting certificates for other DNS "
            "than specified. Can be used multiple times. Only used in combination with "
            "-name-constraint.",
        )

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        days: int = ctx["days"]
        _positive_days(days)
        domain: str = ctx["domain"]
        cert_file = f"{domain}-agent-ca.pem"
        key_file = f"{domain}-agent-ca-key.pem"
        for path in (cert_file, key_file):
            if _exists(path):
                raise Fail(f"{path} already exists.")
        constraints: list[str] = []
        if ctx["name-constraint"]:
            constraints = [*ctx["additional-name-constraint"], domain, "localhost"]
        try:
            ca, key = generate_ca(
                CAOptions(
                    days=days,
                    domain=domain,
                    common_name=ctx["common-name"],
                    cluster_id=ctx["cluster-id"],
                    permitted_dns_domains=constraints,
                )
            )
        except TLSError as exc:
            raise Fail(str(exc)) from None
        _write(ctx, cert_file, ca, 0o666)
        _write(ctx, key_file, key, 0o600)
        return 0


@register
class TLSCertCreate(Command):
    name = "tls cert create"
    synopsis = "Create a new certificate"
    http = ""
    usage = """
Usage: consul tls cert create [options]

  Create a new certificate

  $ consul tls cert create -server
  ==> WARNING: Server Certificates grants authority to become a
      server and access all state in the cluster including root keys
      and all ACL tokens. Do not distribute them to production hosts
      that are not server nodes. Store them as securely as CA keys.
  ==> Using consul-agent-ca.pem and consul-agent-ca-key.pem
  ==> Saved dc1-server-consul-0.pem
  ==> Saved dc1-server-consul-0-key.pem
  $ consul tls cert create -client
  ==> Using consul-agent-ca.pem and consul-agent-ca-key.pem
  ==> Saved dc1-client-consul-0.pem
  ==> Saved dc1-client-consul-0-key.pem
"""

    def setup(self, fs: FlagSet) -> None:
        fs.string(
            "ca",
            "#DOMAIN#-agent-ca.pem",
            "Provide path to the ca. Defaults to #DOMAIN#-agent-ca.pem.",
        )
        fs.string(
            "key",
            "#DOMAIN#-agent-ca-key.pem",
            "Provide path to the key. Defaults to #DOMAIN#-agent-ca-key.pem.",
        )
        fs.boolean("server", False, "Generate server certificate.")
        fs.boolean("client", False, "Generate client certificate.")
        fs.string(
            "node",
            "",
            "When generating a server cert and this is set an additional dns name is included "
            "of the form <node>.server.<datacenter>.<domain>.",
        )
        fs.boolean("cli", False, "Generate cli certificate.")
        fs.integer(
            "days",
            365,
            "Provide number of days the certificate is valid for from now on. Defaults to 1 year.",
        )
        fs.string(
            "dc",
            "dc1",
            "Provide the datacenter. Matters only for -server certificates. Defaults to dc1.",
        )
        fs.string(
            "domain",
            "consul",
            "Provide the domain. Matters only for -server certificates.",
        )
        fs.repeated(
            "additional-dnsname",
            "Provide an additional dnsname for Subject Alternative Names. localhost is always "
            "included. This flag may be provided multiple times.",
        )
        fs.repeated(
            "additional-ipaddress",
            "Provide an additional ipaddress for Subject Alternative Names. 127.0.0.1 is "
            "always included. This flag may be provided multiple times.",
        )

    def run(self, ctx: Context) -> int:
        if ctx.args:
            raise Fail(f"Too many arguments (expected 0, got {len(ctx.args)})")
        ca_flag: str = ctx["ca"]
        key_flag: str = ctx["key"]
        if not ca_flag:
            raise Fail("Please provide the ca")
        if not key_flag:
            raise Fail("Please provide the key")
        kinds = [k for k in ("server", "client", "cli") if ctx[k]]
        if len(kinds) != 1:
            raise Fail("Please provide either -server, -client, or -cli")
        kind = kinds[0]
        node: str = ctx["node"]
        if node and kind != "server":
            raise Fail("-node requires -server")
        days: int = ctx["days"]
        _positive_days(days)
        dc: str = ctx["dc"]
        domain: str = ctx["domain"]

        dns_names = [d.strip() for d in ctx["additional-dnsname"] if d]
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for raw in ctx["additional-ipaddress"]:
            if not raw:
                continue
            try:
                ips.append(ipaddress.ip_address(raw.strip()))
            except ValueError:
                raise Fail(f'invalid IP address for -additional-ipaddress: "{raw}"') from None
        name = f"{kind}.{dc}.{domain}"
        eku: list[x509.ObjectIdentifier] = []
        loopback = ipaddress.ip_address("127.0.0.1")
        if kind == "server":
            if node:
                dns_names.append(f"{node}.server.{dc}.{domain}")
            dns_names += [name, "localhost"]
            ips.append(loopback)
            eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        elif kind == "client":
            dns_names += [name, "localhost"]
            ips.append(loopback)
            eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        else:
            dns_names += [name, "localhost"]
        prefix = f"{dc}-{kind}-{domain}"
        try:
            cert_file, key_file = next_free_names(prefix)
        except TLSError as exc:
            raise Fail(str(exc)) from None

        ca_file = ca_flag.replace("#DOMAIN#", domain, 1)
        ca_key_file = key_flag.replace("#DOMAIN#", domain, 1)
        try:
            with open(ca_file, encoding="utf-8", errors="replace") as fh:
                ca_pem = fh.read()
        except OSError as exc:
            raise Fail(f"Error reading CA: {_go_error(exc, 'open', ca_file)}") from None
        try:
            with open(ca_key_file, encoding="utf-8", errors="replace") as fh:
                key_pem = fh.read()
        except OSError as exc:
            raise Fail(f"Error reading CA key: {_go_error(exc, 'open', ca_key_file)}") from None

        if kind == "server":
            ctx.out(SERVER_WARNING)
        ctx.out(f"==> Using {ca_file} and {ca_key_file}")
        try:
            signer = parse_signer(key_pem)
            pub, priv = generate_cert(
                CertOptions(
                    signer=signer,
                    ca=ca_pem,
                    name=name,
                    days=days,
                    dns_names=dns_names,
                    ip_addresses=ips,
                    ext_key_usage=eku,
                )
            )
            verify_cert(ca_pem, pub, name)
        except TLSError as exc:
            raise Fail(str(exc)) from None
        _write(ctx, cert_file, pub, 0o666)
        _write(ctx, key_file, priv, 0o600)
        return 0
