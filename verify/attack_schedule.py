"""Falsification interleaved with branch and bound.

The up-front attack (:func:`verify.attack.falsify`) stays short; while the search
runs, :class:`InterleavedAttack` spends about a fixed share of its time on PGD rounds
started from the open branches' bound minimisers (where the bounds say a violation
would be), with more restarts each round.  A counterexample is reported only after
:func:`verify.attack.confirm_batch` re-ran it on the concrete network."""
from __future__ import annotations

import time

import numpy as np

from .attack import Attacker
from .options import VerifyOptions
from .properties import Region
from .result import Counterexample, Statistics

MAX_RESTARTS = 512  # random restarts of a round (doubling from options.attack_restarts)
MAX_STARTS = 64  # bound minimisers a round starts from


class InterleavedAttack:
    """Decides when the search pauses for an attack round, and runs it."""

    def __init__(self, network, region: Region, region_index: int, options: VerifyOptions,
                 stats: Statistics, deadline: float):
        self.network, self.region, self.index = network, region, region_index
        self.opt, self.stats, self.deadline = options, stats, deadline
        self.share = options.attack_search_share
        self.restarts = max(1, options.attack_restarts)
        self.rng = np.random.default_rng(options.seed + 1 + region_index)
        self.started = time.monotonic()
        # the first round once the search has run as long as the up-front attack may
        self.next_at = self.started + max(options.attack_max_s, 0.25)
        self._attacker: Attacker | None = None

    def due(self) -> bool:
        return self.share > 0 and time.monotonic() >= self.next_at

    def round(self, starts: np.ndarray) -> Counterexample | None:
        """One PGD round from ``starts`` (bound minimisers, (k, n)) and random points,
        taking at most the share of the search time so far; schedules the next."""
        now = time.monotonic()
        if self._attacker is None:
            self._attacker = Attacker(self.network)
        if len(starts) > MAX_STARTS:
            starts = starts[self.rng.choice(len(starts), MAX_STARTS, replace=False)]
        until = min(self.deadline, now + max(0.1, self.share * (now - self.started)))
        cex, n = self._attacker.attack(self.region, self.index, self.rng, until,
                                       restarts=self.restarts, steps=self.opt.attack_steps,
                                       samples=0, starts=starts if len(starts) else None)
        self.stats.attack_restarts += n
        spent = time.monotonic() - now
        self.next_at = time.monotonic() + spent * (1.0 - self.share) / self.share
        self.restarts = min(2 * self.restarts, MAX_RESTARTS)
        return cex
