"""Certified functional equivalence of two ReLU chains (``coreproof equiv``).

:func:`verify.equiv.api.certify_equivalence` bounds ``max |g(x) - f(x)|`` per
output over an input box soundly (differential bounds, :mod:`.bounds`) and
decides top-1 agreement there (branch and bound, :mod:`.search`; replayed
counterexamples, :mod:`.attack`).
"""
