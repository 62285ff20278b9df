"""The gRPC API's message classes, built from ``proto/grpc_predict_v2.proto``'s compiled
descriptor (``proto/grpc_predict_v2.desc``, written by grpcio-tools' protoc; see the .proto's
header) in a descriptor pool of modelfleet's own.

No generated ``_pb2`` module: generated code is tied to the protobuf runtime's major version,
and the messages' full names (``inference.ModelInferRequest``) would collide in protobuf's
default pool with those of any Triton or KServe client loaded in the same process. The compiled
descriptor is the same bytes whatever the runtime, and a private pool collides with nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["SERVICE", "messages"]

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_FILE = Path(__file__).parent / "proto" / "grpc_predict_v2.desc"

_classes: dict[str, Any] = {}


def messages() -> dict[str, Any]:
    """Each message class of the API by its short name (``ModelInferRequest``), built once."""
    if not _classes:
        files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_FILE.read_bytes())
        pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            pool.Add(file)
        for file in files.file:
            for message in file.message_type:
                descriptor = pool.FindMessageTypeByName(f"{file.package}.{message.name}")
                _classes[message.name] = message_factory.GetMessageClass(descriptor)
    return _classes
