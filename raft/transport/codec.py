"""Conversion between the core's message types and their protobuf form (proto/raft.proto).

``to_proto`` / ``from_proto`` convert one core ``Message``; ``entry_*``, ``membership_*``,
``snapshot_meta_*`` and ``hard_state_*`` convert the values inside. Encodings:

- enums travel as their integer values (the proto enums mirror the Python ``IntEnum`` s);
- an Optional ``NodeId`` travels as a string, the empty string meaning ``None``;
- indexes and terms are uint64: a negative or too-large value cannot be encoded.

Decoding raises ``ValueError`` for anything it cannot turn into a valid core value: a message
with no (or an unknown) body, an enum value this build does not know, a membership with a
duplicate id. Encoding raises ``ValueError`` (or ``TypeError``) for values protobuf cannot hold.

AppendEntries is the hot path: entries are appended in place with ``RepeatedField.add``
(measured faster than ``extend`` with constructed messages, which copies each one) and
decoded by filling ``Entry`` slots directly (see ``_entries_fast``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from types import MemberDescriptorType
from typing import Any

from proto import raft_pb2 as pb
from raft.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    Message,
    RequestVote,
    RequestVoteResponse,
    Server,
    SnapshotMeta,
    Suffrage,
    TimeoutNow,
)

__all__ = [
    "MESSAGE_BATCH_TAG",
    "entries_from_proto",
    "entries_into",
    "entry_from_proto",
    "entry_to_proto",
    "from_proto",
    "hard_state_from_proto",
    "hard_state_to_proto",
    "install_snapshot_from_proto",
    "install_snapshot_into",
    "membership_from_proto",
    "membership_into",
    "membership_to_proto",
    "snapshot_meta_from_proto",
    "snapshot_meta_into",
    "snapshot_meta_to_proto",
    "to_proto",
]

# Key byte of MessageBatch.messages (field 1, wire type 2 = length-delimited). A MessageBatch
# on the wire is nothing but ``MESSAGE_BATCH_TAG + varint(len(m)) + m`` for each serialized
# RaftMessage ``m``; the transport frames batches itself so it knows every message's size.
MESSAGE_BATCH_TAG = b"\x0a"

# Lookup tables instead of calling the enum class: faster, and an unknown value is a KeyError
# (a tuple index would silently accept negative values).
_ENTRY_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}
_SUFFRAGES: dict[int, Suffrage] = {int(s): s for s in Suffrage}


# --- values ----------------------------------------------------------------------------------


def entry_to_proto(e: Entry) -> pb.Entry:
    return pb.Entry(index=e.index, term=e.term, kind=e.kind, data=e.data)  # type: ignore[arg-type]


def entry_from_proto(p: pb.Entry) -> Entry:
    try:
        kind = _ENTRY_KINDS[p.kind]
    except KeyError:
        raise ValueError(f"unknown entry kind {p.kind} at index {p.index}") from None
    return Entry(p.index, p.term, kind, p.data)


def entries_into(target: Any, entries: Iterable[Entry]) -> None:
    """Append ``entries`` to the repeated Entry field ``target`` (e.g. ``ae.entries``)."""
    add = target.add
    for e in entries:
        add(index=e.index, term=e.term, kind=e.kind, data=e.data)


def _entries_plain(entries: Iterable[pb.Entry]) -> tuple[Entry, ...]:
    kinds = _ENTRY_KINDS
    try:
        return tuple([Entry(p.index, p.term, kinds[p.kind], p.data) for p in entries])
    except KeyError as exc:
        raise ValueError(f"unknown entry kind {exc.args[0]}") from None


def _entry_is_plain_slotted() -> bool:
    """True if Entry is exactly a slotted dataclass of (index, term, kind, data) whose
    ``__init__`` does nothing but store them, so filling the slots directly is equivalent."""
    names = tuple(f.name for f in dataclasses.fields(Entry))
    return (
        names == ("index", "term", "kind", "data")
        and getattr(Entry, "__slots__", None) == names
        and not hasattr(Entry, "__post_init__")
        and all(isinstance(vars(Entry)[n], MemberDescriptorType) for n in names)
    )


if _entry_is_plain_slotted():
    # Receiving AppendEntries is the transport's hottest path, and the frozen dataclass's
    # __init__ (an object.__setattr__ per field) is most of it: filling the slots through
    # their descriptors builds identical objects about a third faster. Guarded above: if
    # Entry ever gains a field or validation, the plain constructor is used instead.
    _new_entry = Entry.__new__
    _set_index = vars(Entry)["index"].__set__
    _set_term = vars(Entry)["term"].__set__
    _set_kind = vars(Entry)["kind"].__set__
    _set_data = vars(Entry)["data"].__set__

    def _entries_fast(entries: Iterable[pb.Entry]) -> tuple[Entry, ...]:
        kinds = _ENTRY_KINDS
        out: list[Entry] = []
        append = out.append
        try:
            for p in entries:
                e = _new_entry(Entry)
                _set_index(e, p.index)
                _set_term(e, p.term)
                _set_kind(e, kinds[p.kind])
                _set_data(e, p.data)
                append(e)
        except KeyError as exc:
            raise ValueError(f"unknown entry kind {exc.args[0]}") from None
        return tuple(out)

    _build_entries = _entries_fast
else:  # pragma: no cover - only if raft.core.types.Entry changes shape
    _build_entries = _entries_plain


def entries_from_proto(entries: Iterable[pb.Entry]) -> tuple[Entry, ...]:
    """Decode a repeated Entry field. Raises ``ValueError`` on an unknown entry kind."""
    return _build_entries(entries)


def membership_into(target: pb.Membership, m: Membership) -> None:
    add = target.servers.add
    for s in m.servers:
        add(id=s.id, address=s.address, suffrage=s.suffrage)


def membership_to_proto(m: Membership) -> pb.Membership:
    out = pb.Membership()
    membership_into(out, m)
    return out


def membership_from_proto(p: pb.Membership) -> Membership:
    suffrages = _SUFFRAGES
    try:
        servers = tuple([Server(s.id, s.address, suffrages[s.suffrage]) for s in p.servers])
    except KeyError as exc:
        raise ValueError(f"unknown suffrage {exc.args[0]}") from None
    return Membership(servers)  # raises ValueError on a duplicate id


def snapshot_meta_into(target: pb.SnapshotMeta, m: SnapshotMeta) -> None:
    target.index = m.index
    target.term = m.term
    membership_into(target.membership, m.membership)


def snapshot_meta_to_proto(m: SnapshotMeta) -> pb.SnapshotMeta:
    out = pb.SnapshotMeta()
    snapshot_meta_into(out, m)
    return out


def snapshot_meta_from_proto(p: pb.SnapshotMeta) -> SnapshotMeta:
    return SnapshotMeta(p.index, p.term, membership_from_proto(p.membership))


def hard_state_to_proto(h: HardState) -> pb.HardState:
    return pb.HardState(term=h.term, voted_for=h.voted_for or "")


def hard_state_from_proto(p: pb.HardState) -> HardState:
    return HardState(p.term, p.voted_for or None)


# --- messages: encoding ----------------------------------------------------------------------


def _enc_request_vote(out: pb.RaftMessage, m: RequestVote) -> None:
    b = out.request_vote
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    b.last_log_index = m.last_log_index
    b.last_log_term = m.last_log_term
    b.pre_vote = m.pre_vote
    b.transfer = m.transfer


def _enc_request_vote_response(out: pb.RaftMessage, m: RequestVoteResponse) -> None:
    b = out.request_vote_response
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    b.granted = m.granted
    b.pre_vote = m.pre_vote


def _enc_append_entries(out: pb.RaftMessage, m: AppendEntries) -> None:
    b = out.append_entries
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    b.prev_log_index = m.prev_log_index
    b.prev_log_term = m.prev_log_term
    b.leader_commit = m.leader_commit
    b.read_seq = m.read_seq
    add = b.entries.add
    for e in m.entries:
        add(index=e.index, term=e.term, kind=e.kind, data=e.data)


def _enc_append_entries_response(out: pb.RaftMessage, m: AppendEntriesResponse) -> None:
    b = out.append_entries_response
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    b.success = m.success
    b.last_log_index = m.last_log_index
    b.conflict_index = m.conflict_index
    b.conflict_term = m.conflict_term
    b.read_seq = m.read_seq


def install_snapshot_into(b: pb.InstallSnapshot, m: InstallSnapshot) -> None:
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    snapshot_meta_into(b.meta, m.meta)
    b.leader_commit = m.leader_commit


def _enc_install_snapshot(out: pb.RaftMessage, m: InstallSnapshot) -> None:
    install_snapshot_into(out.install_snapshot, m)


def _enc_install_snapshot_response(out: pb.RaftMessage, m: InstallSnapshotResponse) -> None:
    b = out.install_snapshot_response
    b.src = m.src
    b.dst = m.dst
    b.term = m.term
    b.success = m.success
    b.last_log_index = m.last_log_index


def _enc_timeout_now(out: pb.RaftMessage, m: TimeoutNow) -> None:
    b = out.timeout_now
    b.src = m.src
    b.dst = m.dst
    b.term = m.term


_ENCODERS: dict[type, Callable[[pb.RaftMessage, Any], None]] = {
    RequestVote: _enc_request_vote,
    RequestVoteResponse: _enc_request_vote_response,
    AppendEntries: _enc_append_entries,
    AppendEntriesResponse: _enc_append_entries_response,
    InstallSnapshot: _enc_install_snapshot,
    InstallSnapshotResponse: _enc_install_snapshot_response,
    TimeoutNow: _enc_timeout_now,
}


def to_proto(msg: Message) -> pb.RaftMessage:
    """Encode one core message. Raises ``ValueError``/``TypeError`` if it cannot be encoded."""
    try:
        enc = _ENCODERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a Raft message: {type(msg).__name__}") from None
    out = pb.RaftMessage()
    enc(out, msg)
    return out


# --- messages: decoding ----------------------------------------------------------------------


def _dec_request_vote(p: pb.RaftMessage) -> RequestVote:
    b = p.request_vote
    return RequestVote(
        b.src, b.dst, b.term, b.last_log_index, b.last_log_term, b.pre_vote, b.transfer
    )


def _dec_request_vote_response(p: pb.RaftMessage) -> RequestVoteResponse:
    b = p.request_vote_response
    return RequestVoteResponse(b.src, b.dst, b.term, b.granted, b.pre_vote)


def _dec_append_entries(p: pb.RaftMessage) -> AppendEntries:
    b = p.append_entries
    return AppendEntries(
        b.src,
        b.dst,
        b.term,
        b.prev_log_index,
        b.prev_log_term,
        _build_entries(b.entries),
        b.leader_commit,
        b.read_seq,
    )


def _dec_append_entries_response(p: pb.RaftMessage) -> AppendEntriesResponse:
    b = p.append_entries_response
    return AppendEntriesResponse(
        b.src,
        b.dst,
        b.term,
        b.success,
        b.last_log_index,
        b.conflict_index,
        b.conflict_term,
        b.read_seq,
    )


def install_snapshot_from_proto(b: pb.InstallSnapshot) -> InstallSnapshot:
    return InstallSnapshot(b.src, b.dst, b.term, snapshot_meta_from_proto(b.meta), b.leader_commit)


def _dec_install_snapshot(p: pb.RaftMessage) -> InstallSnapshot:
    return install_snapshot_from_proto(p.install_snapshot)


def _dec_install_snapshot_response(p: pb.RaftMessage) -> InstallSnapshotResponse:
    b = p.install_snapshot_response
    return InstallSnapshotResponse(b.src, b.dst, b.term, b.success, b.last_log_index)


def _dec_timeout_now(p: pb.RaftMessage) -> TimeoutNow:
    b = p.timeout_now
    return TimeoutNow(b.src, b.dst, b.term)


_DECODERS: dict[str, Callable[[pb.RaftMessage], Message]] = {
    "request_vote": _dec_request_vote,
    "request_vote_response": _dec_request_vote_response,
    "append_entries": _dec_append_entries,
    "append_entries_response": _dec_append_entries_response,
    "install_snapshot": _dec_install_snapshot,
    "install_snapshot_response": _dec_install_snapshot_response,
    "timeout_now": _dec_timeout_now,
}


def from_proto(p: pb.RaftMessage) -> Message:
    """Decode one message. Raises ``ValueError`` if it is malformed or of an unknown kind."""
    which = p.WhichOneof("body")
    if which is None:
        raise ValueError("RaftMessage has no body (empty, or a message type this build lacks)")
    dec = _DECODERS.get(which)
    if dec is None:  # pragma: no cover - only if the proto grows without this table
        raise ValueError(f"RaftMessage has an unsupported body {which!r}")
    return dec(p)
