"""Config entries, discovery chain, prepared queries and the Connect CA against a real dev
agent over HTTP (one agent for the module)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from cryptography import x509
from helpers.agentproc import Client, Reply


def _post(client: Client, path: str, data: Any) -> Reply:
    return client.request("POST", path, json.dumps(data).encode())


# --- config entries --------------------------------------------------------------------------


def test_config_entry_crud_cas_and_errors(dev_agent: Client) -> None:
    c = dev_agent
    reply = c.put_json(
        "/v1/config", {"kind": "service-defaults", "name": "web", "protocol": "HTTP"}
    )
    assert (reply.status, reply.json()) == (200, True)
    got = c.get("/v1/config/service-defaults/web")
    assert got.status == 200
    entry = got.json()
    assert list(entry) == [
        "Kind",
        "Name",
        "Protocol",
        "TransparentProxy",
        "MeshGateway",
        "Expose",
        "CreateIndex",
        "ModifyIndex",
    ]
    assert entry["Protocol"] == "http"
    assert got.index == entry["ModifyIndex"]
    c.put_json("/v1/config", {"Kind": "service-defaults", "Name": "api"})
    listed = c.get("/v1/config/service-defaults").json()
    assert [e["Name"] for e in listed] == ["api", "web"]
    assert c.get("/v1/config/service-resolver").json() == []

    missing = c.get("/v1/config/service-defaults/nope")
    assert missing.status == 404
    assert missing.body == b'Config entry not found for "service-defaults" / "nope"'

    index = entry["ModifyIndex"]
    stale = c.put_json(
        f"/v1/config?cas={index + 1000}",
        {"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"},
    )
    assert stale.json() is False
    ok = c.put_json(
        f"/v1/config?cas={index}", {"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"}
    )
    assert ok.json() is True
    new_index = c.get("/v1/config/service-defaults/web").json()["ModifyIndex"]
    assert c.delete(f"/v1/config/service-defaults/web?cas={new_index + 1000}").json() is False
    assert c.delete(f"/v1/config/service-defaults/web?cas={new_index}").json() is True
    plain = c.delete("/v1/config/service-defaults/api")
    assert (plain.status, plain.json()) == (200, {})
    assert c.get("/v1/config/service-defaults").json() == []

    bad_kind = c.put_json("/v1/config", {"Kind": "nope", "Name": "x"})
    assert (bad_kind.status, bad_kind.body) == (
        400,
        b"Request decoding failed: invalid config entry kind: nope",
    )
    bad_key = c.put_json("/v1/config", {"Kind": "service-defaults", "Name": "x", "Foo": 1})
    assert bad_key.status == 400
    assert (
        bad_key.body
        == b'Request decoding failed: 1 error occurred:\n\t* invalid config key "Foo"\n\n'
    )
    bad_split = c.put_json(
        "/v1/config",
        {
            "Kind": "service-splitter",
            "Name": "web",
            "Splits": [{"Weight": 60}, {"Weight": 30, "Service": "b"}],
        },
    )
    assert bad_split.status == 500
    assert b"the sum of all split weights must be 100, not 90.000000" in bad_split.body
    tcp_router = c.put_json("/v1/config", {"Kind": "service-router", "Name": "tcpsvc"})
    assert tcp_router.status == 500
    assert b"does not permit advanced routing or splitting behavior" in tcp_router.body


def test_config_list_blocks_until_a_write(dev_agent: Client) -> None:
    c = dev_agent
    first = c.get("/v1/config/proxy-defaults")
    index = first.index
    timer = threading.Timer(
        0.5,
        lambda: c.put_json(
            "/v1/config", {"Kind": "proxy-defaults", "Config": {"protocol": "http"}}
        ),
    )
    timer.start()
    started = time.monotonic()
    reply = c.get(f"/v1/config/proxy-defaults?index={index}&wait=10s", timeout=15)
    timer.join()
    assert 0.3 < time.monotonic() - started < 8
    assert reply.index > index
    assert [e["Name"] for e in reply.json()] == ["global"]
    assert reply.json()[0]["Config"] == {"protocol": "http"}
    assert c.delete("/v1/config/proxy-defaults/global").status == 200


# --- discovery chain -------------------------------------------------------------------------


def test_discovery_chain_default_and_overrides(dev_agent: Client) -> None:
    c = dev_agent
    trust_domain = c.get("/v1/connect/ca/roots").json()["TrustDomain"]
    reply = c.get("/v1/discovery-chain/billing")
    assert reply.status == 200
    chain = reply.json()["Chain"]
    assert chain["ServiceName"] == "billing"
    assert chain["Protocol"] == "tcp"
    assert chain["Default"] is True
    assert chain["StartNode"] == "resolver:billing.default.default.dc1"
    target = chain["Targets"]["billing.default.default.dc1"]
    assert target["SNI"] == f"billing.default.dc1.internal.{trust_domain}"
    assert target["ConnectTimeout"] == "5s"

    over = _post(
        c,
        "/v1/discovery-chain/billing?compile-dc=dc9",
        {"OverrideProtocol": "http", "override_connect_timeout": "9s"},
    )
    assert over.status == 200
    chain = over.json()["Chain"]
    assert (chain["Protocol"], chain["Datacenter"]) == ("http", "dc9")
    assert chain["Targets"]["billing.default.default.dc9"]["ConnectTimeout"] == "9s"
    bad = _post(c, "/v1/discovery-chain/billing", {"OverrideMeshGateway": {"Mode": "sideways"}})
    assert (bad.status, bad.body) == (400, b"Invalid OverrideMeshGateway.Mode parameter")


def test_discovery_chain_with_splitter_and_resolver(dev_agent: Client) -> None:
    c = dev_agent
    assert c.put_json(
        "/v1/config", {"Kind": "service-defaults", "Name": "shop", "Protocol": "http"}
    ).json()
    assert c.put_json(
        "/v1/config",
        {
            "Kind": "service-resolver",
            "Name": "shop",
            "Subsets": {"v1": {"Filter": "Service.Meta.v == 1"}, "v2": {}},
            "DefaultSubset": "v1",
        },
    ).json()
    assert c.put_json(
        "/v1/config",
        {
            "Kind": "service-splitter",
            "Name": "shop",
            "Splits": [
                {"Weight": 75, "ServiceSubset": "v1"},
                {"Weight": 25, "ServiceSubset": "v2"},
            ],
        },
    ).json()
    chain = c.get("/v1/discovery-chain/shop").json()["Chain"]
    assert chain["StartNode"] == "splitter:shop.default.default"
    splits = chain["Nodes"]["splitter:shop.default.default"]["Splits"]
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [
        (75, "resolver:v1.shop.default.default.dc1"),
        (25, "resolver:v2.shop.default.default.dc1"),
    ]
    assert chain["Targets"]["v1.shop.default.default.dc1"]["Subset"] == {
        "Filter": "Service.Meta.v == 1"
    }


# --- prepared queries ------------------------------------------------------------------------


def test_prepared_query_lifecycle_and_execute(dev_agent: Client) -> None:
    c = dev_agent
    assert c.get("/v1/query").json() == []
    for node, status in (("n1", "passing"), ("n2", "critical")):
        reg = c.put_json(
            "/v1/catalog/register",
            {
                "Node": node,
                "Address": "10.0.0.1",
                "Service": {"Service": "redis", "ID": "redis1", "Port": 6379, "Tags": ["primary"]},
                "Check": {"CheckID": "c1", "Name": "c1", "Status": status, "ServiceID": "redis1"},
            },
        )
        assert reg.status == 200, reg.body
    # py-consul's body shape: lower-case keys, a template section always present.
    created = _post(
        c,
        "/v1/query",
        {
            "name": "redisq",
            "service": {"service": "redis", "tags": ["primary"], "failover": {}},
            "dns": {"ttl": "10s"},
        },
    )
    assert created.status == 200, created.body
    qid = created.json()["ID"]
    got = c.get(f"/v1/query/{qid}").json()
    assert len(got) == 1 and got[0]["Name"] == "redisq" and got[0]["ID"] == qid
    assert [q["ID"] for q in c.get("/v1/query").json()] == [qid]

    executed = c.get("/v1/query/redisq/execute")
    assert executed.status == 200
    result = executed.json()
    assert (result["Service"], result["Datacenter"], result["Failovers"]) == ("redis", "dc1", 0)
    assert result["DNS"] == {"TTL": "10s"}
    assert result["Index"] == executed.index and result["KnownLeader"] is True
    assert [n["Node"]["Node"] for n in result["Nodes"]] == ["n1"]

    assert c.get("/v1/query/redisq/execute?limit=1").json()["Nodes"][0]["Node"]["Node"] == "n1"
    bad_limit = c.get("/v1/query/redisq/execute?limit=x")
    assert (bad_limit.status, bad_limit.body) == (
        500,
        b'Bad limit: strconv.Atoi: parsing "x": invalid syntax',
    )
    dup = _post(c, "/v1/query", {"Name": "redisq", "Service": {"Service": "x"}})
    assert (dup.status, dup.body) == (500, b"name 'redisq' aliases an existing query name")
    missing_service = _post(c, "/v1/query", {"Name": "q2"})
    assert (missing_service.status, missing_service.body) == (
        500,
        b"Invalid prepared query: Must provide a Service name to query",
    )

    updated = c.put_json(
        f"/v1/query/{qid}",
        {"Name": "redisq", "Service": {"Service": "redis", "Tags": ["!primary"]}},
    )
    assert updated.status == 200
    assert c.get(f"/v1/query/{qid}/execute").json()["Nodes"] == []
    assert c.get(f"/v1/query/{qid}/explain").json()["Query"]["Service"]["Tags"] == ["!primary"]

    template = _post(
        c,
        "/v1/query",
        {
            "Name": "geo-",
            "Template": {"Type": "name_prefix_match", "Regexp": "^geo-(.*)$"},
            "Service": {"Service": "${match(1)}"},
        },
    )
    assert template.status == 200
    explained = c.get("/v1/query/geo-redis/explain").json()["Query"]
    assert explained["Service"]["Service"] == "redis"
    assert [n["Node"]["Node"] for n in c.get("/v1/query/geo-redis/execute").json()["Nodes"]] == [
        "n1"
    ]

    assert c.delete(f"/v1/query/{qid}").status == 200
    gone = c.get(f"/v1/query/{qid}")
    assert (gone.status, gone.body) == (404, b"Query not found")
    assert c.get("/v1/query/nothing/execute").status == 404
    assert c.delete(f"/v1/query/{qid}").status == 500
    c.delete(f"/v1/query/{template.json()['ID']}")


# --- Connect CA ----------------------------------------------------------------------------


def test_ca_roots_and_configuration(dev_agent: Client) -> None:
    c = dev_agent
    roots = c.get("/v1/connect/ca/roots").json()
    assert roots["TrustDomain"].endswith(".consul")
    assert len(roots["Roots"]) == 1
    root = roots["Roots"][0]
    assert root["ID"] == roots["ActiveRootID"] and root["Active"] is True
    assert "SigningKey" not in root
    cert = x509.load_pem_x509_certificate(root["RootCert"].encode())
    assert cert.serial_number == root["SerialNumber"]
    pem = c.get("/v1/connect/ca/roots?pem=true")
    assert pem.headers["Content-Type"] == "application/pem-certificate-chain"
    assert pem.body.decode().startswith("-----BEGIN CERTIFICATE-----")

    config = c.get("/v1/connect/ca/configuration").json()
    assert config["Provider"] == "consul"
    assert config["Config"]["LeafCertTTL"] == "72h"
    assert config["Config"]["RootCertTTL"] == "87600h"
    assert (
        c.put_json(
            "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {"LeafCertTTL": "24h"}}
        ).status
        == 200
    )
    after = c.get("/v1/connect/ca/configuration").json()
    assert after["Config"]["LeafCertTTL"] == "24h"
    assert after["ModifyIndex"] > config["ModifyIndex"]
    assert c.get("/v1/connect/ca/roots").json()["ActiveRootID"] == roots["ActiveRootID"]
    # A new key type rotates the root; the old one stays, inactive.
    assert (
        c.put_json(
            "/v1/connect/ca/configuration",
            {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}},
        ).status
        == 200
    )
    rotated = c.get("/v1/connect/ca/roots").json()
    assert len(rotated["Roots"]) == 2
    assert rotated["ActiveRootID"] != roots["ActiveRootID"]
    assert [r["Active"] for r in rotated["Roots"]] == [False, True]
    assert rotated["TrustDomain"] == roots["TrustDomain"]
    bad = c.put_json("/v1/connect/ca/configuration", {"Provider": "vault", "Config": {}})
    assert bad.status == 500
