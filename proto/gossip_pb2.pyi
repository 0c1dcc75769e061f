from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MemberState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_STATE_ALIVE: _ClassVar[MemberState]
    MEMBER_STATE_SUSPECT: _ClassVar[MemberState]
    MEMBER_STATE_DEAD: _ClassVar[MemberState]
    MEMBER_STATE_LEFT: _ClassVar[MemberState]
MEMBER_STATE_ALIVE: MemberState
MEMBER_STATE_SUSPECT: MemberState
MEMBER_STATE_DEAD: MemberState
MEMBER_STATE_LEFT: MemberState

class Address(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("seq", "target", "source", "source_addr")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    source: str
    source_addr: Address
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ..., source: _Optional[str] = ..., source_addr: _Optional[_Union[Address, _Mapping]] = ...) -> None: ...

class IndirectPing(_message.Message):
    __slots__ = ("seq", "target", "target_addr", "source", "source_addr", "nack")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_ADDR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDR_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    seq: int
    target: str
    target_addr: Address
    source: str
    source_addr: Address
    nack: bool
    def __init__(self, seq: _Optional[int] = ..., target: _Optional[str] = ..., target_addr: _Optional[_Union[Address, _Mapping]] = ..., source: _Optional[str] = ..., source_addr: _Optional[_Union[Address, _Mapping]] = ..., nack: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq", "payload")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    payload: bytes
    def __init__(self, seq: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Alive(_message.Message):
    __slots__ = ("incarnation", "node", "addr", "meta")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    node: str
    addr: Address
    meta: bytes
    def __init__(self, incarnation: _Optional[int] = ..., node: _Optional[str] = ..., addr: _Optional[_Union[Address, _Mapping]] = ..., meta: _Optional[bytes] = ...) -> None: ...

class Suspect(_message.Message):
    __slots__ = ("incarnation", "node", "source")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    node: str
    source: str
    def __init__(self, incarnation: _Optional[int] = ..., node: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class Dead(_message.Message):
    __slots__ = ("incarnation", "node", "source")
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    incarnation: int
    node: str
    source: str
    def __init__(self, incarnation: _Optional[int] = ..., node: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class UserMsg(_message.Message):
    __slots__ = ("payload",)
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    def __init__(self, payload: _Optional[bytes] = ...) -> None: ...

class PushNodeState(_message.Message):
    __slots__ = ("name", "addr", "meta", "incarnation", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    addr: Address
    meta: bytes
    incarnation: int
    state: MemberState
    def __init__(self, name: _Optional[str] = ..., addr: _Optional[_Union[Address, _Mapping]] = ..., meta: _Optional[bytes] = ..., incarnation: _Optional[int] = ..., state: _Optional[_Union[MemberState, str]] = ...) -> None: ...

class PushPull(_message.Message):
    __slots__ = ("join", "nodes", "user_state")
    JOIN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    USER_STATE_FIELD_NUMBER: _ClassVar[int]
    join: bool
    nodes: _containers.RepeatedCompositeFieldContainer[PushNodeState]
    user_state: bytes
    def __init__(self, join: _Optional[bool] = ..., nodes: _Optional[_Iterable[_Union[PushNodeState, _Mapping]]] = ..., user_state: _Optional[bytes] = ...) -> None: ...

class GossipMessage(_message.Message):
    __slots__ = ("ping", "indirect_ping", "ack", "nack", "alive", "suspect", "dead", "user", "push_pull")
    PING_FIELD_NUMBER: _ClassVar[int]
    INDIRECT_PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    DEAD_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PUSH_PULL_FIELD_NUMBER: _ClassVar[int]
    ping: Ping
    indirect_ping: IndirectPing
    ack: Ack
    nack: Nack
    alive: Alive
    suspect: Suspect
    dead: Dead
    user: UserMsg
    push_pull: PushPull
    def __init__(self, ping: _Optional[_Union[Ping, _Mapping]] = ..., indirect_ping: _Optional[_Union[IndirectPing, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., alive: _Optional[_Union[Alive, _Mapping]] = ..., suspect: _Optional[_Union[Suspect, _Mapping]] = ..., dead: _Optional[_Union[Dead, _Mapping]] = ..., user: _Optional[_Union[UserMsg, _Mapping]] = ..., push_pull: _Optional[_Union[PushPull, _Mapping]] = ...) -> None: ...

class Packet(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GossipMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[GossipMessage, _Mapping]]] = ...) -> None: ...
