"""Dataset registry, readers of the download layouts, and fixed splits.

Real files from ../shared/data where the point is the real layouts and counts; tiny synthetic folders in the
official layouts of the datasets that are not there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from oncoseg.data import (
    ENV_VAR,
    REGISTRY,
    SPLITS,
    data_root,
    datasets_table,
    format_datasets_table,
    get_info,
    get_split,
    open_dataset,
    paper_benchmarks,
)
from oncoseg.data.adapters import LAYOUTS
from oncoseg.data.registry import ROOT_HELP, config_path, root_source, save_data_root
from oncoseg.data.splits import SPLIT_DIR, committed_split, hash_order
from oncoseg.errors import OncoSegError
from oncoseg.modality import MODALITIES

REPO = Path(__file__).resolve().parents[1]

# Table 7 of the Onco-Seg preprint.
PAPER_DICE = {
    "busi": 0.752,
    "hyper-kvasir": 0.714,
    "kvasir-seg": 0.714,
    "isic2018": 0.680,
    "lits": 0.641,
    "ircadb": 0.621,
    "promise12": 0.495,
    "msd-colon": 0.330,
    "btcv": 0.303,
    "lndb": 0.264,
    "msd-pancreas": 0.239,
    "autopet": 0.215,
}
# Case counts of ../shared/data (its README; BUSI: 437 benign + 210 malignant + 40 normal).
SHARED_COUNTS = {
    "kvasir-seg": 1000,
    "busi": 687,
    "msd-hippocampus": 260,
    "brats2015": 4,
    "ircadb-liver-slices": 36,
    "totalsegmentator-example": 3,
}
NOT_SHARED = sorted(set(REGISTRY) - set(SHARED_COUNTS) - {"hyper-kvasir"})


@pytest.fixture(scope="module")
def opened(shared_data):
    return {name: open_dataset(name, shared_data) for name in SHARED_COUNTS}


_loaded: dict[str, tuple] = {}


def load_first(dataset, category: str | None = None):
    """The first case (of ``category``) of a dataset, loaded once per test session."""
    case = next(c for c in dataset.cases() if category in (None, c.category))
    key = f"{dataset.info.name}/{case.case_id}"
    if key not in _loaded:
        _loaded[key] = (case, *case.load())
    return _loaded[key]


# --- registry -----------------------------------------------------------------------------------------------


def test_registry_holds_the_twelve_paper_benchmarks_with_their_table_7_dice():
    assert {info.name: info.paper_dice for info in paper_benchmarks()} == PAPER_DICE
    assert paper_benchmarks()[0].name == "busi" and paper_benchmarks()[-1].name == "autopet"
    for name in set(REGISTRY) - set(PAPER_DICE):
        assert REGISTRY[name].paper_dice is None
    assert REGISTRY["hyper-kvasir"].alias_of == "kvasir-seg"


def test_every_dataset_has_a_reader_and_complete_facts():
    assert set(LAYOUTS) == set(REGISTRY)
    for info in REGISTRY.values():
        assert info.modality in MODALITIES and info.dim in ("2d", "3d")
        assert info.targets and info.folders and info.expected and info.citation and info.licence
        assert info.url.startswith("http")
    assert {REGISTRY[n].folder for n in SHARED_COUNTS} == {
        "kvasir-seg",
        "busi",
        "msd-task04-hippocampus",
        "brats2015-samples",
        "ircadb-liver-slices",
        "totalsegmentator-example",
    }
    assert get_info("Task04_Hippocampus").name == "msd-hippocampus"
    assert get_info(" Kvasir-SEG ").name == "kvasir-seg"
    with pytest.raises(OncoSegError, match="unknown dataset 'nope'; expected one of: kvasir-seg, "):
        get_info("nope")


# --- real data ----------------------------------------------------------------------------------------------


def test_shared_datasets_open_with_the_readme_counts(opened):
    assert {name: len(ds) for name, ds in opened.items()} == SHARED_COUNTS
    busi = opened["busi"].cases()
    assert Counter(c.category for c in busi) == {"benign": 437, "malignant": 210, "normal": 40}
    # The README's "18 extra masks" are 18 files on 17 images (benign (195) has _mask_1 and _mask_2).
    assert sum(len(c.label_paths) > 1 for c in busi) == 17
    assert sum(len(c.label_paths) - 1 for c in busi) == 18
    slices = opened["ircadb-liver-slices"].cases()
    # The README says 17 patients; the file names hold 16 (10001-10017 without 10004).
    assert len({c.patient_id for c in slices}) == 16
    assert slices[0].case_id == "10001_60" and slices[0].patient_id == "10001"
    assert len(open_dataset("hyper-kvasir", opened["kvasir-seg"].folder.parent)) == 1000


@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_one_case_per_shared_dataset_loads_with_matching_non_empty_masks(opened, name):
    info = REGISTRY[name]
    case, image, masks = load_first(opened[name], "benign" if name == "busi" else None)
    assert image.modality == case.modality
    assert set(info.targets) <= set(masks)
    for mask in masks.values():
        assert mask.dtype == bool and mask.shape == image.shape
    assert masks[info.targets[0]].any()
    assert image.is_3d == (info.dim == "3d")


def test_images_have_the_channels_preprocessing_expects(opened):
    _, polyp, _ = load_first(opened["kvasir-seg"])
    _, slice_, _ = load_first(opened["ircadb-liver-slices"])
    _, brain, _ = load_first(opened["brats2015"])
    assert polyp.channels == 3
    assert slice_.channels == 1 and slice_.array.ndim == 2 and slice_.modality == "ct"  # grey pixels in RGB
    assert brain.channels == 2 and brain.array.shape == (*brain.shape, 2)
    assert brain.metadata["channel_names"] == ["FLAIR", "T1c"]
    flair = load_first(opened["brats2015"])[0].image_paths[0]
    assert flair.name.startswith("Flair")
    np.testing.assert_array_equal(
        brain.array[..., 0], sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(flair)), "LPS"))
    )


def test_hippocampus_targets_follow_dataset_json(opened):
    _, _, masks = load_first(opened["msd-hippocampus"])
    assert set(masks) == {"Anterior", "Posterior", "whole"}
    assert not (masks["Anterior"] & masks["Posterior"]).any()
    np.testing.assert_array_equal(masks["whole"], masks["Anterior"] | masks["Posterior"])


def test_busi_extra_masks_are_united_and_normal_masks_are_empty(opened):
    busi = opened["busi"]
    case = busi.case("benign (195)")
    assert [p.name for p in case.label_paths] == [
        "benign (195)_mask.png",
        "benign (195)_mask_1.png",
        "benign (195)_mask_2.png",
    ]
    _, masks = case.load()
    files = [np.asarray(Image.open(p).convert("L")) > 127 for p in case.label_paths]
    np.testing.assert_array_equal(masks["lesion"], np.logical_or.reduce(files))
    assert masks["lesion"].sum() > files[0].sum()
    normal_case, _, normal = load_first(busi, "normal")
    assert normal_case.category == "normal" and not normal["lesion"].any()


def test_brats_regions_are_nested_on_a_real_case(opened):
    case, _, masks = load_first(opened["brats2015"])
    wt, tc, et = masks["WT"], masks["TC"], masks["ET"]
    assert et.any() and not (et & ~tc).any() and not (tc & ~wt).any() and tc.sum() < wt.sum()
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(case.label_paths[0])), "LPS"))
    np.testing.assert_array_equal(wt, labels > 0)
    np.testing.assert_array_equal(tc, np.isin(labels, [1, 3, 4]))


def test_totalsegmentator_example_masks_are_the_organs_present(opened):
    case, _, masks = load_first(opened["totalsegmentator-example"])
    label_map = json.loads(
        (case.image_paths[0].parent / "label_map_total_and_total_mr.json").read_text(encoding="utf-8")
    )
    assert set(masks) < set(label_map["total"].values())
    assert all(m.any() for m in masks.values()) and len(masks) > 20
    assert {c.case_id: c.modality for c in opened["totalsegmentator-example"].cases()} == {
        "ct": "ct",
        "ct_dicom": "ct",
        "mr": "mri",
    }


def test_datasets_table_reports_found_and_missing(shared_data):
    rows = {row["name"]: row for row in datasets_table(shared_data)}
    assert set(rows) == set(REGISTRY)
    for name, count in SHARED_COUNTS.items():
        assert rows[name]["found"] and rows[name]["n_cases"] == count and rows[name]["problem"] is None
    assert rows["hyper-kvasir"]["found"] and rows["hyper-kvasir"]["path"].endswith("kvasir-seg")
    for name in NOT_SHARED:
        assert not rows[name]["found"] and rows[name]["n_cases"] is None
        assert rows[name]["problem"].startswith(f"{name}: no {REGISTRY[name].folder}/ folder in ")
    for key in ("modality", "target", "dim", "path", "citation", "expected"):
        assert all(row[key] for row in rows.values())
    text = format_datasets_table(list(rows.values()))
    lines = text.splitlines()
    assert lines[0].split() == ["name", "modality", "dim", "target", "cases", "paper", "Dice", "path"]
    assert any(line.startswith("busi ") and " 687 " in line and "0.752" in line for line in lines)
    missing = [f"  {rows[n]['problem']}" for n in rows if n in NOT_SHARED]
    assert lines[lines.index("Not found:") + 1 :] == missing


# --- splits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_committed_splits_are_disjoint_cover_every_case_and_keep_patients_together(opened, name):
    document = committed_split(name)
    assert document["version"] == 1 and document["dataset"] == name
    parts = {s: set(document[s]) for s in SPLITS}
    assert {s: len(v) for s, v in parts.items()} == document["counts"]
    assert sum(map(len, parts.values())) == len(set().union(*parts.values()))
    cases = opened[name].cases()
    assert set().union(*parts.values()) == {c.case_id for c in cases}
    patient = {c.case_id: c.patient_id for c in cases}
    patients = {s: {patient[i] for i in ids} for s, ids in parts.items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    for split in SPLITS:
        assert [c.case_id for c in opened[name].cases(split)] == [
            c.case_id for c in cases if c.case_id in parts[split]
        ]
        assert get_split(name, split) == document[split]


def test_split_sizes_follow_the_rule(opened):
    counts = {name: committed_split(name)["counts"] for name in SHARED_COUNTS}
    assert counts["msd-hippocampus"] == {"train": 182, "val": 26, "test": 52}
    assert counts["brats2015"] == {"train": 2, "val": 1, "test": 1}
    assert counts["totalsegmentator-example"] == {"train": 0, "val": 0, "test": 3}
    slices = opened["ircadb-liver-slices"].cases("test")
    assert len({c.patient_id for c in slices}) == 3  # 20 % of 16 patients
    busi = Counter((c.category, split) for split in SPLITS for c in opened["busi"].cases(split))
    assert [busi["benign", s] for s in SPLITS] == [306, 44, 87]
    assert [busi["malignant", s] for s in SPLITS] == [147, 21, 42]
    assert [busi["normal", s] for s in SPLITS] == [28, 4, 8]


def test_kvasir_test_split_is_the_official_list(opened):
    folder = opened["kvasir-seg"].folder
    official = {
        s: set((folder / "splits" / f"{s}.txt").read_text(encoding="utf-8").split())
        for s in ("train", "test")
    }
    assert set(get_split("kvasir-seg", "test")) == official["test"] and len(official["test"]) == 100
    train, val = set(get_split("kvasir-seg", "train")), set(get_split("kvasir-seg", "val"))
    assert train | val == official["train"] and len(val) == 90
    assert get_split("hyper-kvasir", "test") == get_split("kvasir-seg", "test")
    assert sorted(val) == sorted(hash_order("kvasir-seg", official["train"])[:90])


def test_make_splits_script_reproduces_the_committed_files(tmp_path, shared_data):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_splits.py"),
            "--root",
            str(shared_data),
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    made = sorted(p.name for p in tmp_path.glob("*.json"))
    assert made == sorted(p.name for p in SPLIT_DIR.glob("*.json"))
    assert made == sorted(f"{n}.json" for n in SHARED_COUNTS)
    for name in made:
        assert (tmp_path / name).read_bytes() == (SPLIT_DIR / name).read_bytes()


def test_hash_order_is_a_fixed_function_of_the_ids():
    ids = [f"p{i}" for i in range(10)]
    expected = sorted(ids, key=lambda i: hashlib.sha256(f"salt:{i}".encode()).hexdigest())
    assert hash_order("salt", ids) == hash_order("salt", list(reversed(ids))) == expected
    assert hash_order("other", ids) != expected


def test_unknown_split_name_is_rejected(opened):
    with pytest.raises(OncoSegError, match="unknown split 'testing'; expected one of: train, val, test"):
        opened["busi"].cases("testing")


# --- synthetic folders in the official layouts --------------------------------------------------------------

LABELS = np.zeros((4, 5, 6), np.uint8)
LABELS[1:3, 1:4, 2:5] = 1
LABELS[2, 2, 3:5] = 2


def write_volume(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path))


def write_picture(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def ct(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 400, LABELS.shape).astype(np.int16)


def write_pairs_2d(image_dir: Path, mask_dir: Path, names: list[tuple[str, str]]) -> None:
    """RGB pictures with a 0/255 box mask; ``names`` are (image file, mask file)."""
    for seed, (image, mask) in enumerate(names):
        write_picture(image_dir / image, np.random.default_rng(seed).integers(0, 255, (16, 20, 3), np.uint8))
        box = np.zeros((16, 20), np.uint8)
        box[4:12, 5:15] = 255
        write_picture(mask_dir / mask, box)


def write_dicom_series(folder: Path, volume: np.ndarray) -> None:
    """One file per slice, named like 3D-IRCADb's (``image_0``, no extension)."""
    folder.mkdir(parents=True)
    series = f"1.2.826.0.1.3680043.2.1125.{zlib.crc32(str(folder).encode())}"
    for k, plane in enumerate(volume.astype(np.int16)):
        slice_ = sitk.GetImageFromArray(plane)
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.5 * k:g}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.8\\0.8",
            "0008|0018": f"{series}.{k}",
        }.items():
            slice_.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"image_{k}"))
        writer.Execute(slice_)


def msd_folder(folder: Path, task: str, labels: dict[str, str], n: int) -> None:
    training = []
    for i in range(n):
        write_volume(folder / "imagesTr" / f"{task}_{i:03d}.nii.gz", ct(i))
        write_volume(folder / "labelsTr" / f"{task}_{i:03d}.nii.gz", LABELS)
        training.append(
            {"image": f"./imagesTr/{task}_{i:03d}.nii.gz", "label": f"./labelsTr/{task}_{i:03d}.nii.gz"}
        )
    (folder / "imagesTr" / f"._{task}_000.nii.gz").write_bytes(b"\0")  # macOS junk shipped in the MSD tars
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))


def make_isic2018(root: Path, n: int = 2) -> None:
    base = root / "isic2018"
    write_pairs_2d(
        base / "ISIC2018_Task1-2_Training_Input",
        base / "ISIC2018_Task1_Training_GroundTruth",
        [(f"ISIC_{i:07d}.jpg", f"ISIC_{i:07d}_segmentation.png") for i in range(n)],
    )


def make_hyper_kvasir(root: Path) -> None:
    base = root / "hyper-kvasir" / "segmented-images"
    write_pairs_2d(base / "images", base / "masks", [(f"{c}.jpg", f"{c}.jpg") for c in ("cju0", "cju1")])


def make_cvc_clinicdb(root: Path) -> None:
    base = root / "cvc-clinicdb"
    write_pairs_2d(base / "Original", base / "Ground Truth", [(f"{i}.tif", f"{i}.tif") for i in (1, 2)])


def make_lits(root: Path) -> None:
    for i in (0, 1):
        batch = root / "lits" / f"Training Batch {i + 1}"
        write_volume(batch / f"volume-{i}.nii", ct(i))
        write_volume(batch / f"segmentation-{i}.nii", LABELS)


def make_ircadb(root: Path) -> None:
    for i in (1, 2):
        patient = root / "ircadb" / f"3Dircadb1.{i}"
        write_dicom_series(patient / "PATIENT_DICOM", ct(i))
        write_dicom_series(patient / "MASKS_DICOM" / "liver", (LABELS > 0) * 255)


def make_promise12(root: Path) -> None:
    for i in (0, 1):
        part = root / "promise12" / f"TrainingData_Part{i + 1}"
        write_volume(part / f"Case{i:02d}.mhd", ct(i))
        write_volume(part / f"Case{i:02d}_segmentation.mhd", (LABELS > 0).astype(np.uint8))


def make_btcv(root: Path) -> None:
    for i in (1, 2):
        base = root / "btcv" / "RawData" / "Training"
        write_volume(base / "img" / f"img{i:04d}.nii.gz", ct(i))
        write_volume(base / "label" / f"label{i:04d}.nii.gz", LABELS)


def make_lndb(root: Path) -> None:
    for i in (1, 2):
        write_volume(root / "lndb" / "data0" / f"LNDb-{i:04d}.mhd", ct(i))
        write_volume(root / "lndb" / "masks" / f"LNDb-{i:04d}_rad1.mhd", LABELS * 3)  # nodule finding ids
        write_volume(root / "lndb" / "masks" / f"LNDb-{i:04d}_rad2.mhd", np.zeros_like(LABELS))


def make_autopet(root: Path) -> None:
    base = root / "autopet"
    studies = ("fdg_aaaa_01-01-2000-NA", "fdg_aaaa_02-02-2001-NA", "psma_bbbb_03-03-2002-NA")
    for seed, case in enumerate(studies):
        write_volume(base / "imagesTr" / f"{case}_0000.nii.gz", ct(seed))
        write_volume(base / "imagesTr" / f"{case}_0001.nii.gz", np.full(LABELS.shape, 7.5, np.float32))
        write_volume(base / "labelsTr" / f"{case}.nii.gz", (LABELS > 0).astype(np.uint8))
    (base / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT", "1": "PET"},
                "labels": {"background": 0, "tumor": 1},
                "numTraining": 3,
                "file_ending": ".nii.gz",
            }
        )
    )


def make_brats2021(root: Path) -> None:
    labels = np.zeros_like(LABELS)
    labels[1:3, 1:4, 1:5] = 2
    labels[1:3, 2:3, 2:4] = 1
    labels[2, 2, 3] = 4
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        folder = root / "brats2021" / case
        for value, sequence in enumerate(("flair", "t1", "t1ce", "t2"), start=1):
            write_volume(folder / f"{case}_{sequence}.nii.gz", np.full(LABELS.shape, value, np.float32))
        write_volume(folder / f"{case}_seg.nii.gz", labels)


BUILDERS = {
    "isic2018": make_isic2018,
    "hyper-kvasir": make_hyper_kvasir,
    "cvc-clinicdb": make_cvc_clinicdb,
    "lits": make_lits,
    "ircadb": make_ircadb,
    "promise12": make_promise12,
    "msd-colon": lambda root: msd_folder(
        root / "Task10_Colon", "colon", {"0": "background", "1": "colon cancer primaries"}, 2
    ),
    "btcv": make_btcv,
    "lndb": make_lndb,
    "msd-pancreas": lambda root: msd_folder(
        root / "msd-pancreas", "pancreas", {"0": "background", "1": "pancreas", "2": "cancer"}, 2
    ),
    "autopet": make_autopet,
    "brats2021": make_brats2021,
}


def test_every_dataset_without_shared_data_has_a_synthetic_layout_here():
    assert set(BUILDERS) == set(NOT_SHARED) | {"hyper-kvasir"}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_registry_only_dataset_in_an_empty_folder_says_what_is_missing(tmp_path, name):
    info = REGISTRY[name]
    with pytest.raises(OncoSegError) as error:
        open_dataset(name, tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"{name}: no {info.folder}/ folder in {tmp_path}; expected {info.expected}; get it from {info.url}"
    )


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_registry_only_dataset_loads_from_its_official_layout(tmp_path, name):
    BUILDERS[name](tmp_path)
    dataset = open_dataset(name, tmp_path)
    info = dataset.info
    assert len(dataset) == (3 if name == "autopet" else 2)
    for case in dataset.cases():
        image, masks = case.load()
        assert image.modality == info.modality
        assert set(masks) == set(info.targets)
        assert all(m.shape == image.shape and m.dtype == bool for m in masks.values())
        assert masks[info.targets[0]].any()
        if info.dim == "3d" and name != "brats2021":
            expected = LABELS == 1 if name in ("btcv", "msd-colon") else LABELS > 0  # btcv: spleen = label 1
            np.testing.assert_array_equal(masks[info.targets[0]], expected)
    if committed_split(name) is None:  # hyper-kvasir shares Kvasir-SEG's committed split
        split = {s: {c.case_id for c in dataset.cases(s)} for s in SPLITS}
        assert set().union(*split.values()) == {c.case_id for c in dataset.cases()}


def test_lits_regions_in_both_official_layouts(tmp_path):
    make_lits(tmp_path / "a")
    msd_folder(tmp_path / "b" / "Task03_Liver", "liver", {"0": "background", "1": "liver", "2": "cancer"}, 1)
    for root in (tmp_path / "a", tmp_path / "b" / "Task03_Liver"):  # the second: root holds the layout itself
        _, masks = open_dataset("lits", root).cases()[0].load()
        np.testing.assert_array_equal(masks["liver"], LABELS > 0)
        np.testing.assert_array_equal(masks["tumour"], LABELS == 2)
    assert [c.case_id for c in open_dataset("lits", tmp_path / "a").cases()] == ["volume-0", "volume-1"]


def test_brats2021_channels_and_regions(tmp_path):
    make_brats2021(tmp_path)
    case = open_dataset("brats2021", tmp_path).cases()[0]
    image, masks = case.load()
    assert image.channels == 4 and image.metadata["channel_names"] == ["FLAIR", "T1w", "T1gd", "T2w"]
    assert [float(image.array[0, 0, 0, c]) for c in range(4)] == [1.0, 2.0, 3.0, 4.0]  # flair, t1, t1ce, t2
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label_paths[0])))
    assert masks["WT"].sum() == (labels > 0).sum() and masks["TC"].sum() == np.isin(labels, [1, 4]).sum()
    assert masks["ET"].sum() == 1


def test_autopet_keeps_a_patients_studies_together_and_stacks_ct_pet(tmp_path):
    make_autopet(tmp_path)
    dataset = open_dataset("autopet", tmp_path)
    assert Counter(c.patient_id for c in dataset.cases()) == {"fdg_aaaa": 2, "psma_bbbb": 1}
    image, _ = dataset.cases()[0].load()
    assert image.channels == 2 and image.metadata["channel_names"] == ["CT", "PET"]
    assert np.all(image.array[..., 1] == 7.5)


def test_lndb_uses_the_first_radiologists_mask(tmp_path):
    make_lndb(tmp_path)
    case = open_dataset("lndb", tmp_path).cases()[0]
    assert [p.name for p in case.label_paths] == ["LNDb-0001_rad1.mhd"]


def test_registry_only_split_follows_the_rule(tmp_path):
    make_isic2018(tmp_path, n=10)
    dataset = open_dataset("isic2018", tmp_path)
    test, val = get_split("isic2018", "test", tmp_path), get_split("isic2018", "val", tmp_path)
    order = hash_order("isic2018", [c.case_id for c in dataset.cases()])
    assert sorted(test) == sorted(order[:2]) and sorted(val) == sorted(order[2:3])
    assert [c.case_id for c in dataset.cases("train")] == sorted(order[3:])


def test_data_root_comes_from_argument_then_environment_then_cwd(tmp_path, monkeypatch):
    make_isic2018(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no saved setting
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert data_root() == tmp_path and len(open_dataset("isic2018")) == 2
    assert data_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.chdir(REPO)
    assert data_root() == REPO.parent / "shared" / "data"
    monkeypatch.chdir(tmp_path)  # the default is found from the repository, not the current folder
    assert data_root() == REPO.parent / "shared" / "data"
    with pytest.raises(OncoSegError, match=r"^isic2018: data root .*nowhere does not exist \(pass root or "):
        open_dataset("isic2018", tmp_path / "nowhere")


def test_a_saved_data_root_is_found_from_any_folder_and_the_environment_still_wins(tmp_path, monkeypatch):
    data, elsewhere = tmp_path / "my data", tmp_path / "elsewhere"
    make_isic2018(data)
    elsewhere.mkdir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(elsewhere)
    assert root_source() == "the default beside the repository"
    assert save_data_root(data) == data and config_path() == tmp_path / "config" / "oncoseg" / "config.json"
    assert data_root() == data and len(open_dataset("isic2018")) == 2  # from a folder with no data near it
    assert root_source().startswith("the setting in ")
    monkeypatch.setenv(ENV_VAR, str(elsewhere))
    assert data_root() == elsewhere and root_source() == f"from ${ENV_VAR}"
    with pytest.raises(OncoSegError, match=r"^--set-root .*nowhere: no such folder$"):
        save_data_root(tmp_path / "nowhere")
    assert json.loads(config_path().read_text(encoding="utf-8")) == {"data_root": str(data)}  # kept as it was
    config_path().write_text("{not json", encoding="utf-8")
    monkeypatch.delenv(ENV_VAR)
    with pytest.raises(
        OncoSegError, match=r"config.json: cannot be read as Onco-Seg settings .*fix or delete it$"
    ):
        data_root()
    assert "--set-root DIR" in ROOT_HELP and ENV_VAR in ROOT_HELP


# --- incomplete folders ------------------------------------------------------------------------------------


def test_incomplete_2d_folders_name_what_is_missing(tmp_path):
    write_picture(tmp_path / "kvasir-seg" / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OncoSegError, match=r"^kvasir-seg: no masks/ folder in .*kvasir-seg; expected image"):
        open_dataset("kvasir-seg", tmp_path)
    kvasir = tmp_path / "kvasir-seg"
    write_pairs_2d(kvasir / "images", kvasir / "masks", [("a.jpg", "a.jpg")])
    write_picture(tmp_path / "kvasir-seg" / "images" / "b.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(OncoSegError, match=r"no label file for 1 of 2 images \(first: images/b.jpg\) in "):
        open_dataset("kvasir-seg", tmp_path)
    (tmp_path / "kvasir-seg" / "images" / "b.jpg").unlink()
    write_picture(tmp_path / "kvasir-seg" / "masks" / "a.jpg", np.zeros((9, 8), np.uint8))
    with pytest.raises(OncoSegError, match=r"^kvasir-seg case a: label a.jpg has shape \(9, 8\) but the "):
        open_dataset("kvasir-seg", tmp_path).cases()[0].load()


def test_incomplete_msd_and_brats_folders_name_what_is_missing(tmp_path):
    hippocampus = tmp_path / "msd-task04-hippocampus"
    msd_folder(hippocampus, "hippocampus", {"0": "background", "1": "Anterior", "2": "Posterior"}, 2)
    (hippocampus / "labelsTr" / "hippocampus_001.nii.gz").unlink()
    with pytest.raises(
        OncoSegError,
        match=r"^msd-hippocampus: 1 image/label files missing \(first: "
        r"labelsTr/hippocampus_001.nii.gz\) in .*; get it from http",
    ):
        open_dataset("msd-hippocampus", tmp_path)
    for path in (hippocampus / "labelsTr").iterdir():
        path.unlink()
    (hippocampus / "labelsTr").rmdir()
    with pytest.raises(OncoSegError, match=r"^msd-hippocampus: no labelsTr/ in "):
        open_dataset("msd-hippocampus", tmp_path)

    make_brats2021(tmp_path)
    (tmp_path / "brats2021" / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    with pytest.raises(
        OncoSegError,
        match=r"^brats2021: 1 of 2 case folders incomplete \(first missing: "
        r"BraTS2021_00002/BraTS2021_00002_t1ce.nii.gz\) in ",
    ):
        open_dataset("brats2021", tmp_path)
