"""Platform options (`Host(platform=...)`, `--platform`): SMT, TSME, ECC memory, RAPL disabled,
ciphertext hiding and the BadRAM alias check, with each chip's defaults as real parts report
them. What they say shows where the hardware shows it: PLATFORM_INFO in every SNP report,
SNP_LAUNCH_START's policy checks, the modules' contents under TSME; and `validate` policies
accept or refuse reports by it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import blocks_found, secret_bytes, symbol
from sevsim import Host, PlatformOptions
from sevsim.abi.snp_report import AttestationReport
from sevsim.abi.snp_tcb import PlatformInfo, PolicyFlags, SnpPolicy
from sevsim.attest.snp_policy import Policy, validate_report
from sevsim.cli.main import app
from sevsim.errors import ConfigError, FirmwareError
from sevsim.hw.chips import PLATFORM_OPTIONS, PRESETS
from sevsim.hw.engine import PAGE

REAL = Path(__file__).resolve().parent / "data" / "snp"
runner = CliRunner()
SECRET = secret_bytes()
BITS = {"smt": PlatformInfo.SMT_EN, "tsme": PlatformInfo.TSME_EN, "ecc": PlatformInfo.ECC_EN,
        "rapl-disabled": PlatformInfo.RAPL_DIS,
        "ciphertext-hiding": PlatformInfo.CIPHERTEXT_HIDING_EN,
        "alias-check": PlatformInfo.ALIAS_CHECK_COMPLETE}


def _report(host: Host, elf: Path, policy: int | None = None) -> AttestationReport:
    vm = host.create_vm("snp", "16M")
    vm.load(elf)
    vm.host_input = bytes(64)
    vm.launch(policy=policy)
    assert vm.run(timeout=60).exit_code == 0
    return AttestationReport.from_bytes(vm.outputs[0])


def test_options_parse_print_and_refuse_unknown_names() -> None:
    assert set(BITS) == set(PLATFORM_OPTIONS)
    options = PlatformOptions.parse(" SMT, tsme,alias-check ")
    assert options == PlatformOptions(smt=True, tsme=True, alias_check=True)
    assert str(options) == "smt,tsme,alias-check"
    assert PlatformOptions.parse(str(options)) == options
    assert PlatformOptions.parse("none") == PlatformOptions() and str(PlatformOptions()) == "none"
    for bad in ("smt,hyperthreading", "", ",", "none,smt", "rapl"):
        with pytest.raises(ConfigError, match="unknown platform option"):
            PlatformOptions.parse(bad)
    with pytest.raises(ConfigError, match="not True or False"):
        PlatformOptions(smt=1)  # type: ignore[arg-type]


def test_a_chip_refuses_what_it_lacks_before_anything_is_built() -> None:
    with pytest.raises(ConfigError, match="Milan has no ciphertext hiding"):
        Host("milan", "64M", platform="ciphertext-hiding")
    with pytest.raises(ConfigError, match="Rome has no SEV-SNP"):
        Host("rome", "64M", platform=PlatformOptions(alias_check=True))
    with pytest.raises(ConfigError, match="unknown platform option 'smt2'"):
        Host("milan", "64M", platform="smt,smt2")
    with pytest.raises(ConfigError, match="not PlatformOptions"):
        Host("milan", "64M", platform=0x27)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_sev_asid 1"):
        Host("genoa", "64M", platform="ciphertext-hiding", min_sev_asid=1)
    # the chip's presets are realistic and accepted by their own chip
    for preset in PRESETS.values():
        assert preset.platform_options() == preset.platform


def test_milans_default_platform_is_what_a_real_milan_on_its_firmware_reports(
        build: Callable[..., Path]) -> None:
    """AWS's Milan (tests/data/snp/milan-v3-vlek) runs the preset's firmware, 1.55.29."""
    real = AttestationReport.from_bytes((REAL / "milan-v3-vlek" / "report.bin").read_bytes())
    milan = PRESETS["milan"]
    assert (real.current_major, real.current_minor, real.current_build) == (
        milan.api_major, milan.api_minor, milan.build)
    report = _report(Host("milan", "64M", seed=b"platform"), build("report"))
    assert report.platform_info == real.platform_info == 0x27


@pytest.mark.parametrize(("chip", "platform"), [
    ("milan", "none"),
    ("genoa", None),
    ("genoa", "tsme,rapl-disabled"),
    ("genoa", "smt,ecc,ciphertext-hiding"),
    ("turin", "ecc,alias-check"),  # a Turin with SMT off, as a cloud runs it
])
def test_reports_carry_the_platform_the_host_was_given(
        build: Callable[..., Path], chip: str, platform: str | None) -> None:
    host = Host(chip, "64M", platform=platform)
    options = host.firmware.platform
    assert options == (PRESETS[chip].platform if platform is None
                       else PlatformOptions.parse(platform))
    expected = PlatformInfo(0)
    for name, bit in BITS.items():
        if getattr(options, PLATFORM_OPTIONS[name][0]):
            expected |= bit
    # a guest policy that forbids SMT launches only where SMT is off
    policy = None if options.smt else SnpPolicy(PolicyFlags(0)).to_int()
    assert PlatformInfo.from_int(_report(host, build("report"), policy).platform_info) == expected


def test_validate_refuses_a_report_from_another_platform(build: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    """`sevsim run --platform`, then `sevsim validate` with a [platform] table."""
    elf = build("report")
    policy = tmp_path / "policy.toml"
    policy.write_text("[platform]\nsmt_enabled = true\ntsme_enabled = true\necc_enabled = true\n"
                      "rapl_disabled = false\nalias_check_complete = true\n")
    reports = {}
    for platform in ("smt,tsme,ecc,alias-check", "smt,ecc,alias-check"):
        out = tmp_path / f"{platform}.bin"
        ran = runner.invoke(app, ["run", str(elf), "--mode", "snp", "--platform", platform,
                                  "--report-out", str(out)])
        assert ran.exit_code == 0, ran.output
        reports[platform] = out.read_bytes()
    ok = runner.invoke(app, ["validate", str(tmp_path / "smt,tsme,ecc,alias-check.bin"),
                             "--policy", str(policy)])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(app, ["validate", str(tmp_path / "smt,ecc,alias-check.bin"),
                                  "--policy", str(policy)])
    assert refused.exit_code == 1
    assert "FAIL platform.tsme_enabled: expected TSME_EN=1; report has TSME_EN=0 (0x25)" in \
        refused.output
    # the library says the same for each setting a host can have
    base = Policy.from_toml(policy.read_text())
    report = AttestationReport.from_bytes(reports["smt,tsme,ecc,alias-check"])
    assert validate_report(report, base).ok
    for key in ("smt_enabled", "tsme_enabled", "ecc_enabled", "rapl_disabled",
                "alias_check_complete"):
        flipped = replace(base, platform={**base.platform, key: not base.platform[key]})
        assert validate_report(report, flipped).failed == (f"platform.{key}",)


def test_cli_platform_option_errors(build: Callable[..., Path], tmp_path: Path) -> None:
    elf = build("report")
    bad = runner.invoke(app, ["run", str(elf), "--mode", "snp", "--platform", "smt,turbo"])
    assert bad.exit_code == 2 and "unknown platform option 'turbo'" in bad.output
    lacking = runner.invoke(app, ["run", str(elf), "--mode", "snp", "--platform",
                                  "ciphertext-hiding"])
    assert lacking.exit_code == 125
    assert "ConfigError: Milan has no ciphertext hiding" in lacking.output
    out = tmp_path / "r.bin"
    bad = runner.invoke(app, ["report", "--ovmf", "/nonexistent", "-o", str(out),
                              "--platform", "ht"])
    assert bad.exit_code == 2 and "unknown platform option 'ht'" in bad.output
    assert not out.exists()


def test_report_command_takes_the_platform(ovmf_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.bin"
    made = runner.invoke(app, ["report", "--ovmf", str(ovmf_path), "--vmm-type", "gce",
                               "--chip", "genoa", "--platform", "smt,ecc,ciphertext-hiding",
                               "-o", str(out)])
    assert made.exit_code == 0, made.output
    assert AttestationReport.from_bytes(out.read_bytes()).platform_info == 0x15
    lacking = runner.invoke(app, ["report", "--ovmf", str(ovmf_path), "--vmm-type", "gce",
                                  "--platform", "ciphertext-hiding", "-o",
                                  str(tmp_path / "no.bin")])
    assert lacking.exit_code == 125 and not (tmp_path / "no.bin").exists()
    assert "ConfigError: Milan has no ciphertext hiding" in lacking.output


def test_rapl_disabled_lets_a_policy_that_requires_it_launch(build: Callable[..., Path]) -> None:
    policy = SnpPolicy(PolicyFlags.SMT | PolicyFlags.RAPL_DIS).to_int()
    report = _report(Host("genoa", "64M", platform="smt,rapl-disabled"), build("report"), policy)
    assert report.policy == policy and PlatformInfo.RAPL_DIS in report.platform
    with pytest.raises(FirmwareError, match="RAPL disabled"):
        _report(Host("genoa", "64M"), build("report"), policy)


@pytest.mark.parametrize("chip", ["naples", "milan"])
def test_tsme_encrypts_what_the_modules_hold_and_nothing_software_reads(
        build: Callable[..., Path], chip: str) -> None:
    """A cold boot of a plain VM's page: plaintext without TSME, ciphertext with it; the
    hypervisor reads plaintext either way, and an SEV VM's pages are its own key's
    ciphertext either way (TSME's key is a separate one)."""
    dumps = {}
    secret_page = symbol(build("secret"), "secret_page")
    for tsme in (False, True):
        platform = replace(PRESETS[chip].platform, tsme=tsme)
        host = Host(chip, "64M", seed=b"tsme", platform=platform)
        plain, sev = host.create_vm("none", "16M"), host.create_vm("sev", "16M")
        for vm in (plain, sev):
            vm.load(build("secret"))
            vm.launch()
            assert vm.run(timeout=30).exit_code == 0
        dram = host.dram_dump()
        spa = {name: host.hypervisor.gpa_to_spa(vm.hv, secret_page)
               for name, vm in (("plain", plain), ("sev", sev))}
        assert blocks_found(host.hypervisor.dram_dump(), SECRET) == len(SECRET) // 16
        assert blocks_found(dram, SECRET) == (0 if tsme else len(SECRET) // 16)
        dumps[tsme] = {name: dram[at:at + PAGE].tobytes() for name, at in spa.items()}
    assert dumps[True]["sev"] == dumps[False]["sev"]
    assert dumps[True]["plain"] != dumps[False]["plain"]
