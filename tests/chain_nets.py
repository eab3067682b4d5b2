"""Random deep ReLU chains for the tests of intermediate-layer bounds (seeded)."""
import numpy as np

from verify.network import Affine, Network
from verify.properties import local_robustness


def deep_chain(seed: int, width: int = 24, depth: int = 5) -> Network:
    """8 inputs, ``depth`` hidden layers of ``width``, 3 outputs."""
    rng = np.random.default_rng(seed)
    sizes = [8] + [width] * depth + [3]
    return Network(tuple(Affine(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)
                         for i, o in zip(sizes, sizes[1:])))


def random_chain_instance(seed: int, eps: float, n_outputs: int = 3):
    """A 32-48x6-``n_outputs`` chain and local robustness of its own label around a
    random point (32 inputs: the search splits ReLUs)."""
    rng = np.random.default_rng(seed)
    sizes = [32] + [48] * 6 + [n_outputs]
    net = Network(tuple(Affine(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)
                        for i, o in zip(sizes, sizes[1:])))
    centre = np.random.default_rng(seed).uniform(0.3, 0.7, size=32)
    return net, local_robustness(centre, eps, int(np.argmax(net.forward(centre))), n_outputs)
