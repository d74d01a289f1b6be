"""Attestation reports signed per second by the Secure Processor vs raw ECDSA P-384 signing.

The firmware side of MSG_REPORT_REQ, timed end to end: open the guest's AES-256-GCM message,
check its sequence number, build the ATTESTATION_REPORT, sign it with the VCEK, seal the
response. The reference is `cryptography`'s ECDSA P-384/SHA-384 signature of the same 0x2A0
bytes with an already-loaded key, in the same run, interleaved. Target: at least 0.7.

    python benchmarks/report_signing.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from harness import (
    BenchmarkError,
    median,
    parse_args,
    print_table,
    run,
    spread_row,
    verdict,
)
from sevsim.abi.snp_guest_msg import MsgType, ReportRequest, open_message, seal_message
from sevsim.abi.snp_report import ReportResponse, verify_report
from sevsim.firmware.snp import SnpGuestContext
from sevsim.firmware.snp_guest import SnpGuestRequests
from sevsim.testing import GCTX, launched_snp_guest, secure_processor

TARGET = 0.7


def firmware() -> tuple[SnpGuestRequests, SnpGuestContext]:
    """A Milan Secure Processor with one running SNP guest context, as SNP_LAUNCH_FINISH
    leaves it (the launch is not timed)."""
    fw = secure_processor("milan")
    fw.snp_init()
    return fw, launched_snp_guest(fw, GCTX)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=5)
    count = 50 if args.quick else 400
    fw, ctx = firmware()
    key = ec.generate_private_key(ec.SECP384R1())  # the VCEK itself never leaves the firmware
    message = os.urandom(0x2A0)
    ecdsa = ec.ECDSA(hashes.SHA384())
    rates: dict[str, list[float]] = {"firmware": [], "raw": []}
    seqno = 1
    for _ in range(args.reps):
        start = time.perf_counter()
        for _ in range(count):
            key.sign(message, ecdsa)
        rates["raw"].append(count / (time.perf_counter() - start))
        requests = []  # what the guest sealed: its work, not the firmware's
        for _ in range(count):
            requests.append(seal_message(ctx.vmpcks[0], MsgType.REPORT_REQ, seqno,
                                         ReportRequest(os.urandom(64)).to_bytes()))
            seqno += 2
        start = time.perf_counter()
        for request in requests:
            response = fw.snp_guest_request(GCTX, request)
        rates["firmware"].append(count / (time.perf_counter() - start))
    report = ReportResponse.from_bytes(open_message(ctx.vmpcks[0], response)[1]).report
    try:
        verify_report(report, fw.vcek_public_key(fw.tcb))
    except Exception as err:
        raise BenchmarkError(f"the last report does not verify: {err!r}") from None
    print(f"report signing: {count} reports per repetition, {args.reps} repetition(s)")
    print_table("per second (higher is better)", ["", "median", "min", "max"], [
        spread_row("SNP_GUEST_REQUEST MSG_REPORT_REQ (firmware)", rates["firmware"], 0),
        spread_row("cryptography ECDSA P-384 sign", rates["raw"], 0)])
    ratio = median(rates["firmware"]) / median(rates["raw"])
    print(f"\nRATIO reports / raw signatures = {ratio:.2f} (target >= {TARGET}): "
          f"{verdict(ratio, TARGET, at_least=True)}")
    return 0


if __name__ == "__main__":
    run(main)
