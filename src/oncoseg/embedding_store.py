"""`EmbeddingStore`: image embeddings kept on disk, keyed by the image content, shared across runs and processes
(CLI runs, the service, napari) so that a slice seen before is not encoded again.

Opt-in: ``Predictor(..., embedding_store="/path")``, ``ModelSpec(embedding_store="/path")``, or the environment
variable ``ONCOSEG_EMBEDDING_CACHE=/path`` (``ONCOSEG_EMBEDDING_CACHE_MB`` bounds its size, default 2048 MB).

* Key: SHA-256 of the normalised slice pixels that go into the encoder (shape, dtype and bytes), the backend's
  `Backend.embedding_identity` (name, a hash of the encoder's weights, so a checkpoint or merged LoRA adapter
  gives other keys, precision and input transform) and `FORMAT`, this module's layout version. A backend that
  cannot say what its weights are (identity None) is never stored.
* Value: one ``.npz`` file (numpy arrays only; read with ``allow_pickle=False``, never ``torch.load``), so a
  folder other people can write to cannot run code here. Entries are checked on reading (stored key, sizes,
  dtype, member sizes); a corrupt, truncated or foreign entry is removed and the slice encoded again.
* Writes are atomic (a temporary name in the same folder, then a rename): readers never see half a file.
* Size: bounded; least recently used entries go first (a hit refreshes the file's mtime).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg.models.base import ImageEmbedding

ENV = "ONCOSEG_EMBEDDING_CACHE"
ENV_MB = "ONCOSEG_EMBEDDING_CACHE_MB"
DEFAULT_MAX_MB = 2048
FORMAT = 1  # bump when what is stored, or how an embedding is computed from the pixels, changes
SUFFIX = ".npz"
MAX_MEMBER_BYTES = (
    1 << 30
)  # an entry's arrays are a few MB (LiteMedSAM 4 MB, SAM3 ~20 MB); refuse absurd ones
_STORABLE = ("float32", "float16", "float64")

log = logging.getLogger(__name__)


class EmbeddingStore:
    """A folder of embeddings (see the module docstring). Never raises for a bad entry or a full disk: the
    embedding is then just computed (and, when writing fails, not kept)."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None):
        self.folder = Path(folder).expanduser()
        self.max_bytes = DEFAULT_MAX_MB << 20 if max_bytes is None else int(max_bytes)
        self.hits = self.misses = self.writes = self.rejected = 0

    @classmethod
    def from_env(cls) -> EmbeddingStore | None:
        """The store ``ONCOSEG_EMBEDDING_CACHE`` names (size from ``ONCOSEG_EMBEDDING_CACHE_MB``), or None."""
        folder = os.environ.get(ENV, "").strip()
        if not folder:
            return None
        try:
            megabytes = float(os.environ.get(ENV_MB, DEFAULT_MAX_MB))
        except ValueError:
            megabytes = DEFAULT_MAX_MB
        return cls(folder, int(megabytes * (1 << 20)))

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.folder)!r}, max_bytes={self.max_bytes})"

    # -- keys -----------------------------------------------------------------------------------------------
    @staticmethod
    def key(pixels: np.ndarray, identity: str) -> str:
        """The entry name for ``pixels`` (what the encoder is given) encoded by a backend of ``identity``."""
        array = np.ascontiguousarray(pixels)
        digest = hashlib.sha256()
        digest.update(f"oncoseg-embedding/{FORMAT}\0{identity}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(memoryview(array).cast("B"))
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    # -- reading --------------------------------------------------------------------------------------------
    def load(self, key: str, original_size: tuple[int, int] | None = None) -> ImageEmbedding | None:
        """The stored embedding under ``key``, or None (absent, unreadable or not what the key promises: such an
        entry is removed). ``original_size``: the image size the entry must have been made from."""
        path = self.path(key)
        try:
            embedding = _read(path, key)
        except (FileNotFoundError, NotADirectoryError):
            self.misses += 1
            return None
        except Exception as error:  # noqa: BLE001 - a damaged or hostile file may fail in any way
            log.warning("embedding store: ignoring unreadable entry %s (%s)", path.name, type(error).__name__)
            self._discard(path)
            return None
        if original_size is not None and tuple(embedding.original_size) != tuple(original_size):
            log.warning("embedding store: ignoring entry %s made from another image size", path.name)
            self._discard(path)
            return None
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass
        self.hits += 1
        return embedding

    def _discard(self, path: Path) -> None:
        self.rejected += 1
        self.misses += 1
        try:
            path.unlink()
        except OSError:
            pass

    # -- writing --------------------------------------------------------------------------------------------
    def save(self, key: str, embedding: ImageEmbedding) -> bool:
        """Keep ``embedding`` under ``key`` (atomically), then trim the store to its size. False when it cannot be
        stored (features of an unsupported kind, or the folder is not writable)."""
        arrays = _arrays(embedding)
        if arrays is None:
            return False
        meta = {
            "format": FORMAT,
            "key": key,
            "backend": embedding.backend,
            "original_size": [int(v) for v in embedding.original_size],
            "input_size": [int(v) for v in embedding.input_size],
            "kind": arrays.pop("_kind"),
            "dtype": arrays.pop("_dtype"),
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        path = self.path(key)
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(temporary, path)
            temporary = None
        except OSError as error:
            log.warning("embedding store: cannot write to %s (%s)", self.folder, type(error).__name__)
            return False
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
        self.writes += 1
        self.trim()
        return True

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(mtime, bytes, path)`` of every entry, oldest first."""
        found = []
        try:
            groups = [
                d for d in os.scandir(self.folder) if d.is_dir(follow_symlinks=False) and len(d.name) == 2
            ]
        except OSError:
            return []
        for group in groups:
            try:
                items = list(os.scandir(group.path))
            except OSError:
                continue
            for item in items:
                if not item.name.endswith(SUFFIX) or item.name.startswith("."):
                    continue
                try:
                    stat = item.stat(follow_symlinks=False)
                except OSError:
                    continue
                found.append((stat.st_mtime, stat.st_size, Path(item.path)))
        found.sort()
        return found

    @property
    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def trim(self, max_bytes: int | None = None) -> int:
        """Remove least recently used entries until the store holds at most ``max_bytes`` (default: its bound);
        returns how many were removed."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in entries:
            if total <= limit:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # another process removed it
            except OSError:
                continue
            total -= size
            removed += 1
        return removed

    def clear(self) -> int:
        return self.trim(0)


def _arrays(embedding: ImageEmbedding) -> dict[str, Any] | None:
    """The features as numpy arrays to store (one array or tensor), with what is needed to restore them."""
    features = embedding.features
    if isinstance(features, np.ndarray):
        if features.dtype.name not in _STORABLE:
            return None
        return {"features": np.ascontiguousarray(features), "_kind": "numpy", "_dtype": features.dtype.name}
    if type(features).__module__.startswith("torch") and hasattr(features, "detach"):
        dtype = str(features.dtype).removeprefix("torch.")
        if dtype not in (*_STORABLE, "bfloat16"):
            return None
        tensor = features.detach().cpu()
        tensor = tensor.float() if dtype == "bfloat16" else tensor  # bf16 -> fp32 is exact; restored below
        return {"features": tensor.contiguous().numpy(), "_kind": "torch", "_dtype": dtype}
    return None


def _read(path: Path, key: str) -> ImageEmbedding:
    """An entry, checked: plain stored arrays of sane size, the key it was written under, known dtypes."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        names = sorted(m.filename for m in members)
        if names != ["features.npy", "meta.npy"]:
            raise ValueError(f"unexpected members {names}")
        if any(m.compress_type != zipfile.ZIP_STORED or m.file_size > MAX_MEMBER_BYTES for m in members):
            raise ValueError("compressed or oversized member")
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        features = data["features"]
    if meta.get("format") != FORMAT or meta.get("key") != key:
        raise ValueError("entry of another format or key")
    if features.dtype.name not in _STORABLE:
        raise ValueError(f"features of dtype {features.dtype}")
    original = tuple(int(v) for v in meta["original_size"])
    input_size = tuple(int(v) for v in meta["input_size"])
    if len(original) != 2 or len(input_size) != 2 or min(*original, *input_size) < 1:
        raise ValueError("bad sizes")
    if meta.get("kind") == "torch":
        import torch

        dtype = meta.get("dtype")
        if dtype not in (*_STORABLE, "bfloat16"):
            raise ValueError(f"unknown tensor dtype {dtype!r}")
        restored = torch.from_numpy(np.ascontiguousarray(features))
        features = restored.to(getattr(torch, dtype)) if dtype == "bfloat16" else restored
    elif meta.get("kind") != "numpy":
        raise ValueError("unknown feature kind")
    return ImageEmbedding(features, original, input_size, str(meta.get("backend", "")))


def resolve(store: EmbeddingStore | str | os.PathLike | bool | None) -> EmbeddingStore | None:
    """What ``Predictor(embedding_store=...)`` means: a store, a folder, None (the environment variable
    ``ONCOSEG_EMBEDDING_CACHE``, if set) or False (no store)."""
    if store is None:
        return EmbeddingStore.from_env()
    if store is False:
        return None
    if isinstance(store, EmbeddingStore):
        return store
    if isinstance(store, (str, os.PathLike)) and str(store):
        return EmbeddingStore(store)
    raise ValueError(f"embedding_store must be a folder, an EmbeddingStore, None or False, not {store!r}")
