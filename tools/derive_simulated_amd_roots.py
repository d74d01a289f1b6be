"""Derive sevsim's simulated AMD ARK/ASK/ASVK keys from their published seed and rewrite every
file that ships them: the keys (src/sevsim/firmware/simulated_amd/) and their certificates in
the verifier's sevsim trust store (src/sevsim/attest/roots/sevsim/: sev/<product>/*.cert in
AMD's legacy format, snp/<product>/*.pem in X.509). This is the one writer of those files.
Takes about half a minute (pure-Python prime search); `git status` should then show no change,
and the SHA-256 of each certificate is the one docs/simulated-roots.md lists.

    python tools/derive_simulated_amd_roots.py [PRODUCT...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from sevsim.firmware.amd_root import PRODUCTS, regenerate

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sevsim"

if __name__ == "__main__":
    regenerate(PACKAGE / "firmware" / "simulated_amd", PACKAGE / "attest" / "roots" / "sevsim",
               tuple(sys.argv[1:]) or PRODUCTS)
