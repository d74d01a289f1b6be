"""A VM's secure-boot keys, as the VMM prepares them for the guest's firmware.

QEMU boots OVMF with a variable store holding PK, KEK, db and dbx; sevsim's VMM builds the
same variables from a directory of certificates and hashes and hands them to the guest's
firmware (sevsim.guest.secure_boot), which checks the program against them and measures
them into PCR 7. Like the variable store, they are the host's to give: secure boot protects
a guest owner who checks PCR 7, not one who trusts the host.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sevsim.abi import efi_siglist
from sevsim.abi.tcg_eventlog import SECURE_BOOT_VARIABLES
from sevsim.errors import SecureBootConfigError
from sevsim.guest.secure_boot import load_certificate
from sevsim.inputs import MAX_CERT_FILE, read_bounded

__all__ = ["SECURE_BOOT_ENABLED", "SEVSIM_OWNER_GUID", "SecureBootConfig", "load_config"]

# The SignatureOwner of the entries sevsim writes (a fixed GUID of its own, as a vendor's).
SEVSIM_OWNER_GUID = uuid.UUID("5e5b1a7e-0c0f-4d3e-9a51-7365767369ab")
SECURE_BOOT_ENABLED = b"\x01"  # the SecureBoot variable's one byte (UEFI 2.10, 3.3)


@dataclass(frozen=True)
class SecureBootConfig:
    """A VM's secure-boot keys: db (trusted signers), dbx (revoked certificates and SHA-256
    hashes of revoked programs), PK and KEK (measured; sevsim's guests do not update db)."""

    db: tuple[x509.Certificate, ...]
    dbx_certs: tuple[x509.Certificate, ...] = ()
    dbx_hashes: tuple[bytes, ...] = ()
    pk: tuple[x509.Certificate, ...] = ()
    kek: tuple[x509.Certificate, ...] = ()
    owner: uuid.UUID = SEVSIM_OWNER_GUID

    @classmethod
    def from_dir(cls, directory: str | Path) -> SecureBootConfig:
        """DIR/db/ (required), DIR/dbx/, DIR/PK/, DIR/KEK/: certificates in PEM (one or more
        a file) or DER; in dbx/ also *.sha256 files of hex SHA-256 hashes, one a line
        (`sha256sum` output works). SecureBootConfigError names a file that is neither."""
        root = Path(directory)
        if not (root / "db").is_dir():
            raise SecureBootConfigError(str(root / "db"), "no such directory: a secure-boot "
                                        "directory holds the trusted certificates in db/")
        dbx_files = _files(root / "dbx")
        return cls(db=_certificates(_files(root / "db")),
                   dbx_certs=_certificates(f for f in dbx_files if f.suffix != ".sha256"),
                   dbx_hashes=tuple(h for f in dbx_files if f.suffix == ".sha256"
                                    for h in _hashes(f)),
                   pk=_certificates(_files(root / "PK")),
                   kek=_certificates(_files(root / "KEK")))

    def variables(self) -> dict[str, bytes]:
        """The UEFI variables as firmware stores them: SecureBoot enabled, and PK, KEK, db and
        dbx as EFI_SIGNATURE_LISTs (empty when unset), in the order EDK2 measures them."""
        def x509_list(certs: Iterable[x509.Certificate]) -> bytes:
            return efi_siglist.build(efi_siglist.x509(self.owner, c.public_bytes(
                serialization.Encoding.DER)) for c in certs)

        dbx = x509_list(self.dbx_certs) + efi_siglist.build(
            efi_siglist.sha256(self.owner, h) for h in self.dbx_hashes)
        values = {"SecureBoot": SECURE_BOOT_ENABLED, "PK": x509_list(self.pk),
                  "KEK": x509_list(self.kek), "db": x509_list(self.db), "dbx": dbx}
        return {name: values[name] for name in SECURE_BOOT_VARIABLES}


def load_config(config: SecureBootConfig | str | Path) -> SecureBootConfig:
    """A config as given, or loaded from its directory."""
    return config if isinstance(config, SecureBootConfig) else SecureBootConfig.from_dir(config)


def _files(directory: Path) -> list[Path]:
    """The files of one of the directory's parts, none when it is absent."""
    if not directory.is_dir():
        return []
    try:
        return sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as err:
        raise SecureBootConfigError(str(directory), f"cannot list it: {err.strerror}") from None


def _certificates(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    certs: list[x509.Certificate] = []
    for path in paths:
        blob = _read(path, "a certificate")
        try:
            ders = ([c.public_bytes(serialization.Encoding.DER)
                     for c in x509.load_pem_x509_certificates(blob)]
                    if b"-----BEGIN" in blob else [blob])
            certs.extend(load_certificate(d) for d in ders)
        except (ValueError, x509.InvalidVersion) as err:
            raise SecureBootConfigError(str(path), f"not a PEM or DER X.509 certificate: "
                                        f"{err}") from None
    return tuple(certs)


def _hashes(path: Path) -> list[bytes]:
    out = []
    for number, line in enumerate(_read(path, "a hash list").decode("ascii", "replace")
                                  .splitlines(), 1):
        if not line.strip():
            continue
        word = line.split()[0]
        try:
            digest = bytes.fromhex(word)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise SecureBootConfigError(str(path), f"line {number}: {word[:80]!r} is not a "
                                        "SHA-256 hash in hex (64 digits)")
        out.append(digest)
    return out


def _read(path: Path, what: str) -> bytes:
    try:
        return read_bounded(path, MAX_CERT_FILE, what)
    except (OSError, ValueError) as err:
        raise SecureBootConfigError(str(path), str(err)) from None
