"""The student image encoder: the default where it ships, the teacher selectable, close to the teacher on real
images, and its distillation resumable after a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from oncoseg.errors import ModelError
from oncoseg.models import fast_encoder, student
from oncoseg.models.litemedsam import LiteMedSAMBackend
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor
from oncoseg.prompts import Prompt, box_from_mask

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backends():
    teacher = LiteMedSAMBackend(encoder="teacher")
    return teacher, LiteMedSAMBackend(encoder="student", model=teacher.model)


def test_the_package_ships_the_student_and_uses_it_by_default():
    assert student.available()
    assert ModelSpec().resolved_encoder() == "student"
    assert "encoder student" in ModelSpec().describe()
    # a fine-tuned or user's model keeps the teacher: the student never learnt that encoder
    assert ModelSpec(checkpoint="latest").resolved_encoder() == "teacher"
    assert ModelSpec(encoder="teacher").resolved_encoder() == "teacher"
    with pytest.raises(ModelError, match="student encoder"):
        ModelSpec(encoder="student", checkpoint="adapter.safetensors")
    with pytest.raises(ModelError, match="encoder must be one of"):
        ModelSpec(encoder="fastest")


def test_student_and_teacher_are_told_apart(backends):
    teacher, pupil = backends
    assert teacher.describe()["encoder"].startswith("teacher (256")
    assert pupil.describe()["encoder"].startswith("student (168")
    # an embedding kept on disk by one is never served to the other
    assert teacher.embedding_identity() != pupil.embedding_identity()
    pixels = np.random.default_rng(0).random((300, 200, 3)).astype(np.float32)
    a, b = teacher.encode(pixels), pupil.encode(pixels)
    assert a.features.shape == b.features.shape == (1, 256, 64, 64)
    assert a.input_size == b.input_size


def test_student_masks_match_the_teachers_on_real_pictures(backends, shared_data):
    """A few Kvasir-SEG and BUSI test cases with their GT boxes; the full comparison is benchmarks/student.py."""
    from oncoseg.data.adapters import open_dataset

    cases = open_dataset("kvasir-seg", shared_data).cases("test")[:3]
    cases += [c for c in open_dataset("busi", shared_data).cases("test") if c.category != "normal"][:3]
    differences = []
    for case in cases:
        image, regions = case.load()
        (truth,) = regions.values()
        scores = []
        for backend in backends:
            predictor = Predictor(backend)
            predictor.set_image(image, case.modality)
            mask = predictor.predict(Prompt(box=box_from_mask(truth))).masks[0]
            scores.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
        differences.append(scores[1] - scores[0])
        assert scores[1] > scores[0] - 0.1, (
            f"{case.case_id}: student Dice {scores[1]:.3f}, teacher {scores[0]:.3f}"
        )
    assert np.mean(differences) > -0.03


def test_damaged_student_weights_give_one_line(tmp_path, backends):
    bad = tmp_path / "student_encoder.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cannot read student encoder weights student_encoder.pt") as error:
        student.load(backends[0].model.image_encoder, bad)
    assert "\n" not in str(error.value)
    with pytest.raises(ModelError, match="not found"):
        student.load(backends[0].model.image_encoder, tmp_path / "absent.pt")


def test_the_encoder_runs_on_any_square_frame_and_trains(backends):
    encoder = backends[0].model.image_encoder
    frame = torch.rand(1, 3, 168, 168)
    with torch.inference_mode():
        assert fast_encoder.encode(encoder, frame).shape == (1, 256, 64, 64)
    # with gradients the plain (unfused) path runs, and the gradient reaches the first layer
    weight = encoder.patch_embed.seq[0].c.weight
    weight.grad = None
    fast_encoder.encode(encoder, frame).pow(2).mean().backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    weight.grad = None


def _distill(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "oncoseg.train.distill", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_distillation_resumes_after_a_kill(tmp_path, shared_data, backends):
    """Cache 4 real frames, train 3 steps with a checkpoint after each, SIGKILL after the first, run again: the
    curve has each step once and the exported weights load as a student."""
    out = tmp_path / "run"
    cache = _distill("cache", "--out", str(out), "--limit", "4")
    assert cache.wait(timeout=600) == 0, cache.stdout.read()
    assert (out / "train" / "done.txt").read_text() == "4"
    arguments = ("train", "--out", str(out), "--steps", "3", "--batch-size", "2", "--checkpoint-minutes", "0")
    first = _distill(*arguments)
    for line in first.stdout:
        if line.startswith("step 1/3"):
            break
    deadline = time.monotonic() + 120
    while not (out / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["step"]
    assert 1 <= saved < 3
    second = _distill(*arguments)
    output = second.communicate(timeout=600)[0]
    assert second.returncode == 0, output
    assert f"resuming at step {saved}" in output
    with open(out / "curve.csv", newline="") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [1, 2, 3]
    exported = _distill("export", "--out", str(out), "--weights", str(tmp_path / "w.pt"))
    assert exported.wait(timeout=300) == 0
    encoder, size = student.load(backends[0].model.image_encoder, tmp_path / "w.pt")
    assert size == 168
    assert not torch.equal(
        encoder.neck[0].weight.float(), backends[0].model.image_encoder.neck[0].weight.float()
    )
