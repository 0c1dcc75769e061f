"""Tests for the key-value register linearizability checker (raft.sim.lincheck)."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from raft.sim.lincheck import LinResult, Operation, OpKind, check_history

# ---------------------------------------------------------------------------------------------
# Helpers to write histories by hand. ret=None means "outcome unknown".


def put(key: str, value: str, call: int, ret: int | None, client: int = 0) -> Operation:
    return Operation(client, key, OpKind.PUT, value, None, call, ret, None)


def get(key: str, output: str | None, call: int, ret: int | None, client: int = 0) -> Operation:
    return Operation(client, key, OpKind.GET, None, None, call, ret, output)


def cas(
    key: str,
    expected: str | None,
    new: str | None,
    output: bool | None,
    call: int,
    ret: int | None,
    client: int = 0,
) -> Operation:
    return Operation(client, key, OpKind.CAS, new, expected, call, ret, output)


def assert_ok(ops: Sequence[Operation]) -> LinResult:
    result = check_history(ops)
    assert result.ok, result.detail
    assert not result.timed_out
    assert result.failing_key is None
    assert result.operations == len(ops)
    return result


def assert_not_ok(ops: Sequence[Operation], key: str = "x") -> LinResult:
    result = check_history(ops)
    assert not result.ok, result.detail
    assert result.failing_key == key
    assert result.operations == len(ops)
    return result


# ---------------------------------------------------------------------------------------------
# Sequential histories.


def test_empty_history_is_linearizable() -> None:
    result = assert_ok([])
    assert result.operations == 0


def test_sequential_history_is_linearizable() -> None:
    assert_ok(
        [
            get("x", None, 0, 1),
            put("x", "a", 2, 3),
            get("x", "a", 4, 5),
            put("x", "b", 6, 7),
            get("x", "b", 8, 9),
            get("x", "b", 10, 11),
        ]
    )


def test_initial_read_of_absent_key_is_linearizable() -> None:
    assert_ok([get("x", None, 0, 1), get("x", None, 2, 3)])


def test_stale_read_after_completed_write_is_not_linearizable() -> None:
    assert_not_ok([put("x", "a", 0, 1), put("x", "b", 2, 3), get("x", "a", 4, 5)])


def test_read_of_absent_after_completed_write_is_not_linearizable() -> None:
    assert_not_ok([put("x", "a", 0, 1), get("x", None, 2, 3)])


def test_read_of_value_never_written_is_not_linearizable() -> None:
    result = assert_not_ok([put("x", "a", 0, 1), get("x", "zzz", 2, 3)])
    assert "never written" in result.detail


def test_input_order_does_not_matter() -> None:
    ops = [put("x", "a", 0, 1), get("x", "a", 4, 5), put("x", "b", 6, 7), get("x", "b", 8, 9)]
    assert_ok(list(reversed(ops)))
    assert_not_ok(list(reversed([*ops, get("x", "a", 10, 11)])))


# ---------------------------------------------------------------------------------------------
# Concurrency and real-time order.


@pytest.mark.parametrize("final", ["a", "b"])
def test_concurrent_writes_may_take_effect_in_either_order(final: str) -> None:
    assert_ok(
        [
            put("x", "a", 0, 10, client=1),
            put("x", "b", 1, 9, client=2),
            get("x", final, 11, 12, client=3),
            get("x", final, 13, 14, client=3),
        ]
    )


@pytest.mark.parametrize(("first", "second"), [("a", "b"), ("b", "a")])
def test_reads_concurrent_with_writes_may_see_either_order(first: str, second: str) -> None:
    assert_ok(
        [
            put("x", "a", 0, 10, client=1),
            put("x", "b", 0, 10, client=2),
            get("x", first, 1, 2, client=3),
            get("x", second, 3, 4, client=3),
        ]
    )


def test_reads_after_concurrent_writes_cannot_flip_flop() -> None:
    assert_not_ok(
        [
            put("x", "a", 0, 10, client=1),
            put("x", "b", 0, 10, client=2),
            get("x", "b", 11, 12, client=3),
            get("x", "a", 13, 14, client=3),
        ]
    )


def test_read_concurrent_with_write_may_see_old_or_new_value() -> None:
    assert_ok([put("x", "a", 0, 1), put("x", "b", 2, 6), get("x", "a", 3, 4)])
    assert_ok([put("x", "a", 0, 1), put("x", "b", 2, 6), get("x", "b", 3, 4)])


def test_read_cannot_see_a_write_invoked_after_it_returned() -> None:
    assert_not_ok([get("x", "a", 0, 2), put("x", "a", 3, 4)])


def test_reads_cannot_go_back_in_time() -> None:
    # The read of "b" puts b's write after a's (a's write may precede b's or overlap it, but
    # "b" was current when the first read happened), so "a" can never be seen again.
    assert_not_ok(
        [
            put("x", "a", 0, 3, client=1),
            put("x", "b", 1, 10, client=2),
            get("x", "b", 4, 5, client=3),
            get("x", "a", 6, 7, client=3),
        ]
    )


def test_write_order_follows_real_time() -> None:
    # put a strictly precedes put b, so after both the register holds b.
    assert_ok([put("x", "a", 0, 1), put("x", "b", 2, 3), get("x", "b", 4, 5)])
    assert_not_ok([put("x", "a", 0, 1), put("x", "b", 2, 3), get("x", "a", 4, 5)])


def test_equal_timestamps_count_as_concurrent() -> None:
    # A return at t and a call at t overlap, so the read may be ordered before the write...
    assert_ok([put("x", "a", 0, 5), get("x", None, 5, 6)])
    assert_ok([put("x", "a", 0, 5), get("x", "a", 5, 6)])
    # ...and a write called at the instant a read returns may be what the read saw.
    assert_ok([get("x", "a", 0, 5), put("x", "a", 5, 6)])
    # One tick later they are ordered.
    assert_not_ok([put("x", "a", 0, 5), get("x", None, 6, 7)])
    assert_not_ok([get("x", "a", 0, 5), put("x", "a", 6, 7)])


def test_instantaneous_operations() -> None:
    assert_ok([put("x", "a", 3, 3), get("x", "a", 3, 3)])
    assert_not_ok([put("x", "a", 3, 3), get("x", None, 4, 4)])


# ---------------------------------------------------------------------------------------------
# Compare-and-swap.


def test_cas_succeeds_when_expected_matches() -> None:
    assert_ok(
        [
            put("x", "a", 0, 1),
            cas("x", "a", "b", True, 2, 3),
            get("x", "b", 4, 5),
        ]
    )


def test_cas_on_absent_key_with_expected_none() -> None:
    assert_ok([cas("x", None, "a", True, 0, 1), get("x", "a", 2, 3)])
    assert_not_ok([put("x", "z", 0, 1), cas("x", None, "a", True, 2, 3)])


def test_cas_fails_and_leaves_value_unchanged_when_expected_differs() -> None:
    assert_ok(
        [
            put("x", "a", 0, 1),
            cas("x", "other", "b", False, 2, 3),
            get("x", "a", 4, 5),
        ]
    )
    assert_not_ok(
        [
            put("x", "a", 0, 1),
            cas("x", "other", "b", False, 2, 3),
            get("x", "b", 4, 5),
        ]
    )


def test_cas_cannot_succeed_when_expected_differs() -> None:
    assert_not_ok([put("x", "a", 0, 1), put("x", "other", 2, 3), cas("x", "a", "b", True, 4, 5)])


def test_cas_cannot_fail_when_expected_matches() -> None:
    assert_not_ok([put("x", "a", 0, 1), cas("x", "a", "b", False, 2, 3)])
    assert_not_ok([cas("x", None, "b", False, 0, 1)])


def test_concurrent_cas_only_one_winner() -> None:
    # Two clients race to move a -> b / a -> c; exactly one may win.
    base = [put("x", "a", 0, 1)]
    assert_ok(
        [
            *base,
            cas("x", "a", "b", True, 2, 6, client=1),
            cas("x", "a", "c", False, 2, 6, client=2),
            get("x", "b", 7, 8),
        ]
    )
    assert_not_ok(
        [
            *base,
            cas("x", "a", "b", True, 2, 6, client=1),
            cas("x", "a", "c", True, 2, 6, client=2),
        ]
    )


def test_cas_with_delete_semantics() -> None:
    # CAS to None makes the key absent again.
    assert_ok([put("x", "a", 0, 1), cas("x", "a", None, True, 2, 3), get("x", None, 4, 5)])


# ---------------------------------------------------------------------------------------------
# Unknown outcomes (ret is None).


def test_unknown_put_observed_later_is_linearizable() -> None:
    assert_ok(
        [
            put("x", "a", 0, 1),
            put("x", "b", 2, None, client=1),
            get("x", "a", 3, 4),
            get("x", "b", 100, 101),
            get("x", "b", 102, 103),
        ]
    )


def test_unknown_put_never_observed_is_linearizable() -> None:
    result = assert_ok(
        [
            put("x", "a", 0, 1),
            put("x", "b", 2, None, client=1),
            get("x", "a", 3, 4),
            get("x", "a", 100, 101),
        ]
    )
    assert result.operations == 4


def test_unknown_put_never_observed_with_failed_cas_present() -> None:
    # A failed CAS disables the "drop unobservable unknown writes" shortcut, so this goes
    # through the full search with the unknown write left in.
    assert_ok(
        [
            put("x", "a", 0, 1),
            put("x", "b", 2, None, client=1),
            get("x", "a", 3, 4),
            cas("x", "q", "r", False, 5, 6),
            get("x", "a", 100, 101),
        ]
    )


def test_unknown_put_can_explain_a_failed_cas() -> None:
    # The CAS expecting "a" failed although nothing visible changed "a": only the unknown
    # write of "b", taking effect just before the CAS and overwritten right after, explains it.
    history = [
        put("x", "a", 0, 1),
        put("x", "b", 2, None, client=1),
        cas("x", "a", "c", False, 3, 4),
        put("x", "a", 5, 6),
        get("x", "a", 7, 8),
    ]
    assert_ok(history)
    without_unknown = [op for op in history if op.ret is not None]
    assert_not_ok(without_unknown)


def test_unknown_put_cannot_take_effect_before_it_is_called() -> None:
    assert_not_ok([get("x", "b", 0, 3), put("x", "b", 5, None)])


def test_read_of_unknown_write_then_older_value_is_not_linearizable() -> None:
    assert_not_ok(
        [
            put("x", "a", 0, 1),
            put("x", "b", 2, None, client=1),
            get("x", "b", 3, 4),
            get("x", "a", 5, 6),
        ]
    )


def test_unknown_get_is_ignored() -> None:
    assert_ok([put("x", "a", 0, 1), get("x", "garbage", 2, None), get("x", "a", 3, 4)])


def test_unknown_cas_may_or_may_not_take_effect() -> None:
    base = [put("x", "a", 0, 1), cas("x", "a", "b", None, 2, None, client=1)]
    assert_ok([*base, get("x", "b", 3, 4)])
    assert_ok([*base, get("x", "a", 3, 4), get("x", "b", 5, 6)])
    # Its output is ignored, whatever it says.
    assert_ok([put("x", "a", 0, 1), cas("x", "a", "b", False, 2, None), get("x", "b", 3, 4)])
    # It can only swap when the expected value is current.
    assert_not_ok([put("x", "a", 0, 1), cas("x", "zz", "b", None, 2, None), get("x", "b", 3, 4)])


def test_unknown_cas_not_swapping_when_it_cannot() -> None:
    # The unknown CAS expects "a" but "c" is current from then on: its "b" cannot appear.
    assert_not_ok(
        [
            put("x", "c", 0, 1),
            cas("x", "a", "b", None, 2, None),
            put("x", "a", 10, 11),
            put("x", "c", 12, 13),
            get("x", "b", 14, 15),
        ]
    )


def test_unknown_cas_chained_on_unknown_put() -> None:
    # "b" can only appear through the unknown CAS a -> b, which needs the unknown put of "a".
    history = [
        put("x", "z", 0, 1),
        put("x", "a", 2, None, client=1),
        cas("x", "a", "b", None, 3, None, client=2),
        get("x", "b", 10, 11),
    ]
    assert_ok(history)
    assert_not_ok([op for op in history if op.value != "a"])


def test_unknown_puts_of_the_same_value_are_each_usable_once() -> None:
    history = [
        put("x", "a", 0, None, client=1),
        put("x", "a", 0, None, client=2),
        get("x", "a", 1, 2),
        put("x", "b", 3, 4),
        get("x", "a", 5, 6),
    ]
    assert_ok(history)
    assert_ok([*history[1:], put("x", "a", 4, 4)])  # a completed one works just as well
    assert_not_ok(history[1:])


def test_unobservable_values_are_told_apart_from_observed_ones() -> None:
    # "p" and "q" are never read, but a CAS expecting "q" sees the difference.
    assert_ok([put("x", "p", 0, 1), put("x", "q", 2, 3), cas("x", "r", "s", False, 4, 5)])
    assert_ok([put("x", "p", 0, 1), put("x", "q", 2, 3), cas("x", "q", "s", True, 4, 5)])
    assert_not_ok([put("x", "p", 0, 1), put("x", "q", 2, 3), cas("x", "q", "s", False, 4, 5)])
    assert_not_ok([put("x", "q", 0, 1), put("x", "p", 2, 3), cas("x", "q", "s", True, 4, 5)])


def test_many_unknown_writes() -> None:
    ops = [put("x", "a", 0, 1)]
    ops += [put("x", f"u{i}", 2 + i, None, client=i) for i in range(30)]
    ops += [get("x", "u17", 100, 101), cas("x", "u17", "z", True, 102, 103)]
    ops += [cas("x", "u3", "w", False, 104, 105), get("x", "z", 106, 107)]
    assert_ok(ops)
    assert_not_ok([*ops, get("x", "u17", 108, 109)])


# ---------------------------------------------------------------------------------------------
# Keys are independent registers.


def test_keys_are_independent() -> None:
    assert_ok(
        [
            put("x", "a", 0, 5, client=1),
            put("y", "b", 1, 6, client=2),
            get("x", "a", 7, 8),
            get("y", "b", 7, 8),
            get("z", None, 9, 10),
        ]
    )


def test_value_written_to_another_key_does_not_count() -> None:
    assert_not_ok([put("x", "a", 0, 1), get("y", "a", 2, 3)], key="y")


def test_first_failing_key_in_sorted_order_is_reported() -> None:
    ops = [
        put("k2", "a", 0, 1),
        put("k2", "b", 2, 3),
        get("k2", "a", 4, 5),
        put("k1", "a", 0, 1),
        get("k1", "zzz", 2, 3),
        put("k0", "a", 0, 1),
        get("k0", "a", 2, 3),
    ]
    result = assert_not_ok(ops, key="k1")
    # The detail lists the failing key's sub-history only.
    assert "k1" in result.detail
    assert "'b'" not in result.detail


def test_failure_detail_lists_sub_history_sorted_by_call() -> None:
    ops = [
        get("x", "a", 40, 50, client=3),
        put("x", "b", 20, 30, client=2),
        put("x", "a", 0, 10, client=1),
        put("y", "other", 5, 6, client=9),
    ]
    result = assert_not_ok(ops)
    lines = result.detail.splitlines()
    history = [line.strip() for line in lines if line.startswith("  [")]
    assert history == [
        "[0, 10] client 1: put 'a'",
        "[20, 30] client 2: put 'b'",
        "[40, 50] client 3: get => 'a'",
    ]


def test_operations_count_includes_unknown_outcomes() -> None:
    ops = [put("x", "a", 0, None), get("x", None, 1, None), get("y", None, 0, 1)]
    result = assert_ok(ops)
    assert result.operations == 3


# ---------------------------------------------------------------------------------------------
# Validation and the search budget.


def test_return_before_call_is_rejected() -> None:
    with pytest.raises(ValueError, match="returns before"):
        check_history([put("x", "a", 5, 4)])


def test_completed_cas_needs_a_bool_output() -> None:
    with pytest.raises(ValueError, match="bool"):
        check_history([cas("x", None, "a", None, 0, 1)])


def test_completed_get_cannot_output_a_bool() -> None:
    with pytest.raises(ValueError, match="GET"):
        check_history([Operation(0, "x", OpKind.GET, None, None, 0, 1, True)])


def test_negative_budget_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_steps_per_key"):
        check_history([], max_steps_per_key=-1)


def hard_history(key: str = "x", writers: int = 10) -> list[Operation]:
    """Many fully concurrent writes followed by two reads that flip-flop: not linearizable,
    but the search has to try every order of the writes before it can say so."""
    ops = [put(key, f"v{i}", 0, 100, client=i) for i in range(writers)]
    ops += [get(key, "v0", 101, 102), get(key, "v1", 103, 104)]
    return ops


def test_hard_history_is_refuted_with_enough_budget() -> None:
    result = check_history(hard_history())
    assert not result.ok
    assert not result.timed_out
    assert result.failing_key == "x"


def test_tiny_budget_times_out() -> None:
    result = check_history(hard_history(), max_steps_per_key=5)
    assert result.ok  # not refuted, just unproven
    assert result.timed_out
    assert result.failing_key is None
    assert "budget" in result.detail


def test_tiny_budget_times_out_on_linearizable_history() -> None:
    result = check_history([put("x", "a", 0, 1), get("x", "a", 2, 3)], max_steps_per_key=1)
    assert result.ok
    assert result.timed_out


def test_timeout_on_one_key_does_not_hide_a_failure_on_another() -> None:
    ops = [*hard_history("a"), put("b", "p", 0, 1), put("b", "q", 2, 3), get("b", "p", 4, 5)]
    result = check_history(ops, max_steps_per_key=200)
    assert not result.ok
    assert result.failing_key == "b"
    assert result.timed_out  # key "a" ran out of budget first


# ---------------------------------------------------------------------------------------------
# Generated histories: a simulated atomic register observed by concurrent clients.

Choose = Callable[[int, int], int]  # inclusive range, like random.randint


def simulate(
    choose: Choose,
    n_ops: int,
    n_keys: int,
    n_clients: int,
    cas_pct: int = 20,
    put_pct: int = 35,
    unknown_per_mille: int = 20,
    value_pool: int | None = None,
) -> list[Operation]:
    """Run clients against a real sequential register and record what they observed.

    Each action advances virtual time by one tick. A client calls an operation, later the
    register applies it atomically, later still the client sees the response. Sometimes the
    client gives up before seeing the response (the operation is recorded with ret=None); if it
    had not been applied yet it may still be applied at some later tick, or never. Written
    values are unique unless ``value_pool`` is given (then they come from a pool that size).
    """
    store: dict[str, str | None] = {}
    written: dict[str, list[str | None]] = {}
    ops: list[Operation] = []
    # Per client: None when idle, else (phase, op); phase 1 = called, 2 = applied.
    inflight: list[tuple[int, Operation] | None] = [None] * n_clients
    orphans: list[Operation] = []  # given up before being applied
    seq = 0
    now = 0

    def apply(op: Operation) -> Operation:
        current = store.get(op.key)
        if op.kind == OpKind.PUT:
            store[op.key] = op.value
            written.setdefault(op.key, []).append(op.value)
            return op
        if op.kind == OpKind.GET:
            return dataclasses.replace(op, output=current)
        swapped = current == op.expected
        if swapped:
            store[op.key] = op.value
            written.setdefault(op.key, []).append(op.value)
        return dataclasses.replace(op, output=swapped)

    while seq < n_ops or any(slot is not None for slot in inflight):
        now += 1
        if orphans and choose(0, 9) == 0:
            apply(orphans.pop(choose(0, len(orphans) - 1)))
            continue
        candidates = [c for c in range(n_clients) if seq < n_ops or inflight[c] is not None]
        client = candidates[choose(0, len(candidates) - 1)]
        slot = inflight[client]
        if slot is None:
            key = f"k{choose(0, n_keys - 1)}"
            roll = choose(0, 99)
            if roll < cas_pct:
                how = choose(0, 2)
                if how == 0:
                    expected = store.get(key)
                elif how == 1:
                    expected = None
                else:
                    history = written.get(key, [None])
                    expected = history[choose(0, len(history) - 1)]
                op = Operation(client, key, OpKind.CAS, f"v{seq}", expected, now, None, None)
            elif roll < cas_pct + put_pct:
                op = Operation(client, key, OpKind.PUT, f"v{seq}", None, now, None, None)
            else:
                op = Operation(client, key, OpKind.GET, None, None, now, None, None)
            if value_pool is not None and op.kind != OpKind.GET:
                op = dataclasses.replace(op, value=f"p{choose(0, value_pool - 1)}")
            seq += 1
            inflight[client] = (1, op)
            continue
        phase, op = slot
        gives_up = choose(0, 999) < unknown_per_mille
        if phase == 1:
            if gives_up:
                ops.append(op)  # ret=None, output unknown
                orphans.append(op)
                inflight[client] = None
            else:
                inflight[client] = (2, apply(op))
        else:
            if gives_up:
                ops.append(dataclasses.replace(op, output=None))
            else:
                ops.append(dataclasses.replace(op, ret=now))
            inflight[client] = None
    return ops


@st.composite
def simulated_histories(draw: st.DrawFn, unique_values: bool = True) -> list[Operation]:
    n_ops = draw(st.integers(0, 60))
    n_keys = draw(st.integers(1, 4))
    n_clients = draw(st.integers(1, 6))
    unknown = draw(st.sampled_from([0, 50, 200]))
    pool = None if unique_values else draw(st.sampled_from([None, 1, 3]))

    def choose(lo: int, hi: int) -> int:
        return draw(st.integers(lo, hi))

    return simulate(choose, n_ops, n_keys, n_clients, unknown_per_mille=unknown, value_pool=pool)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simulated_histories(unique_values=False))
def test_simulated_register_histories_are_linearizable(history: list[Operation]) -> None:
    assert_ok(history)


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_keys=st.integers(1, 5),
    n_clients=st.integers(2, 10),
    unknown=st.sampled_from([0, 20, 100]),
    pool=st.sampled_from([None, 3]),
)
def test_larger_simulated_histories_are_linearizable(
    seed: int, n_keys: int, n_clients: int, unknown: int, pool: int | None
) -> None:
    # Seeded rather than drawn step by step: much cheaper to generate, at the price of
    # shrinking (a failure still shows the whole history).
    rng = random.Random(seed)
    history = simulate(
        rng.randint, 300, n_keys, n_clients, unknown_per_mille=unknown, value_pool=pool
    )
    assert_ok(history)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simulated_histories(), st.data())
def test_read_of_value_never_written_is_detected(
    history: list[Operation], data: st.DataObject
) -> None:
    reads = [i for i, op in enumerate(history) if op.kind == OpKind.GET and op.ret is not None]
    assume(reads)
    victim = data.draw(st.sampled_from(reads))
    mutated = list(history)
    mutated[victim] = dataclasses.replace(history[victim], output="never-written")
    result = check_history(mutated)
    assert not result.ok
    assert result.failing_key == history[victim].key


def _effective_writes(history: Sequence[Operation]) -> list[Operation]:
    return [
        op
        for op in history
        if op.ret is not None
        and (op.kind == OpKind.PUT or (op.kind == OpKind.CAS and op.output is True))
    ]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(simulated_histories(), st.data())
def test_stale_read_mutation_is_detected(history: list[Operation], data: st.DataObject) -> None:
    # Make a read return the value of a write that was overwritten (by a write that completed)
    # before the read was even called. Values are unique, so this can never be explained.
    writes = _effective_writes(history)
    candidates = [
        (i, old)
        for i, op in enumerate(history)
        if op.kind == OpKind.GET and op.ret is not None
        for old in writes
        for new in writes
        if old.key == new.key == op.key
        and old.ret is not None
        and new.ret is not None
        and old.ret < new.call
        and new.ret < op.call
    ]
    assume(candidates)
    victim, old = data.draw(st.sampled_from(candidates))
    mutated = list(history)
    mutated[victim] = dataclasses.replace(history[victim], output=old.value)
    result = check_history(mutated)
    assert not result.ok
    assert result.failing_key == history[victim].key


# ---------------------------------------------------------------------------------------------
# Equivalence with a deliberately simple brute-force checker on tiny histories.


def brute_force_linearizable(history: Sequence[Operation]) -> bool:
    """Try every subset of unknown-outcome operations and every order of the chosen ones."""
    completed = [op for op in history if op.ret is not None]
    unknown = [op for op in history if op.ret is None]
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):
            for order in itertools.permutations([*completed, *chosen]):
                if _respects_real_time(order) and _legal(order):
                    return True
    return False


def _respects_real_time(order: Sequence[Operation]) -> bool:
    for i, earlier in enumerate(order):
        for later in order[i + 1 :]:
            if later.ret is not None and later.ret < earlier.call:
                return False
    return True


def _legal(order: Sequence[Operation]) -> bool:
    store: dict[str, str | None] = {}
    for op in order:
        current = store.get(op.key)
        if op.kind == OpKind.PUT:
            store[op.key] = op.value
        elif op.kind == OpKind.GET:
            if op.ret is not None and op.output != current:
                return False
        else:
            swapped = current == op.expected
            if op.ret is not None and op.output is not swapped:
                return False
            if swapped:
                store[op.key] = op.value
    return True


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    values = st.sampled_from(["a", "b"])
    maybe_values = st.sampled_from([None, "a", "b"])
    ops: list[Operation] = []
    for client in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(["x", "x", "y"]))
        kind = draw(st.sampled_from(list(OpKind)))
        call = draw(st.integers(0, 6))
        ret = None if draw(st.integers(0, 3)) == 0 else call + draw(st.integers(0, 4))
        if kind == OpKind.PUT:
            ops.append(put(key, draw(values), call, ret, client))
        elif kind == OpKind.GET:
            ops.append(get(key, draw(maybe_values), call, ret, client))
        else:
            ops.append(
                cas(key, draw(maybe_values), draw(values), draw(st.booleans()), call, ret, client)
            )
    return ops


@settings(max_examples=600, deadline=None)
@given(tiny_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    result = check_history(history)
    assert not result.timed_out
    assert result.ok == brute_force_linearizable(history), result.detail


# ---------------------------------------------------------------------------------------------
# Scale.


def test_five_thousand_operations() -> None:
    rng = random.Random(20240601)
    history = simulate(rng.randint, n_ops=5_000, n_keys=20, n_clients=10)
    assert len(history) == 5_000
    assert_ok(history)
    writes = _effective_writes(history)
    # A stale read near the end of the history is still found.
    last_read = max(
        (i for i, op in enumerate(history) if op.kind == OpKind.GET and op.ret is not None),
        key=lambda i: history[i].call,
    )
    read = history[last_read]
    old = min((w for w in writes if w.key == read.key), key=lambda w: w.call)
    newer = [w for w in writes if w.key == read.key and old.ret is not None and w.call > old.ret]
    assert any(w.ret is not None and w.ret < read.call for w in newer)
    mutated = list(history)
    mutated[last_read] = dataclasses.replace(read, output=old.value)
    result = check_history(mutated)
    assert not result.ok
    assert result.failing_key == read.key
