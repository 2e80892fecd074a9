"""The one table of training budgets: the demo's ``--budget`` names, the trainer siblings ``X<suffix>`` that the base
trainer generates, and their iteration counts. Imports nothing heavy, so the command line reads it at start-up."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Budget:
    """A training length: the demo's ``--budget NAME`` and the trainer sibling ``X<suffix>``."""

    name: str
    suffix: str
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    purpose: str

    @property
    def iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def overrides(self) -> Dict[str, int]:
        """The nnU-Net attributes this budget sets."""
        return {"num_epochs": self.num_epochs, "num_iterations_per_epoch": self.num_iterations_per_epoch,
                "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch}


# The one budget table. 50 iterations per epoch so that the progress plot has points; 5 validation iterations: the
# demo's validation cases are tiny.
BUDGETS: Dict[str, Budget] = {b.name: b for b in (
    Budget("debug", "_debug", 1, 2, 1, "smoke test: 2 iterations"),
    Budget("small", "_demoSmall", 4, 50, 5, "200 iterations (a CPU demo)"),
    Budget("medium", "_demoMedium", 20, 50, 5, "1000 iterations"),
    Budget("large", "_demoLarge", 60, 50, 5, "3000 iterations (a GPU)"),
)}
"""Budget name -> :class:`Budget`. Every concrete trainer ``X`` gets a sibling ``X<suffix>`` for each entry."""
DEBUG_SUFFIX = BUDGETS["debug"].suffix
BUDGET_VARIANTS: Dict[str, Dict[str, int]] = {b.suffix: b.overrides() for b in BUDGETS.values()}
"""Suffix -> nnU-Net attribute overrides, derived from :data:`BUDGETS`."""
