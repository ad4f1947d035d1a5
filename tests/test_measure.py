"""Measurements on synthetic shapes whose sizes are known exactly or analytically."""

import json
import math
import time

import numpy as np
import pytest

from oncoseg.errors import EmptyResultError, OncoSegError
from oncoseg.measure import Measurements, measure


def ellipsoid(shape, spacing, center, semi_axes, angle_deg=0.0):
    """Boolean [z,y,x] mask of voxels whose centres (index * spacing, mm) lie inside an ellipsoid.

    ``spacing``, ``center`` and ``semi_axes`` are in (x, y, z) order; the ellipsoid is rotated in-plane by
    ``angle_deg`` (its first semi-axis points at that angle from +x towards +y).
    """
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing[::-1]))
    dz, dy, dx = z[:, None, None] - center[2], y[None, :, None] - center[1], x[None, None, :] - center[0]
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    u, v = dx * c + dy * s, -dx * s + dy * c
    a, b, cz = semi_axes
    return (u / a) ** 2 + (v / b) ** 2 + (dz / cz) ** 2 <= 1.0


def endpoint_vector_mm(m: Measurements, spacing):
    (x0, y0), (x1, y1) = m.long_axis_endpoints
    return np.array([(x1 - x0) * spacing[0], (y1 - y0) * spacing[1]])


# Diameters run between voxel corners, and a voxel whose centre is inside a smooth surface has its corners
# at most half a voxel diagonal outside it: so each diameter is within one voxel diagonal of the true one
# (in-plane diagonal for RECIST, 3D diagonal for the 3D diameter).


def test_sphere_isotropic():
    r = 20.0
    mask = ellipsoid((48, 48, 48), (1.0, 1.0, 1.0), (23.5, 23.5, 23.5), (r, r, r))
    m = measure(mask, (1.0, 1.0, 1.0))
    assert m.volume_ml == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.02)
    assert m.area_mm2 is None
    assert m.recist_long_mm == pytest.approx(2 * r, abs=math.sqrt(2))
    assert m.recist_short_mm == pytest.approx(2 * r, abs=math.sqrt(2))
    assert m.recist_short_mm <= m.recist_long_mm
    assert m.max_3d_diameter_mm == pytest.approx(2 * r, abs=math.sqrt(3))
    assert m.recist_slice in (23, 24)
    assert m.centroid_mm == pytest.approx((23.5, 23.5, 23.5))
    assert m.bbox == ((4, 43),) * 3
    assert m.bbox_mm == (40.0, 40.0, 40.0)


def test_sphere_anisotropic():
    r, spacing = 20.0, (0.7, 0.7, 2.5)
    mask = ellipsoid((20, 70, 70), spacing, (24.5, 24.5, 25.0), (r, r, r))
    m = measure(mask, spacing)
    assert m.volume_ml == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.03)
    assert m.voxel_count * 0.7 * 0.7 * 2.5 / 1000 == pytest.approx(m.volume_ml)
    assert m.recist_long_mm == pytest.approx(2 * r, abs=1.5)
    assert m.recist_short_mm == pytest.approx(2 * r, abs=1.5)
    assert m.recist_slice == 10  # the slice through the centre, z = 25 mm
    assert m.max_3d_diameter_mm == pytest.approx(2 * r, abs=math.hypot(*spacing))


def test_rotated_ellipsoid_anisotropic_in_plane_and_z():
    spacing = (0.6, 0.9, 2.5)  # sx != sy: a wrong spacing order would distort the axes
    mask = ellipsoid((12, 90, 140), spacing, (42.0, 40.0, 15.0), (30.0, 15.0, 10.0), angle_deg=30.0)
    m = measure(mask, spacing)
    # Tolerances: 1.5 mm (about one voxel diagonal in-plane), 3 % on volume, 2 degrees on direction.
    assert m.recist_long_mm == pytest.approx(60.0, abs=1.5)
    assert m.recist_short_mm == pytest.approx(30.0, abs=1.5)
    assert m.recist_slice == 6
    assert m.max_3d_diameter_mm == pytest.approx(60.0, abs=math.hypot(*spacing))
    assert m.volume_ml == pytest.approx(4 / 3 * math.pi * 30 * 15 * 10 / 1000, rel=0.03)
    vec = endpoint_vector_mm(m, spacing)
    assert np.linalg.norm(vec) == pytest.approx(m.recist_long_mm)
    angle = math.degrees(math.atan2(vec[1], vec[0])) % 180
    assert angle == pytest.approx(30.0, abs=2.0)


def test_rectangle_2d_exact():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:9, 10:20] = 1  # 4 rows (y) x 10 columns (x)
    sx, sy = 0.5, 2.0
    w, h = 10 * sx, 4 * sy  # 5 mm x 8 mm
    m = measure(mask, (sx, sy))
    diagonal = math.hypot(w, h)
    assert m.area_mm2 == pytest.approx(40.0)
    assert m.volume_ml is None and m.recist_slice is None and m.max_3d_diameter_mm is None
    assert m.voxel_count == 40
    assert m.recist_long_mm == pytest.approx(diagonal)
    # Width of a w x h rectangle across its diagonal: the two other corners lie w*h/diagonal either side.
    assert m.recist_short_mm == pytest.approx(2 * w * h / diagonal)
    assert m.bbox == ((5, 8), (10, 19))
    assert m.bbox_mm == pytest.approx((h, w))
    assert m.centroid_mm == pytest.approx((6.5 * sy, 14.5 * sx))
    corners = {(9.5, 4.5), (19.5, 8.5), (9.5, 8.5), (19.5, 4.5)}
    assert set(m.long_axis_endpoints) <= corners
    assert np.linalg.norm(endpoint_vector_mm(m, (sx, sy))) == pytest.approx(diagonal)


def test_single_voxel_3d():
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[2, 3, 4] = True
    m = measure(mask, (2.0, 3.0, 4.0))
    assert m.voxel_count == 1
    assert m.volume_ml == pytest.approx(0.024)
    assert m.recist_slice == 2
    assert m.recist_long_mm == pytest.approx(math.hypot(2, 3))
    assert m.recist_short_mm == pytest.approx(2 * 2 * 3 / math.hypot(2, 3))
    assert m.max_3d_diameter_mm == pytest.approx(math.sqrt(4 + 9 + 16))
    assert m.bbox == ((2, 2), (3, 3), (4, 4))
    assert m.bbox_mm == (4.0, 3.0, 2.0)
    assert m.centroid_mm == pytest.approx((8.0, 9.0, 8.0))


def test_spacing_order_x_is_last_axis():
    mask = np.zeros((3, 10, 20), dtype=bool)
    mask[1, 2:5, 5:15] = True  # 3 voxels along y, 10 along x
    a = measure(mask, (1.0, 4.0, 5.0))  # 10 mm along x, 12 mm along y
    b = measure(mask, (4.0, 1.0, 5.0))  # 40 mm along x, 3 mm along y
    assert a.bbox_mm == (5.0, 12.0, 10.0)
    assert b.bbox_mm == (5.0, 3.0, 40.0)
    assert a.recist_long_mm == pytest.approx(math.hypot(10, 12))
    assert b.recist_long_mm == pytest.approx(math.hypot(40, 3))
    assert a.volume_ml == b.volume_ml == pytest.approx(30 * 20 / 1000)


def test_transposed_mask_with_swapped_spacing_measures_the_same():
    spacing = (0.6, 0.9, 2.5)
    mask = ellipsoid((12, 90, 140), spacing, (42.0, 40.0, 15.0), (30.0, 15.0, 10.0), angle_deg=30.0)
    m = measure(mask, spacing)
    t = measure(mask.transpose(0, 2, 1), (0.9, 0.6, 2.5))
    assert t.recist_long_mm == pytest.approx(m.recist_long_mm)
    assert t.recist_short_mm == pytest.approx(m.recist_short_mm)
    assert t.bbox_mm == (m.bbox_mm[0], m.bbox_mm[2], m.bbox_mm[1])
    flat = measure(mask[6], spacing[:2])
    flat_t = measure(mask[6].T, (0.9, 0.6))
    assert flat.recist_long_mm == pytest.approx(m.recist_long_mm)
    assert flat_t.recist_long_mm == pytest.approx(flat.recist_long_mm)
    assert flat_t.area_mm2 == pytest.approx(flat.area_mm2)


def test_recist_slice_is_where_the_long_axis_is_longest_and_short_axis_comes_from_it():
    mask = np.zeros((6, 30, 30), dtype=bool)
    mask[1, 5:25, 10:14] = True  # long 20 x 4 bar (longest diagonal)
    mask[4, 5:17, 5:17] = True  # 12 x 12 square: larger area, shorter diagonal
    m = measure(mask, (1.0, 1.0, 1.0))
    assert m.recist_slice == 1
    assert m.recist_long_mm == pytest.approx(math.hypot(20, 4))
    assert m.recist_short_mm == pytest.approx(2 * 20 * 4 / math.hypot(20, 4))


def test_label_argument_and_multilabel_default():
    mask = np.zeros((4, 20, 20), dtype=np.uint8)
    mask[1:3, 2:8, 2:8] = 1
    mask[2, 10:13, 12:18] = 2
    both = measure(mask, (1.0, 1.0, 1.0))
    two = measure(mask, (1.0, 1.0, 1.0), label=2)
    assert both.voxel_count == 2 * 36 + 18
    assert two.voxel_count == 18
    assert two.bbox == ((2, 2), (10, 12), (12, 17))
    assert two.recist_long_mm == pytest.approx(math.hypot(6, 3))
    with pytest.raises(EmptyResultError):
        measure(mask, (1.0, 1.0, 1.0), label=3)


def test_empty_mask_raises():
    with pytest.raises(EmptyResultError, match="mask is empty: nothing to measure"):
        measure(np.zeros((3, 4, 5), dtype=bool), (1.0, 1.0, 1.0))
    with pytest.raises(EmptyResultError):
        measure(np.zeros((4, 5)), (1.0, 1.0))


def test_bad_spacing_or_shape_raises():
    with pytest.raises(OncoSegError, match="spacing"):
        measure(np.ones((3, 4, 5)), (1.0, 1.0))
    with pytest.raises(OncoSegError, match="spacing"):
        measure(np.ones((4, 5)), (1.0, 0.0))
    with pytest.raises(OncoSegError, match="shape"):
        measure(np.ones(5), (1.0,))


def test_to_dict_is_json_ready_and_rounded():
    mask = np.zeros((5, 6, 7), dtype=bool)
    mask[2, 3, 4] = True
    d = measure(mask, (2.0, 3.0, 4.0)).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["recist_long_mm"] == 3.61
    assert d["volume_ml"] == 0.024
    assert d["bbox"] == [[2, 2], [3, 3], [4, 4]]
    assert d["long_axis_endpoints"] in (
        [[3.5, 2.5], [4.5, 3.5]],
        [[4.5, 3.5], [3.5, 2.5]],
        [[3.5, 3.5], [4.5, 2.5]],
        [[4.5, 2.5], [3.5, 3.5]],
    )
    assert d["area_mm2"] is None


def test_large_volume_is_fast():
    spacing = (0.7, 0.7, 2.5)
    mask = ellipsoid((200, 512, 512), spacing, (180.0, 180.0, 250.0), (60.0, 60.0, 60.0))
    start = time.perf_counter()
    m = measure(mask, spacing)
    elapsed = time.perf_counter() - start
    assert m.recist_long_mm == pytest.approx(120.0, abs=1.5)
    assert elapsed < 1.0


def test_oncoseg_measure_is_the_function_as_the_readme_says():
    """README: ``oncoseg.measure(mask, spacing)``. It gave the module (TypeError) once any code had imported
    oncoseg.measure; a fresh interpreter checks it whatever this test process imported before."""
    import subprocess
    import sys

    import oncoseg

    assert oncoseg.measure is measure  # this module imported oncoseg.measure above
    code = (
        "import numpy as np, oncoseg, oncoseg.measure, oncoseg.api\n"
        "from oncoseg import measure\n"
        "from oncoseg.measure import Measurements, measure as by_module\n"
        "assert measure is by_module is oncoseg.measure\n"
        "print(oncoseg.measure(np.ones((4, 4), bool), (0.5, 0.5)).area_mm2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 4.0


def test_pixels_are_reported_as_pixels_never_millimetres():
    """An image without a physical pixel size (`MedicalImage.spacing_unit` "px") is measured in pixels: the
    same numbers, with keys and text that say px."""
    from oncoseg.image import MedicalImage
    from oncoseg.measure import measure_image, recist_text, size_text

    mask = np.zeros((20, 30), bool)
    mask[5:9, 2:12] = True  # 4 x 10 pixels
    picture = MedicalImage.from_array(mask.astype(np.uint8))
    px = measure_image(mask, picture)
    mm = measure(mask, (1.0, 1.0))
    assert px.unit == "px" and mm.unit == "mm" and px.recist_long_mm == mm.recist_long_mm
    values = px.to_dict()
    assert values["unit"] == "px" and values["area_px2"] == 40 and values["volume_px3"] is None
    assert values["recist_long_px"] == pytest.approx(np.hypot(10, 4), abs=0.01)
    assert not any("mm" in key or key == "volume_ml" for key in values)
    assert px.text() == f"40 px², RECIST {np.hypot(10, 4):.1f} x {recist_text(values).split(' x ')[1]}"
    assert "mm" not in px.text() and size_text(mm.to_dict()) == "40.0 mm²" and mm.to_dict()["unit"] == "mm"
    volume = measure(np.ones((2, 3, 4), bool), (1.0, 1.0, 1.0), unit="px").to_dict()
    assert volume["volume_px3"] == 24 and size_text(volume) == "24 px³" and "max_3d_diameter_px" in volume
    with pytest.raises(OncoSegError, match="unit must be"):
        measure(mask, (1.0, 1.0), unit="inch")
