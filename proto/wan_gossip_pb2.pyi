from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class WanGossipMessage(_message.Message):
    __slots__ = ("sender", "node", "datacenter", "data")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    DATACENTER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sender: str
    node: str
    datacenter: str
    data: bytes
    def __init__(self, sender: _Optional[str] = ..., node: _Optional[str] = ..., datacenter: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PacketsDone(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
