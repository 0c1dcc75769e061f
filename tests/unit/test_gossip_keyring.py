"""gossip.keyring: AES-GCM with Consul's encrypt key format, key rotation, hostile input."""

from __future__ import annotations

import base64
import itertools

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.keyring import ENCRYPTION_OVERHEAD, DecryptError, Keyring, decode_key


def _key(seed: int, size: int = 32) -> str:
    return base64.b64encode(bytes((seed + i) % 256 for i in range(size))).decode()


KEY_A, KEY_B, KEY_C = _key(1), _key(2), _key(3)
# The shape `consul keygen` prints: base64 of 32 bytes.
CONSUL_STYLE = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="


def test_overhead_constant() -> None:
    assert ENCRYPTION_OVERHEAD == 1 + 12 + 16


@pytest.mark.parametrize("size", [16, 24, 32])
@pytest.mark.parametrize("plaintext", [b"", b"x", b"gossip packet" * 100])
def test_round_trip_for_every_key_size(size: int, plaintext: bytes) -> None:
    kr = Keyring.from_b64(_key(7, size))
    sealed = kr.encrypt(plaintext)
    assert len(sealed) == len(plaintext) + ENCRYPTION_OVERHEAD
    assert sealed[0] == 1
    assert kr.decrypt(sealed) == plaintext


def test_consul_generated_key_is_accepted() -> None:
    kr = Keyring.from_b64(CONSUL_STYLE)
    assert kr.primary_b64 == CONSUL_STYLE
    assert kr.decrypt(kr.encrypt(b"hello")) == b"hello"


def test_format_is_version_nonce_ciphertext_tag() -> None:
    nonce = bytes(range(12))
    kr = Keyring.from_b64(KEY_A, nonce_source=lambda n: nonce[:n])
    sealed = kr.encrypt(b"payload", aad=b"label")
    assert sealed[:1] == b"\x01"
    assert sealed[1:13] == nonce
    # Anyone with the key and the documented layout can open it.
    raw = base64.b64decode(KEY_A)
    assert AESGCM(raw).decrypt(nonce, sealed[13:], b"label") == b"payload"
    assert len(sealed[13:]) == len(b"payload") + 16


def test_nonces_come_from_the_nonce_source_and_default_to_random() -> None:
    counter = itertools.count()
    kr = Keyring.from_b64(KEY_A, nonce_source=lambda n: next(counter).to_bytes(n, "big"))
    first, second = kr.encrypt(b"same"), kr.encrypt(b"same")
    assert first[1:13] == (0).to_bytes(12, "big")
    assert second[1:13] == (1).to_bytes(12, "big")
    default = Keyring.from_b64(KEY_A)
    assert default.encrypt(b"same")[1:13] != default.encrypt(b"same")[1:13]


def test_a_nonce_source_of_the_wrong_length_is_refused() -> None:
    kr = Keyring.from_b64(KEY_A, nonce_source=lambda n: b"short")
    with pytest.raises(ValueError, match="nonce source returned 5 bytes, not 12"):
        kr.encrypt(b"x")


def test_aad_is_authenticated() -> None:
    kr = Keyring.from_b64(KEY_A)
    sealed = kr.encrypt(b"payload", aad=b"dc1")
    assert kr.decrypt(sealed, aad=b"dc1") == b"payload"
    for other in (b"", b"dc2"):
        with pytest.raises(DecryptError):
            kr.decrypt(sealed, aad=other)


# --- rotation ------------------------------------------------------------------------------


def test_rotation_keeps_old_traffic_readable_until_the_old_key_is_removed() -> None:
    kr = Keyring.from_b64(KEY_A)
    old_peer = Keyring.from_b64(KEY_A)
    before = kr.encrypt(b"before")

    kr.install(KEY_B)
    assert kr.list() == [KEY_A, KEY_B]
    assert kr.primary_b64 == KEY_A
    assert old_peer.decrypt(kr.encrypt(b"still A")) == b"still A"  # install does not switch

    kr.use(KEY_B)
    assert kr.primary_b64 == KEY_B
    assert kr.list() == [KEY_B, KEY_A]
    after = kr.encrypt(b"after")
    assert kr.decrypt(before) == b"before"  # the old key still decrypts
    assert kr.decrypt(old_peer.encrypt(b"from old peer")) == b"from old peer"
    with pytest.raises(DecryptError):
        old_peer.decrypt(after)

    kr.remove(KEY_A)
    assert kr.list() == [KEY_B]
    assert kr.decrypt(after) == b"after"
    with pytest.raises(DecryptError):
        kr.decrypt(before)


def test_others_are_installed_in_order_after_the_primary() -> None:
    kr = Keyring.from_b64(KEY_B, [KEY_A, KEY_C, KEY_A, KEY_B])
    assert kr.list() == [KEY_B, KEY_A, KEY_C]
    assert len(kr) == 3
    assert KEY_C in kr and _key(9) not in kr and "not base64!" not in kr
    assert kr.decrypt(Keyring.from_b64(KEY_C).encrypt(b"c")) == b"c"


def test_install_twice_is_a_no_op_and_use_keeps_the_others() -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    kr.install(KEY_B)
    kr.install(KEY_A)
    assert kr.list() == [KEY_A, KEY_B]
    kr.use(KEY_A)
    assert kr.list() == [KEY_A, KEY_B]


def test_use_requires_an_installed_key() -> None:
    kr = Keyring.from_b64(KEY_A)
    with pytest.raises(ValueError, match="not installed"):
        kr.use(KEY_B)
    assert kr.list() == [KEY_A]


def test_the_primary_cannot_be_removed() -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    with pytest.raises(ValueError, match="cannot remove the primary"):
        kr.remove(KEY_A)
    assert kr.list() == [KEY_A, KEY_B]


def test_removing_a_key_that_is_not_installed_does_nothing() -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    kr.remove(KEY_C)
    assert kr.list() == [KEY_A, KEY_B]


def test_keys_are_compared_by_their_bytes() -> None:
    # Base64 with non-zero padding bits decodes to the same 16 bytes as the canonical form.
    canonical = _key(5, 16)
    assert canonical.endswith("==")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    variant = canonical[:-3] + last[last.index(canonical[-3]) + 1] + "=="
    assert decode_key(variant) == decode_key(canonical)
    kr = Keyring.from_b64(KEY_A, [canonical])
    kr.install(variant)
    kr.use(f"  {variant}\n")
    assert kr.list() == [canonical, KEY_A]


# --- bad keys ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 8, 15, 17, 20, 31, 33, 64])
def test_bad_key_sizes_name_the_size(size: int) -> None:
    bad = base64.b64encode(b"k" * size).decode()
    message = f"encrypt key must be base64 of 16, 24 or 32 bytes, got {size} bytes"
    with pytest.raises(ValueError, match=message):
        Keyring.from_b64(bad)
    with pytest.raises(ValueError, match=message):
        Keyring.from_b64(KEY_A, [bad])
    kr = Keyring.from_b64(KEY_A)
    for op in (kr.install, kr.use, kr.remove):
        with pytest.raises(ValueError, match=message):
            op(bad)
    assert kr.list() == [KEY_A]


@pytest.mark.parametrize("bad", ["not base64!", KEY_A[:-1], KEY_A.rstrip("="), "a b" + KEY_A])
def test_invalid_base64_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="encrypt key is not valid base64"):
        Keyring.from_b64(bad)


def test_non_string_keys_and_a_lone_string_of_others_are_refused() -> None:
    with pytest.raises(ValueError, match="base64 string"):
        Keyring.from_b64(base64.b64decode(KEY_A))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence of base64 keys"):
        Keyring.from_b64(KEY_A, KEY_B)


def test_raw_key_constructor_checks_sizes() -> None:
    with pytest.raises(ValueError, match="got 10 bytes"):
        Keyring(b"k" * 10)
    kr = Keyring(base64.b64decode(KEY_A), [base64.b64decode(KEY_B)])
    assert kr.list() == [KEY_A, KEY_B]


def test_repr_does_not_reveal_keys() -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    assert KEY_A not in repr(kr) and KEY_B not in repr(kr)
    assert "2" in repr(kr)


# --- hostile ciphertext --------------------------------------------------------------------


def test_wrong_key_is_a_decrypt_error() -> None:
    sealed = Keyring.from_b64(KEY_A).encrypt(b"secret")
    with pytest.raises(DecryptError, match="no installed encrypt key"):
        Keyring.from_b64(KEY_B, [KEY_C]).decrypt(sealed)


def test_tampering_with_any_byte_is_a_decrypt_error() -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    sealed = kr.encrypt(b"a gossip packet", aad=b"label")
    for i in range(len(sealed)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(sealed)
            tampered[i] ^= mask
            with pytest.raises(DecryptError):
                kr.decrypt(bytes(tampered), aad=b"label")


def test_every_truncation_and_extension_is_a_decrypt_error() -> None:
    kr = Keyring.from_b64(KEY_A)
    sealed = kr.encrypt(b"a gossip packet")
    for n in range(len(sealed)):
        with pytest.raises(DecryptError):
            kr.decrypt(sealed[:n])
    with pytest.raises(DecryptError):
        kr.decrypt(sealed + b"\x00")


def test_an_unknown_version_is_a_decrypt_error() -> None:
    kr = Keyring.from_b64(KEY_A)
    sealed = kr.encrypt(b"x")
    with pytest.raises(DecryptError, match="unknown encryption version 2"):
        kr.decrypt(b"\x02" + sealed[1:])


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_garbage_raises_only_decrypt_error(data: bytes) -> None:
    with pytest.raises(DecryptError):
        Keyring.from_b64(KEY_A, [KEY_B]).decrypt(data)


@settings(max_examples=300)
@given(st.binary(min_size=ENCRYPTION_OVERHEAD - 1, max_size=120))
def test_garbage_with_the_right_version_raises_only_decrypt_error(data: bytes) -> None:
    with pytest.raises(DecryptError):
        Keyring.from_b64(KEY_A, [KEY_B]).decrypt(b"\x01" + data)


@given(st.binary(max_size=200), st.binary(max_size=20), st.data())
def test_round_trip_and_single_tamper(plaintext: bytes, aad: bytes, data: st.DataObject) -> None:
    kr = Keyring.from_b64(KEY_A, [KEY_B])
    sealed = kr.encrypt(plaintext, aad)
    assert kr.decrypt(sealed, aad) == plaintext
    i = data.draw(st.integers(0, len(sealed) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed)
    tampered[i] ^= mask
    with pytest.raises(DecryptError):
        kr.decrypt(bytes(tampered), aad)
