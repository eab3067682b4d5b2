"""A variant broken everywhere on a region, for the tests that a re-check finds its
counterexample: the network with its output layer's bias of the region's centre's
class lowered by 100."""
from __future__ import annotations

import numpy as np

from verify.network import Affine


def broken_everywhere(net, region):
    target = int(np.argmax(net.forward((region.lower + region.upper) / 2)))
    last = net.affines[-1]
    bias = last.bias.copy()
    bias[target] -= 100.0
    return net.with_affines(net.affines[:-1] + (Affine(last.weight, bias),), "broken")
