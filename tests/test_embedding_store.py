"""The on-disk embedding store: keys, safe entries, atomic writes, size bound, corrupt entries, and the same masks
from stored embeddings as from fresh ones (the real LiteMedSAM on the bundled CT). Correctness only: the time it
saves is measured by benchmarks/embedding_store.py."""

from __future__ import annotations

import os
import time
import zipfile

import numpy as np
import pytest

from oncoseg.embedding_store import ENV, ENV_MB, EmbeddingStore, resolve
from oncoseg.image import MedicalImage
from oncoseg.models.base import Backend, ImageEmbedding
from oncoseg.predictor import Predictor
from oncoseg.prompts import Box, Prompt


class CountingBackend(Backend):
    """A stand-in whose embedding is the slice's mean per channel (numpy); counts encodes."""

    name = "counting"

    def __init__(self, identity: str | None = "counting/v1/fp32/abc"):
        self.identity, self.encodes = identity, 0

    def embedding_identity(self):
        return self.identity

    def encode(self, image):
        self.encodes += 1
        features = np.asarray(image, np.float32).mean(axis=(0, 1)).reshape(1, 3)
        return ImageEmbedding(features, tuple(image.shape[:2]), tuple(image.shape[:2]), self.name)

    def decode(self, embedding, prompts, mask_input=None):
        raise NotImplementedError


def _volume(seed: int = 0, slices: int = 4) -> MedicalImage:
    array = np.random.default_rng(seed).random((slices, 24, 20)).astype(np.float32)
    return MedicalImage.from_array(array)


def _entries(store: EmbeddingStore) -> list:
    return [path for _, _, path in store.entries()]


def test_a_second_predictor_reads_what_the_first_stored(tmp_path):
    backend = CountingBackend()
    first = Predictor(backend, embedding_store=tmp_path / "store")
    first.set_image(_volume())
    fresh = [first.embedding(z).features for z in range(4)]
    assert backend.encodes == 4 and len(_entries(first.store)) == 4 and first.store.writes == 4
    second = Predictor(backend, embedding_store=str(tmp_path / "store"))  # another run, same folder
    second.set_image(_volume())
    stored = [second.embedding(z).features for z in range(4)]
    assert backend.encodes == 4 and second.store.hits == 4  # nothing encoded again
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(fresh, stored, strict=True))
    assert second.embedding(1).original_size == (24, 20)
    second.set_image(_volume(seed=1))  # other pixels: other keys
    second.embedding(0)
    assert backend.encodes == 5


def test_the_key_changes_with_pixels_weights_precision_and_format():
    pixels = np.random.default_rng(0).random((8, 9, 3)).astype(np.float32)
    key = EmbeddingStore.key(pixels, "litemedsam/v1/fp32/256/aaa")
    assert key == EmbeddingStore.key(pixels.copy(), "litemedsam/v1/fp32/256/aaa")  # content, not identity
    assert key != EmbeddingStore.key(pixels, "litemedsam/v1/fp32/256/bbb")  # another checkpoint
    assert key != EmbeddingStore.key(pixels, "litemedsam/v1/bf16/256/aaa")  # another precision
    assert key != EmbeddingStore.key(pixels, "litemedsam/v2/fp32/256/aaa")  # another embedding version
    changed = pixels.copy()
    changed[3, 4, 1] = np.nextafter(changed[3, 4, 1], 2)
    assert key != EmbeddingStore.key(changed, "litemedsam/v1/fp32/256/aaa")
    assert key != EmbeddingStore.key(pixels.reshape(9, 8, 3), "litemedsam/v1/fp32/256/aaa")  # same bytes


def test_a_backend_without_identity_is_never_stored(tmp_path):
    backend = CountingBackend(identity=None)
    predictor = Predictor(backend, embedding_store=tmp_path)
    predictor.set_image(_volume())
    predictor.embedding(0)
    assert _entries(predictor.store) == [] and backend.encodes == 1


@pytest.mark.parametrize(
    "damage",
    ["truncated", "empty", "garbage", "pickle", "other_key", "compressed", "extra_member", "wrong_size"],
)
def test_a_corrupt_or_foreign_entry_is_ignored_and_recomputed(tmp_path, damage):
    backend = CountingBackend()
    predictor = Predictor(backend, embedding_store=tmp_path)
    predictor.set_image(_volume())
    expected = predictor.embedding(0).features
    (path,) = _entries(predictor.store)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "pickle":  # an object array would need pickle to load: refused, never unpickled
        np.savez(path, features=np.array([object()], dtype=object), meta=np.zeros(1, np.uint8))
    elif damage == "other_key":  # a valid entry copied under another name
        other = _volume(seed=5)
        other_predictor = Predictor(backend, embedding_store=tmp_path / "other")
        other_predictor.set_image(other)
        other_predictor.embedding(0)
        path.write_bytes(_entries(other_predictor.store)[0].read_bytes())
    elif damage == "compressed":
        with np.load(path) as loaded:
            arrays = dict(loaded)
        np.savez_compressed(path, **arrays)
    elif damage == "extra_member":
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("extra.npy", b"x")
    elif damage == "wrong_size":  # the right name, made from an image of another size
        store = predictor.store
        key = store.key(predictor.slice_pixels(0), backend.identity)
        store.save(key, ImageEmbedding(np.zeros((1, 3), np.float32), (5, 5), (5, 5), "counting"))
    again = Predictor(backend, embedding_store=tmp_path)
    again.set_image(_volume())
    before = backend.encodes
    assert np.array_equal(again.embedding(0).features, expected)  # recomputed, same numbers
    assert backend.encodes == before + 1 and again.store.rejected == 1
    assert len(_entries(again.store)) == 1  # the bad entry was replaced by a good one
    third = Predictor(backend, embedding_store=tmp_path)
    third.set_image(_volume())
    third.embedding(0)
    assert backend.encodes == before + 1 and third.store.hits == 1


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    store = EmbeddingStore(tmp_path)
    embedding = ImageEmbedding(np.ones((2, 3), np.float32), (4, 4), (4, 4), "x")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    assert store.save("ab" * 32, embedding) is False  # no crash, nothing half-written
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    monkeypatch.undo()
    assert store.save("ab" * 32, embedding) is True
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{'ab' * 32}.npz"]


def test_an_unwritable_store_only_costs_the_encode(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    backend = CountingBackend()
    predictor = Predictor(backend, embedding_store=blocker / "store")
    predictor.set_image(_volume())
    assert predictor.embedding(0).features.shape == (1, 3) and backend.encodes == 1


def test_the_store_is_bounded_and_evicts_the_least_recently_used(tmp_path):
    backend = CountingBackend()
    first = Predictor(backend, embedding_store=tmp_path)
    first.set_image(_volume(slices=3))
    paths = []
    for z in range(3):
        first.embedding(z)
        paths.append(first.store.path(first.store.key(first.slice_pixels(z), backend.identity)))
    now = time.time()
    for age, path in zip((30, 20, 10), paths, strict=True):  # slice 0 oldest, whatever the clock's resolution
        os.utime(path, (now - age, now - age))
    size = max(path.stat().st_size for path in paths)
    second = Predictor(backend, embedding_store=EmbeddingStore(tmp_path, max_bytes=3 * size))
    second.set_image(_volume(slices=3))
    second.embedding(0)  # a hit: slice 0's entry becomes the most recently used ...
    assert backend.encodes == 3
    second.set_image(_volume(seed=9, slices=3))
    second.embedding(0)  # ... so the fourth entry pushes out slice 1's, now the oldest
    assert [p.exists() for p in paths] == [True, False, True] and len(_entries(second.store)) == 3
    assert second.store.trim(0) == 3 and _entries(second.store) == []


def test_the_environment_variable_opts_in(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert resolve(None) is None and Predictor(CountingBackend()).store is None
    monkeypatch.setenv(ENV, str(tmp_path / "env-store"))
    monkeypatch.setenv(ENV_MB, "3")
    store = resolve(None)
    assert store.folder == tmp_path / "env-store" and store.max_bytes == 3 << 20
    assert Predictor(CountingBackend(), embedding_store=False).store is None  # False wins over the variable
    with pytest.raises(ValueError):
        resolve(42)


def test_model_spec_passes_the_store_to_its_predictor(tmp_path, monkeypatch):
    from oncoseg.models import base
    from oncoseg.models.spec import ModelSpec

    monkeypatch.setitem(base._REGISTRY, "counting-test", lambda **kwargs: CountingBackend())
    spec = ModelSpec(backend="counting-test", embedding_store=tmp_path / "spec-store")
    assert spec.embedding_store == str(tmp_path / "spec-store")
    predictor = spec.build_predictor()
    assert predictor.store is not None and predictor.store.folder == tmp_path / "spec-store"


# -- the real model --------------------------------------------------------------------------------------------
def test_litemedsam_masks_from_stored_embeddings_equal_fresh_ones(tmp_path):
    """LiteMedSAM on the bundled CT: propagation from stored embeddings gives the same masks and scores as from
    fresh ones; another precision or changed encoder weights are other keys."""
    import torch

    from oncoseg.io import load_image
    from oncoseg.models.litemedsam import LiteMedSAMBackend
    from oncoseg.prompts import box_from_mask
    from oncoseg.samples import sample_path
    from oncoseg.volume import PropagationSettings, propagate

    image = load_image(sample_path("ct_abdomen"), modality="ct")
    truth = load_image(sample_path("ct_abdomen_liver.nii.gz")).array > 0
    z0 = int(np.argmax(truth.sum(axis=(1, 2))))
    prompt = Prompt(box=box_from_mask(truth[z0], z=z0))
    settings = PropagationSettings(max_slices=2)
    backend = LiteMedSAMBackend(precision="fp32", encoder="teacher")  # its weights are changed below
    fresh = Predictor(backend, embedding_store=tmp_path)
    fresh.set_image(image, modality="ct")
    first = propagate(fresh, prompt, settings)
    assert fresh.store.writes >= len(first.slice_scores) >= 3  # (a slice the walk stops at is encoded too)
    stored = Predictor(backend, embedding_store=tmp_path)
    stored.set_image(image, modality="ct")
    second = propagate(stored, prompt, settings)
    assert stored.store.hits == fresh.store.writes and stored.store.writes == 0
    assert np.array_equal(first.mask, second.mask) and first.slice_scores == second.slice_scores
    box = Prompt(box=Box(20, 20, 80, 70, z=z0 + 1))
    assert np.array_equal(stored.predict(box).masks, fresh.predict(box).masks)

    identity = backend.embedding_identity()
    assert identity.startswith("litemedsam/v1/fp32/256/")
    weight = next(backend.model.image_encoder.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.01)  # as a fine-tuned checkpoint or a merged adapter would
    backend.refresh()
    assert backend.embedding_identity() != identity
    with torch.no_grad():
        weight.copy_(saved)
    backend.refresh()
    assert backend.embedding_identity() == identity
    bf16 = LiteMedSAMBackend(precision="bf16", model=backend.model)
    assert bf16.embedding_identity() != identity
