"""sevsim's simulated AMD: the ARK and ASK that every simulated chip of a product chains to,
and the ASVK that signs VLEKs.

These are NOT AMD's keys. They are derived from a fixed, published seed per product, so every
simulated chip of a product chains to the same root and anyone can re-derive them: a chain
that verifies to them proves only that sevsim's firmware made it (their key ids read
"sevsimARK-<product>" and "sevsimASK-<product>"). The prime search runs in pure Python and
takes seconds for a 4096-bit key, so the derived keys ship as package data
(`simulated_amd/<product>/{ark,ask,asvk}.pem`); `tools/derive_simulated_amd_roots.py` derives
them again and writes their certificates into the verifier's sevsim trust store, and the tests
check that the shipped files are exactly what the derivation gives.

Each root has AMD's two certificate formats: the legacy 0x824-byte ARK/ASK (`amd_cert`) and,
for SNP products, X.509 ARK/ASK/ASVK shaped like AMD's (`x509_ca_certificates`). Signatures
use RSA-PSS with a salt derived from the key and the message (still a valid PSS signature)
and every certificate is issued at one fixed instant, so a certificate is the same bytes on
every run and on every machine: the files shipped and published (docs/simulated-roots.md) are
the ones the firmware, KDS and `--certs-out` hand out.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sevsim.abi.sev_cert import AmdCert, Usage
from sevsim.abi.snp_cert import (
    CertTime,
    TbsCertificate,
    amd_name,
    ca_extensions,
    encode_certificate,
)
from sevsim.errors import ConfigError

SEED = b"sevsim simulated AMD root key: not AMD's, public, for simulation only"
PRODUCTS = ("naples", "rome", "milan", "genoa", "turin")
SNP_PRODUCTS = ("milan", "genoa", "turin")  # these also have an ASVK, which signs VLEKs
EXPONENT = 65537
ROLES = {"ark": Usage.ARK, "ask": Usage.ASK}
X509_ROLES = ("ark", "ask", "asvk")
# AMD's X.509 serial numbers (spec-formats.md §5.1), the product in the third byte
X509_SERIALS = {"milan": (0x10000, 0x10001, 0x10101), "genoa": (0x20000, 0x20002, 0x20101),
                "turin": (0x30000, 0x30001, 0x30101)}
# Every simulated certificate is issued at one fixed instant, so the same keys give the same
# bytes. CAs live 25 years, as AMD's (Milan's ARK: 2020-10-22 to 2045-10-22).
ISSUED = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
CA_YEARS = 25
KDS_HOST = "https://kdsintf.amd.com"
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def key_bits(product: str) -> int:
    """Naples' AMD keys are 2048-bit, Rome's and later 4096-bit."""
    return 2048 if product == "naples" else 4096


def key_id(product: str, role: str) -> bytes:
    """The 16-byte key id of a simulated ARK or ASK: sevsim's, never AMD's."""
    return f"sevsim{role.upper()}-{product}".encode().ljust(16, b"\0")


# -- deterministic key derivation ---------------------------------------------------------------


def _stream(label: bytes, seed: bytes) -> Callable[[int], bytes]:
    """An HMAC-SHA256 counter-mode byte stream: the same seed and label, the same bytes."""
    counter = 0

    def take(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            counter += 1
            out += hmac.new(seed, label + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        return out[:n]

    return take


@cache
def _small_primes(limit: int = 1 << 17) -> list[int]:
    """Odd primes below `limit`, for sieving. They only skip composites: the keys found do
    not depend on how many there are, only the time taken."""
    sieve = bytearray([1]) * limit
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, limit, p)))
    return [p for p in range(3, limit) if sieve[p]]


def _probable_prime(n: int) -> bool:
    """Miller-Rabin with fixed bases: enough for random candidates (not adversarial ones)."""
    d, r = n - 1, 0
    while not d & 1:
        d, r = d >> 1, r + 1
    for base in _MR_BASES:
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(take: Callable[[int], bytes], bits: int) -> int:
    """A prime of exactly `bits` bits with the top two set (so p*q has 2*bits bits), found by
    sieving a window above a derived start and testing the survivors in order."""
    window = 1 << 13  # odd candidates per window
    while True:
        start = (int.from_bytes(take(bits // 8), "big") | 3 << (bits - 2) | 1) & ((1 << bits) - 1)
        composite = bytearray(window)
        for p in _small_primes():
            first = (-start * pow(2, -1, p)) % p  # start + 2*first is divisible by p
            composite[first::p] = b"\x01" * len(range(first, window, p))
        for i in range(window):
            candidate = start + 2 * i
            if candidate.bit_length() != bits:
                break
            if (not composite[i] and math.gcd(EXPONENT, candidate - 1) == 1
                    and _probable_prime(candidate)):
                return candidate


def derive_key(product: str, role: str) -> rsa.RSAPrivateKey:
    """The simulated ARK or ASK key of a product, from SEED alone (seconds for 4096 bits)."""
    return derive_rsa_key(SEED, f"{product}/{role}".encode(), key_bits(product))


def derive_rsa_key(seed: bytes, label: bytes, bits: int) -> rsa.RSAPrivateKey:
    """An RSA key (e = 65537) that a published seed and a label fix: sevsim's simulated
    vendor roots (this module's AMD ones, firmware.gce_endorser's Google one)."""
    take = _stream(label, seed)
    half = bits // 2
    p = _prime(take, half)
    q = _prime(take, half)
    while q == p:
        q = _prime(take, half)
    d = pow(EXPONENT, -1, (p - 1) * (q - 1))
    return rsa.RSAPrivateNumbers(
        p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(EXPONENT, p * q)).private_key()


# -- deterministic RSA-PSS ---------------------------------------------------------------------


def _mgf1(seed: bytes, length: int, name: str) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def pss_sign(key: rsa.RSAPrivateKey, message: bytes, hash_name: str) -> bytes:
    """RSASSA-PSS (RFC 8017 §8.1, MGF1 with the same hash, salt as long as the hash) with the
    salt derived from the private key and the message; big-endian, one modulus long."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    mod_bits = n.bit_length()
    em_bits = mod_bits - 1
    em_len = -(-em_bits // 8)
    m_hash = hashlib.new(hash_name, message).digest()
    h_len = len(m_hash)
    salt = hashlib.new(hash_name, numbers.d.to_bytes(mod_bits // 8, "big") + message).digest()
    h = hashlib.new(hash_name, bytes(8) + m_hash + salt).digest()
    db = bytes(em_len - 2 * h_len - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1(h, em_len - h_len - 1, hash_name),
                                              strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    m = int.from_bytes(bytes(masked) + h + b"\xbc", "big")
    s1 = pow(m, numbers.dmp1, numbers.p)  # CRT
    s2 = pow(m, numbers.dmq1, numbers.q)
    s = s2 + numbers.q * (numbers.iqmp * (s1 - s2) % numbers.p)
    return s.to_bytes(mod_bits // 8, "big")


def pss_hash_name(bits: int) -> str:
    """The RSA-PSS hash AMD uses with a key size: SHA-256 for 2048 bits, else SHA-384."""
    return "sha256" if bits == 2048 else "sha384"


def amd_cert(product: str, role: str, key: rsa.RSAPublicKey, signer: rsa.RSAPrivateKey,
             signer_role: str) -> AmdCert:
    """An ARK or ASK certificate in AMD's format, signed by `signer`."""
    bits = key.key_size
    unsigned = AmdCert(key_id(product, role), key_id(product, signer_role), ROLES[role], bits,
                       bits, key.public_numbers().e, key.public_numbers().n, bytes(bits // 8))
    signature = pss_sign(signer, unsigned.signed_bytes(), pss_hash_name(bits))
    return AmdCert(unsigned.key_id, unsigned.certifying_id, unsigned.usage, bits, bits,
                   unsigned.exponent, unsigned.modulus, signature[::-1])


def x509_ca_certificates(product: str, ark_key: rsa.RSAPrivateKey, ask_key: rsa.RSAPrivateKey,
                         asvk_key: rsa.RSAPrivateKey) -> dict[str, bytes]:
    """An SNP product's ARK, ASK and ASVK as KDS serves AMD's (DER, by role): AMD's names,
    serials and extensions, 25 years from ISSUED, RSASSA-PSS SHA-384 with the explicit
    trailerField AMD's CA certificates carry, signed by the ARK."""
    if product.lower() not in X509_SERIALS:
        raise ConfigError(f"{product!r} has no SEV-SNP, hence no X.509 ARK/ASK/ASVK")
    name = product.capitalize()
    not_before = CertTime.utc(ISSUED.year, ISSUED.month, ISSUED.day)
    spki = {role: key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            for role, key in (("ark", ark_key), ("ask", ask_key), ("asvk", asvk_key))}
    subjects = {"ark": f"ARK-{name}", "ask": f"SEV-{name}", "asvk": f"SEV-VLEK-{name}"}
    crl = {"ark": "vcek", "ask": "vcek", "asvk": "vlek"}
    out = {}
    for role, serial in zip(X509_ROLES, X509_SERIALS[product.lower()], strict=True):
        tbs = TbsCertificate(
            amd_name(subjects["ark"]), amd_name(subjects[role]), not_before,
            not_before.plus_years(CA_YEARS), spki[role],
            ca_extensions(spki[role], f"{KDS_HOST}/{crl[role]}/v1/{name}/crl",
                          None if role == "ark" else spki["ark"]),
            serial, pss_trailer=True)
        out[role] = encode_certificate(tbs, pss_sign(ark_key, tbs.to_der(), "sha384"))
    return out


# -- what the firmware uses ----------------------------------------------------------------------


@dataclass(frozen=True)
class SimulatedRoot:
    """One product's simulated AMD signing keys and their certificates."""

    product: str
    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    ark: AmdCert
    ask: AmdCert


def build_root(product: str, ark_key: rsa.RSAPrivateKey, ask_key: rsa.RSAPrivateKey
               ) -> SimulatedRoot:
    """A product's simulated root: the keys and their AMD-format certificates."""
    return SimulatedRoot(product, ark_key, ask_key,
                         amd_cert(product, "ark", ark_key.public_key(), ark_key, "ark"),
                         amd_cert(product, "ask", ask_key.public_key(), ark_key, "ark"))


def _shipped_key(product: str, role: str) -> rsa.RSAPrivateKey:
    pem = resources.files("sevsim.firmware").joinpath(
        "simulated_amd", product, f"{role}.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@cache
def simulated_asvk(product: str) -> rsa.RSAPrivateKey:
    """The simulated ASVK of an SNP product: the key that signs VLEKs."""
    product = product.lower()
    if product not in SNP_PRODUCTS:
        raise ConfigError(f"no simulated ASVK for product {product!r}")
    return _shipped_key(product, "asvk")


@cache
def simulated_root(product: str) -> SimulatedRoot:
    """The shipped simulated root of a product (Naples, Rome, Milan, Genoa, Turin)."""
    product = product.lower()
    if product not in PRODUCTS:
        raise ConfigError(f"no simulated AMD root for product {product!r}")
    return build_root(product, _shipped_key(product, "ark"), _shipped_key(product, "ask"))


@cache
def simulated_x509(product: str) -> dict[str, bytes]:
    """The simulated X.509 ARK, ASK and ASVK of an SNP product (DER, by role): the bytes the
    sevsim trust store ships."""
    root = simulated_root(product)
    return x509_ca_certificates(root.product, root.ark_key, root.ask_key,
                                simulated_asvk(root.product))


def regenerate(firmware_dir: Path, trust_dir: Path, products: tuple[str, ...] = PRODUCTS) -> None:
    """Derive every product's keys from SEED; write the keys (firmware package data) and the
    certificates of the verifier's sevsim trust store `trust_dir`: the AMD-format ARK/ASK as
    `sev/<product>/{ark,ask}.cert` and, for SNP products, the X.509 ARK/ASK/ASVK as
    `snp/<product>/{ark,ask,asvk}.pem`."""
    for product in products:
        keys = {role: derive_key(product, role) for role in ROLES}
        root = build_root(product, keys["ark"], keys["ask"])
        (firmware_dir / product).mkdir(parents=True, exist_ok=True)
        (trust_dir / "sev" / product).mkdir(parents=True, exist_ok=True)
        for role, key in keys.items():
            _write_key(firmware_dir / product / f"{role}.pem", key)
            cert = root.ark if role == "ark" else root.ask
            (trust_dir / "sev" / product / f"{role}.cert").write_bytes(cert.to_bytes())
        if product in SNP_PRODUCTS:
            asvk = derive_key(product, "asvk")
            _write_key(firmware_dir / product / "asvk.pem", asvk)
            (trust_dir / "snp" / product).mkdir(parents=True, exist_ok=True)
            certs = x509_ca_certificates(product, keys["ark"], keys["ask"], asvk)
            for role, der in certs.items():
                (trust_dir / "snp" / product / f"{role}.pem").write_bytes(_pem(der))


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _pem(der: bytes) -> bytes:
    """A certificate's PEM, as KDS, `--certs-out` and the trust store write it."""
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
