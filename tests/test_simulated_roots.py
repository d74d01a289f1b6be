"""sevsim's simulated AMD roots are published bytes, as AMD's are: every output that carries
an ARK, ASK or ASVK (the extended report's certificate table, `sevsim run --certs-out`,
`sevsim kds serve`, `sevsim owner export`) carries exactly the files the sevsim trust store
ships, in this process and in fresh ones, and docs/simulated-roots.md lists each file's
SHA-256. A verifier that pins sevsim's ARK by its hash (as verifiers pin AMD's) therefore
accepts every sevsim report."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import sevsim.attest
from sevsim import Host
from sevsim.abi.snp_report import GUID_ARK, GUID_ASK, GUID_VLEK, parse_cert_table
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.errors import ConfigError
from sevsim.firmware.amd_root import (
    PRODUCTS,
    SNP_PRODUCTS,
    simulated_root,
    simulated_x509,
    x509_ca_certificates,
)
from sevsim.firmware.kds import KeyDistribution
from sevsim.firmware.snp_pki import SnpPki
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController

TRUST_STORE = Path(sevsim.attest.__file__).parent / "roots" / "sevsim"
ROOTS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "simulated-roots.md"
TCB = TcbVersion(3, 0, 8, 0x73)
TURIN_TCB = TcbVersion(1, 0, 3, 0x48, fmc=2)


def shipped(product: str, role: str) -> bytes:
    """A shipped file: snp/<product>/<role>.pem for ark/ask/asvk, sev/... for ark.cert etc."""
    if role.endswith(".cert"):
        return (TRUST_STORE / "sev" / product / role).read_bytes()
    return (TRUST_STORE / "snp" / product / f"{role}.pem").read_bytes()


def shipped_der(product: str, role: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(shipped(product, role).decode())


def platform(product: str) -> SnpPki:
    preset = PRESETS[product]
    return SnpPki(preset, MemoryController(4096, EncryptionEngine(preset.tweak)), seed=b"roots")


def sevsim_cli(*args: str | Path, hash_seed: str) -> subprocess.CompletedProcess[str]:
    """`sevsim` in a fresh interpreter (its own hash seed: nothing carries over)."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-m", "sevsim", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# -- in this process ----------------------------------------------------------------------------


@pytest.mark.parametrize("product", SNP_PRODUCTS)
def test_the_certificate_table_carries_the_shipped_ask_asvk_and_ark(product: str) -> None:
    fw = platform(product)
    tcb = TCB if product != "turin" else TURIN_TCB
    table = dict(parse_cert_table(fw.certificate_table(tcb)))
    assert table[GUID_ASK] == shipped_der(product, "ask")
    assert table[GUID_ARK] == shipped_der(product, "ark")
    fw.snp_vlek_load(fw.seal_hashstick("cc.example", tcb))
    table = dict(parse_cert_table(fw.certificate_table(tcb)))
    assert GUID_VLEK in table
    assert table[GUID_ASK] == shipped_der(product, "asvk")  # the ASVK, under the ASK's GUID
    assert table[GUID_ARK] == shipped_der(product, "ark")


@pytest.mark.parametrize("product", SNP_PRODUCTS)
def test_kds_cert_chains_are_the_shipped_files_concatenated(product: str) -> None:
    kds = KeyDistribution()
    name = product.capitalize()
    assert kds.answer(f"/vcek/v1/{name}/cert_chain", "") == (
        "application/x-pem-file", shipped(product, "ask") + shipped(product, "ark"))
    assert kds.answer(f"/vlek/v1/{name}/cert_chain", "")[1] == (
        shipped(product, "asvk") + shipped(product, "ark"))


@pytest.mark.parametrize("product", PRODUCTS)
def test_the_legacy_ark_and_ask_the_firmware_hands_out_are_the_shipped_files(
        product: str) -> None:
    ark, ask = Host(chip=product, memory="2M").firmware.amd_certs()
    assert (ark, ask) == (shipped(product, "ark.cert"), shipped(product, "ask.cert"))


def test_products_without_snp_have_no_x509_roots() -> None:
    key = simulated_root("rome").ark_key
    with pytest.raises(ConfigError, match="rome"):
        simulated_x509("rome")
    with pytest.raises(ConfigError, match="SEV-SNP"):
        x509_ca_certificates("rome", key, key, key)


# -- in fresh processes -------------------------------------------------------------------------


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_sevsim_run_certs_out_writes_the_shipped_ark_and_ask(
        build: Callable[..., Path], tmp_path: Path, hash_seed: str) -> None:
    """Two runs, each its own process (and chip seed): the same ark.pem and ask.pem, the
    shipped ones; the VCEKs differ, as the chips do."""
    vceks = set()
    for seed in ("chip-a", "chip-b"):
        certs = tmp_path / seed
        ran = sevsim_cli("run", build("report"), "--mode", "snp", "--chip", "genoa",
                         "--memory", "16M", "--seed", seed, "--report-out", tmp_path / "r.bin",
                         "--certs-out", certs, hash_seed=hash_seed)
        assert ran.returncode == 0, ran.stderr
        assert (certs / "ark.pem").read_bytes() == shipped("genoa", "ark")
        assert (certs / "ask.pem").read_bytes() == shipped("genoa", "ask")
        vceks.add((certs / "vcek.pem").read_bytes())
    assert len(vceks) == 2


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_sevsim_owner_export_writes_the_shipped_legacy_ark_and_ask(tmp_path: Path,
                                                                  hash_seed: str) -> None:
    ran = sevsim_cli("owner", "export", tmp_path, "--chip", "rome", "--seed", "x",
                     hash_seed=hash_seed)
    assert ran.returncode == 0, ran.stderr
    for role in ("ark.cert", "ask.cert"):
        assert (tmp_path / role).read_bytes() == shipped("rome", role)


@contextmanager
def kds_process(chip: str, hash_seed: str) -> Iterator[str]:
    """`sevsim kds serve` in its own process on a free port: its base URL."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    server = subprocess.Popen([sys.executable, "-m", "sevsim", "kds", "serve", "--seed", "a",
                               "--chip", chip, "--port", "0"],
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
        found = re.search(r"http://[0-9.]+:\d+", first)
        assert found, first
        yield found.group(0)
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stderr is not None:
            server.stderr.close()


@pytest.mark.parametrize("hash_seed", ["1", "2"])
def test_sevsim_kds_serve_serves_the_shipped_files(hash_seed: str) -> None:
    with kds_process("turin", hash_seed) as url:
        for kind, signer in (("vcek", "ask"), ("vlek", "asvk")):
            with urllib.request.urlopen(f"{url}/{kind}/v1/Turin/cert_chain",
                                        timeout=30) as response:
                assert response.read() == shipped("turin", signer) + shipped("turin", "ark")


# -- published ----------------------------------------------------------------------------------

_ROW = re.compile(r"^\| `(?P<file>(?:(?:sev|snp)/[a-z]+|gce)/[a-z]+\.(?:cert|pem))` "
                  r"\| `(?P<sha>[0-9a-f]{64})` \| (?:`(?P<der>[0-9a-f]{64})`|-) \|$", re.M)


def test_the_docs_publish_every_shipped_root_and_its_sha256() -> None:
    """The table of docs/simulated-roots.md has one row per shipped file: the file's SHA-256
    and, for X.509, the certificate's (the DER's, which verifiers pin); none missing, none stale."""
    rows = {m["file"]: (m["sha"], m["der"])
            for m in _ROW.finditer(ROOTS_PAGE.read_text())}
    files = sorted(p.relative_to(TRUST_STORE).as_posix() for p in TRUST_STORE.rglob("*.*"))
    assert sorted(rows) == files
    for name, (sha, der_sha) in rows.items():
        blob = (TRUST_STORE / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == sha, name
        if name.endswith(".pem"):
            der = ssl.PEM_cert_to_DER_cert(blob.decode())
            assert hashlib.sha256(der).hexdigest() == der_sha, name
        else:
            assert der_sha is None, name
