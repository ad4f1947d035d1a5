"""Build a tiny but real nnU-Net v2 model folder for tests (no weights can be downloaded here).

The folder has nnU-Net's own layout, ``<root>/DatasetNNN_Name/<trainer>__nnUNetPlans__3d_fullres/`` with
``dataset.json``, ``plans.json`` and ``fold_0/checkpoint_final.pth`` (the keys nnU-Net's trainer saves), so
nnU-Net's own predictor loads and runs it. Plans: CT normalisation, 6 mm spacing, a 16×32×32 patch and a 3-stage
PlainConvUNet with 4/8/16 features (tens of thousands of parameters). The weights are trained for a few seconds
with nnU-Net's own preprocessing on TotalSegmentator's small example CT (another patient than the example DICOM
series), stored as TotalSegmentator stores its inputs: closest-canonical (RAS) NIfTI read in SimpleITK's order.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
SPACING = 6.0  # mm, isotropic
PATCH = (16, 32, 32)  # z, y, x


def _intensity_properties(values: np.ndarray) -> dict[str, float]:
    return {
        "max": float(values.max()),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
        "std": float(values.std()),
    }


def _plans(dataset_name: str, shape: tuple[int, ...], spacing: list[float], intensity: dict) -> dict:
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resample = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {
        "data_identifier": f"{PLANS}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(PATCH),
        "median_image_size_in_voxels": [round(s * sp / SPACING) for s, sp in zip(shape, spacing)],
        "spacing": [SPACING] * 3,
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resample,
        "resampling_fn_seg_kwargs": {**resample, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resample, "order": 1},
        "architecture": arch,
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": list(shape),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity},
    }


def build_tiny_model(
    root: str | Path,
    example: str | Path,
    labels: dict[str, list[int]],
    *,
    dataset: str = "Dataset991_OncoSegTiny",
    trainer: str = "nnUNetTrainerNoMirroring",
    steps: int = 120,
    seed: int = 0,
) -> Path:
    """Train a tiny nnU-Net on the example CT (``labels``: model label name → TotalSegmentator values) and
    return its model folder (the one holding dataset.json, plans.json and fold_0/)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    example = Path(example)
    ct = nib.as_closest_canonical(nib.load(example / "example_ct_sm.nii.gz"))
    ts = nib.as_closest_canonical(nib.load(example / "example_seg.nii.gz"))
    # SimpleITK's array order of a canonical NIfTI: [z, y, x] with x → R, y → A, z → S
    image = np.asarray(ct.dataobj, dtype=np.float32).transpose(2, 1, 0)
    source = np.asarray(ts.dataobj).transpose(2, 1, 0)
    target = np.zeros(source.shape, dtype=np.int16)
    for value, (name, values) in enumerate(labels.items(), start=1):
        target[np.isin(source, values)] = value
    spacing = [float(s) for s in ct.header.get_zooms()[::-1]]

    folder = Path(root) / dataset / f"{trainer}__{PLANS}__{CONFIGURATION}"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    dataset_json = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: i for i, name in enumerate(labels, start=1)}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    plans = _plans(dataset, image.shape, spacing, _intensity_properties(image[target > 0]))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))

    manager = PlansManager(plans)
    config = manager.get_configuration(CONFIGURATION)
    data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        image[None], target[None], {"spacing": spacing}, manager, config, dataset_json
    )
    data, seg = torch.from_numpy(data[None]).float(), torch.from_numpy(seg[None]).long().clamp(min=0)
    data = torch.nn.functional.pad(data, _pad(data.shape[2:]))
    seg = torch.nn.functional.pad(seg, _pad(seg.shape[2:]))

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = recursive_find_trainer_class_by_name(trainer).build_network_architecture(
        manager, config, 1, len(dataset_json["labels"]), enable_deep_supervision=False
    )
    optimiser = torch.optim.Adam(network.parameters(), lr=3e-3)
    weights = torch.tensor([0.2] + [1.0] * len(labels))
    network.train()
    for _ in range(steps):
        x, y = _batch(data, seg, rng)
        loss = torch.nn.functional.cross_entropy(network(x), y, weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    checkpoint = {
        "network_weights": network.state_dict(),
        "init_args": {
            "plans": plans,
            "configuration": CONFIGURATION,
            "fold": 0,
            "dataset_json": dataset_json,
            "device": torch.device("cpu"),
        },
        "trainer_name": trainer,
        "inference_allowed_mirroring_axes": None if "NoMirroring" in trainer else (0, 1, 2),
        "current_epoch": 1,
    }
    torch.save(checkpoint, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def _pad(shape) -> list[int]:
    pad: list[int] = []
    for size, patch in zip(reversed(shape), reversed(PATCH)):
        pad += [0, max(0, patch - size)]
    return pad


def _batch(data: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator, size: int = 2):
    """Random patches, half of them centred on a random foreground voxel."""
    shape = data.shape[2:]
    foreground = torch.nonzero(seg[0, 0] > 0).numpy()
    xs, ys = [], []
    for i in range(size):
        if i % 2 == 0 and len(foreground):
            centre = foreground[rng.integers(len(foreground))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, PATCH, shape)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(PATCH, shape)]
        window = tuple(slice(a, a + p) for a, p in zip(start, PATCH))
        xs.append(data[(0, slice(None), *window)])
        ys.append(seg[(0, 0, *window)])
    return torch.stack(xs), torch.stack(ys)


def _measure() -> None:
    """Build the test's tiny model and print what the engine gets with it on both example CTs."""
    import tempfile

    from oncoseg.contour.nnunet import contour_nnunet
    from oncoseg.io import load_image

    torch.set_num_threads(1)
    example = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator-example"
    labels = {"liver": [5], "spleen": [1], "autochthon_left": [86]}  # as tests/test_nnunet_engine.py
    with tempfile.TemporaryDirectory() as root:
        model = build_tiny_model(root, example, labels, steps=80)
        for ct, reference in (
            ("example_ct_dicom", "example_seg_dicom.nii.gz"),
            ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
        ):
            result = contour_nnunet(example / ct, model)
            liver, truth = result.masks["Liver"], load_image(example / reference).array == 5
            dice = 2 * (liver & truth).sum() / (liver.sum() + truth.sum())
            confidence = result.evidence["Liver"].confidence.estimate
            print(f"{ct}: Liver Dice {dice:.3f} (confidence {confidence:.3f}); not drawn {result.omitted}")


if __name__ == "__main__":
    _measure()
