"""F2: AMD-SP firmware bugs give the host the CEK: a forged chain, a fake migration target."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.policy import PolicyFlags
from sevsim.abi.sev_cert import Algo, CertChain, EcPublicKey, SevCert, Signature, Usage
from sevsim.abi.sev_session import PacketHeader, Session, TransportKeys, open_packet
from sevsim.abi.snp_idblock import IdBlock
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.abi.status import SevStatus
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab, Victim
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.errors import FirmwareError

_ECDSA = ec.ECDSA(hashes.SHA256())


def _key(scalar: bytes) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP384R1())


def _signed(usage: Usage, algo: Algo, key: ec.EllipticCurvePrivateKey,
            signers: tuple[tuple[Usage, ec.EllipticCurvePrivateKey], ...], api: tuple[int, int]
            ) -> SevCert:
    """A legacy certificate for `key`, signed by each (usage, key) of `signers`."""
    unsigned = SevCert(api[0], api[1], usage, algo, EcPublicKey.from_key(key.public_key()),
                       Signature.empty(), Signature.empty())
    sigs = [Signature.ecdsa(by, Algo.ECDSA_SHA256, signer.sign(unsigned.signed_bytes(), _ECDSA))
            for by, signer in signers]
    sigs += [Signature.empty()] * (2 - len(sigs))
    return SevCert(api[0], api[1], usage, algo, unsigned.key, sigs[0], sigs[1])


class SpFirmwareBug(Attack):
    """Run code on the Secure Processor through a firmware bug, take the keys it holds, and
    use them: under SEV, a PEK signed with the platform's own CEK makes the attacker's PDH
    a genuine-looking migration target; under SNP, a report signed with the VCEK."""

    id = "F2"
    name = "AMD-SP firmware bug: CEK extraction, fake migration target, forged attestation"
    actor = "malicious host"
    source = ("R. Buhren, C. Werling, J.-P. Seifert, 'Insecure Until Proven Updated: "
              "Analyzing AMD SEV's Remote Attestation', ACM CCS 2019")
    flaws = frozenset({"vulnerable_sp_code_exec"})

    def not_applicable(self, setting: Setting) -> str | None:
        """A plain VM has no keys in the Secure Processor to steal."""
        return "a plain VM has no Secure Processor keys" if setting.mode == "none" else None

    def attempt(self, lab: Lab) -> Attempt:
        """Exploit the firmware, then migrate the victim to ourselves; a firmware that has
        no legacy guest of that handle (an SNP guest) is answered with a forged report."""
        # the owner lets the guest move only to genuine AMD platforms (policy bit SEV)
        victim = lab.victim("secret_in_memory", policy=int(PolicyFlags.NODBG | PolicyFlags.SEV))
        hv = lab.hypervisor
        hv.run(victim.vm)
        dump = hv.firmware.sp_exploit()
        vcek = f" and the VCEK of TCB {dump.tcb}" if dump.vcek else ""
        lab.trace("the crafted command buffer ran our code on the Secure Processor: it copied "
                  f"out the CEK private key{vcek}")
        try:
            return self._migrate(lab, hv, victim, _key(dump.cek))
        except FirmwareError as refusal:
            if refusal.status is not SevStatus.INVALID_GUEST or dump.vcek is None:
                raise
            lab.trace(f"SEND_START: {refusal} (an SNP guest): forge its report instead")
        return self._forge_report(lab, hv, victim, _key(dump.vcek), dump.tcb)

    @staticmethod
    def _migrate(lab: Lab, hv: HypervisorAttacker, victim: Victim,
                 cek: ec.EllipticCurvePrivateKey) -> Attempt:
        """SEND_START to our own PDH, certified by a PEK the stolen CEK signs; every page
        then leaves under transport keys we can unwrap."""
        fw = hv.firmware
        platform_pdh, chain = fw.pdh_cert_export()
        api = (chain.pek.api_major, chain.pek.api_minor)
        oca, pek, pdh = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
        oca_cert = _signed(Usage.OCA, Algo.ECDSA_SHA256, oca, ((Usage.OCA, oca),), api)
        pek_cert = _signed(Usage.PEK, Algo.ECDSA_SHA256, pek,
                           ((Usage.OCA, oca), (Usage.CEK, cek)), api)
        pdh_cert = _signed(Usage.PDH, Algo.ECDH_SHA256, pdh, ((Usage.PEK, pek),), api)
        ark, ask = fw.amd_certs()
        start = fw.send_start(victim.vm.hv.firmware_handle, pdh_cert.to_bytes(),
                              CertChain(pek_cert, oca_cert, chain.cek).to_bytes(), ask + ark)
        lab.trace("SEND_START accepted our chain: our PEK carries a valid signature of this "
                  "platform's CEK, which AMD's ASK signed")
        if not isinstance(platform_pdh.key, EcPublicKey):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, "the platform's PDH is not ECDH")
        shared = pdh.exchange(ec.ECDH(), platform_pdh.key.to_key())
        keys: TransportKeys = Session.from_bytes(start.session).open(shared, start.policy)
        gpa = victim.symbol("secret")
        spa = hv.gpa_to_spa(victim.vm, gpa)
        packet = fw.send_update_data(victim.vm.hv.firmware_handle, spa & ~0xFFF, 0x1000)
        page = open_packet(keys, PacketHeader.from_bytes(packet.header), packet.data, b"")
        lab.trace(f"SEND_UPDATE_DATA of the page at SPA 0x{spa & ~0xFFF:x}: opened with the "
                  "transport keys we unwrapped")
        offset = spa & 0xFFF
        return Attempt(page[offset:offset + 32], "the migrated page, decrypted")

    @staticmethod
    def _forge_report(lab: Lab, hv: HypervisorAttacker, victim: Victim,
                      vcek: ec.EllipticCurvePrivateKey, tcb: TcbVersion) -> Attempt:
        """An attestation report with the victim's expected measurement, signed with the
        stolen VCEK, offered to the victim's key broker with that VCEK's certificate."""
        fw, chip = hv.firmware, hv.hypervisor.chip
        terms = lab.owner_terms(victim)
        if terms.id_block is None or terms.policy is None:
            raise FirmwareError(SevStatus.INVALID_GUEST, "no SNP guest to impersonate")
        measurement = IdBlock.from_bytes(terms.id_block).ld
        report = AttestationReport(
            policy=terms.policy, current_tcb=tcb.to_int(), measurement=measurement,
            reported_tcb=tcb.to_int(), committed_tcb=tcb.to_int(), launch_tcb=tcb.to_int(),
            cpuid_fam_id=chip.family, cpuid_mod_id=chip.model, cpuid_step=chip.stepping,
            chip_id=fw.chip_id(), current_build=chip.build, current_minor=chip.api_minor,
            current_major=chip.api_major, committed_build=chip.build,
            committed_minor=chip.api_minor, committed_major=chip.api_major).sign(vcek)
        lab.trace(f"forged a report: the victim's measurement {measurement.hex()[:16]}…, "
                  f"TCB {tcb}, signed with the stolen VCEK")
        secret = lab.release_secret(report.to_bytes(), fw.certificate_table(tcb))
        lab.trace("the key broker accepted the report and released the secret")
        return Attempt(secret, "the key broker's answer")
