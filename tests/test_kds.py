"""The simulated KDS over real HTTP on loopback: VCEKs, the CA chain, the CRL, rate limits."""

from __future__ import annotations

import datetime
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sevsim.abi.snp_cert import SnpCertificate
from sevsim.abi.snp_tcb import TcbVersion
from sevsim.firmware.kds import KeyDistribution, make_server
from sevsim.firmware.snp_pki import SnpPki, snp_ca_chain
from sevsim.hw.chips import PRESETS
from sevsim.hw.engine import EncryptionEngine
from sevsim.hw.memory import MemoryController


def chip(name: str, seed: bytes) -> SnpPki:
    preset = PRESETS[name]
    return SnpPki(preset, MemoryController(4096, EncryptionEngine(preset.tweak)), seed=seed)


@pytest.fixture(scope="module")
def platforms() -> dict[str, SnpPki]:
    return {"milan": chip("milan", b"m1"), "turin": chip("turin", b"t1")}


def serve(kds: KeyDistribution, rate_limit: float | None = None) -> Iterator[str]:
    server = make_server(kds, rate_limit=rate_limit)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def url(platforms: dict[str, SnpPki]) -> Iterator[str]:
    kds = KeyDistribution()
    kds.register(platforms.values())
    yield from serve(kds)


def get(address: str) -> bytes:
    with urllib.request.urlopen(address, timeout=10) as response:
        return response.read()


def status_of(address: str) -> int:
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(address)
    refused.value.close()
    return refused.value.code


def test_vcek_for_a_registered_chip_and_tcb(url: str, platforms: dict[str, SnpPki]) -> None:
    milan = platforms["milan"]
    tcb = TcbVersion(3, 0, 8, 115)
    hwid = milan.chip_id().hex()
    body = get(f"{url}/vcek/v1/Milan/{hwid}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115")
    assert body == milan.vcek_certificate(tcb)
    cert = SnpCertificate.from_der(body)
    ask = snp_ca_chain("Milan")[0].public_key()
    assert isinstance(ask, rsa.RSAPublicKey)
    cert.verify(ask)
    turin = platforms["turin"]
    turin_body = get(f"{url}/vcek/v1/Turin/{turin.chip_id()[:8].hex()}"
                     "?fmcSPL=1&blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=77")
    assert SnpCertificate.from_der(turin_body).amd.tcb == TcbVersion(2, 0, 5, 77, fmc=1)


def test_cert_chain_is_ask_then_ark_and_the_crl_is_signed_by_the_ark(url: str) -> None:
    ask, ark = x509.load_pem_x509_certificates(get(f"{url}/vcek/v1/Genoa/cert_chain"))
    assert ask.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "SEV-Genoa"
    assert ask.issuer == ark.subject == ark.issuer
    crl = x509.load_der_x509_crl(get(f"{url}/vcek/v1/Genoa/crl"))
    ark_key = ark.public_key()
    assert isinstance(ark_key, rsa.RSAPublicKey)
    assert crl.is_signature_valid(ark_key) and len(list(crl)) == 0
    # issued daily, at a midnight at least an hour past: a verifier that read its clock just
    # before asking (CI saw one a second behind a CRL stamped on request) finds it valid
    issued, now = crl.last_update_utc, datetime.datetime.now(datetime.UTC)
    assert issued.time() == datetime.time(0) and issued <= now - datetime.timedelta(hours=1)
    assert crl.next_update_utc == issued + datetime.timedelta(days=7)


def test_bad_requests_get_http_errors(url: str, platforms: dict[str, SnpPki]) -> None:
    hwid = platforms["milan"].chip_id().hex()
    assert status_of(f"{url}/vcek/v1/Milan/{'00' * 64}?blSPL=1&teeSPL=0&snpSPL=1&ucodeSPL=1") \
        == 404
    assert status_of(f"{url}/vcek/v1/Milan/{hwid}?blSPL=1&teeSPL=0") == 400
    assert status_of(f"{url}/vcek/v1/Milan/{hwid}?blSPL=300&teeSPL=0&snpSPL=1&ucodeSPL=1") \
        == 400
    assert status_of(f"{url}/vcek/v1/Rome/cert_chain") == 404
    assert status_of(f"{url}/nothing") == 404


def test_rate_limit_answers_429_with_retry_after() -> None:
    for address in serve(KeyDistribution(), rate_limit=0.5):
        get(f"{address}/vcek/v1/Milan/cert_chain")
        with pytest.raises(urllib.error.HTTPError) as limited:
            get(f"{address}/vcek/v1/Milan/cert_chain")
        limited.value.close()
        assert limited.value.code == 429
        assert int(limited.value.headers["Retry-After"]) >= 1


def test_vlek_chain_is_asvk_then_ark(url: str) -> None:
    asvk, ark = x509.load_pem_x509_certificates(get(f"{url}/vlek/v1/Turin/cert_chain"))
    assert asvk.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value \
        == "SEV-VLEK-Turin"
    assert asvk.issuer == ark.subject
    assert status_of(f"{url}/vlek/v1/Turin/{'00' * 8}?blSPL=1") == 404
