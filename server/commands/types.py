"""Raft command types and the handler signature shared by every ``server.commands`` module."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.fsm import ConsulFSM

__all__ = ["Handler", "MessageType"]


class MessageType(IntEnum):
    """Raft command types. **Append-only**: never renumber or reuse a value. The numbers are
    Consul's ``structs.MessageType`` so that one log reads the same way in every version."""

    REGISTER = 0
    DEREGISTER = 1
    KVS = 2
    SESSION = 3
    DEPRECATED_ACL = 4
    TOMBSTONE = 5
    COORDINATE_BATCH_UPDATE = 6
    PREPARED_QUERY = 7
    TXN = 8
    AUTOPILOT = 9
    AREA = 10
    ACL_BOOTSTRAP = 11
    INTENTION = 12
    CONNECT_CA = 13
    CONNECT_CA_PROVIDER_STATE = 14
    CONNECT_CA_CONFIG = 15
    INDEX = 16
    ACL_TOKEN_SET = 17
    ACL_TOKEN_DELETE = 18
    ACL_POLICY_SET = 19
    ACL_POLICY_DELETE = 20
    CONNECT_CA_LEAF = 21
    CONFIG_ENTRY = 22
    ACL_ROLE_SET = 23
    ACL_ROLE_DELETE = 24
    ACL_BINDING_RULE_SET = 25
    ACL_BINDING_RULE_DELETE = 26
    ACL_AUTH_METHOD_SET = 27
    ACL_AUTH_METHOD_DELETE = 28
    CHUNKING_STATE = 29
    FEDERATION_STATE = 30
    SYSTEM_METADATA = 31
    PROCONSUL_RESTORE = 200  # Proconsul's own: replace the whole state (PUT /v1/snapshot)
    PROCONSUL_REGISTER_BATCH = 201  # Proconsul's own: many RegisterRequests (agent sync)


#: ``handler(fsm, raft_index, decoded_body) -> result``. The result goes back to the proposer;
#: an exception (other than ``UnknownCommandError``) is the proposer's error and must leave the
#: store unchanged (write through one ``WriteTxn``). Handlers must be deterministic: the same
#: command at the same index gives the same state on every server (``fsm.now()`` is for lock
#: delays only, which Consul also keeps outside the replicated state).
Handler = Callable[["ConsulFSM", int, Any], Any]
