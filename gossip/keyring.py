"""The gossip encryption keyring: AES-GCM with Consul's ``encrypt`` key format and rotation.

Keys
    A key is given as standard base64 (with padding) of 16, 24 or 32 random bytes (AES-128,
    -192 or -256); Consul's ``consul keygen`` makes 32. Surrounding whitespace is ignored. Keys
    are compared by their bytes, and ``list`` / ``primary_b64`` give them back in canonical
    base64. The primary key encrypts; every installed key is tried to decrypt, so a rotation is
    ``install(new)`` everywhere, then ``use(new)`` everywhere, then ``remove(old)``.

Format
    ``encrypt`` produces ``version (1 byte, 1) + nonce (12 bytes) + ciphertext + tag (16
    bytes)``: ``ENCRYPTION_OVERHEAD`` bytes more than the plaintext. ``aad`` is authenticated
    but not carried (e.g. a gossip label): both sides must pass the same.

Errors
    ``decrypt`` raises ``DecryptError`` (a ``ValueError``) and nothing else for any input it
    cannot authenticate with an installed key: too short, unknown version, wrong key, any
    byte tampered with, other ``aad``. Bad keys given to the keyring raise ``ValueError`` with
    the reason. Not thread-safe.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENCRYPTION_OVERHEAD",
    "KEY_SIZES",
    "NONCE_SIZE",
    "TAG_SIZE",
    "VERSION",
    "DecryptError",
    "Keyring",
    "decode_key",
]

VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
ENCRYPTION_OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
KEY_SIZES = (16, 24, 32)

_VERSION_BYTE = bytes((VERSION,))

NonceSource = Callable[[int], bytes]
"""Returns ``n`` bytes never used before with the same key (``os.urandom`` by default)."""

# ``list`` is also a method name below; this alias keeps annotations unambiguous.
_StrList = list[str]


class DecryptError(ValueError):
    """Data that no installed key authenticates (or that is not in the keyring's format)."""


def decode_key(key_b64: str) -> bytes:
    """The raw bytes of a base64 key; ``ValueError`` naming the problem if it is not valid."""
    if not isinstance(key_b64, str):
        raise ValueError(f"encrypt key must be a base64 string, got {type(key_b64).__name__}")
    try:
        raw = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"encrypt key is not valid base64: {exc}") from None
    if len(raw) not in KEY_SIZES:
        raise ValueError(f"encrypt key must be base64 of 16, 24 or 32 bytes, got {len(raw)} bytes")
    return raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class Keyring:
    """A primary key and other installed keys; see the module docstring."""

    __slots__ = ("_ciphers", "_keys", "_nonce_source")

    def __init__(
        self,
        primary: bytes,
        others: Iterable[bytes] = (),
        *,
        nonce_source: NonceSource | None = None,
    ) -> None:
        """From raw keys; ``from_b64`` is the usual way in. Duplicates are ignored."""
        # _keys[0] is the primary; AESGCM objects are built once per key.
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        self._nonce_source: NonceSource = nonce_source if nonce_source is not None else os.urandom
        for key in (primary, *others):
            self._add(key)

    @classmethod
    def from_b64(
        cls,
        primary: str,
        others: Sequence[str] = (),
        *,
        nonce_source: NonceSource | None = None,
    ) -> Keyring:
        """A keyring whose primary is ``primary``, with ``others`` installed too."""
        if isinstance(others, str):  # a lone string is a Sequence[str] of characters
            raise ValueError("others must be a sequence of base64 keys, not one string")
        return cls(
            decode_key(primary),
            [decode_key(k) for k in others],
            nonce_source=nonce_source,
        )

    def _add(self, key: bytes) -> None:
        if len(key) not in KEY_SIZES:
            raise ValueError(f"encrypt key must be 16, 24 or 32 bytes, got {len(key)} bytes")
        key = bytes(key)
        if key not in self._ciphers:
            self._ciphers[key] = AESGCM(key)
            self._keys.append(key)

    # --- management ----------------------------------------------------------------------

    def install(self, key_b64: str) -> None:
        """Install a key for decryption (not yet primary). Installing it again does nothing."""
        self._add(decode_key(key_b64))

    def use(self, key_b64: str) -> None:
        """Make an installed key the primary (the one that encrypts)."""
        key = decode_key(key_b64)
        if key not in self._ciphers:
            raise ValueError("encrypt key is not installed: install it before using it")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key_b64: str) -> None:
        """Remove an installed key. The primary cannot be removed; removing a key that is not
        installed does nothing (as memberlist does), so a cluster-wide removal is idempotent."""
        key = decode_key(key_b64)
        if key == self._keys[0]:
            raise ValueError("cannot remove the primary encrypt key: use another key first")
        if key in self._ciphers:
            del self._ciphers[key]
            self._keys.remove(key)

    def list(self) -> _StrList:
        """Every installed key in canonical base64, the primary first."""
        return [_b64(k) for k in self._keys]

    @property
    def primary_b64(self) -> str:
        return _b64(self._keys[0])

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_b64: object) -> bool:
        if not isinstance(key_b64, str):
            return False
        try:
            return decode_key(key_b64) in self._ciphers
        except ValueError:
            return False

    def __repr__(self) -> str:  # never the keys themselves
        return f"<Keyring: {len(self._keys)} key(s)>"

    # --- encryption ----------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """``plaintext`` sealed with the primary key; ``ENCRYPTION_OVERHEAD`` bytes longer."""
        nonce = self._nonce_source(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce source returned {len(nonce)} bytes, not {NONCE_SIZE}")
        sealed = self._ciphers[self._keys[0]].encrypt(nonce, plaintext, aad)
        return _VERSION_BYTE + nonce + sealed

    def decrypt(self, data: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of ``data``, trying the primary key first, then the others in order.

        Raises ``DecryptError`` if ``data`` is malformed or no installed key authenticates it.
        """
        if len(data) < ENCRYPTION_OVERHEAD:
            raise DecryptError(
                f"encrypted data of {len(data)} bytes is shorter than the "
                f"{ENCRYPTION_OVERHEAD}-byte minimum"
            )
        if data[0] != VERSION:
            raise DecryptError(f"unknown encryption version {data[0]}")
        data = bytes(data)
        nonce = data[1 : 1 + NONCE_SIZE]
        sealed = data[1 + NONCE_SIZE :]
        for key in self._keys:
            try:
                return self._ciphers[key].decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
        raise DecryptError("no installed encrypt key authenticates the data")
