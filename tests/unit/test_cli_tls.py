"""``tls ca create`` and ``tls cert create`` in a temporary directory (no sockets): the files
they write, what the certificates contain, their messages and their refusals."""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.clicmd import dispatch
from server.clicmd.base import COMMANDS, run_command
from server.clicmd.tls import (
    SERVER_WARNING,
    TLSError,
    next_free_names,
    parse_signer,
    write_new_file,
)

DAY = datetime.timedelta(days=1)


def run(*argv: str) -> tuple[int, str, str]:
    words = list(argv)
    name = " ".join(words[:3])
    out, err = io.StringIO(), io.StringIO()
    code = run_command(COMMANDS[name](), words[3:], out, err)
    return code, out.getvalue(), err.getvalue()


def ok(*argv: str) -> str:
    code, out, err = run(*argv)
    assert code == 0, (out, err)
    assert err == ""
    return out


def fail(*argv: str) -> str:
    code, out, err = run(*argv)
    assert code == 1, (out, err)
    assert err.count("\n") == 1, err
    return err.strip()


def load(path: str | Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def spki_sha256(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    san = ext(cert, x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
    )


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def ca(cwd: Path) -> Path:
    ok("tls", "ca", "create")
    return cwd


# --- tls ca create ----------------------------------------------------------------------------


def test_ca_create_writes_two_files_with_consuls_messages(cwd: Path) -> None:
    out = ok("tls", "ca", "create")
    assert out == "==> Saved consul-agent-ca.pem\n==> Saved consul-agent-ca-key.pem\n"
    assert sorted(p.name for p in cwd.iterdir()) == [
        "consul-agent-ca-key.pem",
        "consul-agent-ca.pem",
    ]
    assert stat.S_IMODE(os.stat("consul-agent-ca-key.pem").st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat("consul-agent-ca.pem").st_mode) == 0o666 & ~umask


def test_ca_is_p256_self_signed_and_constrained_as_consuls(ca: Path) -> None:
    cert = load("consul-agent-ca.pem")
    key_pem = Path("consul-agent-ca-key.pem").read_text()
    assert key_pem.startswith("-----BEGIN EC PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()
    assert cert.subject == cert.issuer
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == f"Consul Agent CA {cert.serial_number}"
    assert 0 < cert.serial_number < 2**128
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs[NameOID.ORGANIZATION_NAME] == "HashiCorp Inc."
    assert attrs[NameOID.COUNTRY_NAME] == "US"

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length is None
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not ku.value.key_encipherment
    kid = spki_sha256(pub)
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest == kid
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == kid
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.NameConstraints)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == 1825 * DAY
    now = datetime.datetime.now(datetime.UTC)
    assert abs(cert.not_valid_before_utc - now) < datetime.timedelta(seconds=60)


def test_ca_create_refuses_to_overwrite_either_file(cwd: Path) -> None:
    Path("consul-agent-ca.pem").write_text("mine")
    assert fail("tls", "ca", "create") == "consul-agent-ca.pem already exists."
    assert Path("consul-agent-ca.pem").read_text() == "mine"
    assert not Path("consul-agent-ca-key.pem").exists()
    os.unlink("consul-agent-ca.pem")
    Path("consul-agent-ca-key.pem").write_text("mine")
    assert fail("tls", "ca", "create") == "consul-agent-ca-key.pem already exists."
    assert not Path("consul-agent-ca.pem").exists()


def test_ca_create_options(cwd: Path) -> None:
    out = ok(
        "tls",
        "ca",
        "create",
        "-domain",
        "example",
        "-days=10",
        "-name-constraint",
        "-additional-name-constraint",
        "ui.example.com",
        "-common-name",
        "My CA",
        "-cluster-id",
        "11111111-2222",
    )
    assert out == "==> Saved example-agent-ca.pem\n==> Saved example-agent-ca-key.pem\n"
    cert = load("example-agent-ca.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "My CA"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == 10 * DAY
    nc = ext(cert, x509.NameConstraints)
    assert nc.critical
    assert [n.value for n in nc.value.permitted_subtrees or []] == [
        "ui.example.com",
        "example",
        "localhost",
    ]
    uris = ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://11111111-2222.example"]


def test_ca_create_refusals(cwd: Path) -> None:
    assert fail("tls", "ca", "create", "-days=0") == "-days must be at least 1 (got 0)"
    assert fail("tls", "ca", "create", "-bogus") == "flag provided but not defined: -bogus"
    assert fail("tls", "ca", "create", "extra") == "Too many arguments (expected 0, got 1)"
    assert list(cwd.iterdir()) == []


# --- tls cert create --------------------------------------------------------------------------


def test_server_cert_as_consuls(ca: Path) -> None:
    out = ok("tls", "cert", "create", "-server")
    assert out == (
        SERVER_WARNING + "\n"
        "==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
        "==> Saved dc1-server-consul-0.pem\n"
        "==> Saved dc1-server-consul-0-key.pem\n"
    )
    root = load("consul-agent-ca.pem")
    cert = load("dc1-server-consul-0.pem")
    key = serialization.load_pem_private_key(Path("dc1-server-consul-0-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert Path("dc1-server-consul-0-key.pem").read_text().startswith("-----BEGIN EC PRIVATE KEY")
    assert stat.S_IMODE(os.stat("dc1-server-consul-0-key.pem").st_mode) == 0o600
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()

    assert cert.subject.rfc4514_string() == "CN=server.dc1.consul"
    assert cert.issuer == root.subject
    cert.verify_directly_issued_by(root)
    assert sans(cert) == (["server.dc1.consul", "localhost"], ["127.0.0.1"])
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest == spki_sha256(pub)
    assert (
        ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
        == ext(root, x509.SubjectKeyIdentifier).value.digest
    )
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == 365 * DAY
    assert cert.serial_number != root.serial_number


def test_server_cert_node_and_additional_names(ca: Path) -> None:
    ok(
        "tls",
        "cert",
        "create",
        "-server",
        "-dc=dc2",
        "-domain=consul",
        "-node",
        "pri",
        "-additional-dnsname",
        "*.server.dc2.consul",
        "-additional-dnsname= extra.example ",
        "-additional-ipaddress",
        "198.18.0.5",
        "-additional-ipaddress=::1",
        "-days",
        "30",
    )
    cert = load("dc2-server-consul-0.pem")
    assert cert.subject.rfc4514_string() == "CN=server.dc2.consul"
    assert sans(cert) == (
        [
            "*.server.dc2.consul",
            "extra.example",
            "pri.server.dc2.consul",
            "server.dc2.consul",
            "localhost",
        ],
        ["198.18.0.5", "::1", "127.0.0.1"],
    )
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == 30 * DAY


def test_client_and_cli_certs(ca: Path) -> None:
    out = ok("tls", "cert", "create", "-client")
    assert out == (
        "==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
        "==> Saved dc1-client-consul-0.pem\n"
        "==> Saved dc1-client-consul-0-key.pem\n"
    )
    client = load("dc1-client-consul-0.pem")
    assert client.subject.rfc4514_string() == "CN=client.dc1.consul"
    assert sans(client) == (["client.dc1.consul", "localhost"], ["127.0.0.1"])
    assert list(ext(client, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    ]
    ok("tls", "cert", "create", "-cli", "-dc", "east")
    cli = load("east-cli-consul-0.pem")
    assert cli.subject.rfc4514_string() == "CN=cli.east.consul"
    assert sans(cli) == (["cli.east.consul", "localhost"], [])
    with pytest.raises(x509.ExtensionNotFound):
        ext(cli, x509.ExtendedKeyUsage)


def test_cert_names_take_the_next_free_index(ca: Path) -> None:
    ok("tls", "cert", "create", "-client")
    ok("tls", "cert", "create", "-client")
    Path("dc1-client-consul-2-key.pem").write_text("a key of someone else")
    Path("dc1-client-consul-3.pem").write_text("a cert of someone else")
    out = ok("tls", "cert", "create", "-client")
    assert out.endswith(
        "==> Saved dc1-client-consul-4.pem\n==> Saved dc1-client-consul-4-key.pem\n"
    )
    assert Path("dc1-client-consul-2-key.pem").read_text() == "a key of someone else"
    assert next_free_names("dc1-client-consul") == (
        "dc1-client-consul-5.pem",
        "dc1-client-consul-5-key.pem",
    )
    assert next_free_names("dc1-server-consul") == (
        "dc1-server-consul-0.pem",
        "dc1-server-consul-0-key.pem",
    )


def test_cert_with_ca_and_key_elsewhere_and_domain_placeholder(cwd: Path) -> None:
    ok("tls", "ca", "create", "-domain", "corp")
    os.mkdir("pki")
    os.rename("corp-agent-ca.pem", "pki/ca.pem")
    os.rename("corp-agent-ca-key.pem", "pki/ca-key.pem")
    assert (
        fail("tls", "cert", "create", "-server", "-domain", "corp")
        == "Error reading CA: open corp-agent-ca.pem: no such file or directory"
    )
    out = ok(
        "tls", "cert", "create", "-server", "-domain=corp", "-ca=pki/ca.pem", "-key=pki/ca-key.pem"
    )
    assert "==> Using pki/ca.pem and pki/ca-key.pem\n" in out
    cert = load("dc1-server-corp-0.pem")
    assert sans(cert)[0] == ["server.dc1.corp", "localhost"]
    cert.verify_directly_issued_by(load("pki/ca.pem"))


def test_cert_create_refusals_write_nothing(ca: Path) -> None:
    before = sorted(p.name for p in ca.iterdir())
    assert fail("tls", "cert", "create") == "Please provide either -server, -client, or -cli"
    assert (
        fail("tls", "cert", "create", "-server", "-client")
        == "Please provide either -server, -client, or -cli"
    )
    assert fail("tls", "cert", "create", "-client", "-node=a") == "-node requires -server"
    assert fail("tls", "cert", "create", "-server", "-ca=") == "Please provide the ca"
    assert fail("tls", "cert", "create", "-server", "-key=") == "Please provide the key"
    assert (
        fail("tls", "cert", "create", "-server", "-days=-1") == "-days must be at least 1 (got -1)"
    )
    assert (
        fail("tls", "cert", "create", "-client", "-key", "nope.pem")
        == "Error reading CA key: open nope.pem: no such file or directory"
    )
    assert (
        fail("tls", "cert", "create", "-client", "-additional-ipaddress", "1.2.3")
        == 'invalid IP address for -additional-ipaddress: "1.2.3"'
    )
    # The CA certificate given as the key.
    assert (
        fail("tls", "cert", "create", "-client", "-key", "consul-agent-ca.pem")
        == "unknown PEM block type for signing key: CERTIFICATE"
    )
    Path("junk.pem").write_text("not pem at all")
    assert (
        fail("tls", "cert", "create", "-client", "-key", "junk.pem") == "no PEM-encoded data found"
    )
    assert (
        fail("tls", "cert", "create", "-client", "-ca", "junk.pem")
        == "failed to parse CA: no PEM-encoded data found"
    )
    # A key that is not the CA's.
    key = ec.generate_private_key(ec.SECP256R1())
    Path("other-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    assert fail("tls", "cert", "create", "-client", "-key", "other-key.pem") == (
        "failed to create certificate: x509: provided PrivateKey doesn't match parent's PublicKey"
    )
    after = sorted(p.name for p in ca.iterdir())
    assert after == sorted([*before, "junk.pem", "other-key.pem"])


def test_name_constrained_ca_refuses_foreign_names(cwd: Path) -> None:
    ok("tls", "ca", "create", "-name-constraint", "-additional-name-constraint=example.com")
    ok("tls", "cert", "create", "-server", "-additional-dnsname", "a.example.com")
    err = fail("tls", "cert", "create", "-server", "-additional-dnsname", "evil.org")
    assert err == (
        "x509: a root or intermediate certificate is not authorized to sign for this name: "
        'DNS name "evil.org" is not permitted by any constraint'
    )
    assert not Path("dc1-server-consul-1.pem").exists()
    assert not Path("dc1-server-consul-1-key.pem").exists()


def test_rsa_and_pkcs8_ca_keys_are_accepted(cwd: Path) -> None:
    from server.clicmd.tls import CAOptions, generate_ca

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_pem, _ = generate_ca(CAOptions(signer=rsa_key, serial=7))
    Path("consul-agent-ca.pem").write_text(ca_pem)
    Path("consul-agent-ca-key.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ok("tls", "cert", "create", "-server")
    cert = load("dc1-server-consul-0.pem")
    cert.verify_directly_issued_by(load("consul-agent-ca.pem"))
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_parse_signer_errors() -> None:
    with pytest.raises(TLSError, match=r"^no PEM-encoded data found$"):
        parse_signer("")
    with pytest.raises(TLSError, match="unknown PEM block type for signing key: PUBLIC KEY"):
        parse_signer("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(TLSError, match="failed to parse private key"):
        parse_signer("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")


def test_write_new_file_never_overwrites(cwd: Path) -> None:
    write_new_file("a.pem", "one", 0o600)
    with pytest.raises(TLSError, match=r"^a\.pem already exists\.$"):
        write_new_file("a.pem", "two", 0o600)
    assert Path("a.pem").read_text() == "one"
    assert [p.name for p in cwd.iterdir()] == ["a.pem"]  # no temporary file left behind


def test_groups_and_help(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert dispatch(["tls"], out, err) == 1
    assert "Builtin helpers for creating CAs and certificates." in err.getvalue()
    assert "    ca      Helpers for CAs\n" in err.getvalue()
    assert "    cert    Helpers for certificates\n" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert dispatch(["tls", "cert", "-h"], out, err) == 0
    assert "create    Create a new certificate" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert dispatch(["tls", "cert", "create", "-h"], out, err) == 0
    text = out.getvalue()
    assert text.startswith("Usage: proconsul tls cert create [options]")
    for flag in (
        "-additional-dnsname=<value>",
        "-additional-ipaddress=<value>",
        "-ca=<value>",
        "-cli\n",
        "-client\n",
        "-days=<int>",
        "-dc=<value>",
        "-domain=<value>",
        "-key=<value>",
        "-node=<value>",
        "-server\n",
    ):
        assert f"  {flag}" in text, flag
    assert "-http-addr" not in text
    out, err = io.StringIO(), io.StringIO()
    assert dispatch(["tls", "ca", "create"], out, err) == 0
    assert out.getvalue().startswith("==> Saved consul-agent-ca.pem\n")


def test_dns_name_constraint_matching() -> None:
    from server.clicmd.tls import _dns_permitted

    assert _dns_permitted("consul", "consul")
    assert _dns_permitted("server.dc1.consul", "consul")
    assert _dns_permitted("*.server.dc1.CONSUL", "consul")
    assert not _dns_permitted("notconsul", "consul")
    assert not _dns_permitted("consul.evil", "consul")
    assert _dns_permitted("a.example.com", ".example.com")
    assert not _dns_permitted("example.com", ".example.com")
