"""oncoseg.render: the one CT display table, and masks as polygons for the service and the RTSTRUCT writer.

``data/render_polygons.json`` holds 20 small random masks with the polygons the code before `render` gave for
them (``dicom.contours.mask_to_polygons`` in (row, column), the service's ``contours`` in [x, y] at tolerance
0.5); the shared function must give exactly the same points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from oncoseg.render import CT_PRESETS, DEFAULT_CT_PRESET, mask_to_polygons, polygons_to_mask, preset_limits
from oncoseg.service.core import contours

FROZEN = json.loads((Path(__file__).parent / "data" / "render_polygons.json").read_text())["cases"]


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows], dtype=bool)


@pytest.mark.parametrize("case", range(len(FROZEN)))
def test_polygons_are_the_points_of_the_code_before(case):
    frozen = FROZEN[case]
    mask = _mask(frozen["mask"])
    polygons = mask_to_polygons(mask, order="rc")
    assert [p.tolist() for p in polygons] == frozen["rc"]  # the RTSTRUCT contours, point for point
    assert contours(mask) == frozen["xy_simplified"]  # the service's outlines


def test_polygons_fill_back_to_the_mask_in_either_axis_order():
    rng = np.random.default_rng(3)
    for _ in range(30):
        shape = tuple(int(n) for n in rng.integers(3, 40, 2))
        mask = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) > 0.1
        rc = mask_to_polygons(mask, order="rc")
        xy = mask_to_polygons(mask, order="xy")
        assert len(rc) == len(xy) and all(np.array_equal(a[:, ::-1], b) for a, b in zip(rc, xy))
        np.testing.assert_array_equal(polygons_to_mask(rc, mask.shape), mask)
        assert all(len(p) >= 3 and not np.array_equal(p[0], p[-1]) for p in rc)  # closed, not repeated
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError, match="order"):
        mask_to_polygons(np.ones((3, 3), bool), order="yx")


def test_simplified_outlines_stay_within_the_tolerance():
    yy, xx = np.mgrid[:80, :90]
    mask = (xx - 45) ** 2 / 900 + (yy - 40) ** 2 / 400 < 1
    (exact,) = mask_to_polygons(mask, order="xy")
    (rough,) = mask_to_polygons(mask, order="xy", tolerance=1.0)
    assert len(rough) < len(exact) / 3
    # every exact outline point lies within the tolerance of the simplified outline
    ends = np.stack([rough, np.roll(rough, -1, axis=0)], axis=1)
    a, b = ends[:, 0][None], ends[:, 1][None]
    p = exact[:, None]
    t = np.clip(((p - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1), 0, 1)
    assert np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1).min(axis=1).max() <= 1.0 + 1e-9


def test_one_table_of_ct_display_presets():
    assert DEFAULT_CT_PRESET in CT_PRESETS
    assert preset_limits("soft-tissue") == (-160.0, 240.0) and preset_limits("lung") == (-1350.0, 150.0)
    assert all(width > 0 for _centre, width in CT_PRESETS.values())
