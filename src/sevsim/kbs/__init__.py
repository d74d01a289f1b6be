"""Key broker service: releases secrets to VMs whose attestation passes the owner's policy (Trustee's KBS protocol)."""
