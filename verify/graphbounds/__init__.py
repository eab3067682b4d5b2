"""Bounds of graph networks (CNNs, residual networks): per-operator transfer rules and a
propagator with the chain propagator's interface."""
from .propagator import GraphBoundOptions, GraphBoundPropagator, make_propagator

__all__ = ["GraphBoundOptions", "GraphBoundPropagator", "make_propagator"]
