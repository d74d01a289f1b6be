"""A key broker service speaking Trustee's KBS protocol: it releases secrets only to VMs whose
SEV-SNP attestation verifies and passes the owner's policies (service: the HTTP API; store:
the database; verifier and policy: the decisions; jose: tokens and encrypted secrets)."""
