"""Linearizability checker for key-value register histories.

A history is a list of :class:`Operation` records collected by clients of the system under test
(for instance by the deterministic simulator). Every key is modelled as an independent register
that starts out absent (``None``):

* ``PUT(value)`` sets the register;
* ``GET`` returns the current value (``None`` when absent);
* ``CAS(expected, new)`` sets the register to ``new`` and outputs ``True`` when the current value
  equals ``expected`` (``None`` meaning "absent"), otherwise outputs ``False`` and changes nothing.

A completed operation (``ret`` is not ``None``) must take effect atomically at some point between
its call and its return. An operation whose outcome is unknown (``ret is None``: the client gave
up, crashed, or the request timed out) may have taken effect at any single point after its call,
or not at all, and its recorded output is ignored. If ``a.ret < b.call`` then ``a`` precedes
``b`` in real time. Equal timestamps are treated conservatively: a return at time ``t`` is
ordered after a call at time ``t``, so those two operations count as concurrent.

Because registers are independent, linearizability is checked one key at a time (a history is
linearizable if and only if every per-key sub-history is). Each sub-history is checked with the
Wing & Gong / Lowe depth-first search, in the form popularised by the Porcupine checker:

* call and return events of completed operations are kept in a doubly linked list ordered by
  time. Unknown-outcome operations have no return event (nothing ever forces them to happen):
  they are kept apart, sorted by call and indexed by the value they write or expect, and one is
  available once its call comes before the first return still in the list;
* the search walks the main list from the head; at a call event it tries to linearize that
  operation next (apply it to the model and check its output); on success the operation is
  "lifted" (its call and return are unlinked) and the walk restarts from the head;
* reaching a return event means the operation it belongs to cannot be postponed any further:
  the search then tries the unknown-outcome operations called before that point and, when
  none of them helps, backtracks: it pops the most recently linearized operation, "unlifts" it
  and continues with the event after that operation's call;
* every configuration (operations linearized, register value) is visited at most once, which is
  what keeps the search tractable;
* the search succeeds once every completed operation is linearized; unknown-outcome operations
  still pending then are taken to have never happened.

Unknown-outcome operations are what makes the search explode if handled naively (each may or
may not happen, anywhere after its call), so the search only builds linearizations of a
canonical shape, and any valid linearization can be rewritten into that shape:

* an unknown-outcome write is used only if it changes the register and its value is then
  observed right away: the next operation is a GET reading it, a CAS that succeeds on it, a CAS
  that fails only because of it (it would have succeeded on the value before), or an
  unknown-outcome CAS that swaps on it (which must in turn be observed). Anything else can be
  removed (the "never happened" choice) or moved after the operation that follows it;
* values that no operation could ever observe (no completed GET returns them, no CAS expects
  them) are indistinguishable, so the model collapses them into one;
* two available unknown-outcome PUTs of the same value are interchangeable (neither ever
  expires), so only one of them is tried at a given point;
* having used fewer unknown-outcome operations is never worse, so a configuration is skipped if
  one with the same linearized completed operations and state but a subset of its unknown
  operations was visited already. Without unknown operations this is exactly the plain
  (bitset, value) memo of Porcupine.

Two cheap, sound pre-passes run before the search for each key:

* a read of ``v`` (a completed GET returning ``v``, or a completed CAS that succeeded expecting
  ``v``), with ``v`` not ``None``, needs some write of ``v`` whose call is not after the read's
  return; without one the key fails immediately (this also catches reads of values that were
  never written, which would otherwise force an exhaustive search);
* unknown-outcome GETs are dropped, and so are unknown-outcome writes of unobservable values
  when the key has no failed CAS (the only thing such a write could ever explain).

The amount of work is bounded by ``max_steps_per_key`` steps per key (iterations of the search
loop plus entries scanned while choosing unknown-outcome operations); when the budget runs out
the key is reported as timed out instead of hanging.

Cost: histories from clients of a correct system are typically checked in near-linear time;
5,000 operations over 20 keys from 10 concurrent clients take well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LinResult", "OpKind", "Operation", "check_history"]


class OpKind(StrEnum):
    """The operations a key-value register supports."""

    PUT = "put"
    GET = "get"
    CAS = "cas"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key, as observed by the client."""

    client: int  # client id (informational)
    key: str
    kind: OpKind
    value: str | None  # PUT: value written; CAS: new value; GET: None
    expected: str | None  # CAS: expected old value (None means "key absent"); else None
    call: int  # virtual time the call was invoked (monotonic integer)
    # Virtual time the response arrived; None = unknown outcome (may or may not have taken
    # effect, at any single time after call).
    ret: int | None
    output: str | bool | None  # GET: value read (None = absent); CAS: swapped?; PUT: None


@dataclass(frozen=True, slots=True)
class LinResult:
    """Outcome of :func:`check_history`."""

    ok: bool  # False only when a key was proven not linearizable
    operations: int  # number of operations checked (including unknown-outcome ones)
    failing_key: str | None  # the first key (in sorted order) that is not linearizable
    timed_out: bool  # True if some key's search budget ran out (then ok=True is unproven)
    detail: str  # human readable; for a failure, the failing key's sub-history sorted by call


# Internal operation codes used by the search loop.
_PUT = 0
_GET = 1
_CAS_OK = 2  # completed CAS that swapped
_CAS_FAILED = 3  # completed CAS that did not swap
_CAS_UNKNOWN = 4  # unknown-outcome CAS: output unconstrained

# Register values are numbered for the search: observable values get ids >= 0.
_UNSEEN = -1  # every value that no operation can observe
_SETTLED = -2  # "origin" marker: no unknown-outcome write is waiting to be observed

_OK = 0
_FAIL = 1
_TIMEOUT = 2


@dataclass(frozen=True, slots=True)
class _KeyVerdict:
    status: int  # _OK, _FAIL or _TIMEOUT
    reason: str
    steps: int


def check_history(ops: Sequence[Operation], max_steps_per_key: int = 2_000_000) -> LinResult:
    """Check whether ``ops`` is a linearizable history of independent key-value registers.

    Keys are checked in sorted order and checking stops at the first key that is proven not
    linearizable; that key is reported in ``failing_key``. A key whose search needs more than
    ``max_steps_per_key`` steps is skipped and reported through ``timed_out`` (``ok`` stays
    ``True`` unless another key fails). Operations are validated first: a return before its
    call, a completed CAS whose output is not a bool or a completed GET whose output is a bool
    raises ``ValueError``.
    """
    if max_steps_per_key < 0:
        raise ValueError(f"max_steps_per_key must be >= 0, got {max_steps_per_key}")
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        _validate(op)
        by_key.setdefault(op.key, []).append(op)

    timed_out_keys: list[str] = []
    for key in sorted(by_key):
        sub = by_key[key]
        verdict = _check_key(sub, max_steps_per_key)
        if verdict.status == _FAIL:
            lines = [f"key {key!r} is not linearizable: {verdict.reason}"]
            if timed_out_keys:
                lines.append("search budget exhausted for keys: " + _key_list(timed_out_keys))
            lines.append(f"sub-history of key {key!r} ({len(sub)} operations, sorted by call):")
            lines.extend("  " + _format_op(op) for op in _sorted_by_call(sub))
            return LinResult(
                ok=False,
                operations=len(ops),
                failing_key=key,
                timed_out=bool(timed_out_keys),
                detail="\n".join(lines),
            )
        if verdict.status == _TIMEOUT:
            timed_out_keys.append(key)

    if timed_out_keys:
        detail = (
            f"no violation found in {len(ops)} operations over {len(by_key)} keys, but the "
            f"search budget of {max_steps_per_key} steps was exhausted for "
            f"{len(timed_out_keys)} key(s): {_key_list(timed_out_keys)}"
        )
    else:
        detail = f"linearizable: {len(ops)} operations over {len(by_key)} keys"
    return LinResult(
        ok=True,
        operations=len(ops),
        failing_key=None,
        timed_out=bool(timed_out_keys),
        detail=detail,
    )


def _validate(op: Operation) -> None:
    if op.ret is not None and op.ret < op.call:
        raise ValueError(f"operation returns before it is called: {op!r}")
    if op.kind not in (OpKind.PUT, OpKind.GET, OpKind.CAS):
        raise ValueError(f"unknown operation kind: {op!r}")
    if op.ret is None:
        return
    if op.kind == OpKind.CAS and not isinstance(op.output, bool):
        raise ValueError(f"completed CAS must output a bool: {op!r}")
    if op.kind == OpKind.GET and isinstance(op.output, bool):
        raise ValueError(f"GET must output a str or None: {op!r}")


def _precheck_reads(sub: Sequence[Operation]) -> str | None:
    """Return why some read cannot be justified by any write, or None if all reads can be."""
    first_write: dict[str | None, int] = {}
    for op in sub:
        if op.kind != OpKind.GET:
            prev = first_write.get(op.value)
            if prev is None or op.call < prev:
                first_write[op.value] = op.call
    for op in _sorted_by_call(sub):
        if op.ret is None:
            continue
        if op.kind == OpKind.GET and not isinstance(op.output, bool):
            needed: str | None = op.output
        elif op.kind == OpKind.CAS and op.output is True:
            needed = op.expected
        else:
            continue
        if needed is None:
            continue  # the initial value is always available
        first = first_write.get(needed)
        if first is None:
            return f"{_format_op(op)} observes {needed!r}, a value that is never written"
        if first > op.ret:
            return (
                f"{_format_op(op)} observes {needed!r}, but the first write of that value is "
                f"called at {first}, after the observation returned"
            )
    return None


def _check_key(sub: Sequence[Operation], budget: int) -> _KeyVerdict:
    """Decide linearizability of the sub-history of a single key."""
    reason = _precheck_reads(sub)
    if reason is not None:
        return _KeyVerdict(_FAIL, reason, 0)

    # Values some operation could observe get small integer ids (in order of appearance, so
    # the search is deterministic); every other value maps to _UNSEEN.
    ids: dict[str | None, int] = {}
    has_failed_cas = False
    for op in sub:
        if op.kind == OpKind.CAS:
            ids.setdefault(op.expected, len(ids))
            if op.ret is not None and op.output is False:
                has_failed_cas = True
        elif op.kind == OpKind.GET and op.ret is not None and not isinstance(op.output, bool):
            ids.setdefault(op.output, len(ids))

    kept: list[Operation] = []
    for op in sub:
        if op.ret is None:
            if op.kind == OpKind.GET:
                continue  # an unknown-outcome read constrains nothing
            if not has_failed_cas and op.value not in ids:
                continue  # nothing could ever observe this write
        kept.append(op)
    return _search(kept, ids, budget)


@dataclass(slots=True)
class _Candidates:
    """Unknown-outcome operations to try, in order, from one configuration once every completed
    operation that could go next has been tried; ``pos`` is the one being tried."""

    ops: list[int]
    pos: int = 0


def _search(ops: Sequence[Operation], ids: dict[str | None, int], budget: int) -> _KeyVerdict:
    """Wing-Gong-Lowe search over one key's (pre-filtered) sub-history; see the module doc."""
    n = len(ops)
    kinds: list[int] = []
    write_id: list[int] = []
    expect_id: list[int] = []
    out_id: list[int] = []
    for op in ops:
        if op.kind == OpKind.PUT:
            kinds.append(_PUT)
        elif op.kind == OpKind.GET:
            kinds.append(_GET)
        elif op.ret is None:
            kinds.append(_CAS_UNKNOWN)
        else:
            kinds.append(_CAS_OK if op.output is True else _CAS_FAILED)
        write_id.append(ids.get(op.value, _UNSEEN) if op.kind != OpKind.GET else _UNSEEN)
        expect_id.append(ids.get(op.expected, _UNSEEN) if op.kind == OpKind.CAS else _UNSEEN)
        observed = op.output if op.kind == OpKind.GET and not isinstance(op.output, bool) else None
        out_id.append(ids.get(observed, _UNSEEN))
    bit = [1 << i for i in range(n)]
    completed = sum(1 for op in ops if op.ret is not None)
    remaining = completed
    if remaining == 0:
        return _KeyVerdict(_OK, "no completed operations", 0)

    # All events sorted by (time, calls before returns, op index); an event's rank is its
    # position in this order. Completed operations go into the linked list (node 0 is its
    # head); unknown-outcome ones, which have no return, into lists sorted by rank: all of
    # them, by value written and (CAS) by value expected.
    raw: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        raw.append((op.call, 0, i))
        if op.ret is not None:
            raw.append((op.ret, 1, i))
    raw.sort()
    size = 2 * completed + 1
    nxt = [-1] * size
    prv = [-1] * size
    node_is_call = [False] * size
    node_op = [-1] * size
    node_rank = [0] * size
    match = [-1] * size  # call node -> its return node
    call_node = [-1] * n
    unknown_all: list[tuple[int, int]] = []  # (rank of call, op)
    unknown_by_write: dict[int, list[tuple[int, int]]] = {}
    unknown_cas: list[tuple[int, int]] = []
    unknown_cas_by_expect: dict[int, list[tuple[int, int]]] = {}
    last = 0
    for rank, (_, is_ret, i) in enumerate(raw):
        if ops[i].ret is None:
            unknown_all.append((rank, i))
            unknown_by_write.setdefault(write_id[i], []).append((rank, i))
            if kinds[i] == _CAS_UNKNOWN:
                unknown_cas.append((rank, i))
                unknown_cas_by_expect.setdefault(expect_id[i], []).append((rank, i))
            continue
        node = last + 1
        if is_ret:
            match[call_node[i]] = node
        else:
            node_is_call[node] = True
            call_node[i] = node
        prv[node], nxt[last] = last, node
        node_op[node] = i
        node_rank[node] = rank
        last = node
    first_unknown_rank = unknown_all[0][0] if unknown_all else len(raw)
    # Unknown-outcome CASes that could extend a chain: their expected value is written by some
    # unknown-outcome operation.
    chain_cas = [(rank, i) for rank, i in unknown_cas if expect_id[i] in unknown_by_write]

    state = ids.get(None, _UNSEEN)
    # _SETTLED, or the value before the unknown-outcome writes just applied, which the next
    # step has to observe (see the module doc).
    origin = _SETTLED
    cbits = 0  # completed operations linearized
    ubits = 0  # unknown-outcome operations applied
    no_candidates = _Candidates([])
    candidates = no_candidates
    in_unknown_pass = False
    # What each step replaced, to undo it: (call node, or ~op for an unknown-outcome op;
    # state; origin; the candidates of the configuration it was taken from).
    stack: list[tuple[int, int, int, _Candidates]] = []
    # Memo: (completed bitset, state, origin) -> unknown-outcome bitsets already explored.
    seen: dict[tuple[int, int, int], list[int]] = {}
    deepest = 0
    steps = 0
    node = nxt[0]
    while True:
        steps += 1
        if steps > budget:
            return _KeyVerdict(_TIMEOUT, f"budget of {budget} steps exhausted", steps)
        if not in_unknown_pass:
            if node_is_call[node]:
                i = node_op[node]
                kind = kinds[i]
                new_state = state
                if kind == _GET:
                    legal = state == out_id[i]
                elif kind == _PUT:
                    legal = origin == _SETTLED
                    new_state = write_id[i]
                elif kind == _CAS_OK:
                    legal = state == expect_id[i]
                    new_state = write_id[i]
                else:  # _CAS_FAILED
                    legal = state != expect_id[i] and origin in (_SETTLED, expect_id[i])
                if legal:
                    new_cbits = cbits | bit[i]
                    config = (new_cbits, new_state, _SETTLED)
                    prevs = seen.get(config)
                    if prevs is None:
                        seen[config] = [ubits]
                    elif any(prev & ubits == prev for prev in prevs):
                        legal = False
                    else:
                        prevs.append(ubits)
                if not legal:
                    node = nxt[node]
                    continue
                stack.append((node, state, origin, candidates))
                deepest = max(deepest, len(stack))
                cbits = new_cbits
                state = new_state
                origin = _SETTLED
                remaining -= 1
                if remaining == 0:
                    return _KeyVerdict(_OK, "linearizable", steps)
                # Lift: unlink the call and then its return.
                ret_node = match[node]
                before, after = prv[node], nxt[node]
                nxt[before] = after
                if after != -1:
                    prv[after] = before
                before, after = prv[ret_node], nxt[ret_node]
                nxt[before] = after
                if after != -1:
                    prv[after] = before
                node = nxt[0]
                continue
            # A return: every completed operation that could go next has been tried. Next,
            # the unknown-outcome operations called before it, if any could help.
            boundary = node_rank[node]
            if first_unknown_rank < boundary:
                # Which unknown-outcome operations could help (see the module doc), as lists
                # sorted by rank: every one called before this return is available.
                sources: list[list[tuple[int, int]]]
                if origin != _SETTLED:
                    # Extending a chain: only an unknown-outcome CAS that swaps on it.
                    sources = [unknown_cas_by_expect.get(state, [])]
                else:
                    wanted: set[int] = set()
                    any_value = False
                    ahead = nxt[0]
                    while ahead != node:
                        j = node_op[ahead]
                        if kinds[j] == _GET:
                            wanted.add(out_id[j])
                        elif kinds[j] == _CAS_OK:
                            wanted.add(expect_id[j])
                        elif kinds[j] == _CAS_FAILED and expect_id[j] == state:
                            any_value = True
                        ahead = nxt[ahead]
                        steps += 1
                    if any_value:
                        sources = [unknown_all]
                    else:
                        for rank_u, u in chain_cas:
                            if rank_u > boundary:
                                break
                            if not ubits & bit[u]:
                                wanted.add(expect_id[u])
                            steps += 1
                        sources = [unknown_by_write.get(value, []) for value in sorted(wanted)]
                cands: list[int] = []
                put_values: set[int] = set()
                for source in sources:
                    for rank_u, u in source:
                        steps += 1
                        if rank_u > boundary:
                            break
                        w = write_id[u]
                        if ubits & bit[u] or w == state:
                            continue
                        if kinds[u] == _PUT:
                            if origin != _SETTLED or w in put_values:
                                continue  # a PUT cannot extend a chain; one PUT per value
                            put_values.add(w)
                        elif expect_id[u] != state:
                            continue
                        cands.append(u)
                if cands:
                    candidates = _Candidates(cands)
                    in_unknown_pass = True
                    continue
        else:
            cands = candidates.ops
            if candidates.pos < len(cands):
                u = cands[candidates.pos]
                new_state = write_id[u]
                new_ubits = ubits | bit[u]
                new_origin = state if origin == _SETTLED else origin
                config = (cbits, new_state, new_origin)
                prevs = seen.get(config)
                if prevs is None:
                    seen[config] = [new_ubits]
                elif any(prev & new_ubits == prev for prev in prevs):
                    candidates.pos += 1
                    continue
                else:
                    prevs.append(new_ubits)
                stack.append((~u, state, origin, candidates))
                deepest = max(deepest, len(stack))
                ubits = new_ubits
                state = new_state
                origin = new_origin
                in_unknown_pass = False
                node = nxt[0]
                continue
        # Nothing else can go next from this configuration: undo the last step.
        if not stack:
            return _KeyVerdict(
                _FAIL,
                f"no valid linearization exists ({n} operations to order, {completed} of "
                f"them completed; the longest valid prefix found has {deepest})",
                steps,
            )
        node, state, origin, candidates = stack.pop()
        if node < 0:
            ubits ^= bit[~node]
            candidates.pos += 1
            in_unknown_pass = True
            continue
        cbits ^= bit[node_op[node]]
        remaining += 1
        # Unlift: relink the return and then the call (reverse order of the lift).
        ret_node = match[node]
        before, after = prv[ret_node], nxt[ret_node]
        nxt[before] = ret_node
        if after != -1:
            prv[after] = ret_node
        before, after = prv[node], nxt[node]
        nxt[before] = node
        if after != -1:
            prv[after] = node
        node = nxt[node]
        in_unknown_pass = False


def _sorted_by_call(sub: Sequence[Operation]) -> list[Operation]:
    return sorted(sub, key=lambda op: op.call)


def _key_list(keys: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    if len(keys) > limit:
        shown += f", ... ({len(keys) - limit} more)"
    return shown


def _format_op(op: Operation) -> str:
    """One-line rendering such as ``[3, 7] client 2: cas 'a' -> 'b' => True``."""
    ret = "?" if op.ret is None else str(op.ret)
    if op.kind == OpKind.PUT:
        body = f"put {op.value!r}"
        out = "" if op.ret is not None else " => ?"
    elif op.kind == OpKind.GET:
        body = "get"
        out = " => ?" if op.ret is None else f" => {op.output!r}"
    else:
        body = f"cas {op.expected!r} -> {op.value!r}"
        out = " => ?" if op.ret is None else f" => {op.output!r}"
    return f"[{op.call}, {ret}] client {op.client}: {body}{out}"
