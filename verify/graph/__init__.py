"""The graph network model (CNNs, residual networks): typed operators in a DAG."""
from .model import GraphNetwork, Node, as_chain, chain_graph
from .ops import AFFINE_OPS, Conv, Gemm, Op, Pad, Relu, Reshape, Scale, Sum, Transpose

__all__ = ["GraphNetwork", "Node", "as_chain", "chain_graph", "AFFINE_OPS", "Conv", "Gemm", "Op", "Pad",
           "Relu", "Reshape", "Scale", "Sum", "Transpose"]
