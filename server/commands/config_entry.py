"""Raft command ``CONFIG_ENTRY`` (Consul's ``ConfigEntryRequest``).

Body: ``{"Op": "upsert" | "upsert-cas" | "delete" | "delete-cas", "Entry": {...}}``. The entry
is already normalised and validated by the endpoint (``server.endpoints.config_entry``); for
the CAS ops its ``ModifyIndex`` is the expected index. Results: ``upsert`` and ``delete`` True,
the CAS ops whether they applied (as Consul's FSM).

One check needs the other entries and so runs here, inside the write: a service-router or
service-splitter needs its service to speak an L7 protocol (http, http2, grpc), else Consul's
``discovery chain "<svc>" uses a protocol "<p>" that does not permit advanced routing or
splitting behavior``. The same check guards changing a service's protocol under an existing
router or splitter. After any write that shapes discovery chains (routers, splitters,
resolvers, service-defaults, proxy-defaults; deletes included) every chain must still compile
(``server.endpoints.discovery_chain``): a split or route to a subset its resolver does not
define, or a redirect loop, is refused with the compiler's message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.commands.types import Handler, MessageType
from server.state.config_entries import ConfigEntryTable

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["HANDLERS", "L7_PROTOCOLS", "service_protocol"]

L7_PROTOCOLS = frozenset({"http", "http2", "grpc"})


class ConfigEntryError(ValueError):
    """A config entry write the state refuses (answered as a 500 with this text)."""


def service_protocol(table: ConfigEntryTable, service: str) -> str:
    """The protocol of ``service``: its service-defaults Protocol, else proxy-defaults'
    ``Config.protocol``, else "tcp"."""
    defaults = table.peek("service-defaults", service)
    if defaults is not None and defaults.get("Protocol"):
        return str(defaults["Protocol"])
    proxy = table.peek("proxy-defaults", "global")
    if proxy is not None:
        config = proxy.get("Config") or {}
        if isinstance(config, dict) and isinstance(config.get("protocol"), str):
            return str(config["protocol"]).lower() or "tcp"
    return "tcp"


def _check_l7(table: ConfigEntryTable, services: set[str]) -> None:
    for service in sorted(services):
        if table.peek("service-router", service) is None and (
            table.peek("service-splitter", service) is None
        ):
            continue
        protocol = service_protocol(table, service)
        if protocol not in L7_PROTOCOLS:
            raise ConfigEntryError(
                f'discovery chain "{service}" uses a protocol "{protocol}" that does not '
                "permit advanced routing or splitting behavior"
            )


_CHAIN_KINDS = ("service-router", "service-splitter", "service-resolver")


def _check_chains(table: ConfigEntryTable) -> None:
    """Every discovery chain that config entries shape must still compile (Consul validates
    the proposed graph the same way, e.g. a split to a subset its resolver lacks)."""
    from server.endpoints.discovery_chain import ChainError, compile_chain  # late: layering

    names: set[str] = set()
    for kind in _CHAIN_KINDS:
        names.update(str(row["Name"]) for row in table.list_kind(None, kind)[1])
    for service in sorted(names):
        try:
            compile_chain(table, service, "dc", "validation.consul")
        except ChainError as exc:
            raise ConfigEntryError(str(exc)) from None


def _affected(table: ConfigEntryTable, kind: str, name: str) -> set[str]:
    if kind in ("service-router", "service-splitter", "service-defaults"):
        return {name}
    if kind == "proxy-defaults":
        _, routers = table.list_kind(None, "service-router")
        _, splitters = table.list_kind(None, "service-splitter")
        return {str(row["Name"]) for row in routers + splitters}
    return set()


def apply_config_entry(fsm: ConsulFSM, index: int, body: Any) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("Entry"), dict):
        raise ConfigEntryError("config entry command without an Entry")
    op = body.get("Op")
    entry: dict[str, Any] = body["Entry"]
    kind = str(entry.get("Kind", ""))
    name = str(entry.get("Name", ""))
    store = fsm.store
    table = store.config_entries
    with store.write_txn(index) as tx:
        if op == "upsert":
            table.upsert_txn(tx, entry)
            result = True
        elif op == "upsert-cas":
            result = table.upsert_cas_txn(tx, entry, int(entry.get("ModifyIndex", 0)))
        elif op == "delete":
            table.delete_txn(tx, kind, name)
            result = True
        elif op == "delete-cas":
            result = table.delete_cas_txn(tx, kind, name, int(entry.get("ModifyIndex", 0)))
        else:
            raise ConfigEntryError(f"Invalid config entry operation {op!r}")
        if result:
            if op.startswith("upsert"):
                _check_l7(table, _affected(table, kind, name))
            if kind in _CHAIN_KINDS or kind in ("service-defaults", "proxy-defaults"):
                _check_chains(table)
    return result


HANDLERS: dict[MessageType, Handler] = {MessageType.CONFIG_ENTRY: apply_config_entry}
