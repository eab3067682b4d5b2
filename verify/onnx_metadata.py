"""Model properties (``metadata_props``) that coreproof writes into ONNX files and reads
back: the original input shape and the scales of quantized layers, so a chain written
with plain float weights keeps its integer form."""
from __future__ import annotations

import json

import numpy as np

from .network import Affine, Network

_META_SHAPE = "coreproof.input_shape"
_META_SCALE = "coreproof.layer{}.weight_scale"


def quantization_metadata(network: Network) -> dict[str, str]:
    """Model properties that keep the integer form of quantized layers in a file whose
    weights are plain floats (read back by :func:`verify.onnx_io.load_onnx`)."""
    return {_META_SCALE.format(k): json.dumps([float(s) for s in a.weight_scale])
            for k, a in enumerate(network.affines) if a.weight_scale is not None}


def _restore_metadata(model, affines: list[Affine], shape: tuple[int, ...]):
    meta = {p.key: p.value for p in model.metadata_props}
    if _META_SHAPE in meta:
        try:
            saved = tuple(int(s) for s in json.loads(meta[_META_SHAPE]))
            if int(np.prod(saved)) == int(np.prod(shape)):
                shape = saved
        except (ValueError, TypeError):
            pass
    out = []
    for k, a in enumerate(affines):
        text = meta.get(_META_SCALE.format(k))
        out.append(_requantize(a, text) if text else a)
    return out, shape


def _requantize(a: Affine, text: str) -> Affine:
    """Restore integer weights from a saved scale vector if they reproduce ``a`` exactly."""
    try:
        scale = np.asarray(json.loads(text), dtype=np.float64).reshape(-1)
        if scale.shape != (a.out_size,) or not np.all(np.isfinite(scale)) or np.any(scale == 0):
            return a
        wi = np.round(a.weight / scale[:, None])
        if np.array_equal(wi * scale[:, None], a.weight) and np.all(np.abs(wi) < 2 ** 53):
            return Affine(a.weight, a.bias, wi.astype(np.int64), scale)
    except (ValueError, TypeError):
        pass
    return a
