"""`ModelSpec`: ``--checkpoint`` as a LoRA adapter file, a full state dict or a registered name gives the same
weights in every shell (segment, evaluate, serve, napari, contour, assistant), and one-line errors otherwise.

The adapter (LoRA r=2 with random B matrices, so it changes the encoder) and the full state dict (the same model
merged) are made once per module; the bundled base model is read once and copied for every build.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from oncoseg.errors import ModelError
from oncoseg.models import litemedsam
from oncoseg.models.spec import ModelSpec
from oncoseg.predictor import Predictor
from oncoseg.train.checkpoints import HOME_VAR, register
from oncoseg.train.lora import LoraSettings, apply_lora, merge_lora, save_adapter

ENCODER = (
    "image_encoder.layers.1.blocks.0.attn.qkv.weight",
    "image_encoder.layers.3.blocks.1.attn.proj.weight",
)
UNCHANGED = ("mask_decoder.iou_prediction_head.layers.0.weight", "prompt_encoder.point_embeddings.0.weight")
KINDS = ("adapter", "state dict", "registered name")


@pytest.fixture(scope="module")
def base_model():
    return litemedsam.build_model()


@pytest.fixture(scope="module")
def files(base_model, tmp_path_factory):
    """An adapter file, the same weights as a full state dict, and a registry (in a temporary ONCOSEG_HOME)
    where ``latest`` names the adapter."""
    folder = tmp_path_factory.mktemp("checkpoints")
    model = apply_lora(copy.deepcopy(base_model), LoraSettings(r=2, unfreeze=()))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # zero at creation: make the adapter change the weights
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    adapter = save_adapter(model, folder / "tuned.safetensors")
    state = folder / "tuned.pth"
    torch.save(merge_lora(model).state_dict(), state)
    return {"adapter": str(adapter), "state dict": str(state), "home": folder / "home"}


@pytest.fixture(scope="module", autouse=True)
def environment(base_model, files):
    """The registry in the temporary folder, and the bundled model copied instead of read again."""
    original = litemedsam.build_model
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_VAR, str(files["home"]))
        patch.setattr(
            litemedsam,
            "build_model",
            lambda checkpoint=None: copy.deepcopy(base_model) if checkpoint is None else original(checkpoint),
        )
        register("latest", files["adapter"])
        yield


@pytest.fixture(scope="module")
def checkpoints(files) -> dict[str, str]:
    return {"adapter": files["adapter"], "state dict": files["state dict"], "registered name": "latest"}


def tensors(backend) -> dict[str, torch.Tensor]:
    state = backend.model.state_dict()
    return {name: state[name].detach().clone() for name in ENCODER + UNCHANGED}


@pytest.fixture(scope="module")
def reference(files, base_model) -> dict[str, torch.Tensor]:
    """The parameters `ModelSpec` gives for the adapter, checked to differ from the base where LoRA acts."""
    expected = tensors(ModelSpec(checkpoint=files["adapter"]).build_backend())
    base = base_model.state_dict()
    for name in ENCODER:
        assert not torch.equal(expected[name], base[name]), f"the adapter left {name} unchanged"
    for name in UNCHANGED:
        assert torch.equal(expected[name], base[name])
    return expected


def assert_same(built: dict, reference: dict[str, torch.Tensor]) -> None:
    assert set(built) == set(KINDS)
    for kind, backend in built.items():
        for name, value in tensors(backend).items():
            assert torch.equal(value, reference[name]), f"--checkpoint as {kind}: {name} differs"


@pytest.fixture
def set_images(monkeypatch) -> list:
    """The backends of every `Predictor` given an image (what a shell really ran)."""
    seen = []
    original = Predictor.set_image

    def spy(self, *args, **kwargs):
        seen.append(self.backend)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "set_image", spy)
    return seen


# -- one test per shell -----------------------------------------------------------------------------------------
def test_segment(checkpoints, reference, set_images, tmp_path):
    from oncoseg.cli import main
    from oncoseg.samples import list_samples, sample_path

    box = ",".join(map(str, list_samples()["polyp"]["prompt"]["box"]))
    built = {}
    for kind, value in checkpoints.items():
        out = tmp_path / f"{kind.replace(' ', '_')}.png"
        code = main(
            ["segment", str(sample_path("polyp")), "--box", box, "--checkpoint", value, "-o", str(out)]
        )
        assert code == 0 and out.exists()
        built[kind] = set_images[-1]
    assert_same(built, reference)


def test_evaluate(checkpoints, reference, set_images, shared_data, tmp_path):
    from oncoseg.cli import main

    built = {}
    for kind, value in checkpoints.items():
        out = tmp_path / kind.replace(" ", "_")
        code = main(["evaluate", "kvasir-seg", "--split", "test", "--limit", "1", "--data", str(shared_data),
                     "-o", str(out), "--no-report", "-q", "--checkpoint", value])  # fmt: skip
        assert code == 0 and (out / "cases.csv").exists()
        built[kind] = set_images[-1]
    assert_same(built, reference)


def test_serve(checkpoints, reference, tmp_path):
    from oncoseg.service.core import Engine, ServiceConfig

    built = {}
    for kind, value in checkpoints.items():
        engine = Engine(ServiceConfig(checkpoint=value, workdir=str(tmp_path / kind.replace(" ", "_"))))
        try:
            built[kind] = engine.backend
        finally:
            engine.close()
    assert_same(built, reference)


def test_napari(checkpoints, reference):
    from napari.components import ViewerModel

    from oncoseg.image import MedicalImage
    from oncoseg.napari_plugin.controller import Controller
    from oncoseg.session import Session

    controller = Controller(ViewerModel())
    image = MedicalImage.from_array(np.random.default_rng(0).random((32, 32), dtype=np.float32))
    built = {}
    for kind, value in checkpoints.items():
        controller.set_model("litemedsam", value)
        # the controller's sessions build their model from its spec (one Session per image layer)
        built[kind] = controller.predictor(Session(image, controller.model_spec())).backend
    assert_same(built, reference)


def test_contour(checkpoints, reference):
    from oncoseg.contour.pipeline import make_predictor

    assert_same(
        {kind: make_predictor(checkpoint=value).backend for kind, value in checkpoints.items()}, reference
    )


def test_assistant(checkpoints, reference, tmp_path):
    from oncoseg.assistant.service import Assistant, AssistantConfig

    built = {}
    for kind, value in checkpoints.items():
        config = AssistantConfig("http://127.0.0.1:9", state=tmp_path / "state.db", checkpoint=value)
        built[kind] = Assistant(config, client=object()).make_predictor().backend
    assert_same(built, reference)


# -- the spec itself --------------------------------------------------------------------------------------------
def test_from_args_takes_any_subset_and_describe_is_one_line(files):
    assert ModelSpec.from_args(argparse.Namespace()) == ModelSpec()
    args = argparse.Namespace(
        backend="litemedsam", checkpoint="latest", precision="fp32", threads=2, quiet=True
    )
    spec = ModelSpec.from_args(args)
    assert (spec.checkpoint, spec.precision, spec.threads, spec.weights) == ("latest", "fp32", 2, None)
    assert ModelSpec.from_args(args, precision="bf16").precision == "bf16"
    line = spec.describe()
    assert "\n" not in line and "litemedsam" in line and "latest" in line and files["adapter"] in line
    assert "threads 2" in line and "precision fp32" in line


def test_threads_and_predictor_options(files):
    before = torch.get_num_threads()
    try:
        predictor = ModelSpec(checkpoint=files["adapter"], threads=1).build_predictor(cache_slices=3)
        assert torch.get_num_threads() == 1 and predictor.cache_slices == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"precision": "fp64"}, "precision must be one of auto, fp32, bf16, fp16"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"threshold": 1.5}, "threshold must be in [0, 1]"),
        ({"backend": ""}, "backend must be a name"),
    ],
)
def test_bad_settings_fail_at_once(options, message):
    with pytest.raises(ModelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelSpec(**options)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ModelError, match=r"no checkpoint file or name 'nope' \(names: latest\)"):
        ModelSpec(checkpoint="nope").build_backend()
    with pytest.raises(ModelError, match="unknown backend 'nope'; available: .*litemedsam"):
        ModelSpec(backend="nope").build_backend()


def test_a_checkpoint_that_fits_neither_way_is_one_line_with_counts(base_model, tmp_path):
    state = dict(base_model.state_dict())
    state.pop("mask_decoder.iou_token.weight")
    state["head.extra"] = torch.zeros(2)
    path = tmp_path / "other.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ModelError) as caught:
        ModelSpec(checkpoint=str(path)).build_backend()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    assert "fits LiteMedSAM neither as a LoRA adapter nor as a full state dict" in message
    assert f"expected {len(state)} tensors of LiteMedSAM, found {len(state)}" in message
    assert "1 missing, 1 unexpected" in message and "e.g. missing mask_decoder.iou_token.weight" in message

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        ModelError, match="cannot read checkpoint garbage.pt as a LoRA adapter or a state dict"
    ):
        ModelSpec(checkpoint=str(garbage)).build_backend()
    with pytest.raises(ModelError, match="is a folder"):
        ModelSpec(checkpoint=str(tmp_path)).build_backend()


def test_base_weights_that_do_not_fit_are_one_line(base_model, tmp_path):
    """``--weights`` (litemedsam.build_model) with a state dict whose names carry a training prefix: one line with
    counts and the prefix, never torch's list of every missing key."""
    state = {f"model.{name}": value for name, value in base_model.state_dict().items()}
    path = tmp_path / "prefixed.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelError) as caught:
        ModelSpec(weights=str(path)).build_backend()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"expected {len(state)} tensors, found {len(state)} ({len(state)} missing" in message
    assert "extra 'model.' prefix" in message
