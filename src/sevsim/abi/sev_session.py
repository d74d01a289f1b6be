"""The legacy SEV launch-session protocol, as AMD specifies it (spec-formats.md §9.5 to 9.7).

These are formulas both ends must compute identically (firmware and guest owner, or source
and target firmware in migration), so they live here beside the byte layouts: the KDF, the
session buffer, LAUNCH_MEASURE's MAC and the LAUNCH_SECRET / SEND_UPDATE packet header.
Sources: AMDESE/sev-tool commands.cpp, virtee/sev src/session (test vectors in the tests).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sevsim.errors import FormatError

SESSION_SIZE = 0x80
PACKET_HEADER_SIZE = 52  # FLAGS u32, IV[16], MAC[32]
FLAG_COMPRESSED = 1
MEASUREMENT_API_PREFIX = (0, 17)  # from API 0.17 the MAC also covers version and build


def kdf(key: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """NIST SP 800-108 counter-mode KDF with HMAC-SHA256, counter and length little-endian."""
    out = b""
    counter = 1
    while len(out) < length:
        out += hmac.new(key, struct.pack("<I", counter) + label + b"\0" + context
                        + struct.pack("<I", length * 8), hashlib.sha256).digest()
        counter += 1
    return out[:length]


@dataclass(frozen=True)
class TransportKeys:
    """TEK (AES-128 for data) and TIK (HMAC-SHA256 for integrity)."""

    tek: bytes
    tik: bytes


def master_secret(shared_x: bytes, nonce: bytes) -> bytes:
    """From the ECDH shared X coordinate (big-endian, as OpenSSL returns it) and the nonce."""
    return kdf(shared_x, b"sev-master-secret", nonce, 16)


def key_encryption_keys(master: bytes) -> tuple[bytes, bytes]:
    """(KEK, KIK): wrap the transport keys, and authenticate the wrapping."""
    return kdf(master, b"sev-kek", b"", 16), kdf(master, b"sev-kik", b"", 16)


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


@dataclass(frozen=True)
class Session:
    """The 0x80-byte session buffer of LAUNCH_START / RECEIVE_START."""

    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    def to_bytes(self) -> bytes:
        """The session buffer LAUNCH_START takes."""
        return self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac

    @classmethod
    def from_bytes(cls, blob: bytes) -> Session:
        """Parse a session buffer; FormatError for a wrong size."""
        if len(blob) != SESSION_SIZE:
            raise FormatError(f"session buffer is {len(blob)} bytes, not {SESSION_SIZE}")
        return cls(blob[0:16], blob[16:48], blob[48:64], blob[64:96], blob[96:128])

    @classmethod
    def seal(cls, shared_x: bytes, nonce: bytes, wrap_iv: bytes, keys: TransportKeys,
             policy: int) -> Session:
        """The guest owner's side: wrap TEK || TIK under the KEK, MAC them and the policy."""
        kek, kik = key_encryption_keys(master_secret(shared_x, nonce))
        wrap_tk = _ctr(kek, wrap_iv, keys.tek + keys.tik)
        wrap_mac = hmac.new(kik, wrap_tk, hashlib.sha256).digest()
        policy_mac = hmac.new(keys.tik, struct.pack("<I", policy), hashlib.sha256).digest()
        return cls(nonce, wrap_tk, wrap_iv, wrap_mac, policy_mac)

    def open(self, shared_x: bytes, policy: int) -> TransportKeys:
        """The firmware's side: check both MACs, unwrap the keys. FormatError names the MAC."""
        kek, kik = key_encryption_keys(master_secret(shared_x, self.nonce))
        if not hmac.compare_digest(hmac.new(kik, self.wrap_tk, hashlib.sha256).digest(),
                                   self.wrap_mac):
            raise FormatError("WRAP_MAC does not match: the session was not made for this PDH")
        plain = _ctr(kek, self.wrap_iv, self.wrap_tk)
        keys = TransportKeys(plain[:16], plain[16:])
        if not hmac.compare_digest(hmac.new(keys.tik, struct.pack("<I", policy),
                                            hashlib.sha256).digest(), self.policy_mac):
            raise FormatError("POLICY_MAC does not match the policy given to LAUNCH_START")
        return keys


def measurement(tik: bytes, api: tuple[int, int], build: int, policy: int, digest: bytes,
                mnonce: bytes) -> bytes:
    """LAUNCH_MEASURE's MEASURE: HMAC-SHA256 under the TIK over the launch digest."""
    prefix = bytes((0x04, api[0], api[1], build)) if api >= MEASUREMENT_API_PREFIX else b""
    return hmac.new(tik, prefix + struct.pack("<I", policy) + digest + mnonce,
                    hashlib.sha256).digest()


@dataclass(frozen=True)
class PacketHeader:
    """The 52-byte header of a LAUNCH_SECRET, SEND_UPDATE_* or RECEIVE_UPDATE_* packet."""

    flags: int
    iv: bytes
    mac: bytes

    def to_bytes(self) -> bytes:
        """The packet header, as LAUNCH_SECRET and the transport commands take it."""
        return struct.pack("<I", self.flags) + self.iv + self.mac

    @classmethod
    def from_bytes(cls, blob: bytes) -> PacketHeader:
        """Parse a packet header; FormatError for a wrong size."""
        if len(blob) != PACKET_HEADER_SIZE:
            raise FormatError(f"packet header is {len(blob)} bytes, not {PACKET_HEADER_SIZE}")
        (flags,) = struct.unpack_from("<I", blob)
        return cls(flags, blob[4:20], blob[20:52])


def packet_mac(tik: bytes, flags: int, iv: bytes, guest_length: int, ciphertext: bytes,
               measure: bytes) -> bytes:
    """MAC = HMAC(TIK, 0x01 || FLAGS || IV || GUEST_LEN || TRANS_LEN || DATA || MEASURE)."""
    message = (b"\x01" + struct.pack("<I", flags) + iv
               + struct.pack("<II", guest_length, len(ciphertext)) + ciphertext + measure)
    return hmac.new(tik, message, hashlib.sha256).digest()


def seal_packet(keys: TransportKeys, iv: bytes, data: bytes,
                measure: bytes) -> tuple[PacketHeader, bytes]:
    """Encrypt under the TEK (AES-128-CTR) and MAC under the TIK."""
    ciphertext = _ctr(keys.tek, iv, data)
    return PacketHeader(0, iv, packet_mac(keys.tik, 0, iv, len(data), ciphertext, measure)), \
        ciphertext


def open_packet(keys: TransportKeys, header: PacketHeader, ciphertext: bytes,
                measure: bytes) -> bytes:
    """Check the MAC, then decrypt. FormatError when the MAC fails or flags are unsupported."""
    if header.flags & ~FLAG_COMPRESSED or header.flags & FLAG_COMPRESSED:
        raise FormatError(f"packet flags 0x{header.flags:x} are not supported")
    expected = packet_mac(keys.tik, header.flags, header.iv, len(ciphertext), ciphertext,
                          measure)
    if not hmac.compare_digest(expected, header.mac):
        raise FormatError("packet MAC does not match: tampered or for another session")
    return _ctr(keys.tek, header.iv, ciphertext)
