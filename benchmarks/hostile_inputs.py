"""Malformed inputs for the adversarial benchmark: hostile image files, DICOM series, zips, prompts and HTTP
requests, all built from the bundled samples (no network, fixed seeds).

    from hostile_inputs import generate, http_requests
    cases = generate(Path("/tmp/adv"), quick=True)      # files on disk + CLI prompt cases
    requests = http_requests(context, quick=True)        # hostile HTTP requests for one running server

Every `Case` says what a robust reader must do with it (``expect``): "refuse" (exit 2 / HTTP 4xx), "accept"
(a valid input: exit 0 / HTTP 2xx) or "any" (either, as long as nothing crashes). A fake patient name, patient
id and UID (`PHI_STRINGS`) are planted in file names, zip entry names, DICOM tags and request parameters so that a
search of the logs for them means something.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import shutil
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel
import numpy as np

FAKE_NAME = "DOE^JOHN"
FAKE_PATIENT_ID = "PID-4815162342"
FAKE_UID = "1.2.826.0.1.3680043.8.498.12345"
PHI_STRINGS = (FAKE_NAME, FAKE_PATIENT_ID, FAKE_UID)
PHI = f"{FAKE_NAME}_{FAKE_PATIENT_ID}_{FAKE_UID}"  # for file and entry names
ESCAPE_MARK = "adv_escape"  # files named so must never appear outside where the harness put them

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "oncoseg" / "samples"
BOX = {"vol": "5,5,31,35,14", "png": "58,69,348,203", "jpg": "148,160,424,416", "dcm": "14,16,80,76,4"}
PASSWD = "/etc/passwd"
ENVIRON = "/proc/self/environ"
GIB = 2**30


@dataclass
class Case:
    """One hostile input: a file or folder for the CLI, and (``upload``) what the server is sent."""

    category: str
    name: str
    path: Path | None = None
    expect: str = "refuse"  # refuse | accept | any
    dims: int = 3  # 2 = picture (mask output .png), 3 = volume (.nii.gz)
    box: str | None = None  # CLI --box for `segment` (None: segment is not run)
    prompt_args: list[str] | None = None  # prompt cases: `segment SEED ...` arguments instead of --box
    upload: Path | None = None  # file sent to POST /api/images/upload (None: CLI only)
    upload_name: str | None = None
    cli: bool = True
    cli_expect: str | None = None  # when the CLI must answer differently (it reads no zips)
    external: str | None = None  # file outside the input the header points at (leak check)
    quick: bool = False
    note: str = ""

    def __post_init__(self):
        if self.upload is None and self.prompt_args is None and self.path is not None and self.path.is_file():
            self.upload = self.path
        if self.upload is not None and self.upload_name is None:
            self.upload_name = self.upload.name


@dataclass
class Request:
    """One hostile HTTP request; ``{vol}``/``{pic}`` in ``path`` are the ids of a valid volume/picture."""

    category: str
    name: str
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    raw: bytes | None = None  # sent as is over a socket (Content-Length lies, bad Host lines)
    expect: str = "4xx"  # 4xx | 2xx | any
    quick: bool = False
    timeout: float = 120.0


# ---------------------------------------------------------------------------------------------- seeds
class Seeds:
    """Valid files every mutation starts from, written once into ``root/seeds``."""

    def __init__(self, root: Path):
        import SimpleITK as sitk

        self.root = root / "seeds"
        self.root.mkdir(parents=True, exist_ok=True)
        self.nii_gz = self.root / "hippocampus.nii.gz"
        shutil.copyfile(SAMPLES / "hippocampus.nii.gz", self.nii_gz)
        loaded = nibabel.load(self.nii_gz)
        self.vol_file_shape = tuple(int(s) for s in loaded.shape)  # i, j, k as stored
        self.nii = self.root / "hippocampus.nii"
        nibabel.save(nibabel.Nifti1Image(np.asarray(loaded.dataobj), loaded.affine, loaded.header), self.nii)
        read = sitk.ReadImage(str(self.nii))
        itk = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))  # without the NIfTI fields as metadata
        itk.CopyInformation(read)
        self.nrrd = self.root / "hippocampus.nrrd"
        self.mha = self.root / "hippocampus.mha"
        sitk.WriteImage(itk, str(self.nrrd), False)
        sitk.WriteImage(itk, str(self.mha), False)
        self.png = self.root / "ultrasound.png"
        shutil.copyfile(SAMPLES / "breast_ultrasound.png", self.png)
        self.jpg = self.root / "polyp.jpg"
        shutil.copyfile(SAMPLES / "polyp.jpg", self.jpg)
        ct = nibabel.load(SAMPLES / "ct_abdomen.nii.gz")
        self.ct_slices = [np.asarray(ct.dataobj[:, :, k]).T.astype(np.int16) for k in range(20, 28)]
        self.dicom = self.root / "series"
        write_series(self.dicom, self.ct_slices)

    def header_and_data(self, path: Path) -> tuple[str, bytes]:
        """Text header and raw data of an uncompressed NRRD or MetaImage seed."""
        raw = path.read_bytes()
        if path.suffix == ".nrrd":
            end = raw.index(b"\n\n") + 2
        else:
            end = raw.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
        return raw[:end].decode("latin-1"), raw[end:]


# ---------------------------------------------------------------------------------------------- DICOM
def write_series(folder: Path, slices: list[np.ndarray], spacing=(3.0, 3.0, 3.0), **overrides) -> list[Path]:
    """A CT series (explicit VR little endian) with the fake patient in its tags; one file per slice."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, pixels in enumerate(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{FAKE_UID}.3.{index + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = FAKE_UID
        ds.SeriesInstanceUID = f"{FAKE_UID}.1"
        ds.FrameOfReferenceUID = f"{FAKE_UID}.2"
        ds.PatientName = FAKE_NAME
        ds.PatientID = FAKE_PATIENT_ID
        ds.PatientBirthDate = "19010101"
        ds.Modality = "CT"
        ds.StudyDate = ds.SeriesDate = "20200101"
        ds.InstanceNumber = index + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-150.0, -150.0, 100.0 + index * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
        for keyword, value in overrides.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / f"slice_{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) in a file: writes values pydicom would refuse (NaN, inf)."""
    data = path.read_bytes()
    if len(old) != len(new) or old not in data:
        raise ValueError(f"cannot patch {old!r} in {path}")
    path.write_bytes(data.replace(old, new, 1))


def zip_folder(folder: Path, target: Path, entry_prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, entry_prefix + path.relative_to(folder).as_posix())
    return target


# ---------------------------------------------------------------------------------------------- NIfTI
NIFTI_FIELDS = {  # offset and struct format of NIfTI-1 header fields (little endian)
    "sizeof_hdr": (0, "<i"),
    "dim": (40, "<8h"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "pixdim": (76, "<8f"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern": (256, "<3f"),
    "qoffset": (268, "<3f"),
    "srow_x": (280, "<4f"),
    "srow_y": (296, "<4f"),
    "srow_z": (312, "<4f"),
    "magic": (344, "4s"),
}


def nifti_patch(raw: bytes, **changes) -> bytes:
    """Header fields of an uncompressed NIfTI-1 file replaced; a list value may hold None = keep."""
    data = bytearray(raw)
    for name, value in changes.items():
        offset, fmt = NIFTI_FIELDS[name]
        if isinstance(value, (list, tuple)):
            old = struct.unpack_from(fmt, data, offset)
            value = [o if v is None else v for o, v in zip(old, value, strict=False)] + list(
                old[len(value) :]
            )
            struct.pack_into(fmt, data, offset, *value)
        else:
            struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def nifti_header(shape: tuple[int, ...], datatype: int = 2, bitpix: int = 8) -> bytes:
    """A bare NIfTI-1 header (plus the 4 extension bytes) for ``shape`` with no voxel data after it."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((1,) * len(shape))
    raw = bytearray(header.binaryblock) + b"\0\0\0\0"
    dims = [len(shape), *shape] + [1] * (7 - len(shape))
    return nifti_patch(
        bytes(raw), dim=dims, datatype=datatype, bitpix=bitpix, vox_offset=352.0, pixdim=[1, 1, 1, 1]
    )


def write_nifti(path: Path, array: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)
    return path


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def gzip_zeros_after(header: bytes, n_bytes: int, path: Path) -> Path:
    """``header`` + ``n_bytes`` zero bytes, gzip-compressed while streaming (never held in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(compressor.compress(header))
        left = n_bytes
        while left > 0:
            f.write(compressor.compress(chunk[: min(left, len(chunk))]))
            left -= len(chunk)
        f.write(compressor.flush())
    return path


# ---------------------------------------------------------------------------------------------- PNG
def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_file(width: int, height: int, idat: bytes, depth=8, colour=0, interlace=0, extra=()) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    chunks = [png_chunk(b"IHDR", ihdr), *extra, png_chunk(b"IDAT", idat), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def zero_rows_idat(width: int, height: int, bytes_per_pixel: int = 1) -> bytes:
    """Deflated scanlines of a black picture, compressed row by row (a 100-megapixel one stays small)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + width * bytes_per_pixel)
    return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()


# ---------------------------------------------------------------------------------------------- zips
def write_zip_bomb(path: Path, inflated_bytes: int, entry: str) -> Path:
    """A deflated zip whose one entry inflates to ``inflated_bytes`` zeros, streamed from a zero chunk."""
    chunk = bytes(1 << 20)
    archive = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9)
    with archive, archive.open(entry, "w", force_zip64=True) as f:
        left = inflated_bytes
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return path


def patch_zip_headers(data: bytes, method: int | None = None, flags: int | None = None, size=None) -> bytes:
    """Rewrite every local and central header's compression method, flag bits and/or uncompressed size."""
    out = bytearray(data)
    for match in re.finditer(rb"PK\x03\x04", data):  # local file headers
        at = match.start()
        if flags is not None:
            struct.pack_into("<H", out, at + 6, flags)
        if method is not None:
            struct.pack_into("<H", out, at + 8, method)
        if size is not None:
            struct.pack_into("<I", out, at + 22, size)
    for match in re.finditer(rb"PK\x01\x02", data):  # central directory
        at = match.start()
        if flags is not None:
            struct.pack_into("<H", out, at + 8, flags)
        if method is not None:
            struct.pack_into("<H", out, at + 10, method)
        if size is not None:
            struct.pack_into("<I", out, at + 24, size)
    return bytes(out)


# ---------------------------------------------------------------------------------------------- generator
class Builder:
    def __init__(self, root: Path, seeds: Seeds):
        self.root = root
        self.seeds = seeds
        self.cases: list[Case] = []
        self.rng = random.Random(20240611)

    def folder(self, category: str) -> Path:
        path = self.root / "inputs" / category
        path.mkdir(parents=True, exist_ok=True)
        return path

    def file(self, category: str, name: str, data: bytes, **kw) -> Case:
        path = self.folder(category) / name
        path.write_bytes(data)
        return self.add(Case(category, name, path, **kw))

    def add(self, case: Case) -> Case:
        if any(c.name == case.name and c.category == case.category for c in self.cases):
            raise ValueError(f"duplicate case {case.category}/{case.name}")
        self.cases.append(case)
        return case


def generate(root: Path, quick: bool = False) -> list[Case]:
    """Write the hostile inputs under ``root`` and return their cases (``quick``: the representative subset).

    ``root`` must be new or empty: some inputs are symlinks to /etc/passwd, and writing a second run into the
    first one's folder would write through them (as root, over /etc/passwd itself)."""
    if root.exists() and (root.is_symlink() or any(root.iterdir())):
        raise ValueError(
            f"{root}: give a new or empty folder (an old run's symlinks would be written through)"
        )
    root.mkdir(parents=True, exist_ok=True)
    seeds = Seeds(root)
    b = Builder(root, seeds)
    _controls(b)
    _nifti(b)
    _nrrd_mha(b)
    _pictures(b)
    _dicom(b)
    _zips(b, quick)
    _declared(b, quick)
    _external(b)
    _truncated(b)
    _byteflips(b, per_seed=2 if quick else 10)
    _geometry(b)
    _degenerate(b)
    _prompts(b)
    return [c for c in b.cases if c.quick] if quick else b.cases


def _controls(b: Builder) -> None:
    s = b.seeds
    for path, dims, box in [
        (s.nii_gz, 3, BOX["vol"]),
        (s.nii, 3, BOX["vol"]),
        (s.nrrd, 3, BOX["vol"]),
        (s.mha, 3, BOX["vol"]),
        (s.png, 2, BOX["png"]),
        (s.jpg, 2, BOX["jpg"]),
    ]:
        b.add(Case("control", path.name, path, "accept", dims, box, quick=path in (s.nii_gz, s.png)))
    b.add(
        Case(
            "control",
            "series",
            s.dicom,
            "accept",
            3,
            BOX["dcm"],
            upload=zip_folder(s.dicom, b.folder("control") / f"{PHI}_series.zip", f"{PHI}/"),
            quick=True,
        )
    )


def _nifti(b: Builder) -> None:
    raw = b.seeds.nii.read_bytes()
    mutations: dict[str, tuple[dict, str]] = {
        "dim0-zero": ({"dim": [0]}, "refuse"),
        "dim0-eight": ({"dim": [8]}, "refuse"),
        "dim0-negative": ({"dim": [-3]}, "refuse"),
        "dim1-zero": ({"dim": [None, 0]}, "refuse"),
        "dim1-negative": ({"dim": [None, -36]}, "refuse"),
        "dim4-zero": ({"dim": [4, None, None, None, 0]}, "refuse"),
        "dim-larger-than-data": ({"dim": [None, 72]}, "refuse"),
        "dim-smaller-than-data": ({"dim": [None, 30]}, "any"),
        "datatype-zero": ({"datatype": 0}, "refuse"),
        "datatype-bogus": ({"datatype": 12345}, "refuse"),
        "datatype-complex": ({"datatype": 32, "bitpix": 64}, "any"),
        "datatype-float64-too-short": ({"datatype": 64, "bitpix": 64}, "refuse"),
        "datatype-rgb": ({"datatype": 128, "bitpix": 24}, "any"),
        "bitpix-mismatch": ({"bitpix": 64}, "any"),
        "vox_offset-negative": ({"vox_offset": -352.0}, "refuse"),
        "vox_offset-huge": ({"vox_offset": 1e9}, "refuse"),
        "vox_offset-nan": ({"vox_offset": float("nan")}, "refuse"),
        "vox_offset-unaligned": ({"vox_offset": 353.0}, "any"),
        "vox_offset-zero": ({"vox_offset": 0.0}, "any"),
        "scl_slope-nan": ({"scl_slope": float("nan"), "scl_inter": float("nan")}, "any"),
        "scl_slope-inf": ({"scl_slope": float("inf")}, "any"),  # ignored like nibabel does
        "scl_slope-huge": ({"scl_slope": 3e38}, "any"),
        "magic-bad": ({"magic": b"xyz\0"}, "refuse"),
        "magic-pair": ({"magic": b"ni1\0"}, "refuse"),
        "sizeof_hdr-zero": ({"sizeof_hdr": 0}, "any"),  # the rest of the header is intact
        "sizeof_hdr-nifti2": ({"sizeof_hdr": 540}, "any"),
        "qform-sform-codes-bogus": ({"qform_code": 99, "sform_code": -7}, "any"),
        "qform-sform-off": ({"qform_code": 0, "sform_code": 0}, "any"),
    }
    quick = {"dim0-eight", "vox_offset-negative", "magic-bad"}
    for name, (changes, expect) in mutations.items():
        b.file(
            "nifti",
            f"{name}.nii",
            nifti_patch(raw, **changes),
            expect=expect,
            box=BOX["vol"],
            quick=name in quick,
        )
    gz_names = ("vox_offset-negative", "dim1-negative", "datatype-bogus", "dim-larger-than-data")
    for name in gz_names:
        changes, expect = mutations[name]
        b.file("nifti", f"{name}.nii.gz", gz(nifti_patch(raw, **changes)), expect=expect, box=BOX["vol"])
    b.file(
        "nifti",
        "extension-huge-esize.nii",
        raw[:348] + b"\1\0\0\0" + struct.pack("<ii", 2**31 - 1, 4) + raw[360:],
        expect="any",
        box=BOX["vol"],
    )
    b.file("nifti", "nifti-as-png.png", raw, dims=2, box=BOX["png"])
    b.file("nifti", "gzip-of-garbage.nii.gz", gz(bytes(range(256)) * 64), box=BOX["vol"])
    b.file("nifti", "gzip-two-members.nii.gz", gz(raw[:1000]) + gz(raw[1000:]), expect="any", box=BOX["vol"])
    b.file("nifti", "gzip-trailing-garbage.nii.gz", gz(raw) + b"\0garbage" * 16, expect="any", box=BOX["vol"])
    b.file("nifti", "not-gzip.nii.gz", raw, expect="any", box=BOX["vol"])
    b.file("nifti", f"{PHI}.nii.gz", b.seeds.nii_gz.read_bytes(), expect="accept", box=BOX["vol"], quick=True)


def _text_header(header: str, key: str, value: str | None, sep: str) -> str:
    """``key<sep>value`` set (added when missing; removed when value is None) in a text header."""
    pattern = re.compile(rf"^{re.escape(key)}{re.escape(sep)}.*$", re.MULTILINE)
    line = f"{key}{sep}{value}"
    if value is None:
        return pattern.sub("", header).replace("\n\n\n", "\n\n")
    if pattern.search(header):
        return pattern.sub(lambda _m: line, header)
    if sep == ": ":  # NRRD: before the blank line ending the header
        return header[:-1] + line + "\n\n"
    return header.replace("ElementDataFile", line + "\nElementDataFile")


def nrrd_with(b: Builder, **fields: str | None) -> bytes:
    header, data = b.seeds.header_and_data(b.seeds.nrrd)
    for key, value in fields.items():
        header = _text_header(header, key.replace("_", " "), value, ": ")
    return header.encode("latin-1") + data


def mha_with(b: Builder, data: bytes | None = None, **fields: str | None) -> bytes:
    header, seed_data = b.seeds.header_and_data(b.seeds.mha)
    for key, value in fields.items():
        header = _text_header(header, key, value, " = ")
    return header.encode("latin-1") + (seed_data if data is None else data)


def _nrrd_mha(b: Builder) -> None:
    nrrd = {
        "type-bogus": {"type": "quaternion"},
        "encoding-bogus": {"encoding": "rot13"},
        "encoding-gzip-of-raw": {"encoding": "gzip"},
        "dimension-mismatch": {"dimension": "4"},
        "dimension-zero": {"dimension": "0"},
        "sizes-zero": {"sizes": "0 52 38"},
        "sizes-negative": {"sizes": "-36 52 38"},
        "sizes-words": {"sizes": "many many many"},
        "sizes-too-many": {"sizes": "36 52 38 2"},
        "endian-missing": {"endian": None},
        "byteskip-negative": {"byte_skip": "-5"},
        "byteskip-huge": {"byte_skip": "99999999999"},
        "lineskip-huge": {"line_skip": "99999999"},
        "space-bogus": {"space": "left-up-sideways"},
        "kinds-bogus": {"kinds": "RGBA-color domain domain"},
        "magic-only": None,
    }
    for name, fields in nrrd.items():
        data = b"NRRD0004\n" if fields is None else nrrd_with(b, **fields)
        expect = "any" if name == "encoding-gzip-of-raw" else "refuse"  # zlib reads plain data through
        quick = name in ("sizes-negative", "encoding-bogus")
        b.file("nrrd", f"{name}.nrrd", data, expect=expect, box=BOX["vol"], quick=quick)
    detached = nrrd_with(b, data_file="missing.raw").split(b"\n\n")[0] + b"\n\n"
    b.file("nrrd", "nhdr-detached-missing.nhdr", detached, box=BOX["vol"])
    mha = {
        "ndims-zero": {"NDims": "0"},
        "ndims-ten": {"NDims": "10"},
        "dimsize-zero": {"DimSize": "0 52 38"},
        "dimsize-negative": {"DimSize": "36 -52 38"},
        "dimsize-words": {"DimSize": "a b c"},
        "elementtype-bogus": {"ElementType": "MET_QUATERNION"},
        "elementtype-missing": {"ElementType": None},
        "channels-huge": {"ElementNumberOfChannels": "65535"},
        "compressed-raw": {"CompressedData": "True"},
        "compressed-size-lie": {"CompressedData": "True", "CompressedDataSize": "3"},
        "headersize-negative": {"HeaderSize": "-100"},
        "byteorder-msb": {"BinaryDataByteOrderMSB": "True"},
        "datafile-pattern": {"ElementDataFile": "slice%03d.raw 1 38 1"},
        "datafile-missing": {"ElementDataFile": "missing.raw"},
    }
    for name, fields in mha.items():
        b.file(
            "mha",
            f"{name}.mha",
            mha_with(b, **fields),
            box=BOX["vol"],
            expect="any" if name in ("byteorder-msb", "headersize-negative") else "refuse",  # -1: data at end
            quick=name in ("ndims-ten", "compressed-raw"),
        )


def _pictures(b: Builder) -> None:
    png = b.seeds.png.read_bytes()
    idat = zero_rows_idat(64, 64)
    cases = {
        "width-zero": png_file(0, 64, idat),
        "height-zero": png_file(64, 0, idat),
        "depth-three": png_file(64, 64, idat, depth=3),
        "colour-type-five": png_file(64, 64, idat, colour=5),
        "interlace-two": png_file(64, 64, idat, interlace=2),
        "idat-garbage": png_file(64, 64, b"\x78\x9c" + bytes(range(200))),
        "no-idat": b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
        + png_chunk(b"IEND", b""),
        "ihdr-bad-crc": png[:29] + b"\xde\xad\xbe\xef" + png[33:],
        "idat-short": png_file(64, 64, zero_rows_idat(64, 8)),
        "signature-only": b"\x89PNG\r\n\x1a\n",
        "random-bytes": bytes(b.rng.randrange(256) for _ in range(4096)),
    }
    anys = {
        "ztxt-bomb": png_file(
            64, 64, idat, extra=[png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(64 << 20), 9))]
        ),
        "text-huge": png_file(64, 64, idat, extra=[png_chunk(b"tEXt", b"k\0" + b"a" * (4 << 20))]),
        "iccp-bomb": png_file(
            64, 64, idat, extra=[png_chunk(b"iCCP", b"p\0\0" + zlib.compress(bytes(64 << 20), 9))]
        ),
        "phi-text-chunk": png_file(
            64, 64, idat, extra=[png_chunk(b"tEXt", f"PatientName\0{FAKE_NAME}".encode())]
        ),
        "sixteen-bit": png_file(64, 64, zero_rows_idat(64, 64, 2), depth=16),
        "palette-missing-plte": png_file(64, 64, idat, colour=3),
        "idat-bad-crc": png[: -12 - 4] + b"\0\0\0\0" + png[-12:],
        "no-iend": png[:-12],
    }
    for name, data in {**cases, **anys}.items():
        b.file(
            "png",
            f"{name}.png",
            data,
            expect="refuse" if name in cases else "any",
            dims=2,
            box=BOX["png"],
            quick=name in ("depth-three", "ztxt-bomb"),
        )

    jpg = b.seeds.jpg.read_bytes()
    sof = next(m.start() for m in re.finditer(rb"\xff[\xc0\xc1\xc2]", jpg))

    def with_size(height: int, width: int) -> bytes:
        data = bytearray(jpg)
        struct.pack_into(">HH", data, sof + 5, height, width)
        return bytes(data)

    def with_components(count: int) -> bytes:
        data = bytearray(jpg)
        data[sof + 9] = count
        return bytes(data)

    dht = jpg.index(b"\xff\xc4")
    jpegs = {
        "size-zero": (with_size(0, 0), "refuse"),
        "size-65500": (with_size(65500, 65500), "refuse"),
        "size-10000": (with_size(10000, 10000), "refuse"),
        "components-zero": (with_components(0), "refuse"),
        "components-four": (with_components(4), "refuse"),
        "no-soi": (jpg[2:], "refuse"),
        "dht-garbage": (
            jpg[: dht + 4] + bytes(b.rng.randrange(256) for _ in range(40)) + jpg[dht + 44 :],
            "any",
        ),
        "scan-zeroed": (jpg[: len(jpg) // 2] + bytes(len(jpg) // 2 - 2) + b"\xff\xd9", "any"),
        "trailing-garbage": (jpg + bytes(range(256)) * 8, "any"),
        "png-named-jpg": (b.seeds.png.read_bytes(), "any"),
        "random-bytes": (bytes(b.rng.randrange(256) for _ in range(4096)), "refuse"),
        "jpeg-named-nii": (jpg, "refuse"),
    }
    for name, (data, expect) in jpegs.items():
        suffix = ".nii.gz" if name == "jpeg-named-nii" else ".jpg"
        b.file(
            "jpeg",
            f"{name}{suffix}",
            data,
            expect=expect,
            dims=2,
            box=BOX["jpg"],
            quick=name in ("size-65500", "no-soi"),
        )


def _dicom(b: Builder) -> None:
    s = b.seeds
    base = b.folder("dicom")

    def series(name: str, slices=None, **overrides):
        folder = base / name
        paths = write_series(folder, slices or s.ct_slices, **overrides)
        return folder, paths

    def add(name: str, folder: Path, expect: str = "refuse", quick: bool = False, note: str = "") -> None:
        upload = zip_folder(folder, base / f"{name}.zip", f"{PHI}/" if quick else "")
        b.add(Case("dicom", name, folder, expect, 3, BOX["dcm"], upload=upload, quick=quick, note=note))

    folder, paths = series("missing-position")
    import pydicom

    def edit(path: Path, **changes) -> None:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)

    edit(paths[3], ImagePositionPatient=None)
    add("missing-position", folder, quick=True, note="one slice without ImagePositionPatient")
    folder, paths = series("gap")
    paths[4].unlink()
    add("gap", folder, quick=True, note="slice 5 of 8 missing")
    folder, paths = series("duplicate-position")
    edit(paths[5], ImagePositionPatient=[-150.0, -150.0, 100.0 + 4 * 3.0])
    add("duplicate-position", folder, note="slices 5 and 6 at one position")
    for label, text in [
        ("zero", b"0.0\\0.0"),
        ("nan", b"NaN\\NaN"),
        ("inf", b"inf\\inf"),
        ("negative", b"-3.\\-3."),
    ]:
        folder, paths = series(f"pixelspacing-{label}", PixelSpacing=[9.9, 9.9])
        for path in paths:
            patch_bytes(path, b"9.9\\9.9", text)
        add(f"pixelspacing-{label}", folder, quick=label == "nan")
    folder, paths = series("position-nan", ImagePositionPatient=[-150.0, -150.0, 777.77])
    for index, path in enumerate(paths):
        patch_bytes(path, b"777.77", f"{100 + 3 * index:06.2f}".encode() if index != 2 else b"NaN   ")
    add("position-nan", folder)
    folder, paths = series("orientation-zero", ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
    add("orientation-zero", folder)
    folder, paths = series("orientation-parallel", ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    add("orientation-parallel", folder)
    folder, paths = series("truncated-slice")
    paths[3].write_bytes(paths[3].read_bytes()[: paths[3].stat().st_size // 2])
    add("truncated-slice", folder, quick=True)
    folder, paths = series("garbage-slice")
    paths[3].write_bytes(bytes(b.rng.randrange(256) for _ in range(paths[3].stat().st_size)))
    add("garbage-slice", folder, note="one slice replaced by random bytes (a gap once it is skipped)")
    folder, paths = series("unreadable-slice-syntax")
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(paths[3])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 declared, garbage codestream inside
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(b.rng.randrange(256) for _ in range(600))])
    ds.save_as(paths[3], enforce_file_format=True)
    add("unreadable-slice-syntax", folder)
    folder, paths = series("unreadable-slice-mode")
    paths[3].chmod(0)
    add("unreadable-slice-mode", folder, expect="any", note="mode 000 (root still reads it)")
    folder, paths = series("size-mismatch")
    edit(paths[2], Rows=50, Columns=61, PixelData=np.zeros((50, 61), "<i2").tobytes())
    add("size-mismatch", folder)
    folder, paths = series("pixeldata-short")
    edit(paths[2], PixelData=b"\0" * 100)
    add("pixeldata-short", folder)
    folder, paths = series("bits-allocated-zero")
    edit(paths[0], BitsAllocated=0)
    add("bits-allocated-zero", folder)
    folder, paths = series("rescale-slope-nan", RescaleSlope=9.9)
    for path in paths:
        patch_bytes(path, b"9.9", b"NaN")
    add("rescale-slope-nan", folder, expect="any", note="read with slope 1 is fine, NaN pixels are not")
    folder, paths = series("mixed-series")
    edit(paths[0], SeriesInstanceUID=f"{FAKE_UID}.9")
    add("mixed-series", folder, expect="any")
    folder, paths = series("single-slice", slices=s.ct_slices[:1])
    b.add(Case("dicom", "single-slice", folder, "any", 3, "14,16,80,76", upload=paths[0]))
    paths[0].with_name("cut.dcm").write_bytes(paths[0].read_bytes()[:700])
    b.add(Case("dicom", "truncated-single-file", paths[0].with_name("cut.dcm"), "refuse", 2, "14,16,80,76"))
    empty = base / "empty-folder"
    empty.mkdir(exist_ok=True)
    b.add(Case("dicom", "empty-folder", empty, box=BOX["dcm"]))
    junk = base / "non-dicom-folder"
    junk.mkdir(exist_ok=True)
    for index in range(5):
        (junk / f"{index}.dcm").write_bytes(bytes(b.rng.randrange(256) for _ in range(512)))
    add("non-dicom-folder", junk)
    nested = base / "subfolder-only"
    shutil.copytree(s.dicom, nested / "deeper", dirs_exist_ok=True)
    b.add(Case("dicom", "subfolder-only", nested, "any", 3, BOX["dcm"]))
    link_folder = base / "symlink-slice"
    write_series(link_folder, s.ct_slices)
    (link_folder / "slice_003.dcm").unlink()
    (link_folder / "slice_003.dcm").symlink_to(PASSWD)
    b.add(Case("dicom", "symlink-slice", link_folder, "refuse", 3, BOX["dcm"], external=PASSWD))


def _zips(b: Builder, quick: bool) -> None:
    base = b.folder("zip")
    series = sorted(b.seeds.dicom.iterdir())

    def server_zip(name: str, data: bytes, expect: str = "refuse", quick_case=False, note="") -> None:
        path = base / name
        path.write_bytes(data)
        b.add(
            Case("zip", name, path, expect, 3, BOX["dcm"], quick=quick_case, note=note, cli_expect="refuse")
        )

    def build(entries: list[tuple[str | zipfile.ZipInfo, bytes]], method=zipfile.ZIP_DEFLATED) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", method) as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are meant
            for entry, content in entries:
                archive.writestr(entry, content)
        return buffer.getvalue()

    good = [(f"{i:03d}.dcm", p.read_bytes()) for i, p in enumerate(series)]
    bomb = write_zip_bomb(base / f"bomb-1GiB-{PHI}.zip", GIB + (64 << 20), f"{FAKE_NAME}/{FAKE_UID}/bomb.dcm")
    b.add(Case("zip", bomb.name, bomb, "refuse", 3, BOX["dcm"], quick=True, note="1 MB zip, 1.06 GiB entry"))
    lying = write_zip_bomb(base / "lying-size.zip", 200 << 20, "lying.dcm")
    lying.write_bytes(patch_zip_headers(lying.read_bytes(), size=1000))
    b.add(
        Case("zip", lying.name, lying, "refuse", 3, BOX["dcm"], note="headers say 1000 bytes, 200 MiB inside")
    )
    many = 2000 if quick else 20000
    server_zip(
        f"many-entries-{many}.zip", build([(f"e{i:05d}.dcm", b"x") for i in range(many)]), "refuse", True
    )
    server_zip("nested.zip", build([("inner.zip", build(good))]), "refuse")
    server_zip(
        "traversal.zip",
        build([(f"../../{ESCAPE_MARK}_rel{i}.dcm", c) for i, (_, c) in enumerate(good)]),
        "any",
        True,
        "names like ../../x: must not be written outside the session folder",
    )
    deep = "../" * 12 + f"tmp/{ESCAPE_MARK}_deep.dcm"
    server_zip("traversal-deep.zip", build([(deep, good[0][1]), *good]), "any")
    server_zip(
        "absolute-names.zip",
        build([(f"/tmp/{ESCAPE_MARK}_abs{i}.dcm", c) for i, (_, c) in enumerate(good)]),
        "any",
        True,
    )
    link = zipfile.ZipInfo(f"{ESCAPE_MARK}_link.dcm")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    server_zip(
        "symlink-entry.zip", build([(link, PASSWD.encode()), *good[:3]]), "any", True, "must not follow"
    )
    server_zip("symlink-only.zip", build([(link, PASSWD.encode())]), "refuse")
    server_zip("encrypted-flag.zip", patch_zip_headers(build(good), flags=1), "refuse", True)
    for method in ("bzip2", "lzma"):
        kind = zipfile.ZIP_BZIP2 if method == "bzip2" else zipfile.ZIP_LZMA
        server_zip(f"method-{method}.zip", build(good, kind), "any")
    server_zip("method-patched-99.zip", patch_zip_headers(build(good), method=99), "refuse", True)
    server_zip("method-patched-7.zip", patch_zip_headers(build(good), method=7), "refuse")
    server_zip("crc-wrong.zip", build(good).replace(b"\x00\x00\x02\x00", b"\x00\x00\x02\x01", 1), "any")
    phi_names = [(f"{FAKE_NAME}/{FAKE_PATIENT_ID}/{FAKE_UID}.{i}.dcm", c) for i, (_, c) in enumerate(good)]
    server_zip(f"phi-entry-names-{PHI}.zip", build(phi_names), "accept", True)
    server_zip("duplicate-names.zip", build([("same.dcm", c) for _, c in good]), "any")
    server_zip("empty.zip", build([]), "refuse")
    server_zip("directories-only.zip", build([("a/", b""), ("a/b/", b"")]), "refuse")
    server_zip("not-a-zip.zip", bytes(b.rng.randrange(256) for _ in range(2048)), "refuse")
    server_zip("long-entry-name.zip", build([("n" * 60000 + ".dcm", good[0][1])]), "any")
    valid = build(good)
    central = valid.index(b"PK\x01\x02")
    server_zip("local-name-mismatch.zip", valid[:30] + b"X" + valid[31:central] + valid[central:], "refuse")
    server_zip("zip-of-nifti.zip", build([("image.nii.gz", b.seeds.nii_gz.read_bytes())]), "refuse")


def _declared(b: Builder, quick: bool) -> None:
    folder = b.folder("declared-size")
    header = nifti_header((1000, 1000, 1000), datatype=4, bitpix=16)
    b.file("declared-size", "nii-gz-1000cubed-header-only.nii.gz", gz(header), box=BOX["vol"], quick=True)
    b.file(
        "declared-size",
        "nii-32767cubed.nii",
        nifti_header((32767, 32767, 32767)) + bytes(4096),
        box=BOX["vol"],
    )
    if not quick:
        path = gzip_zeros_after(
            nifti_header((1000, 1000, 1000)), 1000**3, folder / "nii-gz-1000cubed-zeros.nii.gz"
        )
        b.add(
            Case(
                "declared-size",
                path.name,
                path,
                "refuse",
                3,
                BOX["vol"],
                cli=False,
                note="a real 1 GB volume in a 1 MB upload: over the server's budget",
            )
        )
    png100 = png_file(10000, 10000, zero_rows_idat(10000, 10000))
    b.file(
        "declared-size",
        "png-100-megapixel.png",
        png100,
        expect="any",
        dims=2,
        box=BOX["png"],
        quick=True,
        note="CLI may process it; the server must refuse it from its header (budget)",
    )
    b.file(
        "declared-size",
        "png-65535-square-header.png",
        png_file(65535, 65535, zero_rows_idat(64, 4)),
        dims=2,
        box=BOX["png"],
    )
    b.file(
        "declared-size",
        "png-rgb-30000x30000.png",
        png_file(30000, 30000, zero_rows_idat(30000, 2, 3), colour=2),
        dims=2,
        box=BOX["png"],
    )
    b.file(
        "declared-size",
        "nrrd-1000cubed-gzip.nrrd",
        nrrd_with(b, sizes="1000 1000 1000", encoding="gzip").split(b"\n\n")[0] + b"\n\n" + gz(bytes(1000)),
        box=BOX["vol"],
        quick=True,
    )
    b.file(
        "declared-size",
        "mha-1000cubed-compressed.mha",
        mha_with(b, zlib.compress(bytes(1000)), DimSize="1000 1000 1000", CompressedData="True"),
        box=BOX["vol"],
    )
    b.file(
        "declared-size",
        "mha-1000cubed-raw.mha",
        mha_with(b, bytes(1000), DimSize="1000 1000 1000"),
        box=BOX["vol"],
    )
    rows = folder / "dicom-rows-65535"
    write_series(rows, b.seeds.ct_slices[:2], Rows=65535, Columns=65535)
    b.add(
        Case(
            "declared-size",
            "dicom-rows-65535",
            rows,
            "refuse",
            3,
            BOX["dcm"],
            upload=zip_folder(rows, folder / "dicom-rows-65535.zip"),
        )
    )
    frames = folder / "dicom-frames-100000"
    write_series(frames, b.seeds.ct_slices[:1], NumberOfFrames=100000)
    b.add(
        Case(
            "declared-size",
            "dicom-frames-100000",
            frames,
            "refuse",
            3,
            BOX["dcm"],
            upload=zip_folder(frames, folder / "dicom-frames-100000.zip"),
        )
    )


def _external(b: Builder) -> None:
    """Headers naming a data file outside the upload: reading it would leak that file's bytes as pixels."""
    size = Path(PASSWD).stat().st_size
    width = 32
    height = max(2, size // width)
    mha2d = {
        "NDims": "2",
        "DimSize": f"{width} {height}",
        "ElementType": "MET_UCHAR",
        "ElementSpacing": "1 1",
        "Offset": "0 0",
        "TransformMatrix": "1 0 0 1",
        "CenterOfRotation": "0 0",
        "ElementNumberOfChannels": None,
        "AnatomicalOrientation": "RA",
    }
    cases = [
        ("mha-passwd.mha", mha_with(b, b"", **mha2d, ElementDataFile=PASSWD), PASSWD, True),
        (
            "mha-passwd-relative.mha",
            mha_with(b, b"", **mha2d, ElementDataFile="../" * 12 + "etc/passwd"),
            PASSWD,
            False,
        ),
        (
            "mha-environ.mha",
            mha_with(b, b"", **{**mha2d, "DimSize": "16 16"}, ElementDataFile=ENVIRON),
            ENVIRON,
            True,
        ),
        (
            "mha-list-passwd.mha",
            mha_with(b, f"{PASSWD}\n".encode(), **{**mha2d, "NDims": "2"}, ElementDataFile="LIST"),
            PASSWD,
            False,
        ),
        (
            "mha-dev-zero-1000cubed.mha",
            mha_with(b, b"", DimSize="1000 1000 1000", ElementType="MET_UCHAR", ElementDataFile="/dev/zero"),
            "/dev/zero",
            False,
        ),
        ("nrrd-passwd.nrrd", _nrrd_external(b, PASSWD, width, height, "data file"), PASSWD, True),
        ("nrrd-datafile-environ.nrrd", _nrrd_external(b, ENVIRON, 16, 16, "datafile"), ENVIRON, False),
        (
            "nrrd-list-passwd.nrrd",
            _nrrd_external(b, "LIST", width, height, "data file") + PASSWD.encode() + b"\n",
            PASSWD,
            False,
        ),
        ("nhdr-passwd.nhdr", _nrrd_external(b, PASSWD, width, height, "data file"), PASSWD, False),
    ]
    for name, data, target, quick in cases:
        b.file("external-data", name, data, box="2,2,20,20", dims=2, external=target, quick=quick)


def _nrrd_external(b: Builder, target: str, width: int, height: int, key: str) -> bytes:
    header = (
        f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {width} {height}\nencoding: raw\n"
        f"space: left-posterior-superior\n{key}: {target}\n\n"
    )
    return header.replace("space: left-posterior-superior\n", "").encode()


def _truncated(b: Builder) -> None:
    s = b.seeds
    for seed, dims, box in [
        (s.nii, 3, BOX["vol"]),
        (s.nii_gz, 3, BOX["vol"]),
        (s.nrrd, 3, BOX["vol"]),
        (s.mha, 3, BOX["vol"]),
        (s.png, 2, BOX["png"]),
        (s.jpg, 2, BOX["jpg"]),
    ]:
        raw = seed.read_bytes()
        n = len(raw)
        for offset in sorted({0, 1, 16, 200, 351, n // 2, n - 64, n - 1}):
            tail = n - offset
            picture_end = seed in (s.png, s.jpg) and tail <= 64  # only the end markers are lost
            gz_end = seed is s.nii_gz and tail <= 8  # only the gzip trailer is lost
            name = f"{seed.name.replace('.', '-')}-at-{offset}{''.join(seed.suffixes)}"
            b.file(
                "truncated",
                name,
                raw[:offset],
                expect="any" if picture_end or gz_end else "refuse",
                dims=dims,
                box=box,
                quick=offset == n // 2
                and seed in (s.nii, s.png, s.nii_gz)
                or (offset == 351 and seed is s.nii),
            )
    folder = b.folder("truncated") / "series-zip"
    folder.mkdir(exist_ok=True)
    data = zip_folder(s.dicom, folder / "full.zip").read_bytes()
    for offset in (30, len(data) // 2, len(data) - 10):
        path = folder / f"series-at-{offset}.zip"
        path.write_bytes(data[:offset])
        b.add(Case("truncated", path.name, path, "refuse", 3, BOX["dcm"], cli=False, quick=offset == 30))


def _byteflips(b: Builder, per_seed: int) -> None:
    s = b.seeds
    seeds = [
        (s.nii, 3, BOX["vol"], None),
        (s.nii_gz, 3, BOX["vol"], None),
        (s.nrrd, 3, BOX["vol"], None),
        (s.mha, 3, BOX["vol"], None),
        (s.png, 2, BOX["png"], None),
        (s.jpg, 2, BOX["jpg"], None),
        (s.nii, 3, BOX["vol"], 352),
        (s.nrrd, 3, BOX["vol"], 300),
        (s.mha, 3, BOX["vol"], 400),
    ]
    for seed, dims, box, header_only in seeds:
        raw = seed.read_bytes()
        span = header_only or len(raw)
        for index in range(per_seed):
            rng = random.Random(f"{seed.name}-{header_only}-{index}")
            data = bytearray(raw)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(span)] ^= 1 << rng.randrange(8)
            kind = "header" if header_only else "any"
            name = f"{seed.name.split('.')[0]}-{kind}-{index}{''.join(seed.suffixes)}"
            b.file(
                "byteflip",
                name,
                bytes(data),
                expect="any",
                dims=dims,
                box=box,
                quick=index == 0 and seed in (s.nii, s.jpg) and not header_only,
            )
    folder = b.folder("byteflip")
    for index in range(2 if per_seed <= 2 else 6):
        rng = random.Random(f"dicom-{index}")
        series = folder / f"series-{index}"
        paths = write_series(series, s.ct_slices)
        victim = paths[rng.randrange(len(paths))]
        data = bytearray(victim.read_bytes())
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(132, 800)] ^= 1 << rng.randrange(8)  # the tags, not the pixels
        victim.write_bytes(bytes(data))
        b.add(
            Case(
                "byteflip",
                series.name,
                series,
                "any",
                3,
                BOX["dcm"],
                upload=zip_folder(series, folder / f"{series.name}.zip"),
                quick=index == 0,
            )
        )


def _geometry(b: Builder) -> None:
    raw = b.seeds.nii.read_bytes()
    nan, inf = float("nan"), float("inf")
    nifti = {
        "pixdim-nan": ({"pixdim": [None, nan]}, "refuse"),
        "pixdim-inf": ({"pixdim": [None, None, inf]}, "refuse"),
        "pixdim-zero": ({"pixdim": [None, None, None, 0.0]}, "refuse"),
        "pixdim-negative": ({"pixdim": [None, -1.0]}, "any"),
        "pixdim-tiny": ({"pixdim": [None, 1e-30, 1e-30, 1e-30]}, "any"),
        "pixdim-huge": ({"pixdim": [None, 1e30, 1e30, 1e30]}, "any"),
        "qfac-nan": ({"pixdim": [nan]}, "any"),
        "quatern-nan": ({"qform_code": 1, "sform_code": 0, "quatern": [nan, nan, nan]}, "refuse"),
        "qoffset-inf": ({"qform_code": 1, "sform_code": 0, "qoffset": [inf, 0.0, -inf]}, "refuse"),
        "srow-nan": ({"sform_code": 1, "srow_x": [nan, 0.0, 0.0, 0.0]}, "refuse"),
        "srow-inf-offset": ({"sform_code": 1, "srow_y": [0.0, 1.0, 0.0, inf]}, "refuse"),
        "sform-singular": (
            {"sform_code": 1, "qform_code": 0, "srow_x": [0.0] * 4, "srow_y": [0.0] * 4, "srow_z": [0.0] * 4},
            "any",
        ),
    }
    for name, (changes, expect) in nifti.items():
        b.file(
            "geometry",
            f"nifti-{name}.nii",
            nifti_patch(raw, **changes),
            expect=expect,
            box=BOX["vol"],
            quick=name == "pixdim-nan",
        )
    b.file(
        "geometry",
        "nifti-pixdim-nan.nii.gz",
        gz(nifti_patch(raw, pixdim=[None, nan, nan, nan])),
        box=BOX["vol"],
    )
    nrrd = {
        "spacings-nan": {
            "spacings": "nan nan nan",
            "space_directions": None,
            "space": None,
            "space_origin": None,
        },
        "directions-nan": {"space_directions": "(nan,0,0) (0,1,0) (0,0,1)"},
        "directions-zero-vector": {"space_directions": "(0,0,0) (0,1,0) (0,0,1)"},
        "directions-parallel": {"space_directions": "(1,0,0) (1,0,0) (0,0,1)"},
        "origin-inf": {"space_origin": "(inf,0,-inf)"},
        "directions-huge": {"space_directions": "(1e308,0,0) (0,1e308,0) (0,0,1e308)"},
    }
    for name, fields in nrrd.items():
        b.file(
            "geometry",
            f"nrrd-{name}.nrrd",
            nrrd_with(b, **fields),
            box=BOX["vol"],
            expect="any" if name == "directions-huge" else "refuse",
            quick=name == "directions-nan",
        )
    mha = {
        "spacing-nan": ({"ElementSpacing": "nan 1 1"}, "refuse"),
        "spacing-zero": ({"ElementSpacing": "0 0 0"}, "refuse"),
        "spacing-negative": ({"ElementSpacing": "-1 -1 -1"}, "any"),
        "spacing-inf": ({"ElementSpacing": "inf 1 1"}, "refuse"),
        "offset-nan": ({"Offset": "nan nan nan"}, "refuse"),
        "matrix-nan": ({"TransformMatrix": "nan 0 0 0 1 0 0 0 1"}, "refuse"),
        "matrix-zero": ({"TransformMatrix": "0 0 0 0 0 0 0 0 0"}, "refuse"),
    }
    for name, (fields, expect) in mha.items():
        b.file(
            "geometry",
            f"mha-{name}.mha",
            mha_with(b, **fields),
            expect=expect,
            box=BOX["vol"],
            quick=name == "spacing-zero",
        )


def _degenerate(b: Builder) -> None:
    folder = b.folder("degenerate")
    shape = (36, 52, 38)  # the hippocampus seed's file shape: BOX["vol"] fits
    volumes = {
        "all-nan": np.full(shape, np.nan, np.float32),
        "all-inf": np.full(shape, np.inf, np.float32),
        "nan-and-inf-mixed": np.where(np.indices(shape).sum(0) % 3 == 0, np.nan, np.inf).astype(np.float32),
        "all-zero": np.zeros(shape, np.int16),
        "constant": np.full(shape, 7, np.uint8),
        "extreme-float32": np.where(np.indices(shape).sum(0) % 2 == 0, 3e38, -3e38).astype(np.float32),
        "extreme-int32": np.where(np.indices(shape).sum(0) % 2 == 0, 2**31 - 1, -(2**31)).astype(np.int32),
        "denormals-float64": np.full(shape, 5e-324, np.float64),
        "bool-like-uint8": (np.indices(shape).sum(0) % 2).astype(np.uint8),
    }
    for name, array in volumes.items():
        path = write_nifti(folder / f"{name}.nii.gz", array)
        b.add(Case("degenerate", name, path, "any", 3, BOX["vol"], quick=name in ("all-nan", "constant")))
    for name, array, box in [
        ("one-voxel", np.zeros((1, 1, 1), np.int16), "0,0,1,1,0"),
        ("one-slice", np.zeros((40, 40, 1), np.int16), "2,2,30,30,0"),
        ("two-voxels", np.zeros((2, 1, 1), np.int16), "0,0,1,1,0"),
        ("thin-line", np.random.default_rng(1).normal(size=(512, 1, 3)).astype(np.float32), "0,0,1,100,1"),
    ]:
        path = write_nifti(folder / f"{name}.nii.gz", array)
        b.add(Case("degenerate", name, path, "any", 3, box, quick=name == "one-voxel"))
    from PIL import Image

    pictures = {
        "png-all-zero": np.zeros((64, 64), np.uint8),
        "png-constant-255": np.full((64, 64), 255, np.uint8),
        "png-16bit-constant": np.full((64, 64), 65535, np.uint16),
        "png-one-pixel": np.zeros((1, 1), np.uint8),
        "png-one-row": np.zeros((1, 300), np.uint8),
        "png-rgba-transparent": np.zeros((64, 64, 4), np.uint8),
    }
    for name, array in pictures.items():
        path = folder / f"{name}.png"
        Image.fromarray(array).save(path)
        b.add(
            Case(
                "degenerate",
                name,
                path,
                "any",
                2,
                "2,2,40,40" if array.shape[0] > 1 else "0,0,1,1",
                quick=name == "png-all-zero",
            )
        )
    path = folder / "jpeg-constant.jpg"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(path)
    b.add(Case("degenerate", path.name, path, "any", 2, "2,2,40,40"))


def _prompts(b: Builder) -> None:
    """CLI prompt cases on the valid seeds (``segment SEED <arguments>``); refused unless marked."""
    vol, png = b.seeds.nii_gz, b.seeds.png
    boxes = {
        "negative": "-5,-5,10,10,14",
        "beyond": "0,0,100000,100000,14",
        "nan": "nan,nan,10,10,14",
        "inf": "inf,0,10,10,14",
        "1e400": "1e400,0,10,10,14",
        "inverted": "31,35,5,5,14",
        "zero-area": "5,5,5,5,14",
        "z-negative": "5,5,31,35,-1",
        "z-beyond": "5,5,31,35,99999",
        "z-1e400": "5,5,31,35,1e400",
        "z-nan": "5,5,31,35,nan",
        "z-fraction": "5,5,31,35,14.5",
        "three-numbers": "1,2,3",
        "six-numbers": "5,5,31,35,14,9",
        "words": "a,b,c,d,e",
        "empty": "",
        "commas": ",,,,",
        "missing-z": "5,5,31,35",
    }
    quick = {"nan", "1e400", "z-beyond"}
    for name, box in boxes.items():
        b.add(
            Case(
                "prompt",
                f"box-{name}",
                vol,
                "any" if name == "z-fraction" else "refuse",
                prompt_args=[f"--box={box}"],
                quick=name in quick,
            )
        )
    points = {
        "negative": ["--point=-1,-1,14"],
        "nan": ["--point=nan,5,14"],
        "1e400": ["--point=1e400,1,14"],
        "bad-suffix": ["--point=5,5,14:maybe"],
        "only-negative": ["--point=10,10,14:neg"],
        "on-other-slices": ["--point=10,10,3", "--point=10,10,20"],
    }
    for name, args in points.items():
        b.add(
            Case(
                "prompt",
                f"point-{name}",
                vol,
                "any" if name == "only-negative" else "refuse",
                prompt_args=args,
                quick=name == "nan",
            )
        )
    huge_boxes = [f"--box=5,5,31,35,{z}" for z in range(30)] * 10
    b.add(
        Case("prompt", "box-300-objects", vol, "any", prompt_args=huge_boxes, note="300 boxes: one mask each")
    )
    b.add(
        Case(
            "prompt",
            "point-2000",
            vol,
            "any",
            prompt_args=[f"--point={5 + i % 25},{5 + i % 30},14" for i in range(2000)],
        )
    )
    others = {
        "3d-on-picture": (png, 2, [f"--box={BOX['png']}", "--3d"], "refuse"),
        "z-on-picture": (png, 2, ["--box=58,69,348,203,3"], "refuse"),
        "text-empty": (vol, 3, ["--text=", "--slice=14"], "refuse"),
        "text-huge": (vol, 3, ["--text=" + "tumour " * 20000, "--slice=14"], "refuse"),
        "text-phi": (vol, 3, [f"--text={FAKE_NAME}", "--slice=14"], "any"),
        "slice-negative": (vol, 3, ["--text=hippocampus", "--slice=-1"], "refuse"),
        "threshold-nan": (vol, 3, ["--text=hippocampus", "--slice=14", "--threshold=nan"], "refuse"),
        "text-with-box": (vol, 3, ["--text=liver", f"--box={BOX['vol']}"], "refuse"),
        "modality-bogus": (vol, 3, [f"--box={BOX['vol']}", "--modality=xray-vision"], "refuse"),
        "output-type-seg-on-file": (vol, 3, [f"--box={BOX['vol']}", "--output-type=dicom_seg"], "refuse"),
        "control-box": (vol, 3, [f"--box={BOX['vol']}"], "accept"),
        "control-picture": (png, 2, [f"--box={BOX['png']}"], "accept"),
    }
    for name, (seed, dims, args, expect) in others.items():
        b.add(
            Case(
                "prompt",
                name,
                seed,
                expect,
                dims,
                prompt_args=args,
                quick=name in ("text-phi", "control-box"),
            )
        )


# ---------------------------------------------------------------------------------------------- HTTP
def http_requests(context: dict[str, Any], quick: bool = False) -> list[Request]:
    """Hostile requests for a running server; ``context``: ``vol_shape`` (z, y, x), ``vol_ijk`` (a voxel
    index of the volume as stored in its file), ``upload`` (bytes of a valid .nii.gz) and ``passwd_mha``
    (bytes of an external-data MHA)."""
    z_count = context["vol_shape"][0]
    reqs: list[Request] = []

    def add(category: str, name: str, method: str, path: str, quick_case: bool = False, **kw) -> None:
        reqs.append(Request(category, name, method, path, quick=quick_case, **kw))

    seg = "/api/images/{vol}/segment"
    ok_box = [5, 5, 31, 35]
    # prompts as JSON: out of range and non-finite numbers (NaN/Infinity are written into the raw JSON text)
    raw_prompts = {
        "box-negative": '{"z": 14, "box": [-50, -50, -10, -10]}',
        "box-beyond": '{"z": 14, "box": [0, 0, 100000, 100000]}',
        "box-nan": '{"z": 14, "box": [NaN, 5, 31, 35]}',
        "box-infinity": '{"z": 14, "box": [5, 5, Infinity, 35]}',
        "box-minus-infinity": '{"z": 14, "box": [-Infinity, 5, 31, 35]}',
        "box-1e400": '{"z": 14, "box": [1e400, 5, 31, 35]}',
        "box-inverted": '{"z": 14, "box": [31, 35, 5, 5]}',
        "box-zero-area": '{"z": 14, "box": [5, 5, 5, 5]}',
        "box-three": '{"z": 14, "box": [5, 5, 31]}',
        "box-million": '{"z": 14, "box": [' + ",".join(["1"] * 1_000_000) + "]}",
        "z-negative": '{"z": -1, "box": [5, 5, 31, 35]}',
        "z-beyond": f'{{"z": {z_count}, "box": [5, 5, 31, 35]}}',
        "z-huge": '{"z": 1000000000000000000000000000000, "box": [5, 5, 31, 35]}',
        "z-1e400": '{"z": 1e400, "box": [5, 5, 31, 35]}',
        "z-nan": '{"z": NaN, "box": [5, 5, 31, 35]}',
        "z-fraction": '{"z": 14.5, "box": [5, 5, 31, 35]}',
        "z-missing": '{"box": [5, 5, 31, 35]}',
        "point-nan": '{"z": 14, "points": [{"x": NaN, "y": 5}]}',
        "point-1e400": '{"z": 14, "points": [{"x": 1e400, "y": -1e400}]}',
        "point-negative": '{"z": 14, "points": [{"x": -3, "y": -3}]}',
        "points-65": '{"z": 14, "points": [' + ",".join(['{"x": 10, "y": 10}'] * 65) + "]}",
        "points-100000": '{"z": 14, "points": [' + ",".join(['{"x": 10, "y": 10}'] * 100000) + "]}",
        "only-negative-point": '{"z": 14, "points": [{"x": 10, "y": 10, "positive": false}]}',
        "nothing": '{"z": 14}',
        "text-empty": '{"z": 14, "text": ""}',
        "text-long": '{"z": 14, "text": "' + "x" * 201 + '"}',
        "text-phi": json.dumps({"z": 14, "text": FAKE_NAME}),
        "text-unknown": '{"z": 14, "text": "flux capacitor"}',
    }
    anys = {"only-negative-point", "text-phi", "text-unknown", "box-inverted"}
    quick_prompts = {"box-nan", "z-huge", "point-1e400", "points-100000", "text-phi"}
    for name, body in raw_prompts.items():
        add(
            "prompt",
            f"segment-{name}",
            "POST",
            seg,
            name in quick_prompts,
            content=body.encode(),
            headers={"content-type": "application/json"},
            expect="any" if name in anys else "4xx",
        )
    for name, body in {
        "box-nan": '{"z": 14, "box": [NaN, 5, 31, 35]}',
        "z-huge": '{"z": 99999999, "box": [5,5,31,35]}',
        "max-slices-zero": '{"z": 14, "box": [5,5,31,35], "max_slices": 0}',
        "max-slices-1e400": '{"z": 14, "box": [5,5,31,35], "max_slices": 1e400}',
        "max-slices-string": '{"z": 14, "box": [5,5,31,35], "max_slices": "all"}',
    }.items():
        add(
            "prompt",
            f"propagate-{name}",
            "POST",
            "/api/images/{vol}/propagate",
            name == "box-nan",
            content=body.encode(),
            headers={"content-type": "application/json"},
        )
    add(
        "prompt",
        "segment-picture-z-3",
        "POST",
        "/api/images/{pic}/segment",
        json={"z": 3, "box": [58, 69, 348, 203]},
    )
    add(
        "prompt",
        "segment-picture-nan",
        "POST",
        "/api/images/{pic}/segment",
        content=b'{"box": [58, NaN, 348, 203]}',
        headers={"content-type": "application/json"},
    )

    # wrong types and malformed JSON
    wrong = {
        "z-string": {"z": "fourteen", "box": ok_box},
        "z-list": {"z": [14], "box": ok_box},
        "box-string": {"z": 14, "box": "5,5,31,35"},
        "box-strings": {"z": 14, "box": ["a", "b", "c", "d"]},
        "box-object": {"z": 14, "box": {"x0": 5}},
        "points-object": {"z": 14, "points": {"x": 1, "y": 2}},
        "point-strings": {"z": 14, "points": [{"x": "left", "y": "top"}]},
        "point-missing-y": {"z": 14, "points": [{"x": 1}]},
        "positive-string": {"z": 14, "points": [{"x": 10, "y": 10, "positive": "maybe"}]},
        "text-number": {"z": 14, "text": 42},
        "overlay-string": {"z": 14, "box": ok_box, "overlay": "yes please"},
        "body-list": [1, 2, 3],
        "body-null": None,
    }
    for name, body in wrong.items():
        add(
            "http",
            f"json-{name}",
            "POST",
            seg,
            name in ("z-string", "body-null"),
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
    for name, body in {
        "truncated": b'{"z": 14, "box": [5, 5,',
        "not-utf8": b'{"z": \xff\xfe}',
        "nested-100000": b"[" * 100000 + b"]" * 100000,
        "empty": b"",
        "text-plain": b"z=14",
    }.items():
        add(
            "http",
            f"body-{name}",
            "POST",
            seg,
            name == "nested-100000",
            content=body,
            headers={"content-type": "application/json" if name != "text-plain" else "text/plain"},
        )

    # slices and results: z out of range, windows
    for name, z, expect in [
        ("negative", "-1", "4xx"),
        ("beyond", str(z_count), "4xx"),
        ("huge", "9" * 30, "4xx"),
        ("1e400", "1e400", "4xx"),
        ("nan", "nan", "4xx"),
        ("word", "middle", "4xx"),
        ("minus-zero", "-0", "any"),
    ]:
        add(
            "http",
            f"slice-z-{name}",
            "GET",
            f"/api/images/{{vol}}/slices/{z}",
            name == "huge",
            expect=expect,
        )
        add(
            "http",
            f"result-z-{name}",
            "GET",
            f"/api/images/{{vol}}/result/{z}",
            name in ("negative", "huge"),
            expect=expect,
        )
    windows = {
        "empty": "",
        "word": "abc",
        "one-number": "40",
        "width-zero": "40,0",
        "width-negative": "40,-400",
        "nan": "nan,nan",
        "inf": "inf,400",
        "1e400": "40,1e400",
        "huge": "1" + "0" * 400 + ",1",
        "long": "4" * 6000,
        "phi": FAKE_NAME,
        "three": "1,2,3",
    }
    for name, window in windows.items():
        expect = "any" if name in ("huge", "empty") else "4xx"
        add(
            "http",
            f"window-{name}",
            "GET",
            "/api/images/{vol}/slices/14",
            name in ("width-zero", "phi"),
            params={"window": window},
            expect=expect,
        )
    add("http", "slice-prefetch-word", "GET", "/api/images/{vol}/slices/14", params={"prefetch": "perhaps"})
    add("http", "picture-result-before-segment", "GET", "/api/images/{pic}/result/0", expect="4xx")

    # ids, routes, methods
    for name, path in {
        "unknown-id": "/api/images/nope",
        "phi-id": f"/api/images/{FAKE_NAME}",
        "uid-id": f"/api/images/{FAKE_UID}",
        "long-id": "/api/images/" + "a" * 10000,
        "traversal-id": "/api/images/..%2F..%2Fetc%2Fpasswd",
        "static-traversal": "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "static-dotdot": "/static/../../../../etc/passwd",
    }.items():
        add("http", f"get-{name}", "GET", path, name == "static-traversal")
    add("http", "put-health", "PUT", "/health", expect="4xx")
    add("http", "open-series-uid-no-pacs", "POST", "/api/images", True, json={"series_uid": FAKE_UID})
    add("http", "store-no-pacs", "POST", "/api/images/{vol}/store", json={"format": "seg", "name": FAKE_NAME})
    add("http", "store-format-bogus", "POST", "/api/images/{vol}/store", json={"format": "exe"})

    # uploads: form mistakes
    nii = context["upload"]
    upload = "/api/images/upload"
    add("http", "upload-no-file", "POST", upload, data={"modality": "ct"})
    add(
        "http",
        "upload-modality-bogus",
        "POST",
        upload,
        files={"file": ("a.nii.gz", nii)},
        data={"modality": "xyz"},
    )
    add(
        "http",
        "upload-modality-phi",
        "POST",
        upload,
        True,
        files={"file": ("a.nii.gz", nii)},
        data={"modality": FAKE_NAME},
    )
    add("http", "upload-no-name", "POST", upload, files={"file": ("", nii)})
    add("http", "upload-no-suffix", "POST", upload, files={"file": ("image", nii)})
    add("http", "upload-exe", "POST", upload, files={"file": ("image.exe", nii)})
    add(
        "http",
        "upload-long-name",
        "POST",
        upload,
        files={"file": ("a" * 5000 + ".nii.gz", nii)},
        expect="any",
    )
    add(
        "http",
        "upload-traversal-name",
        "POST",
        upload,
        files={"file": (f"../../{ESCAPE_MARK}_up.nii.gz", nii)},
        expect="any",
    )
    add("http", "upload-json-body", "POST", upload, json={"file": "x"})
    add("http", "upload-empty-file", "POST", upload, files={"file": ("empty.nii.gz", b"")})

    # MONAI Label: /infer params of the wrong type, non-JSON, result_extension
    i, j, k = context["vol_ijk"]
    infer = "/infer/oncoseg_slice"
    good = {"foreground": [[i, j, k]]}
    infer_params = {
        "not-json": ("this is not json", "4xx"),
        "list": ("[1, 2, 3]", "4xx"),
        "null": ("null", "4xx"),
        "nan": ("NaN", "4xx"),
        "nested-100000": ("[" * 100000 + "]" * 100000, "4xx"),
        "empty-object": ("{}", "4xx"),
        "foreground-string": (json.dumps({"foreground": "abc"}), "4xx"),
        "foreground-int": (json.dumps({"foreground": 5}), "4xx"),
        "foreground-words": (json.dumps({"foreground": [["a", "b", "c"]]}), "4xx"),
        "foreground-nan": ('{"foreground": [[NaN, 1, 1]]}', "4xx"),
        "foreground-1e400": ('{"foreground": [[1e400, 1, 1]]}', "4xx"),
        "foreground-negative": (json.dumps({"foreground": [[-5, -5, -5]]}), "4xx"),
        "foreground-beyond": (json.dumps({"foreground": [[i, j, 100000]]}), "4xx"),
        "foreground-two-coordinates": (json.dumps({"foreground": [[i, j]]}), "4xx"),
        "foreground-20000": (json.dumps({"foreground": [[i, j, k]] * 20000}), "4xx"),
        "background-object": (json.dumps({**good, "background": {"a": 1}}), "4xx"),
        "result-extension-exe": (json.dumps({**good, "result_extension": ".exe"}), "4xx"),
        "result-extension-int": (json.dumps({**good, "result_extension": 5}), "4xx"),
        "result-extension-list": (json.dumps({**good, "result_extension": [".nii"]}), "4xx"),
        "result-extension-traversal": (
            json.dumps({**good, "result_extension": f"/../../{ESCAPE_MARK}.nii.gz"}),
            "4xx",
        ),
        "phi-params": (
            json.dumps(
                {
                    **good,
                    "patient_name": FAKE_NAME,
                    "patient_id": FAKE_PATIENT_ID,
                    "series_uid": FAKE_UID,
                    "label_info": [{"name": FAKE_NAME}],
                }
            ),
            "2xx",
        ),
    }
    for name, (params, expect) in infer_params.items():
        add(
            "http",
            f"infer-{name}",
            "POST",
            infer,
            name
            in (
                "not-json",
                "foreground-nan",
                "result-extension-exe",
                "phi-params",
                "nested-100000",
            ),
            params={"image": "advvol", "output": "json"},
            data={"params": params},
            expect=expect,
        )
    propagate_params = {"max-slices-word": '"many"', "max-slices-1e400": "1e400", "max-slices-negative": "-3"}
    for name, value in propagate_params.items():
        add(
            "http",
            f"infer-3d-{name}",
            "POST",
            "/infer/oncoseg",
            name == "max-slices-word",
            params={"image": "advvol", "output": "json"},
            data={"params": f'{{"foreground": [[{i}, {j}, {k}]], "max_slices": {value}}}'},
            expect="any" if name == "max-slices-negative" else "4xx",
        )
    for name, query in {
        "unknown-image": {"image": "nope"},
        "phi-image": {"image": FAKE_NAME},
        "uid-image": {"image": FAKE_UID},
        "traversal-image": {"image": "../../etc/passwd"},
        "output-bogus": {"image": "advvol", "output": "exe"},
    }.items():
        add(
            "http",
            f"infer-{name}",
            "POST",
            infer,
            name == "uid-image",
            params=query,
            data={"params": json.dumps(good)},
        )
    add(
        "http",
        "infer-unknown-model",
        "POST",
        "/infer/deepedit",
        params={"image": "advvol"},
        data={"params": json.dumps(good)},
    )
    add(
        "http",
        "infer-upload-passwd-mha",
        "POST",
        infer,
        True,
        params={"output": "json"},
        data={"params": json.dumps({"foreground": [[2, 2]]})},
        files={"file": ("x.mha", context["passwd_mha"])},
    )
    add(
        "http",
        "datastore-put-traversal-id",
        "PUT",
        "/datastore/",
        params={"image": f"../../{ESCAPE_MARK}"},
        files={"file": ("x.nii.gz", nii)},
    )
    add(
        "http",
        "datastore-put-phi-id",
        "PUT",
        "/datastore/",
        True,
        params={"image": FAKE_NAME},
        files={"file": ("x.nii.gz", nii)},
    )
    add("http", "datastore-put-exe", "PUT", "/datastore/", files={"file": ("x.exe", nii)})
    add(
        "http",
        "datastore-put-traversal-name",
        "PUT",
        "/datastore/",
        files={"file": (f"../../{ESCAPE_MARK}_ds.nii.gz", nii)},
        expect="any",
    )
    add(
        "http",
        "datastore-get-traversal",
        "GET",
        "/datastore/image",
        params={"image": "../../../../etc/passwd"},
    )
    add(
        "http",
        "datastore-label-traversal-tag",
        "PUT",
        "/datastore/label",
        params={"image": "advvol", "tag": "../../x"},
        files={"label": ("l.nii.gz", nii)},
    )
    add(
        "http",
        "datastore-label-exe",
        "PUT",
        "/datastore/label",
        params={"image": "advvol"},
        files={"label": ("l.exe", nii)},
    )
    add("http", "datastore-output-bogus", "GET", "/datastore/", params={"output": "../../etc"})
    add("http", "datastore-delete-traversal", "DELETE", "/datastore/", params={"id": "../../x"})

    # Host headers (DNS rebinding) and body-size lies
    for name, host, expect in [
        ("evil", "evil.example", "4xx"),
        ("evil-with-port", "evil.example:80", "4xx"),
        ("suffix-trick", "127.0.0.1.evil.example", "4xx"),
        ("health-evil", "evil.example", "any"),
    ]:
        path = "/health" if name.startswith("health") else "/api/images"
        add("http", f"host-{name}", "GET", path, name == "evil", headers={"host": host}, expect=expect)
    add(
        "http",
        "host-evil-upload",
        "POST",
        upload,
        True,
        headers={"host": "evil.example"},
        files={"file": ("a.nii.gz", nii)},
    )

    def raw(name: str, lines: list[str], body: bytes = b"", quick_case: bool = False, expect: str = "4xx"):
        head = "\r\n".join(lines) + "\r\n\r\n"
        add(
            "http",
            name,
            "RAW",
            upload,
            quick_case,
            raw=head.encode("latin-1") + body,
            expect=expect,
            timeout=30,
        )

    post = "POST /api/images/upload HTTP/1.1"
    local = "Host: 127.0.0.1"
    form = "Content-Type: multipart/form-data; boundary=xyz"
    raw("content-length-huge", [post, local, form, "Content-Length: 99999999999999"], b"--xyz\r\n", True)
    raw("content-length-10e30", [post, local, form, "Content-Length: " + "9" * 31], b"--xyz\r\n")
    raw("content-length-negative", [post, local, form, "Content-Length: -1"])
    raw("content-length-word", [post, local, form, "Content-Length: lots"])
    raw(
        "content-length-twice",
        [post, local, form, "Content-Length: 5", "Content-Length: 99999999999"],
        b"hello",
    )
    raw("host-missing", ["GET /api/images HTTP/1.1"])
    raw("host-twice", ["GET /api/images HTTP/1.1", local, "Host: evil.example"])
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))
    raw(
        "chunked-over-limit",
        [post, local, form, "Transfer-Encoding: chunked"],
        chunk * 10 + b"0\r\n\r\n",
        True,
    )
    return [r for r in reqs if r.quick] if quick else reqs


def category_order() -> list[str]:
    return [
        "control",
        "nifti",
        "nrrd",
        "mha",
        "png",
        "jpeg",
        "dicom",
        "zip",
        "declared-size",
        "external-data",
        "truncated",
        "byteflip",
        "geometry",
        "degenerate",
        "prompt",
        "http",
        "auth",
    ]
