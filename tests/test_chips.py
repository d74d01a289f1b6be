"""Chip presets: CPUID as the guest reads it, ASID splits, and preset lookup.

The CPUID checks decode with an independent decoder written from AMD's definition of
CPUID Fn0000_0001 EAX and Fn8000_001F, and compare against signatures of real parts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sevsim.abi.cpuid import Leaf8000001F, SevFeatures, cpuid_signature
from sevsim.errors import ConfigError
from sevsim.hw.chips import PRESETS, ChipPreset, GuestMode, TweakMode, chip_preset


def decode_signature(eax: int) -> tuple[int, int, int]:
    """AMD's rule: family = base + extended when base is 0xF; model takes the extended
    nibble only then."""
    stepping = eax & 0xF
    base_model = (eax >> 4) & 0xF
    base_family = (eax >> 8) & 0xF
    ext_model = (eax >> 16) & 0xF
    ext_family = (eax >> 20) & 0xFF
    if base_family == 0xF:
        return base_family + ext_family, ext_model << 4 | base_model, stepping
    return base_family, base_model, stepping


ALL = list(PRESETS.values())
by_name = pytest.mark.parametrize("chip", ALL, ids=lambda c: c.name)


@by_name
def test_signature_decodes_to_the_presets_family_model_stepping(chip):
    assert decode_signature(chip.signature) == (chip.family, chip.model, chip.stepping)
    assert chip.signature >> 28 == 0 and (chip.signature >> 12) & 0xF == 0  # reserved, type 0


@pytest.mark.parametrize("name, signature", [
    ("naples", 0x00800F12),  # EPYC 7001, family 17h model 01h stepping 2 (B2)
    ("rome", 0x00830F10),  # EPYC 7002, family 17h model 31h stepping 0 (B0)
    ("milan", 0x00A00F11),  # EPYC 7003, family 19h model 01h stepping 1 (B1)
    ("genoa", 0x00A10F11),  # EPYC 9004, family 19h model 11h stepping 1 (B1)
])
def test_signatures_of_real_parts(name, signature):
    assert PRESETS[name].signature == signature


@settings(max_examples=200, deadline=None)
@given(family=st.integers(0, 0xF + 0xFF), model=st.integers(0, 0xFF), stepping=st.integers(0, 15))
def test_cpuid_signature_round_trips(family, model, stepping):
    if family < 0xF:
        model &= 0xF  # only families from 0xF on have extended models
    eax = cpuid_signature(family, model, stepping)
    assert 0 <= eax < 1 << 28
    assert decode_signature(eax) == (family, model, stepping)


@by_name
def test_leaf_8000001f_fields_round_trip(chip):
    leaf = chip.leaf_8000001f()
    eax, ebx, ecx, edx = leaf.registers()
    assert eax == int(chip.features)
    assert ebx & 0x3F == chip.c_bit == leaf.c_bit
    assert (ebx >> 6) & 0x3F == chip.phys_reduction == leaf.phys_reduction
    assert (ebx >> 12) & 0xF == chip.vmpls == leaf.vmpls
    assert ebx >> 16 == 0
    assert ecx == chip.max_asid and edx == chip.min_sev_asid
    assert all(0 <= reg < 1 << 32 for reg in (eax, ebx, ecx, edx))


def test_milan_leaf_matches_the_real_part():
    """sevctl on Milan: C-bit 51, physical address reduction 5, 4 VMPLs, 509 ASIDs."""
    leaf = PRESETS["milan"].leaf_8000001f()
    assert leaf.ebx == 0x4173
    assert leaf.ecx == 509


@settings(max_examples=100, deadline=None)
@given(features=st.integers(0, 2**32 - 1), c_bit=st.integers(0, 63),
       reduction=st.integers(0, 63), vmpls=st.integers(0, 15),
       max_asid=st.integers(0, 2**32 - 1), min_sev=st.integers(0, 2**32 - 1))
def test_leaf_compose_round_trips(features, c_bit, reduction, vmpls, max_asid, min_sev):
    leaf = Leaf8000001F.compose(features, c_bit, reduction, vmpls, max_asid, min_sev)
    assert (leaf.c_bit, leaf.phys_reduction, leaf.vmpls) == (c_bit, reduction, vmpls)
    assert leaf.registers() == (features, c_bit | reduction << 6 | vmpls << 12, max_asid,
                                min_sev)


@by_name
def test_features_and_modes_agree(chip):
    leaf_features = SevFeatures(chip.leaf_8000001f().eax)
    assert SevFeatures.SEV in leaf_features
    assert (GuestMode.SEV_ES in chip.modes) == (SevFeatures.SEV_ES in leaf_features)
    assert (GuestMode.SNP in chip.modes) == (SevFeatures.SEV_SNP in leaf_features)
    assert chip.modes[:2] == (GuestMode.NONE, GuestMode.SEV)
    if SevFeatures.SEV_SNP in leaf_features:
        assert SevFeatures.SEV_ES in leaf_features and chip.vmpls == 4
    assert all(mode.encrypted for mode in chip.modes[1:]) and not GuestMode.NONE.encrypted


def test_generations():
    zen = [chip.zen for chip in ALL]
    assert zen == sorted(zen) == [1, 2, 3, 4, 5]
    assert [c.tweak for c in ALL] == [TweakMode.XE_WEAK] + [TweakMode.XEX_STRONG] * 4
    assert GuestMode.SEV_ES not in PRESETS["naples"].modes
    assert GuestMode.SNP not in PRESETS["rome"].modes
    assert GuestMode.SNP in PRESETS["milan"].modes
    assert not PRESETS["milan"].xts256 and PRESETS["genoa"].xts256


def check_split(chip: ChipPreset) -> None:
    sev = chip.asid_range(GuestMode.SEV)
    es = chip.asid_range(GuestMode.SEV_ES)
    assert not set(sev) & set(es)
    assert set(sev) | set(es) == set(range(1, chip.max_asid + 1))
    assert chip.asid_range(GuestMode.SNP) == es
    assert len(chip.asid_range(GuestMode.NONE)) == 0
    if len(es):
        assert min(es) == 1 and max(es) == chip.min_sev_asid - 1
    if len(sev):
        assert min(sev) == chip.min_sev_asid and max(sev) == chip.max_asid


@by_name
def test_asid_ranges_split_the_asid_space(chip):
    check_split(chip)
    for mode in chip.modes[1:]:
        assert len(chip.asid_range(mode)) > 0, f"{chip.name} has no ASID for {mode.value}"


@settings(max_examples=100, deadline=None)
@given(max_asid=st.integers(1, 1006), data=st.data())
def test_any_bios_split_is_consistent(max_asid, data):
    min_sev = data.draw(st.integers(1, max_asid + 1))
    chip = PRESETS["milan"].with_asids(max_asid, min_sev)
    assert (chip.max_asid, chip.min_sev_asid) == (max_asid, min_sev)
    assert chip.leaf_8000001f().ecx == max_asid and chip.leaf_8000001f().edx == min_sev
    check_split(chip)


@pytest.mark.parametrize("max_asid, min_sev", [(10, 0), (10, 12), (10, -1), (0, 2)])
def test_impossible_bios_splits_are_refused(max_asid, min_sev):
    with pytest.raises(ConfigError):
        PRESETS["milan"].with_asids(max_asid, min_sev)


def test_unknown_chip_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        chip_preset("bulldozer")
    message = str(info.value)
    assert "bulldozer" in message
    for name in PRESETS:
        assert name in message
    assert isinstance(info.value, ValueError)


def test_chip_lookup():
    assert chip_preset("Milan") is PRESETS["milan"]
    assert chip_preset("GENOA") is PRESETS["genoa"]
    custom = PRESETS["rome"].with_asids(20, 5)
    assert chip_preset(custom) is custom
