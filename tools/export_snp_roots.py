"""Write AMD's SNP trust store the verifier ships: `src/sevsim/attest/roots/amd/snp/<product>/
{ark,ask,asvk}.pem`, AMD's real X.509 roots split from the KDS bundles in
../shared/data/amd-roots/snp/ (ASK or ASVK first, then the ARK). sevsim's simulated ones
(`roots/sevsim/`) are written by tools/derive_simulated_amd_roots.py.

    python tools/export_snp_roots.py [AMD_ROOTS_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

ROOTS = Path(__file__).resolve().parent.parent / "src" / "sevsim" / "attest" / "roots"
AMD_BUNDLES = (Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "amd-roots"
               / "snp")
PRODUCTS = ("milan", "genoa", "turin")
PEM = serialization.Encoding.PEM


def export_amd(bundles: Path, out: Path) -> None:
    for product in PRODUCTS:
        vcek = bundles / f"ask_ark_{product}{'_vcek' if product == 'turin' else ''}.pem"
        ask, ark = x509.load_pem_x509_certificates(vcek.read_bytes())
        asvk, ark2 = x509.load_pem_x509_certificates(
            (bundles / f"ask_ark_{product}_vlek.pem").read_bytes())
        if ark != ark2:
            raise SystemExit(f"{product}: the VCEK and VLEK bundles name different ARKs")
        (out / product).mkdir(parents=True, exist_ok=True)
        for role, cert in (("ark", ark), ("ask", ask), ("asvk", asvk)):
            (out / product / f"{role}.pem").write_bytes(cert.public_bytes(PEM))


if __name__ == "__main__":
    export_amd(Path(sys.argv[1]) if len(sys.argv) > 1 else AMD_BUNDLES, ROOTS / "amd" / "snp")
