"""CCSD: shared-specific network with hierarchical and decremental self-distillation."""
