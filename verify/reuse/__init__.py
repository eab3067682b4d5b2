"""Proof reuse: the original network's proof (branches + minimal unsat cores)
certifies its compressed variants.

    from verify.reuse import build_proof, reverify
    result = reverify(original, variant, prop, options, record=variant_record, store=store)

Modules: :mod:`.cores` (minimal unsat cores), :mod:`.proof` (the proof
artifact -- the closed branches of ``verify_property``'s own search -- and its store),
:mod:`.changes` (what compression changed, per constraint name),
:mod:`.transfer` (proof transfer by certified equivalence, tried first),
:mod:`.reverify` (core-guided verification of a variant), :mod:`.report`
(HTML report), :mod:`.cli_commands` (``coreproof reverify`` / ``report``).
"""
from .changes import ChangeMap
from .cores import Core, extract_core, minimise
from .options import ReuseOptions
from .proof import ProofBranch, ProofRecord, build_proof, covers, load_proof, save_proof
from .reverify import ReuseResult, ReuseStats, compare_scratch, get_proof, reverify

__all__ = ["ChangeMap", "Core", "extract_core", "minimise", "ReuseOptions", "ProofBranch",
           "ProofRecord", "build_proof", "covers", "load_proof", "save_proof", "ReuseResult",
           "ReuseStats", "compare_scratch", "get_proof", "reverify"]
