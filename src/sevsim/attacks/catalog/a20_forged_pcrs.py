"""A20: forged PCRs: the host rewrites what the vTPM it provides says about the boot."""

from __future__ import annotations

from sevsim.abi.svsm_vtpm import VtpmEvidence
from sevsim.abi.tpm2 import HashAlg, PcrSelection
from sevsim.attacks.framework import Attack, Attempt
from sevsim.attacks.lab import GOLDEN_CMDLINE, VTPM_PCR, Lab
from sevsim.errors import QuoteError

# The command line the host boots the victim with: a root shell instead of the approved boot
CMDLINE = b"console=ttyS0 init=/bin/sh"


class ForgedPcrs(Attack):
    """Boot the victim with a command line of the host's choosing, then answer the relying
    party's quote request from a fresh swtpm into which the host replayed the approved boot's
    digest (the golden PCR 8), with that swtpm's AK. Against a host-provided vTPM the quote
    verifies and the owner releases its secret. Under SNP the owner wants the SNP-bound vTPM's
    evidence: the victim's own evidence shows the real PCR 8, and the host can pair the forged
    quote only with a report that binds another AK (ak-not-bound) or with the bound AK that
    did not sign it (signature)."""

    id = "A20"
    name = "forged PCRs (host-provided vTPM)"
    actor = "malicious hypervisor"
    source = ("Coconut SVSM vTPM and AMD 58019 (SVSM attestation); GCE Shielded VM "
              "integrity monitoring: the host-provided vTPM is the platform's word")

    def attempt(self, lab: Lab) -> Attempt:
        """Run the victim on the evil command line, forge the quote, present it."""
        hv = lab.hypervisor
        nonce = lab.vtpm_nonce()
        victim = lab.victim("measured_boot")
        victim.vm.host_input = nonce + CMDLINE
        hv.run(victim.vm)
        lab.trace(f"booted the victim with {CMDLINE.decode()!r}; it printed "
                  f"{victim.vm.console.strip()!r}")
        selection: PcrSelection = {HashAlg.SHA256: [VTPM_PCR]}
        with hv.vtpm() as forged:
            forged.pcr_extend(VTPM_PCR, {HashAlg.SHA256: HashAlg.SHA256.hash(GOLDEN_CMDLINE)})
            ak = forged.create_ak()
            attest, signature = forged.quote(ak.handle, nonce, selection)
        lab.trace(f"replayed the golden {GOLDEN_CMDLINE.decode()!r} into a fresh swtpm "
                  f"and quoted PCR {VTPM_PCR} over the owner's nonce")
        if victim.vm.mode != "snp":
            secret = lab.release_secret_to_vtpm(ak.public, attest, signature)
            lab.trace("the owner verified the quote with the platform's AK")
            return Attempt(secret, "the owner refused the quote")
        genuine = VtpmEvidence.from_bytes(victim.vm.outputs[0])
        lab.trace(f"the victim's SNP-bound vTPM quoted PCR {VTPM_PCR} = "
                  f"{genuine.pcrs[HashAlg.SHA256][VTPM_PCR].hex()[:16]}..., not the golden "
                  "value; its report binds its own AK")
        certificates = hv.firmware.certificate_table(hv.firmware.tcb)
        try:
            lab.release_secret_to_vtpm(ak.public, attest, signature, genuine.report,
                                       certificates)
        except QuoteError as refused:
            lab.trace(f"the victim's report with the swtpm's AK: {refused}")
        secret = lab.release_secret_to_vtpm(genuine.ak_public, attest, signature,
                                            genuine.report, certificates)
        return Attempt(secret, "the owner refused the quote")
