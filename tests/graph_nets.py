"""Small graph networks for the graph bound and search tests (random weights, fixed seeds):
one per kind of operator the bounds must get through."""
from __future__ import annotations

import numpy as np

from verify.graph import Conv, Gemm, GraphNetwork, Node, Pad, Relu, Reshape, Scale, Sum, Transpose
from verify.graph.pooling import average_pool, max_pool


class Builder:
    def __init__(self, shape):
        self.nodes = [Node(None, (), tuple(shape), "input")]

    def add(self, op, inputs, label: str = "") -> int:
        inputs = tuple(inputs)
        shape = op.out_shape(*(self.nodes[j].shape for j in inputs))
        self.nodes.append(Node(op, inputs, tuple(shape), label or f"n{len(self.nodes)}"))
        return len(self.nodes) - 1

    def head(self, x: int, rng, hidden: int = 6, n_out: int = 3) -> GraphNetwork:
        """Flatten, Gemm, Relu, Gemm: the classifier on top."""
        x = self.add(Reshape((1, self.nodes[x].size)), (x,))
        n = self.nodes[x].shape[1]
        x = self.add(Gemm(rng.normal(size=(hidden, n)) / np.sqrt(n), rng.normal(size=hidden) * 0.1), (x,))
        x = self.add(Relu(), (x,))
        self.add(Gemm(rng.normal(size=(n_out, hidden)) / np.sqrt(hidden), rng.normal(size=n_out) * 0.1), (x,))
        return GraphNetwork(tuple(self.nodes), "test")


def _conv(rng, o, c, k, groups=1, **kw):
    w = rng.normal(size=(o, c // groups, k, k)) / np.sqrt(c // groups * k * k)
    return Conv(w, rng.normal(size=o) * 0.1, groups=groups, **kw)


def conv_stride_pad(rng):
    b = Builder((1, 2, 7, 7))
    x = b.add(_conv(rng, 3, 2, 3, strides=(2, 2), pads=(1, 0, 2, 1)), (0,))
    x = b.add(Relu(), (x,))
    x = b.add(_conv(rng, 4, 3, 3, strides=(1, 1), pads=(2, 2, 2, 2), dilations=(2, 2)), (x,))
    x = b.add(Relu(), (x,))
    return b.head(x, rng)


def conv_groups(rng):
    b = Builder((1, 4, 5, 5))
    x = b.add(_conv(rng, 4, 4, 3, groups=2, pads=(1, 1, 1, 1)), (0,))
    x = b.add(Relu(), (x,))
    x = b.add(_conv(rng, 6, 4, 2, groups=2, strides=(1, 2)), (x,))
    x = b.add(Relu(), (x,))
    return b.head(x, rng)


def pooling(rng):
    b = Builder((1, 2, 6, 6))
    x = b.add(_conv(rng, 3, 2, 3, pads=(1, 1, 1, 1)), (0,))
    x = b.add(Relu(), (x,))
    x = max_pool(b.add, x, 3, (6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), "maxpool")
    x = b.add(_conv(rng, 3, 3, 2, pads=(0, 0, 1, 1)), (x,))
    x = b.add(Relu(), (x,))
    # a padded MaxPool (the rewrite's mask Scale and Sums)
    x = max_pool(b.add, x, 3, (3, 3), (2, 2), (1, 1), (1, 1, 0, 0), (1, 1), "maxpool_padded")
    x = average_pool(b.add, x, 3, (3, 3), (2, 2), (1, 1), (1, 1, 0, 0), (1, 1), False, "avgpool")
    return b.head(x, rng)


def residual(rng):
    b = Builder((1, 2, 5, 5))
    a = b.add(_conv(rng, 3, 2, 3, pads=(1, 1, 1, 1)), (0,))
    a = b.add(Relu(), (a,))
    x = b.add(_conv(rng, 3, 3, 3, pads=(1, 1, 1, 1)), (a,))
    x = b.add(Relu(), (x,))
    x = b.add(_conv(rng, 3, 3, 3, pads=(1, 1, 1, 1)), (x,))
    x = b.add(Sum((1.0, -0.7)), (x, a))
    x = b.add(Relu(), (x,))
    return b.head(x, rng)


def normalised(rng):
    b = Builder((1, 5, 5, 2))  # NHWC input with a Transpose, as marabou-cifar10 has
    x = b.add(Scale(rng.uniform(0.5, 2.0, size=(1, 1, 1, 2)), rng.normal(size=(1, 1, 1, 2))), (0,))
    x = b.add(Transpose((0, 3, 1, 2)), (x,))
    x = b.add(_conv(rng, 3, 2, 3), (x,))
    x = b.add(Scale(rng.uniform(-2.0, 2.0, size=(1, 3, 1, 1)), rng.normal(size=(1, 3, 1, 1))), (x,))
    x = b.add(Relu(), (x,))
    x = b.add(Pad((0, 0, 1, 0, 0, 0, 0, 1), 0.3), (x,))
    x = b.add(_conv(rng, 2, 3, 2), (x,))
    x = b.add(Relu(), (x,))
    return b.head(x, rng)


NETS = {"conv_stride_pad": conv_stride_pad, "conv_groups": conv_groups, "pooling": pooling,
        "residual": residual, "normalised": normalised}


def one_layer_conv(rng, channels: int = 6):
    """Normalisation, a padded 2x2 convolution, one ReLU layer, average pooling and a
    Gemm: the shape of verivital's Convnet_avgpool (see verify.graphbounds.local_fields)."""
    b = Builder((1, 1, 5, 5))
    x = b.add(Scale(np.full((1, 1, 1, 1), 1.5), np.full((1, 1, 1, 1), -0.5)), (0,))
    x = b.add(_conv(rng, channels, 1, 2, pads=(1, 0, 0, 1)), (x,))
    x = b.add(Relu(), (x,))
    x = average_pool(b.add, x, channels, (5, 5), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), True, "avgpool")
    x = b.add(Reshape((1, b.nodes[x].size)), (x,))
    n = b.nodes[x].shape[1]
    b.add(Gemm(rng.normal(size=(3, n)) / np.sqrt(n), rng.normal(size=3) * 0.1), (x,))
    return GraphNetwork(tuple(b.nodes), "one_layer_conv")
