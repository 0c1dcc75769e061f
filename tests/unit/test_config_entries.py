"""Config entries (decoding, Consul's validation, the table and the CONFIG_ENTRY command), the
discovery chain compiler, and the Connect CA table and commands. Pure: no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509

# server.endpoints imported first hits an import cycle through server.agent (not ours); the
# agent package imported first resolves it.
from server.endpoints.config_entry import (
    api_view,
    decode_config_entry,
    normalize_config_entry,
)
from server.endpoints.connect import DEFAULT_CA_CONFIG, generate_root
from server.endpoints.discovery_chain import ChainError, compile_chain
from server.fsm import ConsulFSM, MessageType, encode_command
from server.state import StateStore, WatchSet
from server.state.connect_ca import api_root

CLUSTER = "11111111-2222-3333-4444-555555555555"
TD = f"{CLUSTER}.consul"


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    return normalize_config_entry(decode_config_entry(raw))


def _apply(fsm: ConsulFSM, index: int, op: str, raw: dict[str, Any], cas: int = 0) -> Any:
    entry = _entry(raw) if op.startswith("upsert") else dict(raw)
    if cas:
        entry["ModifyIndex"] = cas
    body = {"Op": op, "Entry": entry}
    return fsm.apply(index, encode_command(MessageType.CONFIG_ENTRY, body))


# --- decoding ------------------------------------------------------------------------------


def test_decode_folds_case_and_snake_case_and_fills_go_zero_values() -> None:
    entry = _entry(
        {
            "kind": "service-defaults",
            "name": "web",
            "PROTOCOL": "HTTP",
            "mesh_gateway": {"mode": "local"},
            "transparent_proxy": {"dialed_directly": True},
        }
    )
    assert entry == {
        "Kind": "service-defaults",
        "Name": "web",
        "Protocol": "http",
        "TransparentProxy": {"DialedDirectly": True},
        "MeshGateway": {"Mode": "local"},
        "Expose": {},
    }
    bare = _entry({"Kind": "service-defaults", "Name": "api"})
    assert bare == {
        "Kind": "service-defaults",
        "Name": "api",
        "Protocol": "",
        "TransparentProxy": {},
        "MeshGateway": {},
        "Expose": {},
    }


def test_decode_errors_have_consuls_text() -> None:
    with pytest.raises(ValueError, match=r"^Payload does not contain a kind/Kind key"):
        decode_config_entry({"Name": "x"})
    with pytest.raises(ValueError, match=r"^invalid config entry kind: nope$"):
        decode_config_entry({"Kind": "nope", "Name": "x"})
    with pytest.raises(ValueError) as err:
        decode_config_entry({"Kind": "service-defaults", "Name": "x", "Bogus": 1})
    assert str(err.value) == '1 error occurred:\n\t* invalid config key "Bogus"\n\n'
    with pytest.raises(ValueError, match="namespaces are a consul enterprise feature"):
        decode_config_entry({"Kind": "service-defaults", "Name": "x", "Namespace": "team"})
    # CE accepts the default namespace/partition and drops them.
    assert "Namespace" not in decode_config_entry(
        {"Kind": "service-defaults", "Name": "x", "Namespace": "default"}
    )


def test_durations_are_go_duration_strings() -> None:
    entry = _entry(
        {"Kind": "service-resolver", "Name": "db", "connect_timeout": "90s", "RequestTimeout": 2e9}
    )
    assert entry["ConnectTimeout"] == "1m30s"
    assert entry["RequestTimeout"] == "2s"
    with pytest.raises(ValueError, match="time: invalid duration"):
        decode_config_entry({"Kind": "service-resolver", "Name": "db", "ConnectTimeout": "x"})


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"Kind": "service-defaults"}, "Name is required"),
        ({"Kind": "service-defaults", "Name": "*"}, "not a wildcard"),
        ({"Kind": "proxy-defaults", "Name": "other"}, 'only "global" is supported'),
        ({"Kind": "mesh", "Name": "other"}, 'only "mesh" is supported'),
        ({"Kind": "service-splitter", "Name": "web"}, "no splits configured"),
        (
            {
                "Kind": "service-splitter",
                "Name": "web",
                "Splits": [{"Weight": 50}, {"Weight": 40, "Service": "b"}],
            },
            "the sum of all split weights must be 100, not 90.000000",
        ),
        (
            {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 50}, {"Weight": 50}]},
            "split destination occurs more than once",
        ),
        (
            {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v9"},
            'DefaultSubset "v9" is not a valid subset',
        ),
        (
            {
                "Kind": "service-resolver",
                "Name": "db",
                "Redirect": {"Service": "x"},
                "Failover": {"*": {"Datacenters": ["dc2"]}},
            },
            "Redirect and Failover cannot both be set",
        ),
        (
            {"Kind": "service-resolver", "Name": "db", "Failover": {"v1": {"Service": "x"}}},
            'Bad Failover["v1"]: not a valid subset subset',
        ),
        (
            {
                "Kind": "service-router",
                "Name": "web",
                "Routes": [{"Match": {"HTTP": {"PathPrefix": "api"}}}],
            },
            "Route[0] PathPrefix doesn't start with '/': \"api\"",
        ),
        (
            {
                "Kind": "service-router",
                "Name": "web",
                "Routes": [{"Match": {"HTTP": {"Methods": ["get", "GET"]}}}],
            },
            'Route[0] Methods contains "GET" more than once',
        ),
    ],
)
def test_validation_messages(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        _entry(raw)
    assert message in str(err.value)


def test_singletons_get_their_name_and_splits_keep_go_weights() -> None:
    assert _entry({"Kind": "proxy-defaults"})["Name"] == "global"
    assert _entry({"Kind": "mesh", "Name": "mesh"})["Name"] == "mesh"
    entry = _entry(
        {
            "Kind": "service-splitter",
            "Name": "web",
            "Splits": [
                {"Weight": 33.33},
                {"Weight": 33.33, "Service": "b"},
                {"Weight": 33.34, "Service": "c"},
            ],
        }
    )
    assert [s["Weight"] for s in entry["Splits"]] == [33.33, 33.33, 33.34]


# --- table and command -----------------------------------------------------------------------


def test_upsert_get_list_delete_with_indexes_and_watches() -> None:
    fsm = ConsulFSM(StateStore())
    store = fsm.store
    ws = WatchSet()
    assert store.config_entries.get(ws, "service-defaults", "web") == (1, None)
    assert _apply(fsm, 5, "upsert", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    assert ws.fired
    _apply(fsm, 6, "upsert", {"Kind": "service-defaults", "Name": "api"})
    _apply(fsm, 7, "upsert", {"Kind": "proxy-defaults", "Name": "global"})
    index, rows = store.config_entries.list_kind(None, "service-defaults")
    assert index == 7
    assert [r["Name"] for r in rows] == ["api", "web"]
    # An update keeps CreateIndex.
    _apply(fsm, 8, "upsert", {"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"})
    _, row = store.config_entries.get(None, "service-defaults", "web")
    assert row is not None
    assert (row["Protocol"], row["CreateIndex"], row["ModifyIndex"]) == ("grpc", 5, 8)
    # The API view is in Go's field order.
    assert list(api_view(row)) == [
        "Kind",
        "Name",
        "Protocol",
        "TransparentProxy",
        "MeshGateway",
        "Expose",
        "CreateIndex",
        "ModifyIndex",
    ]
    assert _apply(fsm, 9, "delete", {"Kind": "service-defaults", "Name": "web"}) is True
    assert store.config_entries.get(None, "service-defaults", "web") == (9, None)
    store.check_invariants()


def test_cas_upsert_and_delete() -> None:
    fsm = ConsulFSM(StateStore())
    raw = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
    assert _apply(fsm, 5, "upsert-cas", raw) is True  # cas 0: only if absent
    assert _apply(fsm, 6, "upsert-cas", raw) is False
    assert _apply(fsm, 7, "upsert-cas", {**raw, "Protocol": "grpc"}, cas=99) is False
    assert _apply(fsm, 8, "upsert-cas", {**raw, "Protocol": "grpc"}, cas=5) is True
    key = {"Kind": "service-defaults", "Name": "web"}
    assert _apply(fsm, 9, "delete-cas", key, cas=5) is False
    assert _apply(fsm, 10, "delete-cas", key, cas=8) is True
    assert fsm.store.config_entries.get(None, "service-defaults", "web")[1] is None


def test_router_needs_an_l7_protocol_and_a_failed_write_leaves_nothing() -> None:
    fsm = ConsulFSM(StateStore())
    router = {"Kind": "service-router", "Name": "web", "Routes": []}
    with pytest.raises(ValueError, match='uses a protocol "tcp" that does not permit'):
        _apply(fsm, 5, "upsert", router)
    assert fsm.store.config_entries.get(None, "service-router", "web")[1] is None
    assert fsm.store.max_index("config-entries") == 0
    _apply(fsm, 6, "upsert", {"Kind": "proxy-defaults", "Config": {"protocol": "http"}})
    assert _apply(fsm, 7, "upsert", router) is True
    # Taking the protocol away from under the router is refused too.
    with pytest.raises(ValueError, match="does not permit advanced routing"):
        _apply(fsm, 8, "upsert", {"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"})


def test_snapshot_round_trip() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(fsm, 5, "upsert", {"Kind": "service-defaults", "Name": "web", "Meta": {"a": "b"}})
    restored = StateStore.restore(fsm.store.snapshot())
    assert restored.config_entries.get(None, "service-defaults", "web") == (
        fsm.store.config_entries.get(None, "service-defaults", "web")
    )
    restored.check_invariants()


# --- discovery chain -----------------------------------------------------------------------


def test_default_chain_shape() -> None:
    store = StateStore()
    chain = compile_chain(store.config_entries, "web", "dc1", TD)
    assert chain == {
        "ServiceName": "web",
        "Namespace": "default",
        "Partition": "default",
        "Datacenter": "dc1",
        "Default": True,
        "Protocol": "tcp",
        "StartNode": "resolver:web.default.default.dc1",
        "Nodes": {
            "resolver:web.default.default.dc1": {
                "Type": "resolver",
                "Name": "web.default.default.dc1",
                "Resolver": {
                    "Default": True,
                    "ConnectTimeout": "5s",
                    "Target": "web.default.default.dc1",
                },
            }
        },
        "Targets": {
            "web.default.default.dc1": {
                "ID": "web.default.default.dc1",
                "Service": "web",
                "Namespace": "default",
                "Partition": "default",
                "Datacenter": "dc1",
                "MeshGateway": {},
                "Subset": {},
                "TransparentProxy": {},
                "ConnectTimeout": "5s",
                "SNI": f"web.default.dc1.internal.{TD}",
                "Name": f"web.default.dc1.internal.{TD}",
            }
        },
    }


def test_overrides_set_protocol_timeout_and_customization_hash() -> None:
    store = StateStore()
    chain = compile_chain(
        store.config_entries,
        "web",
        "dc1",
        TD,
        override_protocol="http",
        override_connect_timeout_ns=7_000_000_000,
        override_mesh_gateway_mode="local",
    )
    assert chain["Protocol"] == "http"
    assert chain["CustomizationHash"]
    target = chain["Targets"]["web.default.default.dc1"]
    assert target["ConnectTimeout"] == "7s"
    assert target["MeshGateway"] == {"Mode": "local"}


def test_router_splitter_resolver_redirect_and_failover() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(fsm, 2, "upsert", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    _apply(fsm, 3, "upsert", {"Kind": "service-defaults", "Name": "web-v2", "Protocol": "http"})
    _apply(
        fsm,
        4,
        "upsert",
        {
            "Kind": "service-resolver",
            "Name": "web",
            "DefaultSubset": "v1",
            "Subsets": {
                "v1": {"Filter": "Service.Meta.version == v1"},
                "v2": {"OnlyPassing": True},
            },
            "Failover": {"*": {"Datacenters": ["dc2"]}},
            "ConnectTimeout": "3s",
        },
    )
    _apply(
        fsm,
        5,
        "upsert",
        {
            "Kind": "service-splitter",
            "Name": "web",
            "Splits": [{"Weight": 80}, {"Weight": 20, "Service": "web-v2"}],
        },
    )
    _apply(
        fsm,
        6,
        "upsert",
        {
            "Kind": "service-splitter",
            "Name": "web-v2",
            "Splits": [
                {"Weight": 50, "Service": "web", "ServiceSubset": "v2"},
                {"Weight": 50, "Service": "legacy"},
            ],
        },
    )
    _apply(
        fsm,
        7,
        "upsert",
        {
            "Kind": "service-resolver",
            "Name": "legacy",
            "Redirect": {"Service": "old", "Datacenter": "dc3"},
        },
    )
    _apply(
        fsm,
        8,
        "upsert",
        {
            "Kind": "service-router",
            "Name": "web",
            "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin"}}
            ],
        },
    )
    chain = compile_chain(fsm.store.config_entries, "web", "dc1", TD)
    assert "Default" not in chain
    assert chain["Protocol"] == "http"
    assert chain["StartNode"] == "router:web.default.default"
    routes = chain["Nodes"]["router:web.default.default"]["Routes"]
    assert [r["NextNode"] for r in routes] == [
        "resolver:admin.default.default.dc1",
        "splitter:web.default.default",
    ]
    assert routes[-1]["Definition"]["Match"] == {"HTTP": {"PathPrefix": "/"}}
    splits = chain["Nodes"]["splitter:web.default.default"]["Splits"]
    # web-v2's own splitter is flattened into web's with multiplied weights.
    assert [(s["Weight"], s["NextNode"]) for s in splits] == [
        (80, "resolver:v1.web.default.default.dc1"),
        (10, "resolver:v2.web.default.default.dc1"),
        (10, "resolver:old.default.default.dc3"),
    ]
    v1 = chain["Nodes"]["resolver:v1.web.default.default.dc1"]["Resolver"]
    assert v1 == {
        "ConnectTimeout": "3s",
        "Target": "v1.web.default.default.dc1",
        "Failover": {"Targets": ["v1.web.default.default.dc2"]},
    }
    assert chain["Targets"]["v2.web.default.default.dc1"]["Subset"] == {"OnlyPassing": True}
    assert (
        chain["Targets"]["v1.web.default.default.dc1"]["SNI"] == f"v1.web.default.dc1.internal.{TD}"
    )
    assert chain["Targets"]["old.default.default.dc3"]["Datacenter"] == "dc3"


def test_redirect_loop_is_an_error() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(
        fsm, 2, "upsert", {"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}}
    )
    with pytest.raises(ValueError, match="circular"):
        _apply(
            fsm,
            3,
            "upsert",
            {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}},
        )
    assert fsm.store.config_entries.get(None, "service-resolver", "b")[1] is None
    # The compiler refuses a loop it is handed anyway.
    with fsm.store.write_txn(4) as tx:
        fsm.store.config_entries.upsert_txn(
            tx, {"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}
        )
    with pytest.raises(ChainError, match="circular"):
        compile_chain(fsm.store.config_entries, "a", "dc1", TD)


def test_writes_that_break_a_chain_are_refused() -> None:
    fsm = ConsulFSM(StateStore())
    _apply(fsm, 2, "upsert", {"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
    split = {
        "Kind": "service-splitter",
        "Name": "web",
        "Splits": [{"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}],
    }
    with pytest.raises(ValueError, match='service "web" does not have a subset named "v1"'):
        _apply(fsm, 3, "upsert", split)
    resolver = {"Kind": "service-resolver", "Name": "web", "Subsets": {"v1": {}, "v2": {}}}
    _apply(fsm, 4, "upsert", resolver)
    assert _apply(fsm, 5, "upsert", split) is True
    # Deleting the resolver the splitter needs is refused too; the entry stays.
    with pytest.raises(ValueError, match="does not have a subset named"):
        _apply(fsm, 6, "delete", {"Kind": "service-resolver", "Name": "web"})
    assert fsm.store.config_entries.get(None, "service-resolver", "web")[1] is not None


# --- Connect CA ------------------------------------------------------------------------------


def test_generated_root_is_a_p256_ca_with_consuls_ids() -> None:
    root = generate_root(CLUSTER, DEFAULT_CA_CONFIG)
    cert = x509.load_pem_x509_certificate(root["RootCert"].encode())
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert root["SigningKeyID"] == ":".join(f"{b:02x}" for b in ski)
    assert len(root["ID"].split(":")) == 20  # a SHA-1 fingerprint
    assert root["Active"] is True
    assert root["SerialNumber"] == cert.serial_number
    assert "SigningKey" not in api_root(root)


def test_ca_commands_store_roots_and_config_atomically() -> None:
    fsm = ConsulFSM(StateStore())
    root = generate_root(CLUSTER, DEFAULT_CA_CONFIG)
    config = {"Provider": "consul", "Config": dict(DEFAULT_CA_CONFIG), "State": None}
    body = {
        "Op": "set-roots-config",
        "Index": 0,
        "Roots": [root],
        "Config": config,
        "ClusterID": CLUSTER,
    }
    assert fsm.apply(5, encode_command(MessageType.CONNECT_CA, body)) is True
    table = fsm.store.connect_ca
    assert table.trust_domain() == TD
    assert table.config(None)[1]["CreateIndex"] == 5  # type: ignore[index]
    # A stale roots CAS changes nothing.
    stale = {"Op": "set-roots", "Index": 3, "Roots": []}
    assert fsm.apply(6, encode_command(MessageType.CONNECT_CA, stale)) is False
    assert table.roots(None)[0] == 5
    new_config = {**config, "Config": {**DEFAULT_CA_CONFIG, "LeafCertTTL": "24h"}}
    cmd = {"Op": "cas", "Config": new_config, "Index": 4}
    assert fsm.apply(7, encode_command(MessageType.CONNECT_CA_CONFIG, cmd)) is False
    cmd["Index"] = 5
    assert fsm.apply(8, encode_command(MessageType.CONNECT_CA_CONFIG, cmd)) is True
    _, stored = table.config(None)
    assert stored is not None
    assert (stored["Config"]["LeafCertTTL"], stored["CreateIndex"], stored["ModifyIndex"]) == (
        "24h",
        5,
        8,
    )
    restored = StateStore.restore(fsm.store.snapshot())
    assert restored.connect_ca.roots(None) == table.roots(None)
    assert restored.connect_ca.trust_domain() == TD
    restored.check_invariants()


def test_gateway_entries_fold_nested_keys_and_check_listener_protocols() -> None:
    entry = _entry(
        {
            "Kind": "ingress-gateway",
            "Name": "ig",
            "listeners": [
                {"port": 8080, "protocol": "HTTP", "services": [{"name": "web", "hosts": ["a"]}]}
            ],
        }
    )
    assert entry["TLS"] == {"Enabled": False}
    assert entry["Listeners"] == [
        {"Port": 8080, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["a"]}]}
    ]
    with pytest.raises(ValueError, match="'udp' is an unsupported protocol"):
        _entry(
            {"Kind": "ingress-gateway", "Name": "ig", "Listeners": [{"Port": 1, "Protocol": "udp"}]}
        )
    terminating = _entry(
        {
            "Kind": "terminating-gateway",
            "Name": "tg",
            "services": [{"name": "db", "ca_file": "/ca.pem"}],
        }
    )
    assert terminating["Services"] == [{"Name": "db", "CAFile": "/ca.pem"}]


def test_unmodelled_kinds_are_stored_as_given() -> None:
    entry = _entry({"kind": "http-route", "name": "r", "Rules": [{"x": 1}], "Parents": []})
    assert entry == {"Kind": "http-route", "Name": "r", "Rules": [{"x": 1}], "Parents": []}


def test_nested_upstream_and_load_balancer_fields_fold_with_go_duration_encodings() -> None:
    entry = _entry(
        {
            "Kind": "service-defaults",
            "Name": "web",
            "upstream_config": {
                "defaults": {
                    "connect_timeout_ms": 5000,
                    "passive_health_check": {"interval": "10s", "max_failures": 3},
                    "limits": {"max_connections": 10},
                }
            },
        }
    )
    assert entry["UpstreamConfig"] == {
        "Defaults": {
            "ConnectTimeoutMs": 5000,
            "PassiveHealthCheck": {"Interval": 10_000_000_000, "MaxFailures": 3},
            "Limits": {"MaxConnections": 10},
        }
    }
    resolver = _entry(
        {
            "Kind": "service-resolver",
            "Name": "db",
            "load_balancer": {
                "policy": "ring_hash",
                "hash_policies": [{"field": "header", "field_value": "x"}],
            },
        }
    )
    assert resolver["LoadBalancer"] == {
        "Policy": "ring_hash",
        "HashPolicies": [{"Field": "header", "FieldValue": "x"}],
    }
