"""Header checks made before ITK opens a NIfTI, NRRD or MetaImage file.

Text headers (NRRD, MetaImage) are parsed here so that a header naming another file (``data file:``,
``ElementDataFile``) never reaches ITK unchecked, and every format's declared size, geometry fields and data
length are checked before pixels are allocated; compressed MetaImage data is inflated (capped) to check it holds
exactly the declared bytes. The PNG and JPEG checks at the end refuse image data that ends before the declared
picture, which Pillow would otherwise pad.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oncoseg.errors import ImageReadError
from oncoseg.io.limits import ReadLimits, check_declared_size

HEADER_WINDOW = 1 << 20  # a text header must end within the first MiB; data-file fields are searched there
MAX_NIFTI_OFFSET = 1 << 24  # a vox_offset beyond 16 MiB of header extensions is refused as absurd
INFLATE_CHUNK = 1 << 24  # compressed data is checked by inflating at most 16 MiB at a time

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


def _integer(name: str, field: str, text: str) -> int:
    """A header field holding exactly one integer."""
    if not re.fullmatch(r"\s*[-+]?\d+\s*", text):
        raise ImageReadError(f"{name}: header field '{field}' is not one integer")
    return int(text)


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

    _check_nrrd_skips(header, path, nbytes, fields.get("encoding", "raw").lower())


def _check_nrrd_skips(header: _TextHeader, path: Path, nbytes: int, encoding: str) -> None:
    """``line skip`` and ``byte skip`` must be integers that stay inside the data file; ``byte skip: -1`` (the data
    is the file's last bytes) is the only negative value and only for raw data. Raw data must then be complete."""
    name, fields = path.name, header.fields
    line_skip = _integer(name, "line skip", fields.get("lineskip", "0"))
    byte_skip = _integer(name, "byte skip", fields.get("byteskip", "0"))
    if line_skip < 0:
        raise ImageReadError(f"{name}: NRRD 'line skip: {line_skip}' is negative")
    if byte_skip < -1 or (byte_skip == -1 and encoding != "raw"):
        raise ImageReadError(
            f"{name}: NRRD 'byte skip: {byte_skip}' is not allowed (>= 0, or -1 for raw data at the file's end)"
        )
    source, start = _data_source(header, path)
    total = source.stat().st_size
    start = _after_lines(source, start, line_skip, name)
    if byte_skip > total - start:
        raise ImageReadError(f"{name}: NRRD 'byte skip: {byte_skip}' goes beyond the end of the data")
    if encoding == "raw":
        _require_bytes(name, total - start - max(byte_skip, 0), nbytes)


def _after_lines(source: Path, start: int, lines: int, name: str) -> int:
    """Where data starts after skipping ``lines`` newline-ended lines from ``start``; refused past the end."""
    if lines == 0:
        return start
    error = ImageReadError(f"{name}: NRRD 'line skip: {lines}' goes beyond the end of the data")
    if lines > source.stat().st_size - start:
        raise error
    with open(source, "rb") as f:
        f.seek(start)
        while lines:
            block = f.read(1 << 20)
            if not block:
                raise error
            found = block.count(b"\n")
            if found >= lines:
                end = -1
                for _ in range(lines):
                    end = block.index(b"\n", end + 1)
                return start + end + 1
            lines -= found
            start += len(block)
    return start


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
    if fields.get("binarydata", "true").lower() == "false":
        return  # text data: metaio reports a short stream itself
    if fields.get("compresseddata", "false")[:1] in ("T", "t", "1"):  # metaio's test for True
        _check_meta_compressed(header, path, nbytes)
        return
    header_size = _integer(name, "HeaderSize", fields.get("headersize", "0"))
    source, start = _data_source(header, path)
    if header_size > 0:  # metaio seeks there, in the data file or (LOCAL) in this file
        start = header_size
    _require_bytes(name, source.stat().st_size - start, nbytes)


def _check_meta_compressed(header: _TextHeader, path: Path, nbytes: int) -> None:
    """Compressed MetaImage data must inflate to exactly the declared bytes, located as metaio locates it.

    metaio reads ``CompressedDataSize`` bytes from the data start (``HeaderSize`` when > 0); without that field
    (or 0) it reads the whole data file from its first byte, which for ``ElementDataFile = LOCAL`` is the header
    itself: it then prints "Uncompress failed" and returns garbage, so that is refused here.
    """
    name, fields = path.name, header.fields
    header_size = _integer(name, "HeaderSize", fields.get("headersize", "0"))
    size = _integer(name, "CompressedDataSize", fields.get("compresseddatasize", "0"))
    if header_size == -1 or size < 0:
        field = "HeaderSize" if header_size == -1 else "CompressedDataSize"
        raise ImageReadError(
            f"{name}: MetaImage {field} {min(header_size, size)} cannot locate compressed data"
        )
    source, start = _data_source(header, path)
    total = source.stat().st_size
    if size == 0:
        if header.data_file is None:
            raise ImageReadError(
                f"{name}: compressed MetaImage data without CompressedDataSize cannot be located in the file"
            )
        start, size = 0, total
    elif header_size > 0:
        start = header_size
    if size > total - start:
        raise ImageReadError(
            f"{name}: CompressedDataSize {size:,} is more than the {max(total - start, 0):,} bytes present;"
            " truncated file?"
        )
    check_inflates_to(source, start, size, nbytes, name)


def check_inflates_to(source: Path, start: int, size: int, nbytes: int, name: str) -> None:
    """Raise unless the zlib or gzip stream in ``size`` bytes at ``start`` of ``source`` ends there and inflates
    to exactly ``nbytes``. Streamed: at most ``INFLATE_CHUNK`` bytes are produced at once and nothing beyond
    ``nbytes + 1`` is ever inflated."""
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, as metaio's inflateInit2
    produced, left = 0, size
    try:
        with open(source, "rb") as f:
            f.seek(start)
            while left > 0 and not inflater.eof:
                data = f.read(min(INFLATE_CHUNK, left))
                if not data:
                    break
                left -= len(data)
                while data and not inflater.eof:
                    produced += len(inflater.decompress(data, min(INFLATE_CHUNK, nbytes + 1 - produced)))
                    if produced > nbytes:
                        raise ImageReadError(
                            f"{name}: compressed data inflates to more than the declared {nbytes:,} bytes"
                        )
                    data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageReadError(f"{name}: compressed data is not a valid zlib stream ({exc})") from exc
    if not inflater.eof or produced != nbytes:
        raise ImageReadError(
            f"{name}: compressed data ends after {produced:,} of the declared {nbytes:,} bytes; truncated file"
            " or wrong CompressedDataSize?"
        )


def _data_source(header: _TextHeader, path: Path) -> tuple[Path, int]:
    """The file holding the data and where it starts before any skip: a named data file at 0, else this file
    after its header."""
    if header.data_file is not None:
        return header.data_file, 0
    if header.data_start is None:
        raise ImageReadError(f"{path.name}: header has no data and names no data file")
    return path, header.data_start


def _require_bytes(name: str, available: int, nbytes: int) -> None:
    if available < nbytes:
        raise ImageReadError(
            f"{name}: data part is shorter than the header declares ({max(available, 0):,} of {nbytes:,} bytes);"
            " truncated file?"
        )


# --- NIfTI --------------------------------------------------------------------------------------------------


def check_nifti_header(path: Path, limits: ReadLimits) -> int:
    """Check a single-file NIfTI-1/2 header (no data read); return where its voxel data ends."""
    import nibabel  # here: 0.1 s that a picture does not need
    from nibabel.spatialimages import HeaderDataError

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


# --- PNG and JPEG -------------------------------------------------------------------------------------------

_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_png_complete(path: Path) -> None:
    """Raise unless a PNG's IDAT data inflates to every scanline its IHDR declares.

    Pillow stops at the end of the zlib stream and leaves the missing rows zero. Only the declared scanline bytes
    are inflated, at most ``INFLATE_CHUNK`` at a time.
    """
    with open(path, "rb") as f:
        head = f.read(33)
        if len(head) < 33 or head[12:16] != b"IHDR":
            return  # Pillow has refused it already
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
        if colour not in _PNG_SAMPLES:
            return
        bits = depth * _PNG_SAMPLES[colour]
        needed = 0
        for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
            columns, rows = _ceil(width - x0, dx), _ceil(height - y0, dy)
            if columns > 0 and rows > 0:
                needed += rows * (1 + (columns * bits + 7) // 8)
        inflater, produced = zlib.decompressobj(), 0
        try:
            while produced < needed and not inflater.eof:
                chunk = f.read(8)
                if len(chunk) < 8 or chunk[4:] == b"IEND":
                    break
                left = struct.unpack(">I", chunk[:4])[0]
                if chunk[4:] == b"IDAT":
                    while left and produced < needed and not inflater.eof:
                        data = f.read(min(left, INFLATE_CHUNK))
                        if not data:
                            break
                        left -= len(data)
                        while data and produced < needed and not inflater.eof:
                            produced += len(inflater.decompress(data, min(INFLATE_CHUNK, needed - produced)))
                            data = inflater.unconsumed_tail
                f.seek(left + 4, os.SEEK_CUR)  # the rest of the chunk and its CRC
        except zlib.error as exc:
            raise ImageReadError(f"{path.name}: PNG image data is not a valid zlib stream") from exc
    if produced < needed:
        raise ImageReadError(
            f"{path.name}: PNG image data ends after {produced:,} of its {needed:,} scanline bytes"
            f" ({width} x {height} declared); truncated file?"
        )


_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")  # the next marker after entropy-coded data
_JPEG_FILLER = b"\xff\x00" * 32  # stuffed 0xFF bytes: decodable bits that are never a marker
_JPEG_UNCHECKED = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xDC}


def jpeg_bytes_to_decode(path: Path) -> bytes | None:
    """Check a JPEG's entropy-coded data against its declared frame; return what to decode (None: the file).

    Each scan must hold at least the bits its blocks need (every block of a DC or sequential scan takes at least
    one shortest Huffman code), which refuses a frame size far beyond the data in any JPEG. For a sequential
    JPEG with one scan, the bytes returned end with filler instead of the end marker: libjpeg pads a scan that
    hits a marker with grey blocks and Pillow ignores its warning, but a scan that runs out of data suspends,
    which Pillow reports as a truncated file. Valid files decode to the same pixels either way.
    """
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    frame, scans, tables, end, pos = None, [], {}, None, 2
    while pos + 2 <= len(data) and data[pos] == 0xFF:
        while pos < len(data) - 1 and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xD9:
            end = pos
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no parameters
            pos += 2
            continue
        pos += 2 + length
        if marker in (0xC0, 0xC1, 0xC2) and frame is None and len(segment) >= 6:
            height, width, count = struct.unpack(">HHB", segment[1:6])
            parts = [segment[6 + 3 * i : 9 + 3 * i] for i in range(count)]
            frame = (marker, width, height, {p[0]: (p[1] >> 4, p[1] & 15) for p in parts if len(p) == 3})
        elif marker in _JPEG_UNCHECKED:
            return None  # lossless, hierarchical or arithmetic coding, or a DNL-defined height: not checked
        elif marker == 0xC4:
            _jpeg_tables(segment, tables)
        elif marker == 0xDA:
            if frame is None:
                return None
            found = _JPEG_MARKER.search(data, pos)
            stop = found.start() if found else len(data)
            scans.append((segment, stop - pos))
            pos = stop
    if frame is None or not scans:
        return None
    _check_scan_bits(path.name, frame, scans, tables)
    if frame[0] in (0xC0, 0xC1) and len(scans) == 1 and end == pos:
        return data[:end] + _JPEG_FILLER
    return None


def _jpeg_tables(segment: bytes, tables: dict) -> None:
    """Shortest code length of each Huffman table in a DHT segment, keyed by (class, id)."""
    at = 0
    while at + 17 <= len(segment):
        counts = segment[at + 1 : at + 17]
        tables[(segment[at] >> 4, segment[at] & 15)] = next((i + 1 for i, n in enumerate(counts) if n), 1)
        at += 17 + sum(counts)


def _check_scan_bits(name: str, frame, scans, tables) -> None:
    marker, width, height, components = frame
    if not width or not height or not components:
        return
    hmax = max(h for h, _ in components.values()) or 1
    vmax = max(v for _, v in components.values()) or 1
    for segment, available in scans:
        count = segment[0] if segment else 0
        spec = segment[1 + 2 * count : 4 + 2 * count]
        if len(spec) < 3:
            continue
        start, stop, refine = spec[0], spec[1], spec[2] >> 4
        bits = 0
        for i in range(count):
            cid, selectors = segment[1 + 2 * i], segment[2 + 2 * i]
            h, v = components.get(cid, (1, 1))
            if count > 1:  # interleaved: whole MCUs
                blocks = _ceil(width, 8 * hmax) * _ceil(height, 8 * vmax) * h * v
            else:
                blocks = _ceil(_ceil(width * h, hmax), 8) * _ceil(_ceil(height * v, vmax), 8)
            if start == 0:
                bits += blocks * (1 if refine else tables.get((0, selectors >> 4), 1))
                if stop > 0 and marker != 0xC2:
                    bits += blocks * tables.get((1, selectors & 15), 1)
        if bits > 8 * available:
            raise ImageReadError(
                f"{name}: JPEG image data ends before its declared {width} x {height} frame is decoded"
                f" ({available:,} bytes where at least {_ceil(bits, 8):,} are needed); truncated file or"
                " wrong size in its header?"
            )


def _ceil(a: int, b: int) -> int:
    return -(-a // b)
