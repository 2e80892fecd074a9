"""The one module that knows about MRI sequences and their subsets.

Everything else in the package asks this module for:

* the canonical modalities ``T1, T1ce, T2, FLAIR`` (in that order, which is also the canonical channel order
  ``_0000 .. _0003`` of every dataset our converters write) and their aliases in every BraTS year and MSD;
* the mapping of a dataset.json ``channel_names`` to modalities;
* the 15 non-empty subsets, in one fixed order (see :data:`SUBSETS`), with stable short names such as ``T1ce+FLAIR``;
* parsing a user's subset string;
* sampling a subset per training sample and turning it into a channel mask;
* applying a mask to a batch by zeroing channels;
* the presence contract between the predictor and a network that conditions on which sequences are present
  (:class:`PresenceAware`, :func:`present_channels`, :func:`tell_present_channels`).

A mask is a boolean vector over a dataset's *channels* (``True`` = present). It is born here and applied in exactly
two places: the trainer's ``train_step`` and the predictor.

**Presence contract.** A missing sequence reaches every network as an all-zero channel (zeroed after normalisation,
in training and in prediction alike). A module that needs to know which sequences are present implements
:class:`PresenceAware`. Our predictor tells it the case's mask (:func:`tell_present_channels`) before the sliding
window and clears it afterwards, so every tile of the case uses the case's mask. Untold (training, stock
``nnUNetv2_predict``), the module reads presence from its input with :func:`present_channels`: a channel is present
when it has a non-zero voxel in that sample, and **a sample whose channels are all zero counts as complete** (a tile
wholly outside the brain, where nnU-Net's masked normalisation leaves zeros: there is nothing to tell the sequences
apart, and on a complete case this agrees with the told mask).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from nnunet_missingmod.errors import MissingModError

if TYPE_CHECKING:  # torch is imported where it is used, so that the command line starts fast
    import torch

MODALITIES: Tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")
"""Canonical modalities, in canonical channel order (``_0000`` = T1 ... ``_0003`` = FLAIR)."""

# Every spelling seen in BraTS 2018-2024, FeTS, MSD Task01 and nnU-Net's own converters. Matching is
# case-insensitive and ignores '-', '_', ' ' and '.', so 'T1-Gd', 't1_ce' and 'T1 CE' are covered too.
_ALIASES = {
    "T1": ("t1", "t1n", "t1w", "t1native", "native t1", "nativet1", "t1pre"),
    "T1ce": ("t1ce", "t1c", "t1gd", "t1-gd", "t1post", "t1contrast", "t1wce", "t1wc", "t1wgd", "ce-t1", "cet1"),
    "T2": ("t2", "t2w"),
    "FLAIR": ("flair", "t2f", "t2flair", "t2-flair", "t2wflair"),
}


def _normalise_key(name: str) -> str:
    return re.sub(r"[\s_\-\.]", "", name.strip().lower())


ALIASES: Mapping[str, str] = {_normalise_key(a): m for m, aliases in _ALIASES.items() for a in aliases + (m,)}
"""Normalised alias -> canonical modality name."""

SubsetSampling = str
SAMPLING_STRATEGIES: Tuple[SubsetSampling, ...] = ("uniform", "cardinality")
"""``uniform``: each of the 15 subsets with probability 1/15 (MST-KDNet's code: ``random.randint(0, 14)``).
``cardinality``: first the number of kept modalities uniformly in 1..4, then a subset of that size uniformly
(ShaSpec's sampling)."""


def canonical_modality(name: str) -> str:
    """Canonical name (``T1``, ``T1ce``, ``T2`` or ``FLAIR``) of any known alias; raises :class:`MissingModError`."""
    if not isinstance(name, str):
        raise MissingModError(f"modality name must be a string, got {name!r}")
    key = _normalise_key(name)
    if key not in ALIASES:
        raise MissingModError(
            f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)} or an alias "
            f"({', '.join(sorted({a for a in _flat_aliases()}))})")
    return ALIASES[key]


def _flat_aliases() -> Iterable[str]:
    for aliases in _ALIASES.values():
        yield from aliases


@dataclass(frozen=True)
class ModalitySubset:
    """A non-empty set of canonical modalities. ``present`` is a boolean per canonical modality."""

    present: Tuple[bool, bool, bool, bool]

    def __post_init__(self):
        if len(self.present) != len(MODALITIES):
            raise MissingModError(f"a subset needs one flag per modality {MODALITIES}, got {self.present!r}")
        if not any(self.present):
            raise MissingModError("the empty modality subset is not allowed: at least one sequence must be present")

    @classmethod
    def from_modalities(cls, modalities: Iterable[str]) -> "ModalitySubset":
        names = [canonical_modality(m) for m in modalities]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MissingModError(f"modality listed twice in subset: {', '.join(duplicates)}")
        return cls(tuple(m in names for m in MODALITIES))

    @property
    def modalities(self) -> Tuple[str, ...]:
        """Present modalities in canonical order."""
        return tuple(m for m, p in zip(MODALITIES, self.present) if p)

    @property
    def missing(self) -> Tuple[str, ...]:
        return tuple(m for m, p in zip(MODALITIES, self.present) if not p)

    @property
    def name(self) -> str:
        """Stable short name, e.g. ``T1ce+FLAIR``; the full set is ``T1+T1ce+T2+FLAIR``."""
        return "+".join(self.modalities)

    @property
    def cardinality(self) -> int:
        return sum(self.present)

    @property
    def is_full(self) -> bool:
        return all(self.present)

    def channel_mask(self, channel_modalities: Sequence[str]) -> Tuple[bool, ...]:
        """Boolean per dataset channel, for a dataset whose channels hold ``channel_modalities``
        (as returned by :func:`modalities_from_channel_names`)."""
        return tuple(self.present[MODALITIES.index(m)] for m in channel_modalities)

    def __str__(self) -> str:
        return self.name


def _build_subsets() -> Tuple[ModalitySubset, ...]:
    subsets = []
    for k in range(1, len(MODALITIES) + 1):
        for combination in itertools.combinations(range(len(MODALITIES)), k):
            subsets.append(ModalitySubset(tuple(i in combination for i in range(len(MODALITIES)))))
    return tuple(subsets)


SUBSETS: Tuple[ModalitySubset, ...] = _build_subsets()
"""The 15 non-empty subsets in their fixed order: by number of modalities (1, 2, 3, 4), then lexicographically in
canonical modality order. Index 14 is the full set::

    0 T1   1 T1ce   2 T2   3 FLAIR
    4 T1+T1ce   5 T1+T2   6 T1+FLAIR   7 T1ce+T2   8 T1ce+FLAIR   9 T2+FLAIR
    10 T1+T1ce+T2   11 T1+T1ce+FLAIR   12 T1+T2+FLAIR   13 T1ce+T2+FLAIR
    14 T1+T1ce+T2+FLAIR
"""
FULL_SET: ModalitySubset = SUBSETS[-1]
SUBSET_NAMES: Tuple[str, ...] = tuple(s.name for s in SUBSETS)


PAPER_ORDER: Tuple[str, ...] = ("FLAIR", "T1", "T1ce", "T2")
"""The order in which the papers' tables and figures list the sequences (MST-KDNet, RFNet, mmFormer)."""


def paper_subset_name(subset: ModalitySubset) -> str:
    """The subset as the papers write it, e.g. ``FLAIR+T1ce+T2`` (their order, not the canonical channel order)."""
    return "+".join(m for m in PAPER_ORDER if m in subset.modalities)


def parse_subset(text: Union[str, Iterable[str]]) -> ModalitySubset:
    """Parse a user's subset: ``"T1ce,FLAIR"``, ``"t1c+t2f"``, ``"all"``, or a list of names.

    Raises :class:`MissingModError` for an empty subset, an unknown name or a duplicate.
    """
    if isinstance(text, str):
        if _normalise_key(text) in ("all", "full"):
            return FULL_SET
        parts = [p for p in re.split(r"[,+\s]+", text.strip()) if p]
        if not parts:
            raise MissingModError(f"empty modality subset {text!r}: name at least one of {', '.join(MODALITIES)}")
    else:
        parts = list(text)
        if not parts:
            raise MissingModError("empty modality subset: name at least one of " + ", ".join(MODALITIES))
    return ModalitySubset.from_modalities(parts)


def parse_subsets(text: Optional[str]) -> Tuple[ModalitySubset, ...]:
    """Parse a list of subsets separated by ``;`` or spaces (``"T1ce+FLAIR;T2"``); ``None``/``"all15"`` gives all 15,
    in the fixed order. Duplicates are dropped, the order of :data:`SUBSETS` is kept."""
    if text is None or _normalise_key(text) in ("all15", "15"):
        return SUBSETS
    chosen = {parse_subset(part) for part in re.split(r"[;\s]+", text.strip()) if part}
    if not chosen:
        raise MissingModError(f"no modality subset in {text!r}")
    return tuple(s for s in SUBSETS if s in chosen)


def modalities_from_channel_names(channel_names: Mapping[Union[str, int], str]) -> Tuple[str, ...]:
    """Canonical modality of each channel of a dataset.json ``channel_names`` (keys ``"0"``, ``"1"``, ...).

    Every one of the four modalities must appear exactly once; raises :class:`MissingModError` naming the channel
    otherwise (unknown or ambiguous name, duplicate, missing modality, non-contiguous channel indices).
    """
    try:
        indices = sorted(int(k) for k in channel_names)
    except (TypeError, ValueError):
        raise MissingModError(f"channel_names keys must be channel indices '0', '1', ...; got {list(channel_names)}") \
            from None
    if indices != list(range(len(indices))):
        raise MissingModError(f"channel_names must be numbered 0..{len(indices) - 1}, got {indices}")
    by_index = {int(k): v for k, v in channel_names.items()}
    result = []
    for i in indices:
        try:
            result.append(canonical_modality(by_index[i]))
        except MissingModError as e:
            raise MissingModError(f"channel {i} ({by_index[i]!r}) in channel_names: {e}") from None
    for m in MODALITIES:
        holders = [i for i, r in enumerate(result) if r == m]
        if len(holders) > 1:
            raise MissingModError(
                f"ambiguous channel_names: channels {holders} ({', '.join(repr(by_index[i]) for i in holders)}) "
                f"all mean {m}")
        if not holders:
            raise MissingModError(f"channel_names {dict(by_index)} has no {m} channel; need all of {MODALITIES}")
    return tuple(result)


def subset_of_channel_mask(mask: Sequence[bool], channel_modalities: Sequence[str]) -> ModalitySubset:
    """Inverse of :meth:`ModalitySubset.channel_mask`."""
    if len(mask) != len(channel_modalities):
        raise MissingModError(f"mask {list(mask)} has {len(mask)} entries for {len(channel_modalities)} channels")
    return ModalitySubset.from_modalities([m for m, keep in zip(channel_modalities, mask) if keep])


def subset_channel_masks(channel_modalities: Sequence[str], device=None) -> torch.Tensor:
    """(15, C) bool tensor: row i is :data:`SUBSETS` [i] as a mask over the dataset's channels."""
    import torch
    return torch.tensor([s.channel_mask(channel_modalities) for s in SUBSETS], dtype=torch.bool, device=device)


def subset_distribution(strategy: SubsetSampling = "uniform",
                        full_set_probability: Optional[float] = None) -> torch.Tensor:
    """(15,) float64 probabilities over :data:`SUBSETS` (sums to 1; the empty set is not a candidate).

    ``strategy``: see :data:`SAMPLING_STRATEGIES`. ``full_set_probability``: if given, the full set gets this
    probability and the 14 proper subsets share the rest by ``strategy``.
    """
    import torch
    if strategy not in SAMPLING_STRATEGIES:
        raise MissingModError(f"unknown subset sampling {strategy!r}; expected one of {SAMPLING_STRATEGIES}")
    if full_set_probability is not None and not 0.0 <= full_set_probability <= 1.0:
        raise MissingModError(f"full_set_probability must lie in [0, 1], got {full_set_probability}")
    n_candidates = len(SUBSETS) if full_set_probability is None else len(SUBSETS) - 1
    sizes = torch.tensor([s.cardinality for s in SUBSETS[:n_candidates]])
    if strategy == "uniform":
        weights = torch.ones(n_candidates, dtype=torch.float64)
    else:
        weights = 1.0 / torch.bincount(sizes)[sizes].double()  # each cardinality equally likely
    weights = weights / weights.sum()
    if full_set_probability is None:
        return weights
    return torch.cat([weights * (1.0 - full_set_probability),
                      torch.tensor([full_set_probability], dtype=torch.float64)])


def check_subset_weights(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` as (15,) float64 after checking it is a usable distribution over :data:`SUBSETS`."""
    import torch
    weights = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if weights.shape != (len(SUBSETS),) or not torch.isfinite(weights).all() or (weights < 0).any() \
            or weights.sum() <= 0:
        raise MissingModError(f"subset weights must be {len(SUBSETS)} finite non-negative numbers with a positive "
                              f"sum (one per subset in SUBSETS order), got {weights.tolist()}")
    return weights


def sample_subset_indices(batch_size: int, strategy: SubsetSampling = "uniform",
                          full_set_probability: Optional[float] = None,
                          generator: Optional[torch.Generator] = None,
                          weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Draw one subset per sample: (B,) long tensor of indices into :data:`SUBSETS` (on CPU).

    The distribution is ``weights`` ((15,), need not be normalised) when given, else
    :func:`subset_distribution` ``(strategy, full_set_probability)``. The empty set is never drawn.
    """
    import torch
    if weights is None:
        weights = subset_distribution(strategy, full_set_probability)
    return torch.multinomial(check_subset_weights(weights), batch_size, replacement=True, generator=generator)


def apply_channel_mask(data: torch.Tensor, mask: torch.Tensor, channel_axis: int = 1) -> torch.Tensor:
    """Zero the missing channels.

    Args:
        data: (B, C, *spatial) batch (``channel_axis=1``), or (C, *spatial) single case (``channel_axis=0``).
        mask: (C,) bool, ``True`` = present, applied to every sample; or (B, C), one row per sample (batches only).
    Returns:
        a new tensor like ``data`` whose missing channels are exactly 0 (also where ``data`` held NaN or Inf).
    """
    import torch
    mask = torch.as_tensor(mask, dtype=torch.bool, device=data.device)
    expected = tuple(data.shape[:channel_axis + 1])[-mask.ndim:] if mask.ndim <= channel_axis + 1 else None
    if mask.ndim not in (1, 2) or expected is None or tuple(mask.shape) != expected:
        raise MissingModError(f"mask of shape {tuple(mask.shape)} does not fit data of shape {tuple(data.shape)} "
                              f"with channels on axis {channel_axis}")
    view = (1,) * (channel_axis + 1 - mask.ndim) + tuple(mask.shape) + (1,) * (data.ndim - channel_axis - 1)
    return data.masked_fill(~mask.view(view), 0)


@runtime_checkable
class PresenceAware(Protocol):
    """A module that conditions on which input channels are present (the presence contract, module docstring)."""

    def set_present_channels(self, mask: Optional[torch.Tensor]) -> None:
        """``mask``: (C,) bool over the input channels, for every sample of every following forward ((B, C): one row
        per sample), or ``None``: read presence from the input (:func:`present_channels`)."""


def present_channels(x: torch.Tensor, told: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, C) bool: which channels of each sample of ``x`` (B, C, *spatial) are present.

    ``told`` (C,) bool (the case's mask from the predictor) is used for every sample when given ((B, C): one row per
    sample); otherwise a channel is present when it has a non-zero voxel in that sample, and a sample whose channels
    are all zero counts as complete (the presence contract).
    """
    import torch
    if told is not None:
        told = torch.as_tensor(told, dtype=torch.bool, device=x.device)
        if told.shape not in ((x.shape[1],), tuple(x.shape[:2])) or not told.any(dim=-1).all():
            raise MissingModError(f"present-channel mask of shape {tuple(told.shape)} does not fit input of shape "
                                  f"{tuple(x.shape)} (one entry per channel, at least one present)")
        return told.expand(x.shape[0], -1)
    present = x.detach().flatten(2).ne(0).any(dim=2)
    return present | ~present.any(dim=1, keepdim=True)


def tell_present_channels(network, mask: Optional[torch.Tensor]) -> int:
    """Tell every :class:`PresenceAware` module of ``network`` (an ``nn.Module``) the case's mask, or clear it with
    ``None``. Returns how many modules were told (0: the network reads nothing but its input)."""
    told = 0
    for module in network.modules():
        if isinstance(module, PresenceAware):
            module.set_present_channels(mask)
            told += 1
    return told
