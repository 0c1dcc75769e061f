"""Watches: how a blocking read learns that what it read may have changed.

A read that is given a ``WatchSet`` adds to it the ``WatchChannel``s covering what it looked at:
one channel per key for a single-key read, one per prefix for a listing, one per table for a
whole-table read. A write fires (closes) the channels covering what it changed, after it commits
and never when it is aborted. The blocking-query layer (not here) then registers one callback on
the whole set with ``WatchSet.add_callback`` and re-runs its query when the callback is called.

Channels are one-shot, as go-memdb's Go channels are: a channel is *open* until it *closes*,
then closed forever; the next read creates a fresh one. Closing means "what you read may have
changed", never "it did change": a channel may also close spuriously (its owning store was
abandoned; it lost its last waiter; it was swept as idle, see ``ChannelMap``). Consumers always
re-run their read and compare indexes, so a spurious wake-up costs one extra read and nothing
else. A channel that is already closed when a callback is registered calls it at once, so a
write that slips in between a read and ``add_callback`` is never lost.

Channels live in ``ChannelMap``s keyed by a string (a KV key, a session ID, a table name). A
``PrefixChannelMap`` is keyed by prefixes: ``notify(key)`` closes the channel of every prefix of
``key`` that has one. It keeps a count of channels per prefix length, so a write costs one dict
lookup per distinct watched prefix length that fits in the key (at most ``len(key) + 1``, in
practice a handful), however many watchers there are.

Everything here is synchronous and single-threaded: callbacks run inside the write that fired
them (inside ``WriteTxn.commit``). A callback must be quick and must not touch the store; an
asyncio layer typically resolves a future or sets an event. An exception raised by a callback
does not stop the other callbacks: firing collects them and the committing write re-raises them
as one ``ExceptionGroup`` once every channel has fired (the write itself stays committed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = [
    "Callback",
    "ChannelMap",
    "PrefixChannelMap",
    "WatchChannel",
    "WatchSet",
    "raise_callback_errors",
]

Callback = Callable[[], None]


def _noop() -> None:
    return None


class _Waiter:
    """One ``add_callback`` registration, attached to every channel of a set: the first channel
    that closes detaches it from the others and runs the callback once."""

    __slots__ = ("_callback", "_channels")

    def __init__(self, callback: Callback, channels: list[WatchChannel]) -> None:
        self._callback: Callback | None = callback
        self._channels = channels

    def wake(self, source: WatchChannel) -> Exception | None:
        callback = self._callback
        if callback is None:
            return None
        self._callback = None
        channels, self._channels = self._channels, []
        for channel in channels:
            if channel is not source:
                channel._detach(self)
        try:
            callback()
        except Exception as exc:  # reported by the committing write, see the module docstring
            return exc
        return None

    def cancel(self) -> None:
        if self._callback is None:
            return
        self._callback = None
        channels, self._channels = self._channels, []
        for channel in channels:
            channel._detach(self)


class WatchChannel:
    """A one-shot notification: open, then closed forever (see the module docstring).

    ``close()`` runs and forgets every registered callback. Channels compare by identity.
    """

    __slots__ = ("_closed", "_key", "_owner", "_waiters")

    def __init__(self) -> None:
        self._closed = False
        self._waiters: dict[_Waiter, None] = {}
        self._owner: ChannelMap | None = None
        self._key = ""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> int:
        """Number of callbacks waiting on this channel."""
        return len(self._waiters)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"open, {len(self._waiters)} waiting"
        return f"<WatchChannel {self._key!r} {state}>"

    def add_callback(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` once when this channel closes (at once if it already has).
        Returns a function that cancels the registration."""
        return WatchSet((self,)).add_callback(callback)

    def close(self) -> None:
        """Close the channel and run its callbacks (idempotent)."""
        raise_callback_errors(self._close())

    def _close(self) -> list[Exception]:
        if self._closed:
            return []
        self._closed = True
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner._discard(self)
        waiters = self._waiters
        if not waiters:
            return []
        self._waiters = {}
        errors: list[Exception] = []
        for waiter in waiters:
            error = waiter.wake(self)
            if error is not None:
                errors.append(error)
        return errors

    def _attach(self, waiter: _Waiter) -> None:
        self._waiters[waiter] = None

    def _detach(self, waiter: _Waiter) -> None:
        waiters = self._waiters
        waiters.pop(waiter, None)
        if not waiters and not self._closed and self._owner is not None:
            # Nobody waits any more: retire the channel so that maps do not keep channels for
            # keys nobody watches. It counts as closed: a set still holding it wakes at once.
            self._retire()

    def _retire(self) -> None:
        self._closed = True
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._discard(self)


class WatchSet:
    """The channels one read (or one blocking-query iteration) touched.

    Consul's blocking loop builds a fresh set for every iteration; so should callers here.
    """

    __slots__ = ("_channels",)

    def __init__(self, channels: Iterable[WatchChannel] = ()) -> None:
        self._channels: dict[WatchChannel, None] = dict.fromkeys(channels)

    def add(self, channel: WatchChannel) -> None:
        self._channels[channel] = None

    def add_with_limit(self, limit: int, channel: WatchChannel, fallback: WatchChannel) -> None:
        """Add ``channel`` while the set holds fewer than ``limit`` channels, else ``fallback``
        (a coarser channel, typically the table's), as go-memdb's ``AddWithLimit`` does."""
        self._channels[channel if len(self._channels) < limit else fallback] = None

    def update(self, other: WatchSet) -> None:
        self._channels.update(other._channels)

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[WatchChannel]:
        return iter(self._channels)

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    @property
    def fired(self) -> bool:
        """Whether any channel of the set has closed."""
        return any(channel._closed for channel in self._channels)

    def add_callback(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` once, when the first channel of the set closes.

        If a channel is already closed the callback runs now, before this returns. An empty set
        never fires. Returns an idempotent function that cancels the registration (cancelling
        after the callback ran does nothing).
        """
        channels = list(self._channels)
        for channel in channels:
            if channel._closed:
                callback()
                return _noop
        waiter = _Waiter(callback, channels)
        for channel in channels:
            channel._attach(waiter)
        return waiter.cancel


class ChannelMap:
    """Channels keyed by string, created on demand by reads and closed by ``notify``.

    A channel leaves the map when it closes or when its last waiter cancels. Channels created
    by reads that never register a waiter would otherwise stay until their key is written, so
    the map sweeps them out (closing them, which is harmless) whenever it has doubled in size
    since the last sweep. After ``close_all`` the map is closed for good: ``channel`` hands out
    channels that are already closed (used when a store is abandoned).
    """

    __slots__ = ("_channels", "_closed", "_sweep_at")

    _SWEEP_MIN = 1024

    def __init__(self) -> None:
        self._channels: dict[str, WatchChannel] = {}
        self._closed = False
        self._sweep_at = self._SWEEP_MIN

    def __len__(self) -> int:
        return len(self._channels)

    def __contains__(self, key: object) -> bool:
        return key in self._channels

    def channel(self, key: str) -> WatchChannel:
        """The open channel for ``key``, created if needed."""
        channel = self._channels.get(key)
        if channel is not None:
            return channel
        channel = WatchChannel()
        channel._key = key
        if self._closed:
            channel._closed = True
            return channel
        if len(self._channels) >= self._sweep_at:
            self._sweep()
        channel._owner = self
        self._channels[key] = channel
        self._added(key)
        return channel

    def notify(self, key: str) -> Sequence[Exception]:
        """Close the channel for ``key``, if any. Returns the callbacks' exceptions."""
        channel = self._channels.get(key)
        if channel is None:
            return ()
        return channel._close()

    def close_all(self) -> list[Exception]:
        """Close every channel and every channel handed out from now on."""
        self._closed = True
        errors: list[Exception] = []
        for channel in list(self._channels.values()):
            errors.extend(channel._close())
        return errors

    def _discard(self, channel: WatchChannel) -> None:
        key = channel._key
        if self._channels.get(key) is channel:
            del self._channels[key]
            self._removed(key)

    def _sweep(self) -> None:
        for channel in [c for c in self._channels.values() if not c._waiters]:
            channel._retire()
        self._sweep_at = max(self._SWEEP_MIN, 2 * len(self._channels))

    def _added(self, key: str) -> None:
        return None

    def _removed(self, key: str) -> None:
        return None


class PrefixChannelMap(ChannelMap):
    """Channels keyed by prefix: ``notify(key)`` closes the channel of every watched prefix of
    ``key`` (including ``""`` and ``key`` itself)."""

    __slots__ = ("_lengths",)

    def __init__(self) -> None:
        super().__init__()
        self._lengths: dict[int, int] = {}

    def notify(self, key: str) -> Sequence[Exception]:
        if not self._channels:
            return ()
        errors: list[Exception] = []
        size = len(key)
        channels = self._channels
        for length in list(self._lengths):
            if length <= size:
                channel = channels.get(key[:length])
                if channel is not None:
                    errors.extend(channel._close())
        return errors

    def _added(self, key: str) -> None:
        length = len(key)
        self._lengths[length] = self._lengths.get(length, 0) + 1

    def _removed(self, key: str) -> None:
        length = len(key)
        count = self._lengths[length] - 1
        if count:
            self._lengths[length] = count
        else:
            del self._lengths[length]


def raise_callback_errors(errors: Sequence[Exception]) -> None:
    """Re-raise exceptions collected from watch callbacks, if any, as one group."""
    if errors:
        raise ExceptionGroup("watch callbacks raised", list(errors))
