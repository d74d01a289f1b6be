"""Density: a full Milan host running 509 SNP VMs of examples/hello.c at once.

sevsim side (a child process): `Host(memory=..., min_sev_asid=510)` gives every ASID to
SEV-ES/SNP; 509 SNP VMs of 8 MiB are created, loaded and launched in batches (VMs launched
per second from each batch's median VM, first batch against last: creation must not cost more
as the host fills up), then
all run at once to completion and each must print hello's greeting with `snp=1`. Host memory
per VM is the process's RSS growth divided by the VMs, less the guest memory they touched (the
the Rss of the DRAM mapping, from /proc/self/smaps).

Reference (another child process): bare Unicorn engines, one per VM, each running the same ELF
the same way (PT_LOAD segments and a stack in 8 MiB of guest memory of its own, SYS_WRITE and
SYS_EXIT served as the guest kernel defines them), all kept alive; RSS growth per engine less
the guest memory they touched. Target: sevsim MiB per VM at most 1.25x a bare engine's (Unicorn
defaults). For context, bare engines with sevsim's translation cache size too.

    python benchmarks/density.py [--quick] [--reps N]      # --quick: 32 VMs
"""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as x86

from harness import REPO, BenchmarkError, median, parse_args, print_table, run, verdict

MEMORY_TARGET = 1.25  # sevsim MiB per VM / bare engine MiB per engine, at most
RATE_TARGET = 0.8  # last batch's VMs per second / first batch's, at least
VM_MEMORY = 8 << 20
STACK_SIZE = 256 << 10  # as the guest kernel gives a program
PAGE = 4096
GREETING = "Hello from a sevsim guest!"
_UNTIL = 0xFFFF_FFFF_FFFF_F000


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def resident_mib(address: int, size: int) -> float:
    """Resident MiB of the mapping [address, address+size) (its Rss in /proc/self/smaps):
    the guest pages touched. Pages only read map the kernel's zero page and do not count."""
    wanted = f"{address:x}-{address + size:x}"
    with open("/proc/self/smaps") as smaps:
        lines = iter(smaps)
        for line in lines:
            if line.split()[0] == wanted:
                for field in lines:
                    if field.startswith("Rss:"):
                        return int(field.split()[1]) / 1024
    raise BenchmarkError(f"no mapping {wanted} of its own in /proc/self/smaps")


def side_sevsim(elf: bytes, count: int, batch: int) -> dict[str, object]:
    from sevsim.host.machine import Host
    from sevsim.testing import memory_controller

    host_bytes = count * (VM_MEMORY + (4 << 20)) + (64 << 20)
    start_rss = rss_mib()
    host = Host(memory=host_bytes, min_sev_asid=510)
    vms, rates = [], []
    with progress() as bar:  # outside the timed spans
        launching = bar.add_task("SNP VMs launched", total=count)
        for first in range(0, count, batch):
            seconds = []  # each VM's own: a batch's median shrugs off a moment of machine load
            for _ in range(min(batch, count - first)):
                start = time.perf_counter()
                vm = host.create_vm("snp", memory=VM_MEMORY)
                vm.load(elf)
                vm.launch()
                seconds.append(time.perf_counter() - start)
                vms.append(vm)
                bar.advance(launching)
            rates.append(1 / median(seconds))
        bar.add_task(f"running all {count} at once", total=None)
        start = time.perf_counter()
        results = host.run(vms, timeout=3600)
        run_s = time.perf_counter() - start
    bad = [f"VM {vm_id}: exit {r.exit_code}, {r.error!r}, console {r.console!r}"
           for vm_id, r in results.items()
           if r.exit_code != 0 or GREETING not in r.console or "snp=1" not in r.console]
    touched = resident_mib(memory_controller(host).frame_address(0), host_bytes)
    return {"rates": rates, "run_s": run_s, "asids": sorted(vm.asid for vm in vms), "bad": bad,
            "results": len(results),
            "mib_per_vm": (rss_mib() - start_rss - touched) / count,
            "touched_per_vm": touched / count}


def side_bare(elf: bytes, count: int, tb_cache: int) -> dict[str, object]:
    """`count` engines, each with the ELF in 8 MiB of its own, run one after the other and
    kept alive. `tb_cache` 0: Unicorn's default translation cache."""
    image = ELFFile(io.BytesIO(elf))
    segments = [(seg["p_vaddr"], seg.data()) for seg in image.iter_segments()
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]]
    entry = image.header["e_entry"]
    from sevsim.testing.bare_unicorn import serve_syscalls

    start_rss = rss_mib()
    guest = mmap.mmap(-1, count * VM_MEMORY)  # as sevsim's DRAM: 4 KiB pages, apart
    guest.madvise(mmap.MADV_NOHUGEPAGE)
    guest.madvise(mmap.MADV_DONTDUMP)
    base = memoryview(guest)
    engines = []
    for index in range(count):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        if tb_cache:
            uc.ctl_set_tcg_buffer_size(tb_cache)
        offset = index * VM_MEMORY
        address = _address(base[offset:offset + VM_MEMORY])
        uc.mem_map_ptr(0, VM_MEMORY, UC_PROT_ALL, address)
        for vaddr, data in segments:
            uc.mem_write(vaddr, data)
        console, exit_code = serve_syscalls(uc)
        uc.reg_write(x86.UC_X86_REG_RSP, VM_MEMORY)
        uc.reg_write(x86.UC_X86_REG_RDI, 0)
        uc.emu_start(entry, _UNTIL, timeout=60_000_000)
        if exit_code != [0] or GREETING not in console.decode():
            raise BenchmarkError(f"bare engine {index} exited {exit_code}: {console.decode()}")
        engines.append(uc)
    touched = resident_mib(_address(base), count * VM_MEMORY)
    result = {"mib_per_vm": (rss_mib() - start_rss - touched) / count,
              "touched_per_vm": touched / count}
    del base
    return result


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def progress() -> Progress:
    """The sevsim side's progress on a terminal (the parent's: the child's stderr is then
    the terminal itself); nothing in logs."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True,
                    disable=not sys.stderr.isatty())


def child(side: str, elf_path: str, count: int, extra: int) -> dict[str, object]:
    """One side in a process of its own, so RSS growth is that side's alone."""
    out = subprocess.run([sys.executable, __file__, "--side", side, elf_path, str(count),
                          str(extra)], stdout=subprocess.PIPE,
                         stderr=None if sys.stderr.isatty() else subprocess.PIPE, text=True,
                         check=False)
    if out.returncode:
        raise BenchmarkError(f"{side} side failed" + (f":\n{out.stderr}" if out.stderr else ""))
    return json.loads(out.stdout)


def main() -> int:
    args = parse_args(__doc__.splitlines()[0], default_reps=1)
    from sevsim.guest.build import build_guest
    from sevsim.hw.cpu import TB_CACHE_BYTES

    count = 32 if args.quick else 509
    batch = 8 if args.quick else 50
    sevsim: list[dict] = []
    bare: list[dict] = []
    bare_small: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        elf = build_guest([REPO / "examples" / "hello.c"], Path(tmp) / "hello.elf")
        print(f"Density: {count} SNP VMs of 8 MiB running examples/hello.c on one Milan host "
              f"(min SEV ASID 510), against {count} bare Unicorn engines; "
              f"{args.reps} repetition(s)")
        for _ in range(args.reps):
            bare.append(child("bare", str(elf), count, 0))
            bare_small.append(child("bare", str(elf), count, TB_CACHE_BYTES))
            sevsim.append(child("sevsim", str(elf), count, batch))
    if sevsim[0]["asids"] != list(range(1, count + 1)):
        raise BenchmarkError("the SNP VMs did not get ASIDs 1..N")

    def med(results: list[dict], key: str) -> float:
        return median([float(r[key]) for r in results])

    first = median([r["rates"][0] for r in sevsim])
    last = median([r["rates"][-1] for r in sevsim])
    mib, mib_bare, mib_small = (med(sevsim, "mib_per_vm"), med(bare, "mib_per_vm"),
                                med(bare_small, "mib_per_vm"))
    print_table("host MiB per VM beyond the guest memory it touched (medians)",
                ["", "MiB per VM", "guest MiB touched per VM"],
                [["sevsim SNP VM", f"{mib:.2f}", f"{med(sevsim, 'touched_per_vm'):.3f}"],
                 ["bare Unicorn engine (defaults)", f"{mib_bare:.2f}",
                  f"{med(bare, 'touched_per_vm'):.3f}"],
                 [f"bare Unicorn engine ({TB_CACHE_BYTES >> 20} MiB translation cache)",
                  f"{mib_small:.2f}", f"{med(bare_small, 'touched_per_vm'):.3f}"]])
    print_table(f"SNP VMs created, loaded and launched per second, batches of {batch} "
                "(1 / each batch's median VM)",
                ["", "VMs/s"],
                [["first batch", f"{first:.1f}"], ["last batch", f"{last:.1f}"],
                 ["all at once: run to completion (s)", f"{med(sevsim, 'run_s'):.1f}"]])
    ratio = mib / mib_bare
    print(f"RATIO sevsim / bare engine MiB per VM = {ratio:.3f} (target <= {MEMORY_TARGET}): "
          f"{verdict(ratio, MEMORY_TARGET, at_least=False)}; with the same translation cache "
          f"{mib / mib_small:.3f}")
    rate = last / first
    print(f"RATIO last / first batch VMs per second = {rate:.3f} (target >= {RATE_TARGET}): "
          f"{verdict(rate, RATE_TARGET, at_least=True)}")
    for result in sevsim:
        if result["bad"] or result["results"] != count:
            raise BenchmarkError(f"{len(result['bad'])} of {count} SNP VMs went wrong:\n"
                                 + "\n".join(result["bad"]))
    print(f"all {count} VMs printed {GREETING!r} with snp=1")
    return 0


def side_main(argv: list[str]) -> int:
    side, elf_path, count, extra = argv
    elf = Path(elf_path).read_bytes()
    result = (side_sevsim(elf, int(count), int(extra)) if side == "sevsim"
              else side_bare(elf, int(count), int(extra)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--side"]:
        run(lambda: side_main(sys.argv[2:]))
    else:
        run(main)
