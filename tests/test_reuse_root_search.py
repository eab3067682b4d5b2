"""A region its original closed by one tightened root bound (no split): a variant the
change bounds leave open is searched from its root at once, the root's layer steps
started from the original's kept slopes (``ReuseOptions.root_search_first``), and
decides as a search from scratch does."""
import numpy as np
import pytest

from compress import compress
from verify.api import VerifyOptions, verify_property
from verify.network import Affine, Network
from verify.reuse import ReuseOptions, build_proof, reverify
from verify.search import RegionSearch

from chain_nets import random_chain_instance

OPTIONS = VerifyOptions(timeout=30)


@pytest.fixture(scope="module")
def tight_root_proof():
    """A 32-48x6-10 chain whose robustness proof is its tightened root alone."""
    net, prop = random_chain_instance(2, 0.03, n_outputs=10)
    proof = build_proof(net, prop, OPTIONS)
    assert proof.status == "holds" and proof.n_branches == 1
    assert proof.root_slopes.get(0)  # the root needed the layer steps
    return net, prop, proof


def _shifted(net: Network, prop, share: float) -> Network:
    """The network with the output of the runner-up class raised (and the label's
    lowered) by ``share`` of half their gap at the box centre: closer to violation as
    ``share`` grows, violated past some share."""
    region = prop.regions[0]
    y = net.forward((region.lower + region.upper) / 2)
    label, runner = np.argsort(-y)[:2]
    delta = share * (y[label] - y[runner]) / 2
    last = net.affines[-1]
    bias = last.bias.copy()
    bias[runner] += delta
    bias[label] -= delta
    return Network(net.affines[:-1] + (Affine(last.weight, bias),))


@pytest.fixture
def root_starts(monkeypatch):
    """The slopes every search's root was started from (``start_root_from``)."""
    starts = []
    real = RegionSearch.start_root_from

    def seen(self, bounds, tight, slopes=None):
        starts.append(slopes)
        return real(self, bounds, tight, slopes)
    monkeypatch.setattr(RegionSearch, "start_root_from", seen)
    return starts


@pytest.mark.parametrize("variant", ["int8", "magnitude:0.1", 0.2, 0.5, 0.9, 1.2])
def test_root_search_decides_as_scratch(tight_root_proof, root_starts, variant):
    net, prop, proof = tight_root_proof
    v = compress(net, variant).network if isinstance(variant, str) else \
        _shifted(net, prop, variant)
    res = reverify(net, v, prop, OPTIONS, proof=proof)
    scratch = verify_property(v, prop, OPTIONS)
    assert res.status == scratch.status and res.status.value != "unknown"
    if res.status.value == "violated":  # replayed on the variant
        x = np.asarray(res.counterexample.input)
        region = prop.regions[0]
        assert ((x >= region.lower - 1e-9) & (x <= region.upper + 1e-9)).all()
        y = v.forward(x)
        label = int(np.argmax(net.forward((region.lower + region.upper) / 2)))
        assert (np.delete(y, label) >= y[label]).any()
    elif res.method == "reuse-bab":  # the variant's own search of the root, warm-started
        assert root_starts and all(s is not None and set(s) == set(proof.root_slopes[0])
                                   for s in root_starts)
        assert res.reuse.closed_by_split == 1


def test_root_search_is_taken_and_only_when_asked(tight_root_proof, root_starts, monkeypatch):
    """Variants the change bounds leave open take the root search (warm-started, without
    the proof branches' own plain and alpha bounds first); with ``root_search_first``
    off they take those bounds, and reach the same verdicts."""
    import verify.reuse.reuser as reuser
    net, prop, proof = tight_root_proof
    branch_bounds = []
    real = reuser.Reuser._bound
    monkeypatch.setattr(reuser.Reuser, "_bound",
                        lambda self, *a, **k: branch_bounds.append(1) or real(self, *a, **k))
    taken = 0
    for share in (0.2, 0.5, 0.9):
        v = _shifted(net, prop, share)
        root_starts.clear()
        branch_bounds.clear()
        fast = reverify(net, v, prop, OPTIONS, proof=proof)
        if fast.method == "reuse-bab":
            taken += 1
            assert root_starts and not branch_bounds
        branch_bounds.clear()
        slow = reverify(net, v, prop, OPTIONS, proof=proof,
                        reuse_options=ReuseOptions(root_search_first=False))
        assert fast.status == slow.status
        if slow.method == "reuse-bab":
            assert branch_bounds
    assert taken >= 2
