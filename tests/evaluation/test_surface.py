"""The BraTS 2023 (DeepMind surface-distance) HD95 of surface.py, on cases whose values follow by hand from its
definition: neighbour codes, surface-element areas, the nearest-rank percentile weighted by area, and HD95s of
voxels, bars and cubes on isotropic and anisotropic grids."""
import math

import numpy as np
import pytest

from nnunet_missingmod.evaluation.metrics import EMPTY_BOTH_HD95, hd95
from nnunet_missingmod.evaluation.surface import (
    code_cell, corner_bit, neighbour_codes, robust_hausdorff, surfel_area_table, surfel_distances, surfel_hausdorff,
    union_bounding_box)

SPACINGS = [(1.0, 1.0, 1.0), (3.0, 1.0, 0.5), (0.5, 2.0, 1.3)]


def corner_triangle(spacing):
    """Area of the surface of a cell with one inside voxel: the triangle through the midpoints of its three edges,
    (s0/2, 0, 0), (0, s1/2, 0), (0, 0, s2/2); half the length of the cross product of two of its sides."""
    s0, s1, s2 = spacing
    return math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8


def edge_rectangle(spacing, axis):
    """Area of the surface of a cell with two inside voxels next to each other along ``axis``: a rectangle of length
    s[axis] whose other side joins the midpoints (s_a/2, 0) and (0, s_b/2) of the two other axes."""
    a, b = (s for i, s in enumerate(spacing) if i != axis)
    return spacing[axis] * math.hypot(a, b) / 2


def code_of(*offsets):
    return sum(1 << corner_bit(o) for o in offsets)


# ------------------------------------------------------------------------------------------------ neighbour codes

def test_union_bounding_box_by_hand():
    a, b = np.zeros((5, 6, 7), bool), np.zeros((5, 6, 7), bool)
    a[1, 2, 3] = True
    b[3, 4, 0] = True
    assert union_bounding_box(a, b) == (slice(1, 4), slice(2, 5), slice(0, 4))
    assert union_bounding_box(a) == (slice(1, 2), slice(2, 3), slice(3, 4))


def test_corner_bits_follow_the_kernel_order():
    assert corner_bit((0, 0, 0)) == 7 and corner_bit((1, 1, 1)) == 0 and corner_bit((0, 1, 1)) == 4
    assert sorted(corner_bit((a, b, c)) for a in (0, 1) for b in (0, 1) for c in (0, 1)) == list(range(8))


def test_neighbour_codes_of_one_voxel():
    """Corner (i, j, k) of a lone voxel sees it at offset (1-i, 1-j, 1-k): bit 7 - (4(1-i) + 2(1-j) + (1-k))
    = 4i + 2j + k, so the code is 2^(4i + 2j + k)."""
    codes = neighbour_codes(np.ones((1, 1, 1), bool))
    assert codes.shape == (2, 2, 2) and codes.dtype == np.uint8
    expected = np.array([[[1, 2], [4, 8]], [[16, 32], [64, 128]]])
    np.testing.assert_array_equal(codes, expected)


def test_neighbour_codes_outside_is_background():
    """A 2×2×2 block: its centre corner sees eight inside voxels (255), every other corner some but not all."""
    codes = neighbour_codes(np.ones((2, 2, 2), bool))
    assert codes.shape == (3, 3, 3)
    assert codes[1, 1, 1] == 255
    border = (codes != 0) & (codes != 255)
    assert border.sum() == 26
    assert codes[0, 0, 0] == 1  # only voxel (0, 0, 0), at offset (1, 1, 1) from corner (0, 0, 0)


def test_code_cell_inverts_the_code():
    for code in (0, 1, 136, 240, 255):
        cell = code_cell(code)
        assert code_of(*[tuple(int(v) for v in o) for o in np.argwhere(cell)]) == code
    with pytest.raises(ValueError):
        code_cell(256)


# ---------------------------------------------------------------------------------------------------- areas

@pytest.mark.parametrize("spacing", SPACINGS)
def test_surfel_areas_by_hand(spacing):
    s0, s1, s2 = spacing
    table = surfel_area_table(spacing)
    assert table.shape == (256,) and table[0] == 0 and table[255] == 0
    one_voxel = code_of((0, 0, 0))
    assert table[one_voxel] == pytest.approx(corner_triangle(spacing))
    # four voxels with a = 0 (a face of the cell): a rectangle s1 × s2 halfway along axis 0; likewise b = 0, c = 0
    assert table[code_of((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1))] == pytest.approx(s1 * s2)
    assert table[code_of((0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1))] == pytest.approx(s0 * s2)
    assert table[code_of((0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0))] == pytest.approx(s0 * s1)
    for axis in range(3):
        other = tuple(1 if i == axis else 0 for i in range(3))
        assert table[code_of((0, 0, 0), other)] == pytest.approx(edge_rectangle(spacing, axis))
    # two voxels diagonal on a face: two separate corner triangles (no more than four inside voxels) ...
    diagonal = code_of((0, 0, 0), (0, 1, 1))
    assert table[diagonal] == pytest.approx(2 * corner_triangle(spacing))
    # ... and the complement (six inside voxels) has the same surface, as in DeepMind's table
    assert table[255 - diagonal] == table[diagonal]
    np.testing.assert_allclose(table, table[::-1], rtol=1e-12)  # table[c] == table[255 - c] for every code


@pytest.mark.parametrize("spacing", SPACINGS)
def test_surfel_areas_match_deepmind_table_in_monai(spacing):
    """MONAI's create_table_neighbour_code_to_surface_area is DeepMind's table of normals scaled by the spacing
    (float32), with the same neighbour code kernel."""
    pytest.importorskip("torch")
    monai_utils = pytest.importorskip("monai.metrics.utils")
    table, kernel = monai_utils.create_table_neighbour_code_to_surface_area(spacing)
    expected_kernel = np.zeros((2, 2, 2))
    for offset in np.ndindex(2, 2, 2):
        expected_kernel[offset] = 1 << corner_bit(offset)
    np.testing.assert_array_equal(kernel.numpy().reshape(2, 2, 2), expected_kernel)
    np.testing.assert_allclose(surfel_area_table(spacing), table.numpy(), rtol=1e-6, atol=1e-6)


def test_surfel_area_table_checks_spacing():
    for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0)):
        with pytest.raises(ValueError, match="spacing"):
            surfel_area_table(bad)


# ------------------------------------------------------------------------------------- robust Hausdorff (ranks)

def test_robust_hausdorff_is_the_nearest_rank_of_the_area():
    """Equal areas: the cumulative share after sorting is 0.25, 0.5, 0.75, 1; the answer is the first distance
    whose share reaches p/100."""
    distances, areas = np.array([3.0, 0.0, 2.0, 1.0]), np.ones(4)
    assert robust_hausdorff(distances, areas, 95) == 3.0
    assert robust_hausdorff(distances, areas, 75) == 2.0
    assert robust_hausdorff(distances, areas, 50) == 1.0  # 0.5 is reached at the second element: no interpolation
    assert robust_hausdorff(distances, areas, 0) == 0.0
    assert robust_hausdorff(distances, areas, 100) == 3.0


def test_robust_hausdorff_weights_by_area():
    assert robust_hausdorff(np.array([0.0, 10.0]), np.array([94.0, 6.0]), 95) == 10.0  # 94 % < 95 % at 0
    assert robust_hausdorff(np.array([0.0, 10.0]), np.array([96.0, 4.0]), 95) == 0.0
    assert robust_hausdorff(np.array([0.0, 10.0]), np.array([95.0, 5.0]), 95) == 0.0  # exactly 95 % reaches it
    with pytest.raises(ValueError, match="percent"):
        robust_hausdorff(np.array([1.0]), np.array([1.0]), 101)
    with pytest.raises(ValueError):
        robust_hausdorff(np.array([]), np.array([]), 95)
    with pytest.raises(ValueError):
        robust_hausdorff(np.array([1.0, 2.0]), np.array([1.0]), 95)


# ------------------------------------------------------------------------------------------- HD95 of hand shapes

@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_voxel_and_shifted_voxel(spacing, axis):
    """A voxel and the next one along ``axis``: each has 8 surface elements of equal area (corner triangles); 4 are
    shared (distance 0) and 4 lie s[axis] away, so half of the area is at s[axis] and HD95 = s[axis]."""
    a = np.zeros((3, 3, 3), bool)
    a[1, 1, 1] = True
    b = np.roll(a, 1, axis=axis)
    d = surfel_distances(a, b, spacing)
    np.testing.assert_allclose(d.pred_areas, corner_triangle(spacing))
    assert sorted(d.pred_to_ref) == pytest.approx([0.0] * 4 + [spacing[axis]] * 4)
    assert surfel_hausdorff(a, b, spacing) == pytest.approx(spacing[axis])
    assert hd95(a, b, spacing) == pytest.approx(spacing[axis])


@pytest.mark.parametrize("spacing,axis,k", [((1.0, 1.0, 1.0), 1, 2), ((0.5, 1.0, 3.0), 0, 3), ((3.0, 1.0, 0.5), 2, 2)])
def test_cube_and_cube_shifted_by_k_voxels(spacing, axis, k):
    """Two 6-voxel cubes k voxels apart along ``axis`` (spacing s): the back face of each is exactly k·s[axis] from
    the other cube's back face and no surface element is farther; the back face holds more than 5 % of the area
    (the face across the shift has the largest area per element here), so HD95 = k·s[axis]."""
    a = np.zeros((16, 16, 16), bool)
    a[2:8, 2:8, 2:8] = True
    b = np.roll(a, k, axis=axis)
    d = surfel_distances(a, b, spacing)
    assert d.pred_to_ref.max() == pytest.approx(k * spacing[axis])
    assert d.ref_to_pred.max() == pytest.approx(k * spacing[axis])
    far = np.isclose(d.pred_to_ref, k * spacing[axis])
    assert d.pred_areas[far].sum() / d.pred_areas.sum() > 0.05
    assert surfel_hausdorff(a, b, spacing) == pytest.approx(k * spacing[axis])


@pytest.mark.parametrize("spacing,length", [((1.0, 1.0, 1.0), 4), ((1.0, 1.0, 1.0), 6), ((3.0, 1.0, 1.0), 4)])
def test_area_weighting_differs_from_the_voxel_percentile(spacing, length):
    """A bar of L voxels along axis 0 against the same bar one voxel longer.

    Surface elements (4 columns of corners): the longer bar's end corners are corner triangles T, its L inner
    corners edge rectangles R; all of them coincide with the shorter bar's corners except the 4 at the new end,
    which are s0 away. Their share of the area is f = T / (2T + L·R): HD95 = s0 if f > 5 %, else 0 (the shorter
    bar's elements all lie on the longer bar's surface).

    Voxel surfaces (numpy percentile, linear): the longer bar's L+1 voxels are at distance 0 except the last (s0):
    the 95th percentile sits at rank 0.95·L between 0 and s0, i.e. (0.95·L - (L-1))·s0 when positive.
    """
    s0 = spacing[0]
    short, longer = np.zeros((12, 3, 3), bool), np.zeros((12, 3, 3), bool)
    short[2:2 + length, 1, 1] = True
    longer[2:3 + length, 1, 1] = True
    share = corner_triangle(spacing) / (2 * corner_triangle(spacing) + length * edge_rectangle(spacing, 0))
    expected = s0 if share > 0.05 else 0.0
    voxel_expected = max(0.0, 0.95 * length - (length - 1)) * s0
    # by hand: L = 4, 1 mm: f = 0.2165 / (0.4330 + 2.8284) = 6.6 % -> 1 mm (voxel 0.8 mm); L = 6: f = 4.6 % -> 0 mm
    # (voxel 0.7 mm); L = 4, (3, 1, 1) mm: T = sqrt(19)/8, R = 3·sqrt(2)/2, f = 5.7 % -> 3 mm (voxel 2.4 mm)
    assert {(1.0, 4): 1.0, (1.0, 6): 0.0, (3.0, 4): 3.0}[(s0, length)] == expected
    assert surfel_hausdorff(longer, short, spacing) == pytest.approx(expected)
    assert hd95(longer, short, spacing) == pytest.approx(expected)
    assert hd95(longer, short, spacing, "voxel_max_directed") == pytest.approx(voxel_expected)
    assert voxel_expected != pytest.approx(expected)


def test_mask_on_the_image_border_equals_the_padded_image():
    """Outside the image counts as background: a shape touching the border scores as the same shape with a
    background margin around it."""
    a, b = np.zeros((4, 5, 6), bool), np.zeros((4, 5, 6), bool)
    a[0:3, 0:5, 2:6] = True
    b[0:4, 1:5, 0:5] = True
    spacing = (2.0, 1.0, 0.7)
    padded = surfel_hausdorff(np.pad(a, 3), np.pad(b, 3), spacing)
    assert surfel_hausdorff(a, b, spacing) == padded > 0


def test_empty_masks():
    empty, blob = np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)
    blob[1, 1, 1] = True
    assert hd95(empty, empty) == EMPTY_BOTH_HD95
    assert hd95(blob, empty) == hd95(empty, blob) == 374.0  # the BraTS 2023 scorer's inf -> 374
    with pytest.raises(ValueError, match="non-empty"):
        surfel_distances(blob, empty, (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        surfel_distances(blob, blob[:3], (1, 1, 1))
