"""CCSD's decremental modality path (DMCD, paper Eqs. 4-7 and the Eq. 9 ablation).

A path is, per sample, the chain ``S_0 ⊃ S_1 ⊃ ... ⊃ S_{M-1}`` of modality sets obtained by removing one modality per
step, starting from the full set and ending with a single modality. It is returned as a ``(B, M)`` long tensor of
indices into :data:`nnunet_missingmod.modalities.SUBSETS` (column 0 = 14 = the full set), which is what
:class:`nnunet_missingmod.training.methods.ccsd.losses.DMCDLoss` consumes.

Modalities are indexed in canonical order (:data:`~nnunet_missingmod.modalities.MODALITIES`: T1, T1ce, T2, FLAIR), i.e.
axis ``M`` of every ``(B, M, ...)`` tensor here is that order.

Everything here is computed without gradient and in float32 (autocast off): the path is a discrete choice.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from nnunet_missingmod.modalities import MODALITIES, SUBSETS

__all__ = ["PATH_STRATEGIES", "FULL_SET_INDEX", "subset_index_of", "cosine_similarity_matrix", "criticality",
           "criticality_from_similarity", "gradient_criticality", "decremental_path", "removed_modalities",
           "check_decremental_path"]

PATH_STRATEGIES: Tuple[str, ...] = ("max_criticality", "min_criticality", "random", "gradient")
"""``max_criticality``: the paper's DMCD (Eq. 6: remove the most critical modality at each step).
``min_criticality``: ablation "Min-Criticality" (paper Table 5). ``random``: ablation "Random-Path" (Table 5).
``gradient``: ablation "Gradient-based criticality" (Eq. 9, Table 6)."""

FULL_SET_INDEX: int = len(SUBSETS) - 1
"""Index of the full set in :data:`SUBSETS` (14)."""

_INDEX_OF_PRESENT = {s.present: i for i, s in enumerate(SUBSETS)}


def subset_index_of(present: Sequence[bool]) -> int:
    """Index into :data:`SUBSETS` of the subset whose per-modality flags are ``present`` (canonical order)."""
    key = tuple(bool(p) for p in present)
    if key not in _INDEX_OF_PRESENT:
        raise ValueError(f"no non-empty subset of {MODALITIES} has presence flags {list(key)}")
    return _INDEX_OF_PRESENT[key]


def _check_features(features: torch.Tensor) -> None:
    if not isinstance(features, torch.Tensor) or features.ndim < 3 or features.shape[1] != len(MODALITIES):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"per-modality features must be (B, M={len(MODALITIES)}, C, *spatial), got {shape}")


def _check_present(present: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
    m = len(MODALITIES)
    if present is None:
        return torch.ones(batch, m, dtype=torch.bool, device=device)
    present = torch.as_tensor(present, dtype=torch.bool, device=device)
    if present.ndim == 1:
        present = present.unsqueeze(0).expand(batch, m)
    if tuple(present.shape) != (batch, m):
        raise ValueError(f"present must be (B={batch}, M={m}) bool (or (M,)), got {tuple(present.shape)}")
    if not present.any(dim=1).all():
        raise ValueError("every sample needs at least one present modality")
    return present


@torch.no_grad()
def cosine_similarity_matrix(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Paper Eq. 5: ``s_ij = <vec f_i, vec f_j> / (||vec f_i|| ||vec f_j||)`` per sample.

    Args:
        features: (B, M, C, *spatial) per-modality (fused) features.
        eps: lower bound on the norms (an all-zero feature has similarity 0 to everything).
    Returns:
        (B, M, M) float32, no gradient.
    """
    _check_features(features)
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.detach().float().flatten(2)  # (B, M, C*prod(spatial))
        unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(eps)
        sim = unit @ unit.transpose(1, 2)
        return 0.5 * (sim + sim.transpose(1, 2))  # exactly symmetric, so that ties are exact ties


@torch.no_grad()
def criticality_from_similarity(similarity: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Paper Eq. 4 [RECON]: ``c_i(S) = 1 - mean_{j∈S, j≠i} s_ij`` for ``i ∈ S``; ``-inf`` for ``i ∉ S``.

    A lone present modality (``|S| = 1``, no partner) gets ``c = 1`` (empty mean taken as 0).

    Args:
        similarity: (B, M, M) cosine similarities (:func:`cosine_similarity_matrix`).
        present: (B, M) bool, the current set S per sample (``None`` = all present).
    Returns:
        (B, M) float32.
    """
    b, m = similarity.shape[0], similarity.shape[1]
    present = _check_present(present, b, similarity.device)
    with torch.autocast(device_type=similarity.device.type, enabled=False):
        sim = similarity.detach().float()
        eye = torch.eye(m, dtype=torch.bool, device=sim.device)
        partner = present.unsqueeze(1) & ~eye  # (B, i, j): j ∈ S, j ≠ i
        n_partners = partner.sum(dim=2)
        mean_sim = (sim * partner).sum(dim=2) / n_partners.clamp_min(1)
        c = 1.0 - mean_sim
        return c.masked_fill(~present, float("-inf"))


@torch.no_grad()
def criticality(features: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Criticality of each modality within the set ``present`` (paper Eqs. 4-5, [RECON] formula).

    High = unique (low similarity to the other present modalities) = hard to replace.

    Args:
        features: (B, M, C, *spatial) per-modality fused features ``f_m`` (paper Table 4: fused is best).
        present: (B, M) bool (or (M,)), the set S; ``None`` = all M.
    Returns:
        (B, M) float32; entries of missing modalities are ``-inf`` (never chosen by ``argmax``). No gradient.
    """
    return criticality_from_similarity(cosine_similarity_matrix(features), present)


def gradient_criticality(loss: torch.Tensor,
                         features: Union[torch.Tensor, Sequence[torch.Tensor]],
                         retain_graph: bool = True) -> torch.Tensor:
    """Paper Eq. 9 (ablation): ``c_m = ||∂L_seg / ∂f_m||_2`` per sample.

    Args:
        loss: scalar segmentation loss whose graph contains ``features``.
        features: (B, M, C, *spatial) tensor in the graph, or a sequence of M tensors (B, C, *spatial) in the graph.
        retain_graph: keep the graph for the real backward pass (default True).
    Returns:
        (B, M) float32, detached.
    """
    tensors = [features] if isinstance(features, torch.Tensor) else list(features)
    grads = torch.autograd.grad(loss, tensors, retain_graph=retain_graph, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
    with torch.autocast(device_type=loss.device.type, enabled=False):
        if isinstance(features, torch.Tensor):
            return grads[0].detach().float().flatten(2).norm(dim=2)
        return torch.stack([g.detach().float().flatten(1).norm(dim=1) for g in grads], dim=1)


def _chain_from_scores(present_full: torch.Tensor, step_scores) -> torch.Tensor:
    """Greedy removal: ``step_scores(present) -> (B, M)`` scores with -inf for absent; removes the argmax (first on
    ties) until one modality is left. Samples whose start set is smaller repeat their last subset (no-op steps)."""
    b, m = present_full.shape
    current = present_full.clone()
    columns = [current.clone()]
    for _ in range(m - 1):
        scores = step_scores(current)
        can_remove = current.sum(dim=1) > 1  # (B,)
        choice = torch.argmax(scores, dim=1)  # first maximal index on ties
        removal = torch.zeros_like(current)
        removal[torch.arange(b), choice] = True
        current = current & ~(removal & can_remove.unsqueeze(1))
        columns.append(current.clone())
    presence = torch.stack(columns, dim=1).cpu()  # (B, M steps, M modalities)
    return torch.tensor([[subset_index_of(p) for p in row.tolist()] for row in presence], dtype=torch.long)


def decremental_path(features: Optional[torch.Tensor] = None,
                     present_full: Optional[torch.Tensor] = None,
                     strategy: str = "max_criticality",
                     generator: Optional[torch.Generator] = None,
                     gradient_norms: Optional[torch.Tensor] = None,
                     recompute: bool = True) -> torch.Tensor:
    """The decremental path ``S_0 ⊃ S_1 ⊃ ... ⊃ S_{M-1}`` per sample (paper Eqs. 6-7).

    Args:
        features: (B, M, C, *spatial) per-modality fused features (needed by the two criticality strategies; for
            ``random``/``gradient`` only its batch size is used, and it may be ``None``).
        present_full: (B, M) bool (or (M,)), the modalities available to the sample (``None`` = all; the paper's
            default training condition). ``S_0`` is this set.
        strategy: one of :data:`PATH_STRATEGIES`:

            * ``max_criticality`` (paper, default): remove ``argmax_i c_i(S_t)`` (Eq. 6).
            * ``min_criticality`` (ablation): remove ``argmin_i c_i(S_t)``.
            * ``random`` (ablation): a uniformly random removal order (from ``generator``).
            * ``gradient`` (Eq. 9 ablation): remove in decreasing order of ``gradient_norms`` (scores from one
              backward pass, so fixed along the path).
        generator: CPU ``torch.Generator`` for ``random`` (reproducible with a seeded generator).
        gradient_norms: (B, M) scores for ``gradient`` (e.g. :func:`gradient_criticality`).
        recompute: criticality strategies only. ``True`` [RECON, our reading of "at each step"]: ``c_i(S_t)`` is
            recomputed on the shrinking set ``S_t`` before every removal. ``False``: one ranking on ``S_0``.
    Returns:
        (B, M) long tensor (CPU) of indices into :data:`SUBSETS`; column 0 is the index of ``S_0`` (14 for the full
        set), column t has cardinality ``|S_0| - t`` and is a strict subset of column t-1, down to one modality.
        If ``S_0`` has fewer than M modalities, the last (single-modality) index is repeated to fill the M columns;
        :class:`~nnunet_missingmod.training.methods.ccsd.losses.DMCDLoss` ignores such repeated (no-op) steps.
        Ties are broken deterministically towards the lowest modality index (canonical order).
    """
    if strategy not in PATH_STRATEGIES:
        raise ValueError(f"unknown decremental path strategy {strategy!r}; expected one of {PATH_STRATEGIES}")
    m = len(MODALITIES)
    if features is not None:
        _check_features(features)
        batch = features.shape[0]
    elif gradient_norms is not None:
        batch = gradient_norms.shape[0]
    elif present_full is not None and torch.as_tensor(present_full).ndim == 2:
        batch = torch.as_tensor(present_full).shape[0]
    else:
        raise ValueError("decremental_path needs features, gradient_norms or a (B, M) present_full for the "
                         "batch size")
    present_full = _check_present(present_full, batch, "cpu").cpu()

    if strategy in ("max_criticality", "min_criticality"):
        if features is None:
            raise ValueError(f"strategy {strategy!r} needs the per-modality features")
        similarity = cosine_similarity_matrix(features).cpu()
        sign = 1.0 if strategy == "max_criticality" else -1.0
        fixed = criticality_from_similarity(similarity, present_full)

        def step_scores(current):
            c = criticality_from_similarity(similarity, current) if recompute else fixed
            scores = sign * c.masked_fill(~current, 0.0)  # avoid -(-inf) = +inf for min
            return scores.masked_fill(~current, float("-inf"))
    elif strategy == "random":
        random_scores = torch.rand(batch, m, generator=generator)

        def step_scores(current):
            return random_scores.masked_fill(~current, float("-inf"))
    else:
        if gradient_norms is None:
            raise ValueError("strategy 'gradient' needs gradient_norms (B, M)")
        norms = torch.as_tensor(gradient_norms).detach().float().cpu()
        if tuple(norms.shape) != (batch, m):
            raise ValueError(f"gradient_norms must be (B={batch}, M={m}), got {tuple(norms.shape)}")

        def step_scores(current):
            return norms.masked_fill(~current, float("-inf"))

    return _chain_from_scores(present_full, step_scores)


def removed_modalities(path: torch.Tensor) -> torch.Tensor:
    """(B, M-1) long: the modality index (canonical order) removed at each step of ``path``; -1 for a no-op step."""
    presence = torch.tensor([[SUBSETS[i].present for i in row] for row in path.tolist()], dtype=torch.bool)
    dropped = presence[:, :-1] & ~presence[:, 1:]  # (B, M-1, M)
    index = dropped.float().argmax(dim=2)
    return index.masked_fill(~dropped.any(dim=2), -1)


def check_decremental_path(path: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every row of ``path`` (B, M) is a valid chain: each step removes exactly
    one modality (or, once at one modality, repeats it), ending with a single modality."""
    if path.ndim != 2 or path.shape[1] != len(MODALITIES):
        raise ValueError(f"a decremental path must be (B, M={len(MODALITIES)}), got {tuple(path.shape)}")
    for row in path.tolist():
        if any(not 0 <= i < len(SUBSETS) for i in row):
            raise ValueError(f"path {row} holds an index outside 0..{len(SUBSETS) - 1}")
        sets = [SUBSETS[i] for i in row]
        for a, b in zip(sets[:-1], sets[1:]):
            subset = all(pa or not pb for pa, pb in zip(a.present, b.present))
            ok = subset and (b.cardinality == a.cardinality - 1 or (a == b and a.cardinality == 1))
            if not ok:
                raise ValueError(f"path {[s.name for s in sets]} is not a decremental chain ({a} -> {b})")
        if sets[-1].cardinality != 1:
            raise ValueError(f"path {[s.name for s in sets]} does not end with a single modality")
