"""SNP reports verified per second with chain caching vs raw ECDSA P-384 verification.

sevsim's side is the whole relying-party check of a real Milan report (../shared/data/vectors)
against AMD's real roots: strict parse, product, the chain VCEK -> ASK -> ARK (RSA-4096 PSS,
verified once, then served from a ChainCache keyed by the certificates' bytes), the report's
ECDSA P-384 signature, the reported TCB and chip id against the VCEK. The reference is
`cryptography`'s ECDSA P-384/SHA-384 verification of the same 0x2A0 bytes with an
already-loaded public key, in the same run, interleaved. Target: at least 0.7.

    python benchmarks/verify_rate.py [--quick] [--reps N]
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (
    REPO,
    BenchmarkError,
    median,
    parse_args,
    print_table,
    run,
    spread_row,
    verdict,
)
from sevsim.abi.snp_report import SIGNED_SIZE, AttestationReport
from sevsim.attest.snp_verify import CertBundle, ChainCache, verify_report_chain

TARGET = 0.7
VECTOR = REPO / "tests" / "data" / "snp" / "milan-v2-a"


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=5)
    count = 200 if args.quick else 2000
    if not (VECTOR / "report.bin").is_file():
        raise BenchmarkError(f"no real report at {VECTOR}")
    blob = (VECTOR / "report.bin").read_bytes()
    bundle = CertBundle.load(Path(VECTOR))
    cache = ChainCache()
    first = verify_report_chain(blob, bundle, cache=cache)  # the chain, verified once
    if not first.ok or first.leaf is None:
        raise BenchmarkError(f"the real report does not verify: {first.failures}")
    key = first.leaf.tbs.public_key()
    signature = AttestationReport.from_bytes(blob).signature_der()
    signed = blob[:SIGNED_SIZE]
    ecdsa = ec.ECDSA(hashes.SHA384())
    rates: dict[str, list[float]] = {"sevsim": [], "raw": []}
    for _ in range(args.reps):
        start = time.perf_counter()
        for _ in range(count):
            key.verify(signature, signed, ecdsa)
        rates["raw"].append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(count):
            result = verify_report_chain(blob, bundle, cache=cache)
        rates["sevsim"].append(count / (time.perf_counter() - start))
        if not result.ok:
            raise BenchmarkError(f"a cached verification failed: {result.failures}")
    if cache.hits != count * args.reps:
        raise BenchmarkError(f"expected {count * args.reps} cache hits, got {cache.hits}")
    print(f"report verification: {count} reports per repetition, {args.reps} repetition(s)")
    print_table("per second (higher is better)", ["", "median", "min", "max"], [
        spread_row("verify_report_chain, chain cached (all checks)", rates["sevsim"], 0),
        spread_row("cryptography ECDSA P-384 verify", rates["raw"], 0)])
    ratio = median(rates["sevsim"]) / median(rates["raw"])
    print(f"\nRATIO verified reports / raw verifications = {ratio:.2f} (target >= {TARGET}): "
          f"{verdict(ratio, TARGET, at_least=True)}")
    return 0


if __name__ == "__main__":
    run(main)
