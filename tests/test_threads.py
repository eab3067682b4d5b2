"""Verifying runs torch and numpy's BLAS on one thread each (verify.threads)."""
import numpy as np
import torch
from threadpoolctl import threadpool_info

from verify.api import VerifyOptions, local_robustness, verify_property


def test_verification_leaves_torch_and_blas_single_threaded(digits_mlp):
    net, X, _ = digits_mlp
    torch.set_num_threads(2)
    prop = local_robustness(X[0], 0.01, int(np.argmax(net.forward(X[0]))), 10)
    verify_property(net, prop, VerifyOptions(timeout=5))
    assert torch.get_num_threads() == 1
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)
