"""The Python API of coreproof (the CLI and the pytest plugin are thin layers over it).

    from verify.api import load_network, load_property, verify_property, VerifyOptions
    net = load_network("net.onnx")
    prop = load_property("prop.vnnlib", net)
    result = verify_property(net, prop, VerifyOptions(timeout=60))
"""
from __future__ import annotations

from pathlib import Path

from .loading import load_network
from .network import Network
from .options import VerifyOptions
from .properties import Property, local_robustness
from .result import Status, VerificationResult
from .verifier import Proof, verify_property
from .vnnlib import check_fits, load_vnnlib


def load_property(path: str | Path, network: Network | None = None) -> Property:
    """Read a VNN-LIB file; with ``network`` given, check that the sizes fit."""
    if network is None:
        return load_vnnlib(path)
    prop = load_vnnlib(path, network.n_inputs, network.n_outputs)
    check_fits(network, prop, path=str(path))
    return prop


__all__ = ["load_network", "load_property", "verify_property", "VerifyOptions", "Network",
           "Property", "local_robustness", "Status", "VerificationResult", "Proof", "check_fits"]
