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


def test_a_blas_loaded_after_the_first_verification_is_limited_too(digits_mlp, monkeypatch):
    """A library imported after the first verification loads its own BLAS (sklearn's
    scipy: its OpenBLAS); the next verification limits that one as well."""
    import sys
    from threadpoolctl import threadpool_limits
    net, X, _ = digits_mlp
    prop = local_robustness(X[1], 0.01, int(np.argmax(net.forward(X[1]))), 10)
    verify_property(net, prop, VerifyOptions(timeout=5))
    threadpool_limits(limits=2, user_api="blas")  # as a BLAS loaded since would start
    # a module imported since the last verification
    monkeypatch.setitem(sys.modules, "coreproof_test_new_module", sys)
    verify_property(net, prop, VerifyOptions(timeout=5))
    blas = [p for p in threadpool_info() if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)
