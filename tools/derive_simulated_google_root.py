"""Derive sevsim's simulated Google TCB root and UEFI signer keys from their published seed and
rewrite the files that ship them: the keys (src/sevsim/firmware/simulated_google/) and the
root certificate in the verifier's sevsim trust store (src/sevsim/attest/roots/sevsim/gce/).
Takes about ten seconds (pure-Python prime search); `git status` should then show no change.

    python tools/derive_simulated_google_root.py
"""

from __future__ import annotations

from pathlib import Path

from sevsim.firmware.gce_endorser import regenerate

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sevsim"

if __name__ == "__main__":
    regenerate(PACKAGE / "firmware" / "simulated_google",
               PACKAGE / "attest" / "roots" / "sevsim" / "gce" / "root.pem")
