"""The guest owner's side of a legacy SEV launch, in the spirit of sevctl.

The owner trusts no one but AMD (or, for simulated platforms, sevsim's simulated AMD): it
verifies the platform's chain, opens a session with the PDH that only that firmware can
open (ECDH P-384, the legacy KDF, TEK/TIK wrapped and MAC'd, the policy MAC'd), checks
LAUNCH_MEASURE against the launch digest it computed itself from the guest image, and only
then seals its secret for LAUNCH_SECRET. Everything crossing the host is bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.bootinfo import Segment, boot_info_for, launch_image, pack_secret
from sevsim.abi.policy import PolicyFlags
from sevsim.abi.sev_cert import (
    Algo,
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
    measurement,
    seal_packet,
)
from sevsim.abi.status import PlatformStatus
from sevsim.abi.vmsa import reset_state
from sevsim.attest.sev_chain import PlatformChain, Trust, VerifiedChain, verify
from sevsim.errors import (
    AttestationError,
    CertificateError,
    ConfigError,
    MeasurementError,
    SevCertFormatError,
)

DEFAULT_POLICY = int(PolicyFlags.NODBG | PolicyFlags.NOKS)
LAUNCH_MEASURE_SIZE = 48  # MEASURE[32] || MNONCE[16]


# -- the expected launch digest -------------------------------------------------------------------


class ImageSegment(Protocol):
    """A loadable segment as the owner's digest needs it (sevsim.host.elf's fits)."""

    @property
    def gpa(self) -> int:
        """Where the segment loads."""

    @property
    def data(self) -> bytes:
        """The file bytes."""

    @property
    def memsz(self) -> int:
        """The size in memory (file bytes, then zeros)."""

    @property
    def flags(self) -> int:
        """The ELF program header flags."""


class GuestImage(Protocol):
    """A parsed guest ELF (sevsim.host.elf.parse_elf gives one)."""

    @property
    def entry(self) -> int:
        """The entry point."""

    @property
    def segments(self) -> Sequence[ImageSegment]:
        """The loadable segments, in file order."""


def expected_launch_digest(image: GuestImage, memory_size: int, vcpus: int, kernel_id: bytes,
                           mode: str = "sev", vmsas: Sequence[bytes] = ()) -> bytes:
    """SHA-256 over exactly what sevsim's VMM passes to LAUNCH_UPDATE_DATA, in order (then
    each VMSA for SEV-ES: every vCPU starts from the architectural reset state unless
    `vmsas` says otherwise): computed from the image and the VM's shape, nothing run.
    `kernel_id` is the guest kernel's identity (sevsim.guest.kernel.kernel_identity())."""
    if mode == "sev-es" and not vmsas:
        vmsas = [reset_state().to_bytes()] * vcpus
    boot = boot_info_for(image.entry, [Segment(s.gpa, len(s.data), s.memsz, s.flags)
                                       for s in image.segments],
                         memory_size, vcpus, mode, kernel_id)
    digest = hashlib.sha256()
    for _, page in launch_image(boot, [s.data for s in image.segments]):
        digest.update(page)
    for vmsa in vmsas:
        digest.update(vmsa)
    return digest.digest()


# -- session, measurement, secret --------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSession:
    """What LAUNCH_START gets (the GODH certificate and the session buffer) and what the owner
    keeps to itself (the transport keys)."""

    godh_cert: SevCert
    session: Session
    policy: int
    keys: TransportKeys = field(repr=False)


def make_session(pdh: SevCert, policy: int = DEFAULT_POLICY) -> LaunchSession:
    """A fresh GODH key pair on P-384, ECDH with the PDH, random TEK/TIK, nonce and IV."""
    if pdh.usage is not Usage.PDH or not isinstance(pdh.key, EcPublicKey) or (
            pdh.key.curve is not Curve.P384 or pdh.algo.is_ecdsa):
        raise CertificateError("PDH", f"not a P-384 ECDH key ({pdh.usage.name}, "
                                      f"{pdh.algo.name})")
    try:
        pdh_key = pdh.key.to_key()
    except ValueError as err:
        raise CertificateError("PDH", f"the PDH point is unusable: {err}") from None
    godh = ec.generate_private_key(ec.SECP384R1())
    shared_x = godh.exchange(ec.ECDH(), pdh_key)
    keys = TransportKeys(os.urandom(16), os.urandom(16))
    session = Session.seal(shared_x, os.urandom(16), os.urandom(16), keys, policy)
    cert = SevCert(pdh.api_major, pdh.api_minor, Usage.PDH, Algo.ECDH_SHA256,
                   EcPublicKey.from_key(godh.public_key()), Signature.empty(),
                   Signature.empty())
    return LaunchSession(cert, session, policy, keys)


@dataclass(frozen=True)
class VerifiedLaunch:
    """A LAUNCH_MEASURE that matched: the only way to a sealed secret."""

    keys: TransportKeys = field(repr=False)
    measure: bytes
    api: tuple[int, int]

    def seal_secret(self, secret: bytes) -> tuple[PacketHeader, bytes]:
        """LAUNCH_SECRET's header and ciphertext for the secret page (`u32 length || data`):
        AES-128-CTR under the TEK, HMAC under the TIK (over the measurement from API 0.17)."""
        measure = self.measure if self.api >= MEASUREMENT_API_PREFIX else b""
        return seal_packet(self.keys, os.urandom(16), pack_secret(secret), measure)


def verify_measurement(session: LaunchSession, launch_measure: bytes, status: PlatformStatus,
                       expected_digest: bytes) -> VerifiedLaunch:
    """Recompute LAUNCH_MEASURE from the expected launch digest, the API version and build,
    the policy and the firmware's nonce; MeasurementError unless it matches exactly."""
    if len(launch_measure) != LAUNCH_MEASURE_SIZE:
        raise MeasurementError(f"LAUNCH_MEASURE is {LAUNCH_MEASURE_SIZE} bytes, "
                               f"not {len(launch_measure)}")
    measure, mnonce = launch_measure[:32], launch_measure[32:]
    api = (status.api_major, status.api_minor)
    expected = measurement(session.keys.tik, api, status.build, session.policy,
                           expected_digest, mnonce)
    if not hmac.compare_digest(expected, measure):
        raise MeasurementError("LAUNCH_MEASURE does not match the expected launch digest "
                               f"{expected_digest.hex()}: another image, VM shape or policy, "
                               "or another firmware version")
    return VerifiedLaunch(session.keys, measure, api)


class GuestOwner:
    """A guest owner with one secret for one expected launch: what
    `VirtualMachine.launch(owner=...)` talks to. `trust` names the root it accepts ("amd" for
    real hardware, "sevsim" for simulated chips); `product` pins the product if given."""

    def __init__(self, secret: bytes, expected_digest: bytes, policy: int = DEFAULT_POLICY,
                 trust: Trust = "amd", product: str | None = None) -> None:
        pack_secret(secret)  # refuse a secret that does not fit now, not after the launch
        if len(expected_digest) != 32:
            raise ConfigError(f"a launch digest is 32 bytes, not {len(expected_digest)}")
        self._secret = secret
        self.expected_digest = expected_digest
        self._policy = policy
        self.trust: Trust = trust
        self.product = product
        self.chain: VerifiedChain | None = None
        self._session: LaunchSession | None = None

    @property
    def policy(self) -> int:
        """The guest policy the owner launches with."""
        return self._policy

    def start(self, pdh_cert: bytes, cert_chain: bytes) -> tuple[bytes, bytes]:
        """Verify PDH_CERT_EXPORT's chain; the GODH certificate and session for LAUNCH_START."""
        try:
            chain = PlatformChain.from_export(pdh_cert, cert_chain)
        except SevCertFormatError as err:
            raise CertificateError("PDH_CERT_EXPORT", str(err)) from None
        self.chain = verify(chain, self.trust, self.product)
        self._session = make_session(chain.pdh, self._policy)
        return self._session.godh_cert.to_bytes(), self._session.session.to_bytes()

    def secret_packet(self, launch_measure: bytes, platform_status: bytes
                      ) -> tuple[bytes, bytes]:
        """LAUNCH_SECRET's header and ciphertext, only if LAUNCH_MEASURE is the expected one."""
        if self._session is None:
            raise AttestationError("no session yet: the owner verifies the platform first")
        try:
            status = PlatformStatus.from_bytes(platform_status)
        except ValueError as err:
            raise MeasurementError(f"PLATFORM_STATUS: {err}") from None
        launch = verify_measurement(self._session, launch_measure, status,
                                    self.expected_digest)
        header, ciphertext = launch.seal_secret(self._secret)
        return header.to_bytes(), ciphertext
