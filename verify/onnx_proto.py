"""Reading ONNX files with the onnx package's own protobuf schema, without the
package's start-up.

``import onnx`` costs about 1 s on the machines we measure on (most of it the
``ml_dtypes`` extension its helpers import), which is most of the CLI's
start-up on an easy instance.  Reading a model needs only the generated
``onnx_ml_pb2`` module (0.08 s), loaded here under a private name: the
protobuf runtime keeps one message class per descriptor, so its
``ModelProto`` is the very class ``onnx.ModelProto`` is once the package is
imported (tests and writers import it as usual).

Tensors and attributes are converted for the common types here; anything
else (external data, bfloat16, float8, strings in tensors, graphs as
attributes, ...) goes to ``onnx.numpy_helper`` / ``onnx.helper``, so the
results are those of the onnx package in every case.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

_PRIVATE = "verify._onnx_ml_pb2"

# TensorProto.DataType -> (numpy dtype, the typed field holding the values)
_TENSOR_TYPES = {
    1: ("<f4", "float_data"), 2: ("u1", "int32_data"), 3: ("i1", "int32_data"),
    4: ("<u2", "int32_data"), 5: ("<i2", "int32_data"), 6: ("<i4", "int32_data"),
    7: ("<i8", "int64_data"), 9: ("?", "int32_data"), 10: ("<f2", "int32_data"),
    11: ("<f8", "double_data"), 12: ("<u4", "uint64_data"), 13: ("<u8", "uint64_data"),
}
_EXTERNAL = 1  # TensorProto.EXTERNAL
_FLOAT16 = 10


def schema():
    """The module holding ``ModelProto`` / ``TensorProto``: the onnx package when it
    is imported already, else its generated protobuf module alone."""
    if "onnx" in sys.modules:
        return sys.modules["onnx"]
    module = sys.modules.get(_PRIVATE)
    if module is not None:
        return module
    try:
        found = importlib.util.find_spec("onnx")
        path = Path(found.origin).parent / "onnx_ml_pb2.py"
        spec = importlib.util.spec_from_file_location(_PRIVATE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - any layout we do not know: the package itself
        import onnx
        return onnx
    sys.modules[_PRIVATE] = module
    return module


def model_from_bytes(data: bytes):
    """The ``ModelProto`` serialised in ``data`` (protobuf's errors on garbage)."""
    model = schema().ModelProto()
    model.ParseFromString(data)
    return model


def has_external_data(model) -> bool:
    return any(t.data_location == _EXTERNAL for t in model.graph.initializer)


def tensor_to_array(tensor) -> np.ndarray:
    """``onnx.numpy_helper.to_array(tensor)``: the same values, dtype and shape."""
    kind = _TENSOR_TYPES.get(tensor.data_type)
    if kind is None or tensor.data_location == _EXTERNAL or tensor.HasField("segment"):
        from onnx import numpy_helper
        return numpy_helper.to_array(tensor)
    dtype, field = kind
    shape = tuple(tensor.dims)
    if tensor.raw_data:
        out = np.frombuffer(tensor.raw_data, dtype=dtype).copy()
    elif tensor.data_type == _FLOAT16:  # the bits of each half in an int32
        out = np.asarray(tensor.int32_data, dtype=np.uint16).view(np.float16)
    else:
        out = np.asarray(getattr(tensor, field), dtype=dtype)
    return out.astype(np.dtype(dtype).newbyteorder("="), copy=False).reshape(shape)


# AttributeProto.AttributeType -> how to read it
_ATTRIBUTES = {1: lambda a: a.f, 2: lambda a: a.i, 3: lambda a: a.s, 4: lambda a: a.t,
               6: lambda a: list(a.floats), 7: lambda a: list(a.ints),
               8: lambda a: list(a.strings), 9: lambda a: list(a.tensors)}


def attribute_value(attr):
    """``onnx.helper.get_attribute_value(attr)``."""
    read = _ATTRIBUTES.get(attr.type)
    if read is None:
        from onnx import helper
        return helper.get_attribute_value(attr)
    return read(attr)
