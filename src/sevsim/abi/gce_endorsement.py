"""Google Compute Engine's launch endorsement: the signed golden measurements of a GCE UEFI.

Google publishes, for each build of its Confidential VM firmware, a `VMLaunchEndorsement`:
a serialized `VMGoldenMeasurement` (when, which build, the signer's certificate, the
firmware's SHA-384, and per technology the launch measurements it expects, for SEV-SNP one
per number of VMSAs launched) and an RSASSA-PSS signature over exactly those bytes. A GCE
host puts it in the extended report's certificate table under `GUID_GCE_ENDORSEMENT`.

The schema is google/gce-tcb-verifier's `proto/endorsement.proto` (package cloud_vmm_proto),
built here as a FileDescriptorProto in a private descriptor pool rather than compiled: field
names, numbers and types are the .proto's, and a test compares them with the descriptor protoc
made of the real file. Both ends use it: sevsim's simulated Google signer (firmware/) encodes,
the relying party (attest/) decodes and verifies.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError

from sevsim.errors import EndorsementFormatError

GUID_GCE_ENDORSEMENT = uuid.UUID("9f4116cd-c503-4f5a-8f6f-fb68882f4ce2")  # gce-tcb-verifier
"""The certificate-table GUID under which a GCE host hands the guest its launch endorsement."""
GCE_UEFI_FAMILY_ID = uuid.UUID("f73a6949-e8f3-473b-9553-e40e056fa3a2")  # all GCE SNP UEFIs
# The VMSA counts Google endorses: 1 (APs created later) and every n2d machine type's vCPUs.
GCE_VMSA_COUNTS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 224, 240)
GCE_SNP_POLICY = 0x70000  # the policy Google endorses: SMT and a migration agent, no debug
MEASUREMENT_SIZE = 48
PROTO_FILE = "endorsement.proto"
PACKAGE = "cloud_vmm_proto"

_F = descriptor_pb2.FieldDescriptorProto
_BYTES, _U32, _U64, _BOOL, _MESSAGE = (_F.TYPE_BYTES, _F.TYPE_UINT32, _F.TYPE_UINT64,
                                       _F.TYPE_BOOL, _F.TYPE_MESSAGE)
# (message, [(field, number, type, message type or "", repeated)], nested messages)
_Fields = list[tuple[str, int, int, str, bool]]
_SCHEMA: list[tuple[str, _Fields, list[tuple[str, _Fields, bool]]]] = [
    ("VMLaunchEndorsement", [("serialized_uefi_golden", 1, _BYTES, "", False),
                             ("signature", 2, _BYTES, "", False)], []),
    ("VMGoldenMeasurement", [("timestamp", 1, _MESSAGE, ".google.protobuf.Timestamp", False),
                             ("cl_spec", 2, _U64, "", False), ("commit", 3, _BYTES, "", False),
                             ("cert", 4, _BYTES, "", False), ("digest", 5, _BYTES, "", False),
                             ("ca_bundle", 6, _BYTES, "", False),
                             ("sev_snp", 7, _MESSAGE, f".{PACKAGE}.VMSevSnp", False),
                             ("tdx", 8, _MESSAGE, f".{PACKAGE}.VMTdx", False)], []),
    ("VMSevSnp", [("svn", 1, _U32, "", False),
                  ("measurements", 2, _MESSAGE, f".{PACKAGE}.VMSevSnp.MeasurementsEntry", True),
                  ("family_id", 3, _BYTES, "", False), ("image_id", 4, _BYTES, "", False),
                  ("policy", 5, _U64, "", False), ("ca_bundle", 6, _BYTES, "", False),
                  ("svsm_measurement", 7, _BYTES, "", False)],
     [("MeasurementsEntry", [("key", 1, _U32, "", False), ("value", 2, _BYTES, "", False)],
       True)]),
    ("VMTdx", [("svn", 1, _U32, "", False),
               ("measurements", 2, _MESSAGE, f".{PACKAGE}.VMTdx.Measurement", True)],
     [("Measurement", [("ram_gib", 1, _U32, "", False), ("early_accept", 2, _BOOL, "", False),
                       ("mrtd", 3, _BYTES, "", False)], False)]),
]


def _message(target: descriptor_pb2.DescriptorProto, name: str, fields: _Fields) -> None:
    target.name = name
    for field_name, number, kind, type_name, repeated in fields:
        target.field.add(name=field_name, number=number, type=kind, type_name=type_name or None,
                         label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """endorsement.proto as a FileDescriptorProto (proto3, imports timestamp.proto)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=PROTO_FILE, package=PACKAGE, syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name])
    for name, fields, nested in _SCHEMA:
        message = proto.message_type.add()
        _message(message, name, fields)
        for nested_name, nested_fields, map_entry in nested:
            inner = message.nested_type.add()
            _message(inner, nested_name, nested_fields)
            if map_entry:
                inner.options.map_entry = True
    return proto


@cache
def _classes() -> dict[str, Any]:
    """The message classes, from a pool of their own (nothing else registers into it)."""
    pool = descriptor_pool.DescriptorPool()
    timestamp = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(timestamp)
    pool.Add(timestamp)
    pool.Add(file_descriptor())
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
            for name, _, _ in _SCHEMA}


def _parse(name: str, blob: bytes) -> Any:
    message = _classes()[name]()
    try:
        message.ParseFromString(bytes(blob))
    except (DecodeError, RuntimeError, ValueError) as error:  # upb raises DecodeError
        raise EndorsementFormatError(name, f"does not parse: {error}") from None
    return message


def _size(what: str, value: bytes, sizes: tuple[int, ...]) -> bytes:
    if len(value) not in sizes:
        raise EndorsementFormatError(what, f"{len(value)} bytes, not "
                                     f"{' or '.join(map(str, sizes))}")
    return bytes(value)


@dataclass(frozen=True)
class SevSnpGolden:
    """VMSevSnp: what an SEV-SNP launch of the endorsed UEFI must show. `measurements` maps a
    number of VMSAs launched (the VM's vCPUs) to MEASUREMENT."""

    measurements: Mapping[int, bytes]
    svn: int = 0
    family_id: bytes = GCE_UEFI_FAMILY_ID.bytes
    image_id: bytes = b""
    policy: int = GCE_SNP_POLICY
    ca_bundle: bytes = b""
    svsm_measurement: bytes = b""


@dataclass(frozen=True)
class GoldenMeasurement:
    """VMGoldenMeasurement, the signed document. `serialized` is the exact bytes parsed (a
    TDX section and unknown fields stay there, outside the fields decoded)."""

    timestamp: datetime.datetime
    cert: bytes  # DER of the signer's certificate
    digest: bytes  # SHA-384 of the UEFI image
    ca_bundle: bytes = b""  # PEM, root first; the last one issued `cert`
    cl_spec: int = 0
    commit: bytes = b""
    sev_snp: SevSnpGolden | None = None
    serialized: bytes = field(default=b"", compare=False)

    def to_bytes(self) -> bytes:
        """The serialization that is signed: fields in number order, map entries by key."""
        golden = _classes()["VMGoldenMeasurement"]()
        golden.timestamp.seconds = int(self.timestamp.timestamp() // 1)
        golden.timestamp.nanos = self.timestamp.microsecond * 1000
        golden.cl_spec, golden.commit, golden.cert = self.cl_spec, self.commit, self.cert
        golden.digest, golden.ca_bundle = self.digest, self.ca_bundle
        if self.sev_snp is not None:
            snp = self.sev_snp
            golden.sev_snp.svn, golden.sev_snp.policy = snp.svn, snp.policy
            golden.sev_snp.family_id, golden.sev_snp.image_id = snp.family_id, snp.image_id
            golden.sev_snp.ca_bundle = snp.ca_bundle
            golden.sev_snp.svsm_measurement = snp.svsm_measurement
            for vmsas in sorted(snp.measurements):
                golden.sev_snp.measurements[vmsas] = snp.measurements[vmsas]
        return bytes(golden.SerializeToString(deterministic=True))

    @classmethod
    def from_bytes(cls, blob: bytes) -> GoldenMeasurement:
        """Parse a VMGoldenMeasurement; EndorsementFormatError when it does not parse or a
        digest or measurement has the wrong size."""
        golden = _parse("VMGoldenMeasurement", blob)
        try:
            when = datetime.datetime.fromtimestamp(golden.timestamp.seconds, datetime.UTC)
        except (OverflowError, OSError, ValueError):
            raise EndorsementFormatError("timestamp", "out of range") from None
        when += datetime.timedelta(microseconds=golden.timestamp.nanos // 1000)
        snp = None
        if golden.HasField("sev_snp"):
            s = golden.sev_snp
            snp = SevSnpGolden(
                {int(k): _size(f"sev_snp.measurements[{k}]", v, (MEASUREMENT_SIZE,))
                 for k, v in sorted(s.measurements.items())},
                s.svn, bytes(s.family_id), bytes(s.image_id), s.policy, bytes(s.ca_bundle),
                _size("sev_snp.svsm_measurement", s.svsm_measurement, (0, MEASUREMENT_SIZE)))
        return cls(when, bytes(golden.cert), _size("digest", golden.digest, (0, 48)),
                   bytes(golden.ca_bundle), golden.cl_spec, bytes(golden.commit), snp,
                   bytes(blob))


@dataclass(frozen=True)
class LaunchEndorsement:
    """VMLaunchEndorsement: the serialized golden measurement and the signature over it."""

    serialized_uefi_golden: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        """The endorsement file's bytes (what Google publishes as <MEASUREMENT>.binarypb)."""
        message = _classes()["VMLaunchEndorsement"](
            serialized_uefi_golden=self.serialized_uefi_golden, signature=self.signature)
        return bytes(message.SerializeToString(deterministic=True))

    @classmethod
    def from_bytes(cls, blob: bytes) -> LaunchEndorsement:
        """Parse an endorsement; EndorsementFormatError if it is not one."""
        message = _parse("VMLaunchEndorsement", blob)
        if not message.serialized_uefi_golden:
            raise EndorsementFormatError("VMLaunchEndorsement", "no serialized_uefi_golden")
        return cls(bytes(message.serialized_uefi_golden), bytes(message.signature))

    @property
    def golden(self) -> GoldenMeasurement:
        """The signed document, decoded (whether the signature holds is attest/'s question)."""
        return GoldenMeasurement.from_bytes(self.serialized_uefi_golden)
