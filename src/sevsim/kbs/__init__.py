"""A key broker service speaking Trustee's KBS protocol: it releases a secret to a VM only
after the VM's attestation evidence verifies and passes the owner's policy.

The wire formats live in `sevsim.abi.kbs` and `sevsim.abi.kbs_snp` (shared with the guest's
attestation agent); `jose` encrypts resources to the TEE's key and signs attestation tokens.
"""
