"""Tests for the guest C SDK and its build helper.

Besides checking the ELF shape, the examples are run on a deliberately tiny
bare-metal Unicorn harness (no sevsim kernel or hypervisor) that implements
just enough of the guest ABI -- SYS_WRITE, SYS_EXIT and the SEV queries --
to prove the SDK's entry code, syscall wrappers and printf work on the CPU
emulator the real simulator uses.
"""

from __future__ import annotations

import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import Segment
from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_INSN,
    UC_MODE_64,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
)
from unicorn.x86_const import (
    UC_X86_INS_CPUID,
    UC_X86_INS_SYSCALL,
    UC_X86_REG_R8,
    UC_X86_REG_R10,
    UC_X86_REG_RAX,
    UC_X86_REG_RBX,
    UC_X86_REG_RCX,
    UC_X86_REG_RDI,
    UC_X86_REG_RDX,
    UC_X86_REG_RIP,
    UC_X86_REG_RSI,
    UC_X86_REG_RSP,
)

from conftest import EXAMPLES, MASK64, secret_bytes
from sevsim.guest.build import GuestBuildError, build_guest, sdk_dir

PAGE = 0x1000
IMAGE_BASE = 0x400000

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


# --------------------------------------------------------------------------- harness


@dataclass
class GuestRun:
    """What a bare run produced."""

    output: str
    exit_code: int | None
    calls: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    seconds: float = 0.0
    uc: Uc | None = None


class BareHarness:
    """Just enough of the guest ABI to run an SDK program on a bare Unicorn vCPU."""

    STACK_BASE = 0x10000000
    STACK_SIZE = 0x100000

    def __init__(
        self, elf_path: Path, *, sev_status: int = 0, cbit: int = 51, nvcpus: int = 1
    ) -> None:
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        self.sev_status = sev_status
        self.cbit = cbit
        self.nvcpus = nvcpus
        self.vcpu = 0  # which vCPU the (single) Unicorn CPU is currently playing
        self.out = bytearray()
        self.exit_code: int | None = None
        self.halted = False
        self.calls: list[tuple[int, tuple[int, ...]]] = []
        self.ap_starts: dict[int, tuple[int, int, int, int]] = {}  # index -> entry, a0, a1, sp
        with open(elf_path, "rb") as fh:
            elf = ELFFile(fh)
            self.entry = elf.header.e_entry
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                self._map_segment(seg)
        self.uc.mem_map(self.STACK_BASE, self.STACK_SIZE, UC_PROT_READ | UC_PROT_WRITE)
        self.uc.hook_add(UC_HOOK_INSN, self._on_syscall, None, 1, 0, UC_X86_INS_SYSCALL)
        self.uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, UC_X86_INS_CPUID)

    def _map_segment(self, seg: Segment) -> None:
        """Map one PT_LOAD with its own protection; mem_map rejects unaligned segments."""
        vaddr, memsz = seg["p_vaddr"], seg["p_memsz"]
        size = (memsz + PAGE - 1) & ~(PAGE - 1)
        flags = seg["p_flags"]
        prot = (
            (UC_PROT_READ if flags & P_FLAGS.PF_R else 0)
            | (UC_PROT_WRITE if flags & P_FLAGS.PF_W else 0)
            | (UC_PROT_EXEC if flags & P_FLAGS.PF_X else 0)
        )
        self.uc.mem_map(vaddr, size, prot)  # fresh mappings are zero: .bss is cleared
        data = seg.data()
        if data:
            self.uc.mem_write(vaddr, data)

    def _on_syscall(self, uc: Uc, _user: object) -> None:
        """RAX = number, RDI/RSI/RDX args; whatever we leave in RAX is the result."""
        nr = uc.reg_read(UC_X86_REG_RAX)
        a0, a1 = uc.reg_read(UC_X86_REG_RDI), uc.reg_read(UC_X86_REG_RSI)
        self.calls.append((nr, (a0, a1)))
        ret = -22
        if nr == 1:  # SYS_WRITE
            self.out += uc.mem_read(a0, a1)
            ret = a1
        elif nr == 60:  # SYS_EXIT
            self.exit_code = struct.unpack("<i", struct.pack("<I", a0 & 0xFFFFFFFF))[0]
            uc.emu_stop()
            ret = 0
        elif nr in (100, 101):  # SYS_SET_SHARED / SYS_SET_PRIVATE
            ret = 0 if a0 % PAGE == 0 and a1 > 0 else -22
        elif nr == 102:  # SYS_SEV_STATUS
            ret = self.sev_status
        elif nr == 103:  # SYS_VCPU_INFO
            ret = self.vcpu | (self.nvcpus << 32)
        elif nr == 104:  # SYS_VCPU_START: record it; run_ap() plays it later
            entry, arg0 = uc.reg_read(UC_X86_REG_RSI), uc.reg_read(UC_X86_REG_RDX)
            arg1, sp = uc.reg_read(UC_X86_REG_R10), uc.reg_read(UC_X86_REG_R8)
            if 0 < a0 < self.nvcpus and a0 not in self.ap_starts:
                self.ap_starts[a0] = (entry, arg0, arg1, sp)
                ret = 0
        elif nr == 105:  # SYS_VCPU_HALT
            self.halted = True
            uc.emu_stop()
            ret = 0
        uc.reg_write(UC_X86_REG_RAX, ret & MASK64)

    def _on_cpuid(self, uc: Uc, _user: object) -> int:
        """Answer leaf 0x8000001F like an SEV-capable CPU; leave other leaves to Unicorn."""
        leaf = uc.reg_read(UC_X86_REG_RAX) & 0xFFFFFFFF
        if leaf != 0x8000001F:
            return 0  # 0: let the emulator execute CPUID normally
        uc.reg_write(UC_X86_REG_RAX, 0x1B)  # SME | SEV | SEV-ES | SNP
        uc.reg_write(UC_X86_REG_RBX, (1 << 6) | self.cbit)  # phys reduction 1, C-bit
        uc.reg_write(UC_X86_REG_RCX, 509)
        uc.reg_write(UC_X86_REG_RDX, 1)
        return 1  # 1: instruction handled, skip the emulator's own CPUID

    def run(self, timeout_s: float = 60.0) -> GuestRun:
        """Enter _start like the guest kernel does and run until SYS_EXIT."""
        self.uc.reg_write(UC_X86_REG_RSP, self.STACK_BASE + self.STACK_SIZE)
        self.uc.reg_write(UC_X86_REG_RDI, 0)  # boot vCPU index
        start = time.perf_counter()
        self.uc.emu_start(self.entry, 0, timeout=int(timeout_s * 1_000_000))
        elapsed = time.perf_counter() - start
        if self.exit_code is None:
            rip = self.uc.reg_read(UC_X86_REG_RIP)
            raise AssertionError(f"guest stopped without SYS_EXIT at rip={rip:#x}: {self.out!r}")
        return GuestRun(self.out.decode(), self.exit_code, self.calls, elapsed, self.uc)

    def run_ap(self, index: int, timeout_s: float = 10.0) -> str:
        """Run a started AP to its SYS_VCPU_HALT on the same CPU; returns what it printed."""
        entry, arg0, arg1, sp = self.ap_starts[index]
        self.vcpu, self.halted, mark = index, False, len(self.out)
        self.uc.reg_write(UC_X86_REG_RDI, arg0)
        self.uc.reg_write(UC_X86_REG_RSI, arg1)
        self.uc.reg_write(UC_X86_REG_RSP, sp)
        self.uc.emu_start(entry, 0, timeout=int(timeout_s * 1_000_000))
        assert self.halted, f"AP {index} stopped without SYS_VCPU_HALT"
        return self.out[mark:].decode()


# --------------------------------------------------------------------------- helpers


def _build_example(tmp_path_factory: pytest.TempPathFactory, name: str, *cflags: str) -> Path:
    out = tmp_path_factory.mktemp("guest") / f"{name}.elf"
    return build_guest([EXAMPLES / f"{name}.c"], out, cflags=list(cflags))


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a, the digest secret.c prints."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


@pytest.fixture(scope="module")
def hello_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_example(tmp_path_factory, "hello")


@pytest.fixture(scope="module")
def secret_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_example(tmp_path_factory, "secret")


@pytest.fixture(scope="module")
def bench_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_example(tmp_path_factory, "bench", "-DBENCH_SCALE=1")


# --------------------------------------------------------------------------- tests


def test_sdk_files_present() -> None:
    root = sdk_dir()
    for rel in ("include/sevsim.h", "crt0.S", "libsev.c", "guest.ld"):
        assert (root / rel).is_file(), rel


@needs_gcc
@pytest.mark.parametrize("name", ["hello", "secret", "bench"])
def test_example_elf_shape(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    cflags = ("-DBENCH_SCALE=1",) if name == "bench" else ()
    path = _build_example(tmp_path_factory, name, *cflags)
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        assert elf.elfclass == 64
        assert elf.little_endian
        assert elf.header.e_machine == "EM_X86_64"
        assert elf.header.e_type == "ET_EXEC"
        start = elf.get_section_by_name(".symtab").get_symbol_by_name("_start")[0]
        assert elf.header.e_entry == start["st_value"]
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads
        assert not any(s["p_type"] in ("PT_INTERP", "PT_DYNAMIC") for s in elf.iter_segments())
        for seg in loads:
            assert seg["p_vaddr"] >= IMAGE_BASE
            assert seg["p_vaddr"] % PAGE == 0
            assert seg["p_offset"] % PAGE == seg["p_vaddr"] % PAGE
            assert seg["p_filesz"] <= seg["p_memsz"]
            # W^X: no segment is both writable and executable.
            assert not (seg["p_flags"] & P_FLAGS.PF_W and seg["p_flags"] & P_FLAGS.PF_X)
        text = [s for s in loads if s["p_flags"] & P_FLAGS.PF_X]
        assert len(text) == 1
        assert text[0]["p_vaddr"] == IMAGE_BASE == elf.header.e_entry
        names = {s.name for s in elf.iter_sections()}
        assert not names & {".comment", ".eh_frame", ".interp", ".dynamic"}
        assert not any(n.startswith(".note") for n in names)


@needs_gcc
def test_end_symbol_is_page_aligned_heap_start(hello_elf: Path) -> None:
    with open(hello_elf, "rb") as fh:
        elf = ELFFile(fh)
        end = elf.get_section_by_name(".symtab").get_symbol_by_name("_end")[0]["st_value"]
        top = max(
            s["p_vaddr"] + s["p_memsz"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"
        )
    assert end % PAGE == 0
    assert top <= end < top + PAGE


@needs_gcc
def test_syntax_error_reports_gcc_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("#include <sevsim.h>\nint main(void) { return 0 }\n")
    with pytest.raises(GuestBuildError) as info:
        build_guest([bad], tmp_path / "bad.elf")
    msg = str(info.value)
    assert "bad.c" in msg
    assert "error" in msg
    assert "expected" in msg  # gcc's own diagnostic text, e.g. "expected ';' before '}'"
    assert not (tmp_path / "bad.elf").exists()


def test_missing_compiler_is_clear(tmp_path: Path) -> None:
    src = tmp_path / "x.c"
    src.write_text("int main(void) { return 0; }\n")
    with pytest.raises(GuestBuildError, match="not found"):
        build_guest([src], tmp_path / "x.elf", cc="definitely-not-a-compiler-xyz")


def test_missing_source_is_clear(tmp_path: Path) -> None:
    with pytest.raises(GuestBuildError, match="not found"):
        build_guest([tmp_path / "nope.c"], tmp_path / "x.elf")


@needs_gcc
def test_hello_runs_on_bare_unicorn(hello_elf: Path) -> None:
    run = BareHarness(hello_elf, sev_status=0x1, cbit=51).run()
    assert run.exit_code == 0
    assert run.output == (
        "Hello from a sevsim guest!\n"
        "SEV_STATUS=0x1 sev=1 es=0 snp=0\n"
        "cpuid 8000001f: eax=0x0000001b ebx=0x00000073 c-bit=51\n"
    )


@needs_gcc
def test_hello_reports_snp_status(hello_elf: Path) -> None:
    run = BareHarness(hello_elf, sev_status=0x7, cbit=47).run()
    assert "SEV_STATUS=0x7 sev=1 es=1 snp=1\n" in run.output
    assert "c-bit=47\n" in run.output


@needs_gcc
def test_secret_runs_and_keeps_secret_resident(secret_elf: Path) -> None:
    secret = secret_bytes()
    assert secret[:16] not in secret_elf.read_bytes()  # generated at run time only
    with open(secret_elf, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        secret_addr = symtab.get_symbol_by_name("secret_page")[0]["st_value"]
        shared_addr = symtab.get_symbol_by_name("shared_page")[0]["st_value"]
    assert secret_addr % PAGE == 0
    assert shared_addr % PAGE == 0

    run = BareHarness(secret_elf).run()
    assert run.exit_code == 0
    assert f"secret digest: 0x{fnv1a64(secret):016x}\n" in run.output
    assert f"shared page at {shared_addr:#x}\n" in run.output
    assert (100, (shared_addr, 1)) in run.calls  # SYS_SET_SHARED on exactly that page
    assert run.uc is not None
    assert bytes(run.uc.mem_read(secret_addr, PAGE)) == secret
    shared = bytes(run.uc.mem_read(shared_addr, PAGE))
    assert shared.startswith(b"PUBLIC-MESSAGE-FOR-THE-HOST\0")


@needs_gcc
def test_bench_runs_and_prints_checksum(bench_elf: Path) -> None:
    run = BareHarness(bench_elf).run()
    assert run.exit_code == 0
    assert "bench sieve: 82025 primes below 1048576\n" in run.output  # pi(2**20)
    assert re.fullmatch(r"bench checksum: 0x[0-9a-f]{16}", run.output.splitlines()[-1])
    # Deterministic: a second run prints the same checksum.
    assert BareHarness(bench_elf).run().output == run.output


@needs_gcc
def test_printf_formats(tmp_path: Path) -> None:
    src = tmp_path / "fmt.c"
    src.write_text(
        r"""
#include <sevsim.h>
int main(void)
{
    char buf[8];
    int n;
    sev_printf("[%d|%i|%u|%x|%X]\n", -42, 7, 3000000000u, 0xbeefu, 0xbeefu);
    sev_printf("[%08x|%16llx|%-5d|%5s|%c|%%]\n", 0x1234u, 0xabcdefULL, 12, "ab", 'z');
    sev_printf("[%ld|%lu|%lx|%lld|%llu|%zu]\n", -5L, 5UL, 0xffUL,
               (long long)(-9223372036854775807LL - 1), 18446744073709551615ULL,
               sizeof(buf));
    sev_printf("[%p|%s]\n", (void *)0x401000, (const char *)0);
    n = sev_snprintf(buf, sizeof(buf), "%s-%d", "abcdef", 123);
    sev_printf("[%s|%d]\n", buf, n);
    sev_print("no newline");
    sev_puts("!");
    return 3;
}
"""
    )
    elf = build_guest([src], tmp_path / "fmt.elf", cflags=["-Wno-format"])
    run = BareHarness(elf).run()
    assert run.exit_code == 3
    assert run.output == (
        "[-42|7|3000000000|beef|BEEF]\n"
        "[00001234|          abcdef|12   |   ab|z|%]\n"
        "[-5|5|ff|-9223372036854775808|18446744073709551615|8]\n"
        "[0x401000|(null)]\n"
        "[abcdef-|10]\n"
        "no newline!\n"
    )


@needs_gcc
def test_string_functions(tmp_path: Path) -> None:
    src = tmp_path / "str.c"
    src.write_text(
        r"""
#include <sevsim.h>
static char a[100], b[100];
int main(void)
{
    for (int i = 0; i < 100; i++)
        a[i] = (char)i;
    memcpy(b + 3, a + 1, 50);
    if (memcmp(b + 3, a + 1, 50) != 0) return 1;
    memmove(a + 5, a, 40);                    /* overlapping, dst above src */
    for (int i = 0; i < 40; i++) if (a[5 + i] != (char)i) return 2;
    memmove(a, a + 5, 40);                    /* overlapping, dst below src */
    for (int i = 0; i < 40; i++) if (a[i] != (char)i) return 3;
    memset(b, 0x5a, 77);
    for (int i = 0; i < 77; i++) if (b[i] != 0x5a) return 4;
    if (b[77] != 0) return 5;
    if (strlen("sevsim") != 6) return 6;
    if (memcmp("abc", "abd", 3) >= 0) return 7;
    sev_puts("ok");
    return 0;
}
"""
    )
    run = BareHarness(build_guest([src], tmp_path / "str.elf")).run()
    assert (run.exit_code, run.output) == (0, "ok\n")


@needs_gcc
def test_vcpu_start_uses_trampoline_abi(tmp_path: Path) -> None:
    src = tmp_path / "smp.c"
    src.write_text(
        r"""
#include <sevsim.h>
static uint8_t ap_stack[8192] SEV_ALIGNED(16);
static volatile uint64_t result;
static void worker(void *arg)
{
    result = *(uint64_t *)arg * 3;
    sev_printf("ap %u of %u: %llu\n", sev_vcpu_index(), sev_vcpu_count(),
               (unsigned long long)result);
}
int main(void)
{
    static uint64_t value = 14;
    /* Deliberately misaligned stack top: the trampoline must realign it. */
    long ok = sev_vcpu_start(1, worker, &value, ap_stack + sizeof(ap_stack) - 8);
    long bad = sev_vcpu_start(9, worker, &value, ap_stack + sizeof(ap_stack));
    sev_printf("bsp %u of %u: start=%ld bad=%ld\n", sev_vcpu_index(), sev_vcpu_count(), ok, bad);
    return 0;
}
"""
    )
    elf = build_guest([src], tmp_path / "smp.elf")
    harness = BareHarness(elf, nvcpus=2)
    run = harness.run()
    assert (run.exit_code, run.output) == (0, "bsp 0 of 2: start=0 bad=-22\n")
    with open(elf, "rb") as fh:
        symtab = ELFFile(fh).get_section_by_name(".symtab")
        trampoline = symtab.get_symbol_by_name("__sev_ap_trampoline")[0]["st_value"]
        worker = symtab.get_symbol_by_name("worker")[0]["st_value"]
        value = next(
            sym["st_value"] for sym in symtab.iter_symbols() if sym.name.startswith("value")
        )
    # The kernel is asked to start the trampoline with RDI=arg, RSI=fn, RSP=stack_top.
    assert harness.ap_starts[1] == (trampoline, value, worker, harness.ap_starts[1][3])
    assert harness.ap_starts[1][3] % 16 == 8
    assert harness.run_ap(1) == "ap 1 of 2: 42\n"
