"""Header checks made before ITK opens a NIfTI, NRRD or MetaImage file.

Text headers (NRRD, MetaImage) are parsed here so that a header naming another file (``data file:``,
``ElementDataFile``) never reaches ITK unchecked, and every format's declared size, geometry fields and data
length are checked before pixels are allocated.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel
import numpy as np
from nibabel.spatialimages import HeaderDataError

from oncoseg.errors import ImageReadError
from oncoseg.io.limits import ReadLimits, check_declared_size

HEADER_WINDOW = 1 << 20  # a text header must end within the first MiB; data-file fields are searched there
MAX_NIFTI_OFFSET = 1 << 24  # a vox_offset beyond 16 MiB of header extensions is refused as absurd

_DATA_FILE = {
    "nrrd": re.compile(rb"(?i)data\s*file\s*:([^\r\n]*)"),
    "metaimage": re.compile(rb"(?i)element\s*data\s*file\s*[=:]([^\n]*)"),
}
_LOCAL = {"LOCAL", "Local", "local"}
_NRRD_ITEMSIZE = {
    **dict.fromkeys(["signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"], 1),
    **dict.fromkeys(
        ["short", "short int", "signed short", "signed short int", "int16", "int16_t"]
        + ["ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"],
        2,
    ),
    **dict.fromkeys(
        ["int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"], 4
    ),
    **dict.fromkeys(
        ["longlong", "long long", "long long int", "signed long long", "signed long long int", "int64"]
        + ["int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"],
        8,
    ),
    "float": 4,
    "double": 8,
}
_META_ITEMSIZE = {"CHAR": 1, "UCHAR": 1, "ASCII_CHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4}
_META_ITEMSIZE |= {"LONG": 4, "ULONG": 4, "FLOAT": 4, "LONG_LONG": 8, "ULONG_LONG": 8, "DOUBLE": 8}
_NRRD_DOMAIN_KINDS = {"domain", "space", "???", "none"}


@dataclass
class _TextHeader:
    fields: dict[str, str]  # key lower-cased without spaces -> value (first occurrence)
    data_start: int | None  # where attached data starts; None when the header names a data file
    data_file: Path | None = None


def check_text_header(path: Path, fmt: str, limits: ReadLimits) -> None:
    """Check an NRRD (``fmt="nrrd"``) or MetaImage header: data file, declared size, geometry, data length."""
    name = path.name
    with open(path, "rb") as f:
        window = f.read(HEADER_WINDOW)
    header = _nrrd_header(window, name) if fmt == "nrrd" else _meta_header(window, name)
    values = [m.group(1).decode("latin-1").strip() for m in _DATA_FILE[fmt].finditer(window)]
    if len(values) > 1:
        raise ImageReadError(f"{name}: header names its data file {len(values)} times")
    if fmt == "metaimage" and not values:
        raise ImageReadError(f"{name}: cannot be read as metaimage (no ElementDataFile line in its header)")
    if values and not (fmt == "metaimage" and values[0] in _LOCAL):
        header.data_file, header.data_start = _external_file(path, values[0], limits), None
    if fmt == "nrrd":
        _check_nrrd(header, path, limits)
    else:
        _check_meta(header, path, limits)


def _external_file(path: Path, value: str, limits: ReadLimits) -> Path:
    """The data file a detached header names, if allowed: a plain regular file next to the header."""
    if not limits.external_data:
        raise ImageReadError(
            f"{path.name}: header names an external data file; only data inside the file is read here"
        )
    plain = (
        value.isprintable() and value not in ("", ".", "..", "LIST") and not re.search(r"[/\\\s%:]", value)
    )
    target = path.parent / value
    if not plain or target.is_symlink() or not target.is_file():
        raise ImageReadError(
            f"{path.name}: header names a data file that is not a plain file name in its own folder; refused"
        )
    return target


def _nrrd_header(window: bytes, name: str) -> _TextHeader:
    if not window.startswith(b"NRRD000"):
        raise ImageReadError(f"{name}: cannot be read as nrrd (no NRRD magic line)")
    fields: dict[str, str] = {}
    data_start = None
    for match in re.finditer(rb"([^\r\n]*)(\r\n|\r|\n)", window):
        line = match.group(1).decode("latin-1")
        if not line:
            data_start = match.end()
            break
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#") and not value.startswith("="):
            fields.setdefault(_key(key), value.strip())
    if data_start is None and len(window) == HEADER_WINDOW:
        raise ImageReadError(f"{name}: NRRD header does not end within its first {HEADER_WINDOW:,} bytes")
    return _TextHeader(fields, data_start)


def _meta_header(window: bytes, name: str) -> _TextHeader:
    match = _DATA_FILE["metaimage"].search(window)
    if match is None:
        if len(window) == HEADER_WINDOW:
            raise ImageReadError(
                f"{name}: MetaImage header does not end within its first {HEADER_WINDOW:,} bytes"
            )
        return _TextHeader({}, None)
    fields: dict[str, str] = {}
    for line in window[: match.start()].decode("latin-1").split("\n"):
        key, _, value = re.split("([=:])", line, maxsplit=1) if re.search("[=:]", line) else (line, "", "")
        fields.setdefault(_key(key), value.strip())
    newline = window.find(b"\n", match.end())
    return _TextHeader(fields, len(window) if newline < 0 else newline + 1)


def _key(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def _numbers(name: str, field: str, text: str, cast=float) -> list:
    try:
        return [cast(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ImageReadError(f"{name}: header field '{field}' is not a list of numbers") from None


def _finite(name: str, field: str, values, positive: bool = False) -> None:
    values = np.asarray(values, float)
    if not np.all(np.isfinite(values)) or (positive and not np.all(values > 0)):
        shown = " ".join(f"{v:g}" for v in values.ravel())
        need = "finite and > 0" if positive else "finite"
        raise ImageReadError(f"{name}: bad geometry: header field '{field}' is ({shown}), must be {need}")


def _check_nrrd(header: _TextHeader, path: Path, limits: ReadLimits) -> None:
    name, fields = path.name, header.fields
    for needed in ("type", "sizes", "dimension"):
        if needed not in fields:
            raise ImageReadError(f"{name}: cannot be read as nrrd (header has no '{needed}' field)")
    itemsize = _NRRD_ITEMSIZE.get(" ".join(fields["type"].lower().split()))
    if itemsize is None:
        raise ImageReadError(f"{name}: cannot be read as nrrd (unsupported pixel type)")
    sizes = _numbers(name, "sizes", fields["sizes"], int)
    if len(sizes) != _numbers(name, "dimension", fields["dimension"], int)[0]:
        raise ImageReadError(f"{name}: cannot be read as nrrd ('sizes' does not match 'dimension')")
    nbytes = check_declared_size(name, sizes, itemsize, limits)

    range_axes = {
        i for i, kind in enumerate(fields.get("kinds", "").split()) if kind.lower() not in _NRRD_DOMAIN_KINDS
    }
    if "spacedirections" in fields:
        tokens = re.findall(r"\([^)]*\)|\S+", fields["spacedirections"])
        range_axes = {i for i, token in enumerate(tokens) if token.lower() == "none"}
        for token in tokens:
            if token.lower() != "none":
                vector = _numbers(name, "space directions", token.strip("()"))
                _finite(name, "space directions", vector)
                if not vector or math.hypot(*vector) <= 0:
                    raise ImageReadError(
                        f"{name}: bad geometry: header field 'space directions' has a zero vector"
                    )
    if "spacings" in fields:
        spacings = _numbers(name, "spacings", fields["spacings"])
        _finite(name, "spacings", [s for i, s in enumerate(spacings) if i not in range_axes], positive=True)
    if "spaceorigin" in fields:
        _finite(
            name,
            "space origin",
            _numbers(name, "space origin", fields["spaceorigin"].replace("(", " ").replace(")", " ")),
        )

    if fields.get("encoding", "raw").lower() != "raw" or "lineskip" in fields:
        return  # compressed or text data: teem reports a short stream itself
    skip = _numbers(name, "byte skip", fields.get("byteskip", "0"), int)[0]
    _check_data_length(header, path, nbytes, max(skip, 0))


def _check_meta(header: _TextHeader, path: Path, limits: ReadLimits) -> None:
    name, fields = path.name, header.fields
    element_type = fields.get("elementtype", "").upper().removeprefix("MET_").removesuffix("_ARRAY")
    if "dimsize" not in fields or element_type not in _META_ITEMSIZE:
        raise ImageReadError(
            f"{name}: cannot be read as metaimage (header lacks DimSize or a known ElementType)"
        )
    sizes = _numbers(name, "DimSize", fields["dimsize"], int)
    if "ndims" in fields and len(sizes) != _numbers(name, "NDims", fields["ndims"], int)[0]:
        raise ImageReadError(f"{name}: cannot be read as metaimage (DimSize does not match NDims)")
    channels = _numbers(name, "ElementNumberOfChannels", fields.get("elementnumberofchannels", "1"), int)
    nbytes = check_declared_size(name, sizes + channels[:1], _META_ITEMSIZE[element_type], limits)
    for key, field, positive in [
        ("elementspacing", "ElementSpacing", True),
        ("elementsize", "ElementSize", True),
        ("offset", "Offset", False),
        ("position", "Position", False),
        ("origin", "Origin", False),
        ("transformmatrix", "TransformMatrix", False),
        ("rotation", "Rotation", False),
        ("orientation", "Orientation", False),
    ]:
        if key in fields:
            _finite(name, field, _numbers(name, field, fields[key]), positive)
    if (
        fields.get("compresseddata", "false").lower() == "true"
        or fields.get("binarydata", "true").lower() == "false"
    ):
        return  # compressed or text data: metaio reports a short stream itself
    skip = _numbers(name, "HeaderSize", fields.get("headersize", "0"), int)[0] if header.data_file else 0
    _check_data_length(header, path, nbytes, max(skip, 0))


def _check_data_length(header: _TextHeader, path: Path, nbytes: int, skip: int) -> None:
    """Raw data: the file must hold at least the declared bytes after the header (and any skipped bytes)."""
    if header.data_file is not None:
        available = header.data_file.stat().st_size - skip
    elif header.data_start is not None:
        available = path.stat().st_size - header.data_start - skip
    else:
        raise ImageReadError(f"{path.name}: header has no data and names no data file")
    if available < nbytes:
        raise ImageReadError(
            f"{path.name}: data part is shorter than the header declares ({max(available, 0):,} of {nbytes:,} bytes);"
            " truncated file?"
        )


# --- NIfTI --------------------------------------------------------------------------------------------------


def check_nifti_header(path: Path, limits: ReadLimits) -> int:
    """Check a single-file NIfTI-1/2 header (no data read); return where its voxel data ends."""
    name = path.name
    try:
        opener = gzip.open if name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read(540)
        if raw[344:348] == b"n+1\0":
            header, header_size = nibabel.Nifti1Header(binaryblock=raw[:348], check=False), 348
        elif raw[4:12] == b"n+2\0\r\n\x1a\n":
            header, header_size = nibabel.Nifti2Header(binaryblock=raw[:540], check=False), 540
        else:
            raise ImageReadError(f"{name}: cannot be read as nifti (no single-file NIfTI-1/2 header)")
        shape, itemsize = header.get_data_shape(), header.get_data_dtype().itemsize
        offset = float(header["vox_offset"])
        fields = {key: np.asarray(header[key], float) for key in ("pixdim", "srow_x", "srow_y", "srow_z")}
        fields |= {key: np.asarray(header[key], float) for key in ("quatern_b", "quatern_c", "quatern_d")}
        fields |= {key: np.asarray(header[key], float) for key in ("qoffset_x", "qoffset_y", "qoffset_z")}
    except ImageReadError:
        raise
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        zlib.error,
        HeaderDataError,
    ) as exc:
        raise ImageReadError(f"{name}: cannot be read as nifti (corrupt or truncated header)") from exc

    nbytes = check_declared_size(name, shape, itemsize, limits)
    if not (math.isfinite(offset) and header_size <= offset <= MAX_NIFTI_OFFSET):
        raise ImageReadError(f"{name}: NIfTI vox_offset {offset:g} is outside the possible range")
    spatial = min(len(shape), 3)
    _finite(name, "pixdim", fields.pop("pixdim")[1 : 1 + spatial], positive=True)
    for key, values in fields.items():
        _finite(name, key, values)
    return int(offset) + nbytes


def check_nifti_complete(path: Path, data_end: int) -> None:
    """Raise if a NIfTI file ends before ``data_end``: ITK would read the missing voxels as zeros.

    A complete .nii.gz ends with its uncompressed size; only when that differs from ``data_end`` is the
    stream decompressed, and never further than ``data_end``.
    """
    error = ImageReadError(f"{path.name}: NIfTI file is truncated (voxel data missing)")
    if not path.name.lower().endswith(".gz"):
        if path.stat().st_size < data_end:
            raise error
        return
    try:
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if data_end < 2**32 and int.from_bytes(f.read(4), "little") == data_end:
                return
        total = 0
        with gzip.open(path) as f:
            while total < data_end:
                chunk = f.read(min(1 << 24, data_end - total))
                if not chunk:
                    raise error
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise error from exc
