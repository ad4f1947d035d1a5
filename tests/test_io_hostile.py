"""Hostile and damaged input to `load_image`: headers naming other files, declared sizes over the limits,
truncated data, bad geometry, damaged DICOM series, and a small fuzz pass over every format."""

from __future__ import annotations

import gzip
import logging
import struct
import time
import zlib
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import write_series
from PIL import Image

from oncoseg.errors import ImageReadError, ImageTooLargeError
from oncoseg.image import MedicalImage
from oncoseg.io import ReadLimits, load_image

SERVICE = ReadLimits(max_voxels=50_000_000, max_bytes=400_000_000, external_data=False)


def refused(path: Path, error: type[Exception] = ImageReadError, **kwargs) -> str:
    """The one-line message `load_image` refuses ``path`` with."""
    with pytest.raises(error) as caught:
        load_image(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(path.name + ":"), message
    return message


def small_volume(dtype=np.int16) -> sitk.Image:
    image = sitk.GetImageFromArray((np.arange(4 * 5 * 6) % 50 - 10).astype(dtype).reshape(4, 5, 6))
    image.SetSpacing((0.5, 0.75, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    return image


def write_text_header(path: Path, lines: list[str], data: bytes = b"", newline: str = "\n") -> Path:
    path.write_bytes(newline.join(lines).encode("latin-1") + newline.encode() + data)
    return path


def mha_lines(data_file: str = "LOCAL", **fields: str) -> list[str]:
    base = {"ObjectType": "Image", "NDims": "2", "DimSize": "8 4", "ElementType": "MET_UCHAR"}
    return [f"{k} = {v}" for k, v in (base | fields).items()] + [f"ElementDataFile = {data_file}"]


def nrrd_lines(*extra: str, sizes: str = "8 4") -> list[str]:
    dimension = len(sizes.split())
    return ["NRRD0004", "type: uchar", f"dimension: {dimension}", f"sizes: {sizes}", "encoding: raw", *extra]


# --- 1. headers naming another file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target", ["/etc/passwd", "/proc/self/environ", "../secret.raw", "sub/x.raw", "LIST"]
)
@pytest.mark.parametrize("external", [True, False])
def test_metaimage_naming_a_file_elsewhere_is_refused(tmp_path, target, external):
    (tmp_path / "secret.raw").write_bytes(b"s" * 32)
    path = write_text_header(tmp_path / "image.mha", mha_lines(target))
    message = refused(path, limits=ReadLimits(external_data=external))
    assert "data file" in message and target not in message and "passwd" not in message


@pytest.mark.parametrize(
    "line",
    ["data file: /etc/passwd", "datafile: /etc/passwd", "DATA FILE: /etc/passwd", "data file: LIST"],
)
@pytest.mark.parametrize("newline", ["\n", "\r"])
def test_nrrd_naming_a_file_elsewhere_is_refused(tmp_path, line, newline):
    path = write_text_header(tmp_path / "image.nrrd", nrrd_lines(line), newline=newline)
    for limits in (ReadLimits(), SERVICE):
        message = refused(path, limits=limits)
        assert "data file" in message and "passwd" not in message


def test_metaimage_spelling_variants_of_the_data_file_field_are_refused(tmp_path):
    for i, line in enumerate(["ElementDataFile: /etc/passwd", "   ElementDataFile=/etc/passwd"]):
        lines = mha_lines()[:-1] + [line]
        assert "data file" in refused(write_text_header(tmp_path / f"v{i}.mha", lines))
    # "LOCAL" then another path on the same line (metaio reads up to the newline)
    lines = mha_lines("LOCAL\r/etc/passwd")
    assert "data file" in refused(write_text_header(tmp_path / "cr.mha", lines))


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_detached_header_reads_a_plain_file_next_to_it_only_when_allowed(tmp_path, suffix):
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(small_volume(), str(path))
    assert len(list(tmp_path.iterdir())) == 2  # header + data file
    np.testing.assert_array_equal(load_image(path).array, sitk.GetArrayFromImage(small_volume()))
    assert "external data file" in refused(path, limits=SERVICE)

    # The same header whose data file is a symlink (here to the real data) is refused.
    data = next(p for p in tmp_path.iterdir() if p != path)
    moved = data.rename(tmp_path / f"real{data.suffix}")
    data.symlink_to(moved)
    assert "not a plain file" in refused(path)


def test_local_metaimage_and_attached_nrrd_load_under_service_limits(tmp_path):
    for suffix in (".mha", ".nrrd"):
        sitk.WriteImage(small_volume(), str(tmp_path / f"v{suffix}"), useCompression=suffix == ".nrrd")
        image = load_image(tmp_path / f"v{suffix}", limits=SERVICE)
        assert image.shape == (4, 5, 6) and image.metadata["warnings"] == []


# --- 2. declared size before allocation ------------------------------------------------------------------


def nifti_bytes(shape, dtype=np.int16, data: bytes | None = None, **fields) -> bytes:
    """A NIfTI-1 single file: header (with ``fields`` set), extension flag, then ``data`` (default: all)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.diag([0.5, 0.75, 2.0, 1.0]), code=1)
    header.set_qform(np.diag([0.5, 0.75, 2.0, 1.0]), code=1)
    header["vox_offset"] = 352
    for key, value in fields.items():
        header[key] = value
    if data is None:
        data = (np.arange(int(np.prod(shape))) % 100).astype(dtype).tobytes()
    return header.binaryblock + b"\0\0\0\0" + data


def test_tiny_nii_gz_declaring_a_billion_voxels_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((1000, 1000, 1000), data=b"\0" * 1000)))
    assert path.stat().st_size < 1000
    start = time.perf_counter()
    message = refused(path, ImageTooLargeError, limits=SERVICE)
    assert "1000 x 1000 x 1000" in message and "50,000,000" in message
    # Within the permissive defaults it is still refused at once, as truncated, before ITK allocates 2 GB.
    assert "truncated" in refused(path)
    assert time.perf_counter() - start < 1.0


def test_nrrd_metaimage_and_dicom_sizes_are_checked_from_the_header(tmp_path):
    huge = write_text_header(tmp_path / "huge.nrrd", nrrd_lines(sizes="100000 100000 1000"))
    assert "over the limit" in refused(huge, ImageTooLargeError)
    lines = mha_lines(DimSize="4000 4000 4000", NDims="3", ElementNumberOfChannels="3")
    assert "4000 x 4000 x 4000 x 3" in refused(
        write_text_header(tmp_path / "huge.mha", lines), ImageTooLargeError
    )
    lines = mha_lines(DimSize="2000 2000 200", NDims="3", ElementType="MET_DOUBLE")
    small_bytes = ReadLimits(max_bytes=2**30)
    assert "bytes" in refused(
        write_text_header(tmp_path / "big.mha", lines), ImageTooLargeError, limits=small_bytes
    )
    folder = write_series(tmp_path / "series", np.zeros((3, 8, 8), np.uint16), (1, 0, 0), (0, 1, 0))
    assert "3 x 8 x 8" in refused(folder, ImageTooLargeError, limits=ReadLimits(max_voxels=100))


def write_png_header(path: Path, width: int, height: int, rows: bool) -> Path:
    """A palette PNG of ``width`` x ``height`` zeros, compressed row by row (never held whole); with
    ``rows=False`` only a token IDAT (enough for Pillow to open it lazily)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, idat = zlib.compressobj(9), []
    row = b"\0" * (width + 1)
    for _ in range(height if rows else 1):
        idat.append(compressor.compress(row))
    idat.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"PLTE", b"\0\0\0\xff\xff\xff") + chunk(b"IDAT", b"".join(idat))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b""))
    return path


def test_100_megapixel_png_is_refused_by_the_limits_and_pillows_bomb_limit_is_ours_too(tmp_path):
    path = write_png_header(tmp_path / "wide.png", 10_000, 10_000, rows=True)
    assert path.stat().st_size < 300_000
    Image.open(path).verify()  # a valid PNG
    message = refused(path, ImageTooLargeError, limits=SERVICE)
    assert "10000 x 10000 x 3" in message and "50,000,000" in message
    bomb = write_png_header(tmp_path / "bomb.png", 20_000, 20_000, rows=False)
    assert "decompression-bomb limit" in refused(bomb, ImageTooLargeError)


def test_completeness_check_never_inflates_beyond_the_declared_data(tmp_path, monkeypatch):
    data = nifti_bytes((20, 20, 20)) + b"\0" * 5_000_000  # trailing bytes defeat the gzip-size shortcut
    path = tmp_path / "trailing.nii.gz"
    path.write_bytes(gzip.compress(data))
    reads = []
    original = gzip.GzipFile.read

    def counting_read(self, size=-1):
        chunk = original(self, size)
        reads.append(len(chunk))
        return chunk

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    assert load_image(path).shape == (20, 20, 20)
    assert 0 < sum(reads) <= 352 + 540 + 20**3 * 2


# --- 3. truncated files --------------------------------------------------------------------------------------


def test_truncated_nifti_that_is_still_valid_gzip_is_refused(tmp_path):
    data = nifti_bytes((6, 7, 8))
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(data[: len(data) - 100]))
    assert "truncated" in refused(path)
    (tmp_path / "cut.nii").write_bytes(data[:-100])
    assert "truncated" in refused(tmp_path / "cut.nii")
    (tmp_path / "whole.nii.gz").write_bytes(gzip.compress(data))
    assert load_image(tmp_path / "whole.nii.gz").shape == (8, 7, 6)


@pytest.mark.parametrize("offset", [-1e6, 0, 100, 1e12, float("nan")])
def test_negative_or_absurd_vox_offset_is_refused(tmp_path, offset):
    path = tmp_path / "offset.nii"
    path.write_bytes(nifti_bytes((6, 7, 8), vox_offset=offset))
    assert "vox_offset" in refused(path)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_raw_nrrd_and_metaimage_shorter_than_declared_are_refused(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sitk.WriteImage(small_volume(), str(full), useCompression=False)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[:-40])
    assert "shorter than the header declares" in refused(cut)
    sitk.WriteImage(small_volume(), str(full), useCompression=True)
    cut.write_bytes(full.read_bytes()[:-20])
    refused(cut)


def compressed_mha(tmp_path: Path, data: bytes | None = None, size: str | None = "auto") -> Path:
    """A 6 x 5 x 4 MET_SHORT .mha with CompressedData = True; ``data`` (default: the zlib stream of its
    pixels) follows the header, ``size`` is the CompressedDataSize line ("auto": the data's length, None: none)."""
    pixels = np.asarray(sitk.GetArrayFromImage(small_volume()))
    data = zlib.compress(pixels.tobytes()) if data is None else data
    fields = {"NDims": "3", "DimSize": "6 5 4", "ElementType": "MET_SHORT", "CompressedData": "True"}
    if size is not None:
        fields["CompressedDataSize"] = str(len(data)) if size == "auto" else size
    return write_text_header(tmp_path / "c.mha", mha_lines(**fields), data=data)


@pytest.mark.parametrize(
    ("data", "size", "needle"),
    [
        (b"raw", None, "without CompressedDataSize"),  # metaio inflates the header itself: garbage
        (b"raw", "3", "not a valid zlib stream"),
        (None, None, "without CompressedDataSize"),
        (b"raw", "auto", "not a valid zlib stream"),
        (zlib.compress(bytes(100)), "auto", "ends after 100 of the declared 240 bytes"),
        (zlib.compress(bytes(100)) + bytes(300), "auto", "ends after 100"),
        (zlib.compress(bytes(5000)), "auto", "more than the declared 240 bytes"),
        (zlib.compress(bytes(240))[:-3], "auto", "ends after"),
        (zlib.compress(bytes(240)), "9", "ends after"),  # metaio inflates only 9 bytes: garbage
        (zlib.compress(bytes(240)), "99999", "more than the"),
        (zlib.compress(bytes(240)), "-4", "cannot locate"),
        (zlib.compress(bytes(240)), "12.5", "not one integer"),
    ],
    ids=["raw", "raw-size-3", "no-size", "raw-sized", "short", "short-padded", "long", "cut", "size-9"]
    + ["size-beyond", "size-negative", "size-fraction"],
)
def test_compressed_metaimage_must_inflate_to_exactly_the_declared_bytes(tmp_path, data, size, needle):
    if data == b"raw":
        data = np.asarray(sitk.GetArrayFromImage(small_volume())).tobytes()
    assert needle in refused(compressed_mha(tmp_path, data, size))


def test_compressed_metaimage_headersize_is_honoured_and_minus_one_refused(tmp_path):
    stream = zlib.compress(np.asarray(sitk.GetArrayFromImage(small_volume())).tobytes())
    fields = {"NDims": "3", "DimSize": "6 5 4", "ElementType": "MET_SHORT", "CompressedData": "True"}
    fields["CompressedDataSize"] = str(len(stream))
    header = "\n".join(mha_lines(**fields, HeaderSize="000")) + "\n"
    lines = mha_lines(**fields, HeaderSize=str(len(header) + 16))
    path = write_text_header(tmp_path / "skip.mha", lines, data=b"p" * 16 + stream)
    assert np.array_equal(load_image(path).array, load_image(compressed_mha(tmp_path)).array)
    path = write_text_header(tmp_path / "end.mha", mha_lines(**fields, HeaderSize="-1"), data=stream)
    assert "HeaderSize -1" in refused(path)


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
@pytest.mark.parametrize(
    ("shape", "vector"),
    [((30, 40), False), ((5, 30, 40), False), ((30, 40, 3), True), ((4, 30, 40, 2), True)],
)
def test_compressed_metaimage_written_by_simpleitk_loads(tmp_path, suffix, shape, vector):
    array = (np.arange(np.prod(shape)) * 7919 % 3001 - 1000).astype(np.int16).reshape(shape)
    itk_image = sitk.GetImageFromArray(array, isVector=vector)
    sitk.WriteImage(itk_image, str(tmp_path / f"plain{suffix}"), useCompression=False)
    path = tmp_path / f"packed{suffix}"
    sitk.WriteImage(itk_image, str(path), useCompression=True)
    assert b"CompressedDataSize" in path.read_bytes()[:1000]
    image = load_image(path)
    assert image.channels == (shape[-1] if vector else 1) and image.array.size == array.size
    assert np.array_equal(image.array, load_image(tmp_path / f"plain{suffix}").array)


def test_compressed_metaimage_check_inflates_no_more_than_the_declared_bytes(tmp_path, monkeypatch):
    real, outputs = zlib.decompressobj, []

    class Counting:
        def __init__(self, *args):
            self.inner = real(*args)

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            outputs.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    bomb = zlib.compress(bytes(50_000_000), 9)
    assert "more than the declared 240 bytes" in refused(compressed_mha(tmp_path, bomb))
    assert 0 < sum(outputs) <= 241


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("byte skip: -5", "'byte skip: -5' is not allowed"),
        ("byte skip: -2", "is not allowed"),
        ("byteskip: -5", "is not allowed"),
        ("byte skip: 99999999999", "beyond the end"),
        ("byte skip: 40", "beyond the end"),
        ("byte skip: 4.5", "not one integer"),
        ("byte skip: 4 5", "not one integer"),
        ("line skip: -1", "negative"),
        ("line skip: 1.5", "not one integer"),
        ("line skip: 99999999", "beyond the end"),
        ("line skip: 2", "beyond the end"),
    ],
)
def test_nrrd_byte_and_line_skips_must_stay_inside_the_data(tmp_path, line, needle):
    data = b"JUNK\n" + bytes(range(11, 43))  # one line, then 32 bytes without a newline
    path = write_text_header(tmp_path / "skip.nrrd", nrrd_lines(line, ""), data=data)
    assert needle in refused(path)


def test_nrrd_byte_skip_minus_one_is_raw_only_and_valid_skips_read_the_right_bytes(tmp_path):
    pixels = bytes(range(11, 43))
    expected = np.frombuffer(pixels, np.uint8).reshape(4, 8)
    for lines, data in [
        (["byte skip: -1"], b"JUNKJUNK" + pixels),
        (["byte skip: 4"], b"JUNK" + pixels),
        (["line skip: 2"], b"J\nUNK\n" + pixels),
        (["line skip: 1", "byte skip: 3"], b"J\nUNK" + pixels),
    ]:
        path = write_text_header(tmp_path / "ok.nrrd", nrrd_lines(*lines, ""), data=data)
        assert np.array_equal(load_image(path).array, expected), lines
    lines = nrrd_lines("byte skip: -1", "").copy()
    lines[4] = "encoding: gzip"
    path = write_text_header(tmp_path / "gz.nrrd", lines, data=gzip.compress(pixels))
    assert "'byte skip: -1' is not allowed" in refused(path)


def png_bytes(width: int, height: int, rows: list[bytes], interlace: int = 0) -> bytes:
    """An 8-bit greyscale PNG whose IDAT holds ``rows`` (filter byte included) in one zlib stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    idat = zlib.compress(b"".join(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def adam7_rows(array: np.ndarray) -> list[bytes]:
    rows = []
    for x0, y0, dx, dy in [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
    ]:
        rows += [b"\0" + row.tobytes() for row in array[y0::dy, x0::dx] if row.size]
    return rows + [b"\0" + row.tobytes() for row in array[1::2, :]]


def test_png_whose_image_data_holds_fewer_rows_than_declared_is_refused(tmp_path):
    array = (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)
    rows = [b"\0" + row.tobytes() for row in array]
    (tmp_path / "short.png").write_bytes(png_bytes(64, 64, rows[:8]))
    assert "ends after 520 of its 4,160 scanline bytes" in refused(tmp_path / "short.png")
    (tmp_path / "one-byte-short.png").write_bytes(png_bytes(64, 64, rows[:-1] + [rows[-1][:-1]]))
    refused(tmp_path / "one-byte-short.png")
    (tmp_path / "whole.png").write_bytes(png_bytes(64, 64, rows))
    assert np.array_equal(load_image(tmp_path / "whole.png").array, array)
    for height, width in [(13, 7), (5, 3), (64, 64), (9, 1)]:
        small = array[:height, :width]
        interlaced = adam7_rows(small)
        (tmp_path / "adam7.png").write_bytes(png_bytes(width, height, interlaced, interlace=1))
        assert np.array_equal(load_image(tmp_path / "adam7.png").array, small)
        (tmp_path / "adam7-short.png").write_bytes(png_bytes(width, height, interlaced[:-1], interlace=1))
        refused(tmp_path / "adam7-short.png")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_pngs_of_every_pixel_layout_load_completely(tmp_path, mode):
    rgb = (np.arange(23 * 17 * 3).reshape(23, 17, 3) * 37 % 256).astype(np.uint8)
    picture = (
        Image.fromarray(rgb).convert(mode if mode != "I;16" else "I").convert(mode if mode != "1" else "1")
    )
    picture.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (23, 17)


def jpeg_with_frame(data: bytes, height: int, width: int) -> bytes:
    sof = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2))
    patched = bytearray(data)
    struct.pack_into(">HH", patched, sof + 5, height, width)
    return bytes(patched)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize(
    ("height", "width", "needle"), [(10000, 10000, "at least"), (160, 95, ""), (128, 160, "")]
)
def test_jpeg_whose_frame_is_larger_than_its_scan_data_is_refused(
    tmp_path, progressive, height, width, needle
):
    rgb = (np.add.outer(np.arange(96), np.arange(95))[:, :, None] * [1, 2, 3] % 256).astype(np.uint8)
    (tmp_path / "ok.jpg").write_bytes(b"")
    Image.fromarray(rgb).save(tmp_path / "ok.jpg", quality=90, progressive=progressive)
    (tmp_path / "lie.jpg").write_bytes(jpeg_with_frame((tmp_path / "ok.jpg").read_bytes(), height, width))
    message = refused(tmp_path / "lie.jpg")
    assert needle in message and f"{width} x {height} frame" in message


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 75},
        {"quality": 100, "subsampling": 0},
        {"quality": 20, "subsampling": 1, "optimize": True},
        {"progressive": True},
        {"progressive": True, "subsampling": 0, "quality": 95},
        {"restart_marker_rows": 1},
        {"restart_marker_blocks": 5},
    ],
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(("height", "width"), [(8, 8), (17, 33), (96, 95), (250, 333)])
def test_valid_jpegs_load_with_the_pixels_pillow_decodes(tmp_path, options, mode, height, width):
    rng = np.random.default_rng(height * width)
    rgb = (np.add.outer(np.arange(height), np.arange(width))[:, :, None] * [1, 2, 3] % 256).astype(np.uint8)
    rgb = (rgb // 2 + rng.integers(0, 128, rgb.shape)).astype(np.uint8)
    path = tmp_path / "v.jpg"
    Image.fromarray(rgb).convert(mode).save(path, **options)
    path.write_bytes(path.read_bytes() + b"trailing bytes after the end marker")
    with Image.open(path) as pil:
        expected = np.array(pil)
    assert np.array_equal(load_image(path).array, expected)


# --- 4. bad geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("srow_x", [np.nan, 0, 0, 0]),
        ("srow_z", [0, 0, np.inf, 0]),
        ("quatern_b", np.nan),
        ("qoffset_y", np.inf),
        ("pixdim", [1, 0.5, 0, 2, 1, 1, 1, 1]),
        ("pixdim", [1, 0.5, -0.75, 2, 1, 1, 1, 1]),
        ("pixdim", [1, np.nan, 0.75, 2, 1, 1, 1, 1]),
    ],
)
def test_nifti_with_non_finite_transform_or_bad_pixdim_is_refused(tmp_path, field, value):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((6, 7, 8), **{field: value})))
    assert field in refused(path)


@pytest.mark.parametrize(
    ("suffix", "field", "line"),
    [
        (".nrrd", "spacings", "spacings: 1 0"),
        (".nrrd", "spacings", "spacings: nan 1"),
        (".nrrd", "space directions", "space directions: (1,0) (0,nan)"),
        (".nrrd", "space directions", "space directions: (1,0) (0,0)"),
        (".nrrd", "space origin", "space origin: (inf,0)"),
        (".mha", "ElementSpacing", "ElementSpacing = 1 0"),
        (".mha", "ElementSpacing", "ElementSpacing = -1 1"),
        (".mha", "ElementSpacing", "ElementSpacing = nan 1"),
        (".mha", "Offset", "Offset = 0 nan"),
        (".mha", "TransformMatrix", "TransformMatrix = 1 0 0 inf"),
    ],
)
def test_nrrd_and_metaimage_with_bad_spacing_origin_or_direction_are_refused(tmp_path, suffix, field, line):
    if suffix == ".nrrd":
        lines = nrrd_lines(*(["space: left-posterior"] if "space" in line else []), line, "")
    else:
        key, value = line.split(" = ")
        lines = mha_lines(**{key: value})
    path = write_text_header(tmp_path / f"bad{suffix}", lines, data=bytes(range(32)))
    assert field in refused(path)


def test_vector_nrrd_with_nan_spacing_on_its_channel_axis_loads(tmp_path):
    lines = ["NRRD0004", "type: uchar", "dimension: 3", "sizes: 3 8 4", "encoding: raw"]
    lines += ["kinds: RGB-color domain domain", "spacings: nan 0.5 0.25", ""]
    image = load_image(write_text_header(tmp_path / "rgb.nrrd", lines, data=bytes(96)))
    assert image.channels == 3 and image.spacing == (0.5, 0.25)


# --- 5. damaged DICOM series -------------------------------------------------------------------------------

PATIENT = ("Phantom", "T1")


def series(tmp_path: Path, n: int = 6, **kwargs) -> Path:
    frames = (np.arange(n * 6 * 7).reshape(n, 6, 7) % 90).astype(np.uint16)
    return write_series(tmp_path / "series", frames, (1, 0, 0), (0, 1, 0), **kwargs)


def edit_slice(folder: Path, k: int, **changes) -> None:
    path = folder / f"slice{k:03d}.dcm"
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def refused_series(folder: Path, *needles: str) -> str:
    message = refused(folder)
    series_uid = str(pydicom.dcmread(folder / "slice000.dcm", stop_before_pixels=True).SeriesInstanceUID)
    assert series_uid not in message and not any(p in message for p in PATIENT), message
    for needle in needles:
        assert needle in message, message
    return message


def test_clean_series_loads_without_warnings(tmp_path):
    image = load_image(series(tmp_path))
    assert image.shape == (6, 6, 7) and image.spacing == pytest.approx((1.25, 1.5, 2.5))
    assert image.metadata["warnings"] == []


def test_slice_without_position_is_refused(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 2, ImagePositionPatient=None)
    refused_series(folder, "1 of 6", "ImagePositionPatient")


def test_slice_with_another_orientation_is_refused(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 4, ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    refused_series(folder, "1 of 6", "ImageOrientationPatient")


def test_two_slices_at_one_position_are_refused(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 3, ImagePositionPatient=[-100, -80, 45])  # slice 2's position
    refused_series(folder, "2 of 6 slices share a position", "slices 2 and 3")


@pytest.mark.parametrize(("missing", "gap_at"), [(2, "slices 1 and 2"), (4, "slices 3 and 4")])
def test_gap_in_the_series_is_refused_with_its_location(tmp_path, missing, gap_at):
    folder = series(tmp_path)
    (folder / f"slice{missing:03d}.dcm").unlink()
    refused_series(folder, gap_at, "5 mm", "2.5 mm")


def test_slightly_uneven_spacing_is_refused_but_rounding_is_not(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 3, ImagePositionPatient=[-100, -80, 47.9])  # 2.5 mm steps, one of 2.9
    refused_series(folder, "uneven slice spacing")
    folder = series(tmp_path / "rounded")
    edit_slice(folder, 3, ImagePositionPatient=[-100, -80, 47.502])
    assert load_image(folder).shape == (6, 6, 7)


def test_sheared_series_is_refused(tmp_path):
    folder = series(tmp_path)
    for k in range(6):
        edit_slice(folder, k, ImagePositionPatient=[-100, -80 + 0.8 * k, 40 + 2.5 * k])  # gantry tilt
    refused_series(folder, "shifted in-plane")


@pytest.mark.parametrize("spacing", [["0", "0"], ["-1", "1"], ["nan", "1"], ["1"]])
def test_zero_negative_or_nan_pixel_spacing_is_refused(tmp_path, spacing):
    folder = series(tmp_path)
    for k in range(6):
        edit_slice(folder, k, PixelSpacing=spacing)
    refused_series(folder, "PixelSpacing")


def test_missing_pixel_spacing_refuses_a_volume_and_warns_on_a_2d_image(tmp_path, caplog):
    folder = series(tmp_path)
    for k in range(6):
        edit_slice(folder, k, PixelSpacing=None)
    refused_series(folder, "no PixelSpacing")
    folder = series(tmp_path / "single", n=1)
    edit_slice(folder, 0, PixelSpacing=None)
    with caplog.at_level(logging.WARNING, logger="oncoseg.io"):
        image = load_image(folder)
    assert image.shape == (6, 7) and image.spacing == (1.0, 1.0)
    assert image.metadata["warnings"] == ["no PixelSpacing: pixel sizes unknown, measurements in pixels"]
    assert [r.getMessage() for r in caplog.records] == image.metadata["warnings"]
    # A single multi-frame file (e.g. an ultrasound cine) comes back in pixels too.
    edit_slice(folder, 0, NumberOfFrames=3, PixelData=np.ones((3, 6, 7), "<u2").tobytes())
    image = load_image(folder)
    assert image.shape == (3, 6, 7) and image.spacing == (1.0, 1.0, 1.0)
    assert image.metadata["warnings"] == ["no PixelSpacing: pixel sizes unknown, measurements in pixels"]


def test_unreadable_stray_file_is_skipped_with_a_warning_but_one_of_the_series_refuses(tmp_path, caplog):
    folder = series(tmp_path)
    (folder / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 3)
    (folder / "notes.txt").write_text("not DICOM", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="oncoseg.io"):
        image = load_image(folder)
    assert image.shape == (6, 6, 7)
    assert image.metadata["warnings"] == ["1 DICOM file(s) in the folder could not be read and were skipped"]
    assert len(caplog.records) == 1 and str(tmp_path) not in caplog.text and "junk" not in caplog.text

    # A slice of the series cut short (in its pixel data, or inside its SeriesInstanceUID): GDCM leaves it
    # out, so the series would load with a gap of 5 mm where slice 2 was; the reader must refuse it.
    cut = folder / "slice002.dcm"
    data = cut.read_bytes()
    cut.write_bytes(data[:-30])
    refused_series(folder, "1 file(s) of this series")
    series_uid = pydicom.dcmread(cut, stop_before_pixels=True).SeriesInstanceUID
    cut.write_bytes(data[: data.index(series_uid.encode()) + 20])
    refused_series(folder, "1 file(s) of this series")


def test_slice_whose_pixel_data_element_is_short_is_refused(tmp_path):
    folder = series(tmp_path)
    edit_slice(folder, 1, PixelData=b"\0" * 40)
    refused_series(folder, "truncated")


def test_other_series_in_the_folder_give_no_warning(tmp_path):
    folder = series(tmp_path)
    other = write_series(tmp_path / "other", np.zeros((2, 6, 7), np.uint16), (1, 0, 0), (0, 1, 0))
    for path in other.iterdir():
        path.rename(folder / f"other-{path.name}")
    image = load_image(folder)
    assert image.metadata["warnings"] == []


# --- every load, every format ------------------------------------------------------------------------------


def valid_files(tmp_path: Path) -> dict[str, Path]:
    """Small valid files of every format, written into ``tmp_path``."""
    files = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    for suffix, compress in [(".nii", False), (".nii.gz", True), (".nrrd", False), (".mha", False)]:
        files[suffix] = tmp_path / f"valid{suffix}"
        sitk.WriteImage(small_volume(), str(files[suffix]), useCompression=compress)
    files["gz.nrrd"] = tmp_path / "gz.nrrd"
    sitk.WriteImage(small_volume(), str(files["gz.nrrd"]), useCompression=True)
    rgb = (np.arange(12 * 10 * 3).reshape(12, 10, 3) % 256).astype(np.uint8)
    for suffix in (".png", ".jpg"):
        files[suffix] = tmp_path / f"valid{suffix}"
        Image.fromarray(rgb).save(files[suffix])
    files["dicom"] = write_series(tmp_path / "dicom", np.ones((3, 6, 7), np.uint16), (1, 0, 0), (0, 1, 0))
    return files


def test_every_format_loads_with_an_empty_warning_list(tmp_path):
    for path in valid_files(tmp_path).values():
        assert load_image(path).metadata["warnings"] == []


def mutations(data: bytes, rng: np.random.Generator, text_header: bool) -> list[tuple[str, bytes]]:
    cases = [(f"cut{f}", data[: int(len(data) * f)]) for f in (0.05, 0.3, 0.6, 0.97)]
    for i in range(3):
        flipped = bytearray(data)
        for at in rng.integers(0, min(len(data), 400 if i < 2 else len(data)), size=4):
            flipped[at] ^= 1 << int(rng.integers(0, 8))
        cases.append((f"flip{i}", bytes(flipped)))
    if text_header:
        for old, new in [(b"DimSize = 6 5 4", b"DimSize = 6 -5 4"), (b"sizes: 6 5 4", b"sizes: 6 5 99999")]:
            if old in data:
                cases.append(("edit-size", data.replace(old, new)))
        for old, new in [(b"MET_SHORT", b"MET_WEIRD"), (b"type: short", b"type: quad"), (b"= 2\n", b"= 0\n")]:
            if old in data:
                cases.append(("edit-type", data.replace(old, new)))
    return cases


def assert_loads_sanely_or_refuses(path: Path) -> MedicalImage | None:
    """The image if it loads with finite geometry; None if refused in one line; fails on anything else."""
    try:
        image = load_image(path)
    except ImageReadError as exc:
        assert "\n" not in str(exc) and str(exc), repr(exc)
        return None
    assert np.all(np.isfinite(image.spacing)) and min(image.spacing) > 0
    assert np.all(np.isfinite(image.origin)) and np.all(np.isfinite(image.direction))
    assert isinstance(image.metadata["warnings"], list)
    return image


def test_fuzzed_files_load_sanely_or_refuse_in_one_line(tmp_path):
    rng = np.random.default_rng(20260101)
    started, count = time.perf_counter(), 0
    for key, path in valid_files(tmp_path / "valid").items():
        if key == "dicom":
            continue
        for label, data in mutations(path.read_bytes(), rng, key in (".nrrd", ".mha")):
            target = tmp_path / f"{label}-{path.name}"
            target.write_bytes(data)
            assert_loads_sanely_or_refuses(target)
            count += 1
    source = valid_files(tmp_path / "source")["dicom"]
    for label, data in mutations((source / "slice001.dcm").read_bytes(), rng, False):
        folder = tmp_path / f"dicom-{label}"
        folder.mkdir()
        for k in range(3):
            (folder / f"slice{k:03d}.dcm").write_bytes((source / f"slice{k:03d}.dcm").read_bytes())
        (folder / "slice001.dcm").write_bytes(data)
        image = assert_loads_sanely_or_refuses(folder)
        assert (
            image is None or image.shape == (3, 6, 7) or image.metadata["warnings"]
        )  # right, refused or warned
        count += 1
    assert count >= 55 and time.perf_counter() - started < 30
