from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EntryKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTRY_KIND_NORMAL: _ClassVar[EntryKind]
    ENTRY_KIND_NOOP: _ClassVar[EntryKind]
    ENTRY_KIND_CONFIG: _ClassVar[EntryKind]

class Suffrage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUFFRAGE_VOTER: _ClassVar[Suffrage]
    SUFFRAGE_NONVOTER: _ClassVar[Suffrage]
    SUFFRAGE_STAGING: _ClassVar[Suffrage]
ENTRY_KIND_NORMAL: EntryKind
ENTRY_KIND_NOOP: EntryKind
ENTRY_KIND_CONFIG: EntryKind
SUFFRAGE_VOTER: Suffrage
SUFFRAGE_NONVOTER: Suffrage
SUFFRAGE_STAGING: Suffrage

class Entry(_message.Message):
    __slots__ = ("index", "term", "kind", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    kind: EntryKind
    data: bytes
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., kind: _Optional[_Union[EntryKind, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Server(_message.Message):
    __slots__ = ("id", "address", "suffrage")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SUFFRAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    suffrage: Suffrage
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., suffrage: _Optional[_Union[Suffrage, str]] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedCompositeFieldContainer[Server]
    def __init__(self, servers: _Optional[_Iterable[_Union[Server, _Mapping]]] = ...) -> None: ...

class HardState(_message.Message):
    __slots__ = ("term", "voted_for")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VOTED_FOR_FIELD_NUMBER: _ClassVar[int]
    term: int
    voted_for: str
    def __init__(self, term: _Optional[int] = ..., voted_for: _Optional[str] = ...) -> None: ...

class SnapshotMeta(_message.Message):
    __slots__ = ("index", "term", "membership")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    index: int
    term: int
    membership: Membership
    def __init__(self, index: _Optional[int] = ..., term: _Optional[int] = ..., membership: _Optional[_Union[Membership, _Mapping]] = ...) -> None: ...

class RequestVote(_message.Message):
    __slots__ = ("src", "dst", "term", "last_log_index", "last_log_term", "pre_vote", "transfer")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    transfer: bool
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., last_log_index: _Optional[int] = ..., last_log_term: _Optional[int] = ..., pre_vote: _Optional[bool] = ..., transfer: _Optional[bool] = ...) -> None: ...

class RequestVoteResponse(_message.Message):
    __slots__ = ("src", "dst", "term", "granted", "pre_vote")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    PRE_VOTE_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., granted: _Optional[bool] = ..., pre_vote: _Optional[bool] = ...) -> None: ...

class AppendEntries(_message.Message):
    __slots__ = ("src", "dst", "term", "prev_log_index", "prev_log_term", "entries", "leader_commit", "read_seq")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    PREV_LOG_TERM_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEADER_COMMIT_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    leader_commit: int
    read_seq: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., prev_log_index: _Optional[int] = ..., prev_log_term: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., leader_commit: _Optional[int] = ..., read_seq: _Optional[int] = ...) -> None: ...

class AppendEntriesResponse(_message.Message):
    __slots__ = ("src", "dst", "term", "success", "last_log_index", "conflict_index", "conflict_term", "read_seq")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_TERM_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    success: bool
    last_log_index: int
    conflict_index: int
    conflict_term: int
    read_seq: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., success: _Optional[bool] = ..., last_log_index: _Optional[int] = ..., conflict_index: _Optional[int] = ..., conflict_term: _Optional[int] = ..., read_seq: _Optional[int] = ...) -> None: ...

class InstallSnapshot(_message.Message):
    __slots__ = ("src", "dst", "term", "meta", "leader_commit")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    LEADER_COMMIT_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    meta: SnapshotMeta
    leader_commit: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., meta: _Optional[_Union[SnapshotMeta, _Mapping]] = ..., leader_commit: _Optional[int] = ...) -> None: ...

class InstallSnapshotResponse(_message.Message):
    __slots__ = ("src", "dst", "term", "success", "last_log_index")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    success: bool
    last_log_index: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ..., success: _Optional[bool] = ..., last_log_index: _Optional[int] = ...) -> None: ...

class TimeoutNow(_message.Message):
    __slots__ = ("src", "dst", "term")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    term: int
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., term: _Optional[int] = ...) -> None: ...

class RaftMessage(_message.Message):
    __slots__ = ("request_vote", "request_vote_response", "append_entries", "append_entries_response", "install_snapshot", "install_snapshot_response", "timeout_now")
    REQUEST_VOTE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_VOTE_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    APPEND_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    APPEND_ENTRIES_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    INSTALL_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    INSTALL_SNAPSHOT_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_NOW_FIELD_NUMBER: _ClassVar[int]
    request_vote: RequestVote
    request_vote_response: RequestVoteResponse
    append_entries: AppendEntries
    append_entries_response: AppendEntriesResponse
    install_snapshot: InstallSnapshot
    install_snapshot_response: InstallSnapshotResponse
    timeout_now: TimeoutNow
    def __init__(self, request_vote: _Optional[_Union[RequestVote, _Mapping]] = ..., request_vote_response: _Optional[_Union[RequestVoteResponse, _Mapping]] = ..., append_entries: _Optional[_Union[AppendEntries, _Mapping]] = ..., append_entries_response: _Optional[_Union[AppendEntriesResponse, _Mapping]] = ..., install_snapshot: _Optional[_Union[InstallSnapshot, _Mapping]] = ..., install_snapshot_response: _Optional[_Union[InstallSnapshotResponse, _Mapping]] = ..., timeout_now: _Optional[_Union[TimeoutNow, _Mapping]] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[RaftMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[RaftMessage, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "sha256", "total_size", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: InstallSnapshot
    sha256: str
    total_size: int
    data: bytes
    def __init__(self, header: _Optional[_Union[InstallSnapshot, _Mapping]] = ..., sha256: _Optional[str] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StreamAck(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class SnapshotAck(_message.Message):
    __slots__ = ("received_bytes",)
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ...) -> None: ...
