"""CCSD self-distillation losses (HMSD, DMCD) and ShaSpec's auxiliary losses, as small pure modules/functions.

* :func:`hierarchy_level_subsets`, :func:`sample_hierarchy_level`: the HMSD hierarchy level ``S_k`` (paper Eq. 1).
* :class:`HMSDLoss`: temperature-softened KL from the full-set output (teacher, stop-gradient) to each subset's output
  (students), averaged over the students of one level (paper Eqs. 2-3).
* :class:`DMCDLoss`: sequential feature distillation along the decremental path (paper Eq. 8); the path comes from
  :func:`nnunet_missingmod.training.methods.ccsd.path.decremental_path`.
* :func:`shared_alignment_loss`, :func:`domain_classification_loss`: ShaSpec's ``L_shared`` and ``L_spec``.

Every loss is computed in float32 with autocast off and returns a float32 scalar. Subsets are indices into
:data:`nnunet_missingmod.modalities.SUBSETS`; modality axes ``M`` are in canonical order (T1, T1ce, T2, FLAIR).
Tags in the docs: [PAPER] stated in the CCSD paper, [CODE] ShaSpec code, [RECON] our reconstruction of a stripped
equation, [GUESS] our choice.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_missingmod.modalities import MODALITIES, SUBSETS
from nnunet_missingmod.training.kd import float32_autocast_off, logit_kl

__all__ = ["DEFAULTS", "DEFAULT_SOURCES", "hierarchy_level_subsets", "sample_hierarchy_level", "HMSDLoss",
           "DMCDLoss", "shared_alignment_loss", "domain_classification_loss"]

DEFAULTS = dict(temperature=2.0, hmsd=1.0, dmcd=1.0, dmcd_normalise=True, shared_alignment=0.1, domain=0.02,
                levels=(1, 2, 3))
"""Default hyperparameters of the CCSD loss terms (weights multiply the terms in the trainer)."""

DEFAULT_SOURCES = dict(
    temperature="[GUESS] CCSD paper does not give tau; 2.0 = ShaSpec code's (unused) KDLoss temperature",
    hmsd="[GUESS] lambda_HMSD not given in the CCSD paper; 1.0",
    dmcd="[GUESS] lambda_DMCD not given in the CCSD paper; 1.0",
    dmcd_normalise="[OURS] compare channel-L2-normalised F_S: the raw MSE diverges (teacher and student share "
                   "weights; docs/methods.md)",
    shared_alignment="[CODE] ShaSpec train_SS.py alpha = 0.1",
    domain="[CODE] ShaSpec train_SS.py beta = 0.02",
    levels="[RECON] k in {1, ..., N-1} (N = 4): the full set is the teacher, so k = N has no student",
)
"""Source of each value in :data:`DEFAULTS`."""


# ----------------------------------------------------------------------------------------------- hierarchy (Eq. 1)

def hierarchy_level_subsets(k: int) -> Tuple[int, ...]:
    """Paper Eq. 1: ``S_k = {S ⊆ M : |S| = k}`` as indices into :data:`SUBSETS` (in SUBSETS order).

    ``k`` in 1..3 gives 4, 6, 4 subsets (``k = 4`` gives the full set alone, index 14).
    """
    if not isinstance(k, int) or not 1 <= k <= len(MODALITIES):
        raise ValueError(f"hierarchy level k must be an integer in 1..{len(MODALITIES)}, got {k!r}")
    return tuple(i for i, s in enumerate(SUBSETS) if s.cardinality == k)


def sample_hierarchy_level(generator: Optional[torch.Generator] = None, levels: Sequence[int] = DEFAULTS["levels"],
                           weights: Optional[Sequence[float]] = None) -> int:
    """Draw the HMSD level k for one iteration (paper: "we randomly sample a hierarchy level k").

    Args:
        generator: CPU generator (reproducibility).
        levels: candidate k values (default 1, 2, 3 [RECON]).
        weights: unnormalised probabilities per level (default uniform [GUESS]).
    Returns:
        k as a Python int.
    """
    levels = tuple(int(k) for k in levels)
    if not levels:
        raise ValueError("levels must name at least one hierarchy level")
    for k in levels:
        hierarchy_level_subsets(k)  # validates
    w = torch.ones(len(levels), dtype=torch.float64) if weights is None else torch.as_tensor(weights,
                                                                                             dtype=torch.float64)
    if w.shape != (len(levels),) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(levels)} non-negative numbers with a positive sum, got {weights}")
    return levels[int(torch.multinomial(w, 1, generator=generator))]


# ------------------------------------------------------------------------------------------------- HMSD (Eqs. 2-3)

class HMSDLoss(nn.Module):
    """Hierarchical Modality Self-Distillation (paper Eqs. 2-3, [RECON] form).

    ``L = τ² · (1/|S_k|) Σ_{S∈S_k} mean_voxels KL( p_M^τ ‖ p_S^τ )`` with ``p^τ = σ(D(F)/τ)`` and the teacher
    ``p_M`` from the full set under stop-gradient [PAPER].

    Args:
        temperature: τ (default 2.0 [GUESS], ShaSpec code's KDLoss value; the paper gives none).
        regions: ``True`` (our nnU-Net region training, sigmoid outputs): per-region Bernoulli KL, mean over batch,
            regions and voxels. ``False`` (label training): KL between softmaxes over the class axis, mean over batch
            and voxels.
        scale_by_temperature_squared: multiply by τ² (default True [GUESS], Hinton's convention keeping gradient
            magnitudes independent of τ).
    """

    def __init__(self, temperature: float = DEFAULTS["temperature"], regions: bool = True,
                 scale_by_temperature_squared: bool = True):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"HMSD temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.regions = bool(regions)
        self.scale_by_temperature_squared = bool(scale_by_temperature_squared)

    def forward(self, teacher_logits: torch.Tensor, student_logits_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            teacher_logits: (B, K, *spatial) full-set logits (full-resolution output); detached here.
            student_logits_list: non-empty sequence of (B, K, *spatial) logits, one per subset of the level.
        Returns:
            float32 scalar.
        """
        if isinstance(student_logits_list, torch.Tensor) or len(student_logits_list) == 0:
            raise ValueError("HMSDLoss needs a non-empty list of student logits tensors")
        for s in student_logits_list:
            if s.shape != teacher_logits.shape:
                raise ValueError(f"student logits {tuple(s.shape)} do not match teacher logits "
                                      f"{tuple(teacher_logits.shape)}")
        tau = self.temperature
        teacher = teacher_logits.detach()
        with float32_autocast_off(teacher_logits.device):
            loss = torch.stack([logit_kl(teacher, student, regions=self.regions, temperature=tau).mean()
                                for student in student_logits_list]).mean()
            if self.scale_by_temperature_squared:
                loss = loss * tau ** 2
            return loss


# ------------------------------------------------------------------------------------------------------ DMCD (Eq. 8)

FusedBySubset = Union[torch.Tensor, Mapping[int, torch.Tensor], Sequence[torch.Tensor]]


class DMCDLoss(nn.Module):
    """Decremental Modality Combination Distillation (paper Eq. 8, [RECON] form).

    ``L = mean over valid steps t (and samples) of D( sg[F_{S_t}], F_{S_{t+1}} )`` along each sample's path
    ``S_0 ⊃ ... ⊃ S_{M-1}``: the teacher is the larger set (stop-gradient [GUESS], consistent with HMSD's stated rule),
    the student the set missing the removed modality. Steps where the path repeats an index (samples whose available
    set is smaller than M) are skipped.

    ``D`` with ``normalise=True`` (default, [OURS]): per voxel, the squared distance of the channel vectors scaled to
    unit L2 norm (``= 2 - 2 cos``, in [0, 4]), averaged over voxels. Scale-invariant: teacher and student come from
    the same weights, and with the raw MSE an update that moves a student towards its (stop-gradient) teacher also
    scales the teacher, so the features and the loss grow without bound (measured on the phantom: 0.7 -> 7e4 in 120
    iterations). ``normalise=False``: the raw MSE, mean over channels and voxels (the [RECON] form).
    """

    def __init__(self, normalise: bool = True, eps: float = 1e-6):
        super().__init__()
        self.normalise = normalise
        self.eps = eps

    def forward(self, fused_by_subset: FusedBySubset, path: torch.Tensor) -> torch.Tensor:
        """
        Args:
            fused_by_subset: the unified representation F_S of every subset, either a tensor (B, 15, C, *spatial)
                in :data:`SUBSETS` order, or a mapping / sequence subset index -> (B, C, *spatial) (the network's
                cache; only the indices on the paths are read).
            path: (B, M) long indices into :data:`SUBSETS` (:func:`~nnunet_missingmod.training.methods.ccsd.path.
                decremental_path`).
        Returns:
            float32 scalar (0 if no step is valid).
        """
        path = torch.as_tensor(path, dtype=torch.long).cpu()
        if path.ndim != 2 or path.shape[1] < 2:
            raise ValueError(f"path must be (B, M>=2) subset indices, got {tuple(path.shape)}")
        if isinstance(fused_by_subset, torch.Tensor):
            if fused_by_subset.ndim < 3 or fused_by_subset.shape[1] != len(SUBSETS) \
                    or fused_by_subset.shape[0] != path.shape[0]:
                raise ValueError(f"fused_by_subset must be (B={path.shape[0]}, {len(SUBSETS)}, C, *spatial), "
                                      f"got {tuple(fused_by_subset.shape)}")
            device = fused_by_subset.device
            rows = torch.arange(path.shape[0], device=device).unsqueeze(1)
            on_path = fused_by_subset[rows, path.to(device)]  # (B, M, C, *spatial)
            teacher, student = on_path[:, :-1].detach(), on_path[:, 1:]
        else:
            needed = sorted(set(path.flatten().tolist()))
            try:
                cache = {i: fused_by_subset[i] for i in needed}
            except (KeyError, IndexError):
                raise ValueError(f"fused_by_subset lacks some of the subsets {needed} on the path") from None
            rows = path.tolist()
            # teacher entries are detached before stacking: a subset that is only ever a teacher stays out of the graph
            teacher = torch.stack([torch.stack([cache[i][b].detach() for i in row[:-1]]) for b, row in enumerate(rows)])
            student = torch.stack([torch.stack([cache[i][b] for i in row[1:]]) for b, row in enumerate(rows)])
            device = student.device
        with float32_autocast_off(device):
            teacher, student = teacher.float(), student.float()  # (B, M-1, C, *spatial)
            if self.normalise:
                teacher = F.normalize(teacher, dim=2, eps=self.eps)
                student = F.normalize(student, dim=2, eps=self.eps)
                per_step = (student - teacher).pow(2).sum(dim=2).flatten(2).mean(dim=2)  # (B, M-1)
            else:
                per_step = (student - teacher).pow(2).flatten(2).mean(dim=2)
            valid = path[:, 1:] != path[:, :-1]  # CPU: no device sync
            if not bool(valid.any()):
                return per_step.sum() * 0.0
            return per_step[valid.to(device)].mean()


# ------------------------------------------------------------------------------------------- ShaSpec auxiliary terms

def shared_alignment_loss(shared_features: torch.Tensor, pair_reduction: str = "sum") -> torch.Tensor:
    """ShaSpec's distribution alignment of the shared features (``L_shared``, weight α = 0.1 [CODE]).

    L1 (mean over all elements, ``nn.L1Loss()``) between the shared features of the cyclic pairs
    ``(m, m+1 mod M)``. In our channel order (T1, T1ce, T2, FLAIR) these are (T1,T1ce), (T1ce,T2), (T2,FLAIR),
    (FLAIR,T1): the same four unordered pairs as ShaSpec's (FL,T1), (T1,T1ce), (T1ce,T2), (T2,FL) in its order
    (FLAIR, T1, T1ce, T2), since one order is a rotation of the other and L1 is symmetric.

    Args:
        shared_features: (B, M, C, *spatial) shared-encoder features of every modality (ShaSpec: all 4, missing ones
            included).
        pair_reduction: ``"sum"`` over the pairs (default, ShaSpec ``train_SS.py`` adds the four L1 terms) or
            ``"mean"``.
    Returns:
        float32 scalar.
    """
    if shared_features.ndim < 3 or shared_features.shape[1] < 2:
        raise ValueError(f"shared features must be (B, M>=2, C, *spatial), got {tuple(shared_features.shape)}")
    if pair_reduction not in ("sum", "mean"):
        raise ValueError(f"pair_reduction must be 'sum' or 'mean', got {pair_reduction!r}")
    with float32_autocast_off(shared_features.device):
        f = shared_features.float()
        rolled = torch.roll(f, shifts=-1, dims=1)  # rolled[:, m] = f[:, (m+1) % M]
        per_pair = (f - rolled).abs().flatten(2).mean(dim=2).mean(dim=0)  # (M,)
        return per_pair.sum() if pair_reduction == "sum" else per_pair.mean()


def domain_classification_loss(domain_logits: torch.Tensor) -> torch.Tensor:
    """ShaSpec's domain classification of the specific features (``L_spec``, weight β = 0.02 [CODE]).

    Cross-entropy (mean over B·M) of each modality's domain logits against its own modality index.

    Args:
        domain_logits: (B, M, M): for sample b and modality m, logits over the M modality classes (ShaSpec:
            ``Linear(C→M)`` on the global-average-pooled specific feature).
    Returns:
        float32 scalar.
    """
    if domain_logits.ndim != 3 or domain_logits.shape[1] != domain_logits.shape[2]:
        raise ValueError(f"domain logits must be (B, M, M), got {tuple(domain_logits.shape)}")
    b, m, _ = domain_logits.shape
    with float32_autocast_off(domain_logits.device):
        target = torch.arange(m, device=domain_logits.device).repeat(b)
        return F.cross_entropy(domain_logits.float().reshape(b * m, m), target)
