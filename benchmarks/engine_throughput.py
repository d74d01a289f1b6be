"""Memory encryption engine throughput against the machine's raw AES speed.

Measures producing the ciphertext of 256 MiB of SEV pages: `MemoryController.dram_dump(out=...)`
over frames that all belong to one ASID (what a physical attacker reading the DIMMs gets),
with the default chip's tweak (Milan, XEX with the strong tweak) and with Zen 1's XE. The
reference is `openssl speed -evp aes-128-ecb` on this machine, run between the engine's
repetitions. AES-256-XTS (what an SNP guest's policy can ask for on Genoa and Turin: a 64-byte
key, each 16-byte block its own XTS data unit) is compared with `openssl speed -evp aes-256-xts`
the same way. For context: `cryptography`'s AES-128-ECB (OpenSSL too, like the engine's C loop
in `src/sevsim/hw/_xex.c`), a plain chunked copy of the same buffer (the memory-traffic floor of any
transform that reads one 256 MiB buffer and writes another), and the engine held to one core
as `openssl speed` is (it normally shares large runs out between the host's cores).

    python benchmarks/engine_throughput.py [--quick] [--reps N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from harness import BenchmarkError, median, parse_args, print_table, run, verdict
from sevsim.hw.chips import chip_preset
from sevsim.hw.engine import PAGE, EncryptionEngine
from sevsim.hw.memory import MemoryController
from sevsim.testing import engine_on_one_core

TARGET = 0.4  # engine GB/s over openssl GB/s, at least
AIM = 0.5
ASID = 1
PIECE = 128 * 1024  # chunk size for the streaming context rows


def openssl_gbps(seconds: int, algorithm: str = "aes-128-ecb") -> float:
    """`openssl speed -evp ALGORITHM` on 16 KiB buffers (in cache), machine-readable output."""
    exe = shutil.which("openssl")
    if exe is None:
        raise BenchmarkError("openssl not found on PATH; it is the reference of this benchmark")
    cmd = [exe, "speed", "-mr", "-evp", algorithm, "-bytes", "16384", "-seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        # +F:<index>:<algorithm>:<bytes per second for each -bytes size>
        fields = line.split(":")
        if line.startswith("+F:") and len(fields) >= 4 and fields[2].lower() == algorithm:
            return float(fields[3]) / 1e9
    raise BenchmarkError(f"could not read `{' '.join(cmd)}` (exit {proc.returncode}):\n"
                         f"{proc.stdout}{proc.stderr}")


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def make_memory(chip: str, size: int, plain: np.ndarray, key_bytes: int = 16) -> MemoryController:
    """`size` bytes of host memory, every frame private to one ASID, holding `plain`; a 64-byte
    key makes the ASID's slot AES-256-XTS."""
    engine = EncryptionEngine(chip_preset(chip).tweak)
    engine.load_key(ASID, os.urandom(key_bytes))
    memory = MemoryController(size, engine)
    memory.cells[:] = plain
    memory.convert_domain(0, memory.nframes, ASID)  # DRAM keeps the bytes: cells decrypt
    return memory


def check_dump(memory: MemoryController, dump: np.ndarray) -> None:
    """The dump really is the ciphertext: it decrypts back to the cells, page for page."""
    rng = np.random.default_rng()
    for frame in [0, memory.nframes - 1, *rng.integers(0, memory.nframes, 8).tolist()]:
        lo = frame * PAGE
        cipher = dump[lo:lo + PAGE]
        back = memory.engine.decrypt_pages(ASID, frame, cipher)
        if not np.array_equal(back, memory.cells[lo:lo + PAGE]) or np.array_equal(
                cipher, memory.cells[lo:lo + PAGE]):
            raise BenchmarkError(f"dram_dump of frame {frame} is not its ciphertext")


def aes_context(src: np.ndarray, out: np.ndarray) -> tuple:
    """cryptography AES-128-ECB: 16 KiB in place in cache, and over the buffer in 128 KiB calls."""
    aes = Cipher(algorithms.AES(os.urandom(16)), modes.ECB()).encryptor()
    small = np.zeros(16384 + 16, dtype=np.uint8)
    small_view = memoryview(small)
    src_view, out_view = memoryview(src), memoryview(out)
    n = src.nbytes

    def in_cache(total: int = 256 << 20) -> None:
        for _ in range(total // 16384):
            aes.update_into(small_view[:16384], small_view)

    def streaming() -> None:
        for lo in range(0, n - PIECE, PIECE):
            aes.update_into(src_view[lo:lo + PIECE], out_view[lo:lo + PIECE + 16])

    def copy() -> None:
        for lo in range(0, n, PIECE):
            np.copyto(out[lo:lo + PIECE], src[lo:lo + PIECE])

    return (256 << 20, in_cache), (n - PIECE, streaming), (n, copy)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=5)
    size = (32 if args.quick else 256) << 20
    seconds = 1 if args.quick else 2
    print(f"engine throughput: dram_dump of {size >> 20} MiB of SEV pages, {args.reps} "
          f"repetition(s), openssl speed -seconds {seconds} between them")

    plain = np.random.default_rng().integers(0, 256, size, dtype=np.uint8)
    out = np.empty(size, dtype=np.uint8)
    out[:] = 0  # touch every page now, not during the first timed dump
    memories = {"milan": make_memory("milan", size, plain),
                "naples": make_memory("naples", size, plain),
                "genoa_xts": make_memory("genoa", size, plain, key_bytes=64)}
    context_src = plain  # same size, same placement in memory as a dump's source
    in_cache, streaming, copy = aes_context(context_src, out)

    results: dict[str, list[float]] = {key: [] for key in (
        "openssl", "openssl_xts", "aes_cache", "aes_stream", "copy", "milan", "naples",
        "genoa_xts", "milan_1core", "xts_1core")}
    for _ in range(args.reps):
        results["openssl"].append(openssl_gbps(seconds))
        results["openssl_xts"].append(openssl_gbps(seconds, "aes-256-xts"))
        for key, (nbytes, action) in (("aes_cache", in_cache), ("aes_stream", streaming),
                                      ("copy", copy)):
            results[key].append(nbytes / timed(action) / 1e9)
        for chip, memory in memories.items():
            results[chip].append(size / timed(lambda m=memory: m.dram_dump(out=out)) / 1e9)
            check_dump(memory, out)
        with engine_on_one_core():
            for key, chip in (("milan_1core", "milan"), ("xts_1core", "genoa_xts")):
                memory = memories[chip]
                results[key].append(size / timed(lambda m=memory: m.dram_dump(out=out)) / 1e9)

    def row(label: str, key: str) -> list[str]:
        values = results[key]
        return [label, f"{max(values):.2f}", f"{median(values):.2f}"]

    print_table("GB/s (higher is better)", ["", "best", "median"], [
        row("openssl speed -evp aes-128-ecb, 16 KiB in cache", "openssl"),
        row("cryptography AES-128-ECB, 16 KiB in cache", "aes_cache"),
        row(f"cryptography AES-128-ECB, {size >> 20} MiB buffer -> out", "aes_stream"),
        row(f"numpy copy, {size >> 20} MiB buffer -> out (memory floor)", "copy"),
        row("engine dram_dump, XEX strong tweak (Milan, default)", "milan"),
        row("engine dram_dump, XE weak tweak (Naples, Zen 1)", "naples"),
        row("engine dram_dump, XEX, one core like openssl speed", "milan_1core"),
        row("openssl speed -evp aes-256-xts, 16 KiB in cache", "openssl_xts"),
        row("engine dram_dump, AES-256-XTS (Genoa, SNP policy)", "genoa_xts"),
        row("engine dram_dump, AES-256-XTS, one core like openssl speed", "xts_1core"),
    ])
    ratio = median(results["milan"]) / median(results["openssl"])
    best_ratio = max(results["milan"]) / max(results["openssl"])
    xe_ratio = median(results["naples"]) / median(results["openssl"])
    print(f"\nRATIO engine (XEX, Milan) / openssl = {ratio:.2f} median, {best_ratio:.2f} best "
          f"(target >= {TARGET}, aim {AIM}): {verdict(ratio, TARGET, at_least=True)}")
    one_core_ratio = median(results["milan_1core"]) / median(results["openssl"])
    print(f"      engine (XE, Naples) / openssl = {xe_ratio:.2f} median")
    print(f"      engine (XEX) on one core / openssl = {one_core_ratio:.2f} median "
          f"({verdict(one_core_ratio, TARGET, at_least=True)})")
    xts_ratio = median(results["genoa_xts"]) / median(results["openssl_xts"])
    xts_best = max(results["genoa_xts"]) / max(results["openssl_xts"])
    xts_one_core = median(results["xts_1core"]) / median(results["openssl_xts"])
    print(f"RATIO engine (AES-256-XTS, Genoa) / openssl aes-256-xts = {xts_ratio:.2f} median, "
          f"{xts_best:.2f} best (target >= {TARGET}): {verdict(xts_ratio, TARGET, at_least=True)}")
    print(f"      engine (AES-256-XTS) on one core / openssl aes-256-xts = {xts_one_core:.2f} "
          f"median ({verdict(xts_one_core, TARGET, at_least=True)})")
    return 0


if __name__ == "__main__":
    run(main)
