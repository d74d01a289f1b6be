"""Derive sevsim's simulated AMD ARK/ASK keys from their published seed and rewrite the files
that ship them: the keys (src/sevsim/firmware/simulated_amd/) and their certificates in the
verifier's sevsim trust store (src/sevsim/attest/roots/sevsim/sev/). Takes about half a minute
(pure-Python prime search); `git status` should then show no change.

    python tools/derive_simulated_amd_roots.py [PRODUCT...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from sevsim.firmware.amd_root import PRODUCTS, regenerate

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "sevsim"

if __name__ == "__main__":
    regenerate(PACKAGE / "firmware" / "simulated_amd",
               PACKAGE / "attest" / "roots" / "sevsim" / "sev", tuple(sys.argv[1:]) or PRODUCTS)
