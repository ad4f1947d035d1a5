"""The nnU-Net v2 engine, run with nnU-Net's real inference code on a tiny model this file trains itself.

No nnU-Net weights can be downloaded here, so `nnunet_tiny.build_tiny_model` builds a real nnU-Net model folder
(dataset.json, plans.json, fold_0/checkpoint_final.pth) and trains it for a few seconds on TotalSegmentator's
small example CT; the tests run it on the example DICOM series (another patient, 20 slices).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from nnunet_tiny import build_tiny_model

from oncoseg.contour import contour
from oncoseg.contour.nnunet import (
    label_table,
    map_labels,
    open_model,
    read_label_map,
    require_nnunet,
)
from oncoseg.dicom.tg263 import lookup
from oncoseg.errors import ModelError, OncoSegError, ShapeError
from oncoseg.image import MedicalImage
from oncoseg.io import load_image

LABELS = {"liver": [5], "spleen": [1], "autochthon_left": [86]}  # model label → TotalSegmentator values
PRIMARY = "tg263_primary_names.csv"  # the TG-263 primary names (tests/data)


@pytest.fixture(scope="module")
def example(shared_data):
    return shared_data / "totalsegmentator-example"


@pytest.fixture(scope="module")
def model(tmp_path_factory, example):
    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("models"), example, LABELS, steps=80)


@pytest.fixture(scope="module")
def series(example):
    return load_image(example / "example_ct_dicom")


@pytest.fixture(scope="module")
def result(series, model):
    return nnunet(series, model, threads=1)


def nnunet(image, models, organs=None, label_map=None, **options):
    """The public way in: `contour` with the nnunet engine (options go to `contour_nnunet`)."""
    return contour(image, organs, engine="nnunet", model=models, label_map=label_map, engine_options=options)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_engine_equals_nnunet_own_file_based_prediction(result, series, model, example, tmp_path):
    """The same CT through nnU-Net's own path as TotalSegmentator runs it: the DICOM read by SimpleITK, written
    as a closest-canonical NIfTI, predicted from the file by nnUNetPredictor, written by nnU-Net's writer."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(example / "example_ct_dicom")))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "ct.nii.gz"))
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    nib.save(nib.as_closest_canonical(nib.load(tmp_path / "ct.nii.gz")), tmp_path / "in" / "case_0000.nii.gz")
    predictor = nnUNetPredictor(
        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(str(model), use_folds=None)
    predictor.predict_from_files_sequential(
        [[str(tmp_path / "in" / "case_0000.nii.gz")]], [str(tmp_path / "out" / "case")]
    )
    own = load_image(tmp_path / "out" / "case.nii.gz").array  # back on the series' grid (LPS)
    assert own.shape == series.shape

    assert set(result.masks) <= {"Liver", "Spleen"} and "Liver" in result.masks
    for name, value in (("Liver", 1), ("Spleen", 2)):
        expected = own == value
        got = result.masks.get(name, np.zeros(series.shape, dtype=bool))
        assert got.shape == series.shape and got.dtype == bool
        assert np.array_equal(got, expected), f"{name}: {int((got != expected).sum())} voxels differ"
    # the comparison can see a wrong orientation: the prediction is not left-right / front-back symmetric
    liver = own == 1
    assert not np.array_equal(liver, liver[:, :, ::-1]) and not np.array_equal(liver, liver[:, ::-1, :])


def test_engine_equals_nnunet_on_a_nifti_file(model, example, tmp_path):
    """The training patient's canonical NIfTI, given to both as the file itself."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    (tmp_path / "in").mkdir()
    shutil.copy(example / "example_ct_sm.nii.gz", tmp_path / "in" / "case_0000.nii.gz")
    predictor = nnUNetPredictor(
        perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.initialize_from_trained_model_folder(str(model), use_folds=None)
    predictor.predict_from_files_sequential(
        [[str(tmp_path / "in" / "case_0000.nii.gz")]], [str(tmp_path / "c")]
    )
    own = load_image(tmp_path / "c.nii.gz").array
    result = nnunet(example / "example_ct_sm.nii.gz", model)
    assert np.array_equal(result.masks["Liver"], own == 1)
    assert _dice(result.masks["Liver"], load_image(example / "example_seg.nii.gz").array == 5) > 0.5


def test_result_names_grid_and_report(result, series, example):
    assert all(lookup(name) is not None and lookup(name).name == name for name in result.masks)
    assert set(result.masks) <= _primary_names()
    assert all(m.shape == series.shape for m in result.masks.values())
    assert result.methods == {name: "nnU-Net" for name in result.masks}
    # the liver lands on the series' liver (TotalSegmentator's own label 5); trained on another patient
    reference = load_image(example / "example_seg_dicom.nii.gz").array
    assert _dice(result.masks["Liver"], reference == 5) > 0.4
    info = result.info
    assert info["engine"] == "nnunet" and info["nnunet"]["orientation"] == "RAS"
    assert info["nnunet"]["models"][0]["labels"] == {"1": "liver", "2": "spleen", "3": "autochthon_left"}
    assert info["label_sources"]["Liver"] == ["Dataset991_OncoSegTiny:liver"]
    # a label with no TG-263 name is reported with its volume, not drawn under an invented name
    assert set(info["unmapped_labels"]) == {"autochthon_left"} and "autochthon_left" not in result.masks
    for name, reason in result.omitted.items():  # organs the model has but found nowhere, with the reason
        assert name == "Spleen" and reason == "the nnU-Net model found none of it in this CT"
    assert "Dataset991_OncoSegTiny" in result.model and "folds 0" in result.model
    confidence = {n: e.confidence for n, e in result.evidence.items() if e.confidence}
    assert set(confidence) == set(result.masks)
    assert all(0.0 < c.estimate <= 1.0 and c.review == (c.estimate < 0.5) for c in confidence.values())


def test_rtstruct_from_the_result(result, example, tmp_path):
    from oncoseg.dicom.rtstruct import read_rtstruct

    path = result.save(tmp_path / "oars.dcm", output_type="rtstruct")
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT"
    assert sorted(r.ROIName for r in ds.StructureSetROISequence) == sorted(result.masks)
    back = read_rtstruct(path, example / "example_ct_dicom")
    assert _dice(back["Liver"], result.masks["Liver"]) > 0.95
    liver = next(r for r in ds.StructureSetROISequence if r.ROIName == "Liver")
    estimate = result.evidence["Liver"].confidence.estimate
    assert f"confidence {estimate:.2f}" in liver.ROIDescription
    sidecar = json.loads((tmp_path / "oars.json").read_text())  # written beside the RTSTRUCT
    assert sidecar["engine"] == "nnunet" and set(sidecar["unmapped_labels"]) == {"autochthon_left"}
    assert sidecar["organs"]["Liver"]["atlas_volume_ml"] is None  # no atlas behind an nnU-Net organ
    assert sidecar["organs"]["Liver"]["method"] == "nnU-Net"
    assert sidecar["not_drawn"] == result.omitted


def test_label_map_organs_and_several_model_folders(series, model, tmp_path):
    """A second model folder (same weights, other label names) adds its organs; a label map renames or skips
    labels; organs asked for that no label gives are listed with the reason."""
    other = tmp_path / "Dataset992_Other" / model.name
    shutil.copytree(model, other)
    dataset = json.loads((other / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "stomach": 1, "aorta": 2, "rib_left_7": 3}
    (other / "dataset.json").write_text(json.dumps(dataset))
    (tmp_path / "map.json").write_text(json.dumps({"autochthon_left": "Musc_Back_L", "rib_left_7": None}))

    both = nnunet(
        series,
        [model, other.parent],  # the dataset folder above a single trained model is accepted too
        ["Liver", "stomach", "Musc_Back_L", "kidney_left"],
        label_map=tmp_path / "map.json",
    )
    assert set(both.masks) == {"Liver", "Stomach", "Musc_Back_L"}
    assert np.array_equal(both.masks["Stomach"], both.masks["Liver"])  # same network, label 1 in both
    assert both.evidence["Stomach"].confidence == both.evidence["Liver"].confidence
    assert both.info["label_sources"]["Musc_Back_L"] == ["Dataset991_OncoSegTiny:autochthon_left"]
    assert both.omitted["Kidney_L"] == "no label of the nnU-Net model(s) maps to it"
    assert both.info["unmapped_labels"] == {}  # rib_left_7 (Rib07_L) skipped on purpose by the map
    assert len(both.info["nnunet"]["models"]) == 2 and set(both.timings) >= {"nnunet_0", "nnunet_1"}


def _primary_names() -> set[str]:
    lines = (Path(__file__).parent / "data" / PRIMARY).read_text(encoding="utf-8").splitlines()
    rows = [line.split(",")[0] for line in lines if line and not line.startswith("#")]
    return set(rows[1:])


def test_totalsegmentator_label_names_resolve_to_tg263(example):
    """TotalSegmentator's 117 CT class names (its label_map file): 102 get a TG-263 primary name, the other 15
    (muscles, sternum, costal cartilages, kidney cysts, left atrial appendage) have none and are unmapped."""
    names = json.loads((example / "label_map_total_and_total_mr.json").read_text())["total"]
    labels = {int(v): n for v, n in names.items()}
    mapping = map_labels(labels)
    assert len(labels) == 117
    assert len(mapping.names) + len(mapping.unmapped) == 117 and not mapping.skipped
    assert set(mapping.names.values()) <= _primary_names()
    assert len(set(mapping.names.values())) == len(mapping.names)  # no two classes merged into one name
    by_label = {labels[v]: n for v, n in mapping.names.items()}
    for label, tg263 in {
        "spleen": "Spleen",
        "kidney_left": "Kidney_L",
        "urinary_bladder": "Bladder",
        "adrenal_gland_left": "Glnd_Adrenal_L",
        "lung_upper_lobe_left": "Lung_LUL",
        "aorta": "A_Aorta",
        "inferior_vena_cava": "V_Venacava_I",
        "spinal_cord": "SpinalCord",
        "rib_left_1": "Rib01_L",
        "vertebrae_T9": "VB_T09",
        "vertebrae_L1": "VB_L1",
        "hip_right": "Bone_Pelvic_R",
        "clavicula_left": "Clavicle_L",
    }.items():
        assert by_label[label] == tg263
    assert len(mapping.names) >= 102
    no_primary_name = {"sternum", "costal_cartilages", "atrial_appendage_left", "kidney_cyst_left"}
    no_primary_name |= {"kidney_cyst_right", "autochthon_left", "autochthon_right", "iliopsoas_left"}
    no_primary_name |= {"iliopsoas_right"} | {
        f"gluteus_{m}_{s}" for m in ("maximus", "medius", "minimus") for s in ("left", "right")
    }
    assert set(mapping.unmapped.values()) <= no_primary_name


def test_label_table_shows_what_each_label_becomes(model):
    rows = label_table(model, {"autochthon_left": "Musc_Back_L", "spleen": None})
    assert [(r["value"], r["label"], r["name"], r["status"]) for r in rows] == [
        (1, "liver", "Liver", "TG-263 table"),
        (2, "spleen", None, "skipped by label map"),
        (3, "autochthon_left", "Musc_Back_L", "label map"),
    ]
    assert label_table(model)[2]["status"] == "unmapped"


def test_model_folder_errors(model, tmp_path):
    with pytest.raises(ModelError, match="is not an nnU-Net v2 model folder"):
        open_model(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        open_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"fold_3/checkpoint_final.pth is missing \(folds with it: fold_0\)"):
        open_model(model, folds=[3])
    with pytest.raises(ModelError, match="no fold_N/checkpoint_best.pth"):
        open_model(model, checkpoint="checkpoint_best.pth")
    two = tmp_path / "Dataset993_Two"
    for config in ("2d", "3d_fullres"):
        shutil.copytree(model, two / f"nnUNetTrainer__nnUNetPlans__{config}")
    with pytest.raises(ModelError, match="holds several trained models"):
        open_model(two)
    with pytest.raises(ModelError, match="is a file: --model takes the nnU-Net model folder"):
        open_model(model / "fold_0" / "checkpoint_final.pth")
    shutil.copytree(model / "fold_0", two / "nnUNetTrainer__nnUNetPlans__2d" / "fold_1")
    assert open_model(two / "nnUNetTrainer__nnUNetPlans__2d").folds == [0, 1]  # every fold, as nnU-Net does
    broken = two / "nnUNetTrainer__nnUNetPlans__2d"
    (broken / "plans.json").write_text("{not json")
    with pytest.raises(ModelError, match="plans.json cannot be read"):
        open_model(broken)
    dataset = json.loads((model / "dataset.json").read_text())
    (broken / "plans.json").write_text((model / "plans.json").read_text())
    (broken / "dataset.json").write_text(json.dumps({**dataset, "channel_names": {"0": "CT", "1": "PET"}}))
    with pytest.raises(ModelError, match=r"takes 2 input channels \(CT, PET\)"):
        open_model(broken)
    (broken / "dataset.json").write_text(
        json.dumps({**dataset, "labels": {"background": 0, "tumour": [1, 2]}})
    )
    with pytest.raises(ModelError, match="region-based"):
        open_model(broken)


def test_damaged_checkpoints_give_one_line_errors(model, series, tmp_path):
    damaged = shutil.copytree(model, tmp_path / model.name)
    checkpoint = damaged / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match="nnU-Net cannot load this model") as caught:
        nnunet(series, damaged)
    assert "\n" not in str(caught.value)
    torch.save({"network_weights": {}}, checkpoint)  # no trainer name, no configuration
    with pytest.raises(ModelError, match="the checkpoint lacks 'trainer_name'"):
        nnunet(series, damaged)
    saved = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    torch.save({**saved, "trainer_name": "nnUNetTrainerFromElsewhere"}, checkpoint)
    with pytest.raises(ModelError, match="trainer class nnUNetTrainerFromElsewhere is not in nnunetv2"):
        nnunet(series, damaged)


def test_input_and_option_errors(model, series, tmp_path):
    flat = MedicalImage.from_array(np.zeros((64, 64), dtype=np.int16), modality="ct")
    with pytest.raises(ShapeError, match="single-channel 3D CT"):
        nnunet(flat, model)
    mr = MedicalImage.from_array(np.zeros((8, 32, 32), dtype=np.float32), modality="mr")
    with pytest.raises(OncoSegError, match="contours CT, but this image looks like mr"):
        nnunet(mr, model)
    with pytest.raises(OncoSegError, match="orientation 'XYZ'"):
        nnunet(series, model, orientation="xyz")
    with pytest.raises(OncoSegError, match="unknown organ 'Livr'"):
        nnunet(series, model, ["Livr"])
    with pytest.raises(OncoSegError, match="label map names 'livre'"):
        nnunet(series, model, label_map={"livre": "Liver"})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(OncoSegError, match="must be a JSON object"):
        read_label_map(tmp_path / "bad.json")


def test_missing_nnunetv2_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # what `import nnunetv2` meets when it is absent
    with pytest.raises(ModelError, match=r"pip install 'oncoseg\[nnunet\]'"):
        require_nnunet()


def test_cli_contour_with_the_nnunet_engine(model, example, result, tmp_path, capsys):
    from oncoseg.cli import main

    out = tmp_path / "oars.nii.gz"
    ct = str(example / "example_ct_dicom")
    assert main(["contour", ct, "--engine", "nnunet", "--model", str(model), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "Liver" in printed and "NOT DRAWN (1)" in printed and "Spleen" in printed
    assert "NO TG-263 NAME, NOT DRAWN (1" in printed and "autochthon_left" in printed
    sidecar = json.loads((tmp_path / "oars.json").read_text())
    assert sidecar["labels"] == {"1": "Liver"} and sidecar["engine"] == "nnunet"
    assert np.array_equal(load_image(out).array == 1, result.masks["Liver"])  # the API's result, written

    assert main(["contour", "--list", "--engine", "nnunet", "--model", str(model)]) == 0
    listing = capsys.readouterr().out
    assert "autochthon_left" in listing and "unmapped" in listing and "2 of 3 labels" in listing


def test_cli_nnunet_option_errors(model, example, tmp_path, capsys):
    from oncoseg.cli import main

    ct, out = str(example / "example_ct_dicom"), str(tmp_path / "oars.nii.gz")
    assert main(["contour", ct, "--engine", "nnunet", "-o", out]) == 2
    assert "needs a trained nnU-Net v2 model folder (--model DIR)" in capsys.readouterr().err
    assert main(["contour", ct, "--model", str(model), "-o", out]) == 2
    assert "are for the nnunet engine" in capsys.readouterr().err
    assert main(["contour", ct, "--engine", "nnunet", "--model", str(model), "--no-refine", "-o", out]) == 2
    assert "are for the atlas engine" in capsys.readouterr().err
    assert main(["contour", ct, "--engine", "nnunet", "--model", str(tmp_path), "-o", out]) == 2
    error = capsys.readouterr().err
    assert "is not an nnU-Net v2 model folder" in error and error.count("\n") == 1
    assert not (tmp_path / "oars.nii.gz").exists() and not (tmp_path / "oars.json").exists()
