"""What Onco-Seg knows about each evaluation/training dataset: modality, targets, layout, source, paper Dice.

The twelve benchmarks of the Onco-Seg preprint (Table 7) are registered with the Dice the paper reports,
next to CVC-ClinicDB and the datasets kept in ``../shared/data`` for tests. Reading the files is the job of
`oncoseg.data.adapters`; this module holds plain facts only and imports nothing heavy.

Where the data is (`data_root`, the one place that decides it for datasets, evaluation, training and the
contour atlas): the ``root`` a caller passes (``--root``/``--data``), else the folder in the environment
variable ``ONCOSEG_DATA``, else the user setting saved by ``oncoseg datasets --set-root DIR`` (``data_root`` in
``$XDG_CONFIG_HOME/oncoseg/config.json``, default ``~/.config/oncoseg/config.json``), else ``shared/data``
beside the source checkout (``<repository>/../shared/data``, found from this file). The current folder never
matters.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from oncoseg.errors import OncoSegError
from oncoseg.modality import MODALITIES

ENV_VAR = "ONCOSEG_DATA"
REPOSITORY = Path(__file__).resolve().parents[3]  # src/oncoseg/data/registry.py -> the checkout
DEFAULT_DATA_ROOT = REPOSITORY.parent / "shared" / "data"


ROOT_HELP = (
    f"set it with `oncoseg datasets --set-root DIR` (saved for every later command) or the environment variable "
    f"{ENV_VAR}=DIR, or pass --root/--data DIR"
)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$ONCOSEG_DATA``, else the saved user setting (`save_data_root`), else
    `DEFAULT_DATA_ROOT` (beside the repository; never the current folder). The folder may not exist: readers
    say so in one line (`ROOT_HELP` says how to set it)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return saved_data_root() or DEFAULT_DATA_ROOT


def root_source(root: str | os.PathLike | None = None, saved: bool = False) -> str:
    """Where `data_root` (``root``) comes from, in words; with ``saved``: the settings file."""
    if saved:
        return str(config_path())
    if root is not None:
        return "given"
    if os.environ.get(ENV_VAR):
        return f"from ${ENV_VAR}"
    if saved_data_root() is not None:
        return f"the setting in {config_path()}"
    return "the default beside the repository"


def config_path() -> Path:
    """The user settings file: ``$XDG_CONFIG_HOME/oncoseg/config.json`` (default ``~/.config/oncoseg/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "oncoseg" / "config.json"


def saved_data_root() -> Path | None:
    """The data root saved by `save_data_root`, or None; an unreadable settings file is a one-line error."""
    path = config_path()
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("data_root")
    except (OSError, ValueError, AttributeError) as exc:
        raise OncoSegError(
            f"{path}: cannot be read as Onco-Seg settings ({type(exc).__name__}): fix or delete it"
        )
    return Path(value) if isinstance(value, str) and value else None


def save_data_root(folder: str | os.PathLike) -> Path:
    """Save ``folder`` (an existing folder, stored as an absolute path) as the data root in the user settings
    (other settings in the file are kept). Returns the folder."""
    from oncoseg.io.write import atomic_write_path

    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise OncoSegError(f"--set-root {folder}: no such folder")
    path = config_path()
    settings = {}
    if path.is_file():
        saved_data_root()  # a damaged file is reported, not overwritten
        settings = json.loads(path.read_text(encoding="utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path) as temporary:
        temporary.write_text(json.dumps({**settings, "data_root": str(folder)}, indent=2), encoding="utf-8")
    return folder


MSD = "Antonelli M. et al., The Medical Segmentation Decathlon, Nature Communications 13:4128 (2022)"
MSD_URL = "http://medicaldecathlon.com/"
MSD_LICENCE = "CC BY-SA 4.0"
BRATS_TARGETS = ("WT", "TC", "ET")
BTCV_ORGANS = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
)


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset. ``targets`` are the keys of the masks `Case.load` returns; the first is the main one."""

    name: str
    title: str
    modality: str
    target: str
    targets: tuple[str, ...]
    dim: str
    layout: str
    expected: str
    folders: tuple[str, ...]
    citation: str
    licence: str
    url: str
    paper_dice: float | None = None
    categories: tuple[str, ...] = ()
    alias_of: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"{self.name}: unknown modality {self.modality!r}")
        if self.dim not in ("2d", "3d"):
            raise ValueError(f"{self.name}: dim must be '2d' or '3d', got {self.dim!r}")

    @property
    def folder(self) -> str:
        """The default folder name under a data root."""
        return self.folders[0]


_ALL = (
    DatasetInfo(
        name="kvasir-seg",
        title="Kvasir-SEG",
        modality="endoscopy",
        target="polyp",
        targets=("polyp",),
        dim="2d",
        layout="image/mask folders",
        expected="images/<id>.jpg + masks/<id>.jpg (optional splits/test.txt, splits/train.txt)",
        folders=("kvasir-seg", "Kvasir-SEG"),
        citation="Jha D. et al., Kvasir-SEG: A Segmented Polyp Dataset, MMM 2020",
        licence="research and educational use; cite the paper",
        url="https://datasets.simula.no/kvasir-seg/",
        paper_dice=0.714,
    ),
    DatasetInfo(
        name="hyper-kvasir",
        title="HyperKvasir (segmented images)",
        modality="endoscopy",
        target="polyp",
        targets=("polyp",),
        dim="2d",
        layout="image/mask folders",
        expected="segmented-images/images/<id>.jpg + segmented-images/masks/<id>.jpg",
        folders=("hyper-kvasir/segmented-images", "kvasir-seg"),
        citation="Borgli H. et al., HyperKvasir, a comprehensive multi-class image and video dataset for "
        "gastrointestinal endoscopy, Scientific Data 7:283 (2020)",
        licence="CC BY 4.0",
        url="https://datasets.simula.no/hyper-kvasir/",
        paper_dice=0.714,
        alias_of="kvasir-seg",
        notes="its 1000 segmented images are Kvasir-SEG (the paper reports identical Dice); falls back to "
        "the kvasir-seg folder and shares its split",
    ),
    DatasetInfo(
        name="busi",
        title="Breast Ultrasound Images (BUSI)",
        modality="ultrasound",
        target="breast lesion",
        targets=("lesion",),
        dim="2d",
        layout="class folders",
        expected="{benign,malignant,normal}/<class> (N).png + <class> (N)_mask*.png (extra masks: union)",
        folders=("busi", "Dataset_BUSI_with_GT"),
        citation="Al-Dhabyani W. et al., Dataset of breast ultrasound images, Data in Brief 28:104863 (2020)",
        licence="CC0 1.0 (public mirror)",
        url="https://www.kaggle.com/datasets/aryashah2k/breast-ultrasound-images-dataset",
        paper_dice=0.752,
        categories=("benign", "malignant", "normal"),
        notes="normal images have empty masks",
    ),
    DatasetInfo(
        name="isic2018",
        title="ISIC 2018 Task 1",
        modality="dermoscopy",
        target="skin lesion",
        targets=("lesion",),
        dim="2d",
        layout="image/mask folders",
        expected="ISIC2018_Task1-2_Training_Input/ISIC_<n>.jpg + "
        "ISIC2018_Task1_Training_GroundTruth/ISIC_<n>_segmentation.png",
        folders=("isic2018", "ISIC2018"),
        citation="Codella N. et al., Skin Lesion Analysis Toward Melanoma Detection 2018, arXiv:1902.03368",
        licence="CC BY-NC 4.0",
        url="https://challenge.isic-archive.com/data/#2018",
        paper_dice=0.680,
    ),
    DatasetInfo(
        name="cvc-clinicdb",
        title="CVC-ClinicDB",
        modality="endoscopy",
        target="polyp",
        targets=("polyp",),
        dim="2d",
        layout="image/mask folders",
        expected="Original/<n>.tif|png + 'Ground Truth'/<n>.tif|png",
        folders=("cvc-clinicdb", "CVC-ClinicDB"),
        citation="Bernal J. et al., WM-DOVA maps for accurate polyp highlighting in colonoscopy, "
        "Computerized Medical Imaging and Graphics 43:99-111 (2015)",
        licence="research use; cite the paper",
        url="https://polyp.grand-challenge.org/CVCClinicDB/",
        notes="612 frames of 29 videos: without the video ids the split is per frame",
    ),
    DatasetInfo(
        name="lits",
        title="Liver Tumor Segmentation (LiTS)",
        modality="ct",
        target="liver",
        targets=("liver", "tumour"),
        dim="3d",
        layout="LiTS volumes or MSD Task03",
        expected="volume-<n>.nii + segmentation-<n>.nii (also in 'Training Batch 1/2'), labels 1 liver "
        "2 tumour; or MSD Task03_Liver (dataset.json, imagesTr/, labelsTr/)",
        folders=("lits", "LiTS", "Task03_Liver"),
        citation="Bilic P. et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis "
        "84:102680 (2023)",
        licence="CC BY-NC-ND 4.0 (LiTS); CC BY-SA 4.0 (MSD Task03)",
        url="https://competitions.codalab.org/competitions/17094",
        paper_dice=0.641,
        notes="'liver' includes the tumour (labels 1 and 2)",
    ),
    DatasetInfo(
        name="ircadb",
        title="3D-IRCADb-01",
        modality="ct",
        target="liver",
        targets=("liver",),
        dim="3d",
        layout="DICOM folders",
        expected="3Dircadb1.<n>/PATIENT_DICOM/ + 3Dircadb1.<n>/MASKS_DICOM/liver/ (unzip PATIENT_DICOM.zip "
        "and MASKS_DICOM.zip)",
        folders=("ircadb", "3Dircadb1"),
        citation="Soler L. et al., 3D image reconstruction for comparison of algorithm database "
        "(3D-IRCADb-01), IRCAD (2010)",
        licence="IRCAD terms: research use, cite the source",
        url="https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/",
        paper_dice=0.621,
    ),
    DatasetInfo(
        name="promise12",
        title="PROMISE12",
        modality="mri",
        target="prostate",
        targets=("prostate",),
        dim="3d",
        layout="MetaImage pairs",
        expected="Case<nn>.mhd + Case<nn>_segmentation.mhd (flat or in TrainingData_Part1..3/)",
        folders=("promise12", "PROMISE12"),
        citation="Litjens G. et al., Evaluation of prostate segmentation algorithms for MRI: the PROMISE12 "
        "challenge, Medical Image Analysis 18:359-373 (2014)",
        licence="challenge terms: research use",
        url="https://promise12.grand-challenge.org/",
        paper_dice=0.495,
    ),
    DatasetInfo(
        name="msd-colon",
        title="MSD Task10 Colon",
        modality="ct",
        target="colon cancer primary",
        targets=("tumour",),
        dim="3d",
        layout="MSD",
        expected="dataset.json, imagesTr/, labelsTr/ (label 1 tumour)",
        folders=("msd-colon", "Task10_Colon"),
        citation=MSD,
        licence=MSD_LICENCE,
        url=MSD_URL,
        paper_dice=0.330,
    ),
    DatasetInfo(
        name="btcv",
        title="BTCV Multi-Atlas Abdomen",
        modality="ct",
        target="13 abdominal organs",
        targets=BTCV_ORGANS,
        dim="3d",
        layout="img/label folders",
        expected="[RawData/Training/]img/img<nnnn>.nii.gz + label/label<nnnn>.nii.gz (labels 1-13)",
        folders=("btcv", "BTCV"),
        citation="Landman B. et al., MICCAI 2015 Multi-Atlas Labeling Beyond the Cranial Vault (BTCV)",
        licence="Synapse terms: registration, research use",
        url="https://www.synapse.org/#!Synapse:syn3193805",
        paper_dice=0.303,
        notes="the paper's Dice is over 13 organs",
    ),
    DatasetInfo(
        name="lndb",
        title="LNDb",
        modality="ct",
        target="lung nodule",
        targets=("nodule",),
        dim="3d",
        layout="MetaImage + radiologist masks",
        expected="data<k>/LNDb-<nnnn>.mhd (or flat) + masks/LNDb-<nnnn>_rad<r>.mhd (first radiologist used)",
        folders=("lndb", "LNDb"),
        citation="Pedrosa J. et al., LNDb: A Lung Nodule Database on Computed Tomography, arXiv:1911.08434",
        licence="CC BY-NC-ND 4.0",
        url="https://lndb.grand-challenge.org/",
        paper_dice=0.264,
    ),
    DatasetInfo(
        name="msd-pancreas",
        title="MSD Task07 Pancreas",
        modality="ct",
        target="pancreas and tumour",
        targets=("pancreas", "tumour"),
        dim="3d",
        layout="MSD",
        expected="dataset.json, imagesTr/, labelsTr/ (labels 1 pancreas 2 tumour)",
        folders=("msd-pancreas", "Task07_Pancreas"),
        citation=MSD,
        licence=MSD_LICENCE,
        url=MSD_URL,
        paper_dice=0.239,
        notes="'pancreas' includes the tumour (labels 1 and 2)",
    ),
    DatasetInfo(
        name="autopet",
        title="autoPET III (FDG/PSMA PET-CT)",
        modality="pet",
        target="tumour lesions",
        targets=("lesion",),
        dim="3d",
        layout="nnU-Net v2",
        expected="dataset.json, imagesTr/<case>_0000.nii.gz (CT) + <case>_0001.nii.gz (PET), "
        "labelsTr/<case>.nii.gz",
        folders=("autopet", "Dataset221_autoPETIII_2024"),
        citation="Gatidis S. et al., A whole-body FDG-PET/CT dataset with manually annotated tumor lesions, "
        "Scientific Data 9:601 (2022)",
        licence="CC BY 4.0",
        url="https://autopet-iii.grand-challenge.org/",
        paper_dice=0.215,
        notes="patient = '<tracer>_<patient hash>' so a patient's studies stay in one split",
    ),
    DatasetInfo(
        name="msd-hippocampus",
        title="MSD Task04 Hippocampus",
        modality="mri",
        target="hippocampus",
        targets=("whole", "Anterior", "Posterior"),
        dim="3d",
        layout="MSD",
        expected="dataset.json, imagesTr/, labelsTr/ (labels 1 anterior 2 posterior)",
        folders=("msd-task04-hippocampus", "msd-hippocampus", "Task04_Hippocampus"),
        citation=MSD,
        licence=MSD_LICENCE,
        url=MSD_URL,
        notes="55 images were rescaled to uint8 by the copy in ../shared/data: normalise per case",
    ),
    DatasetInfo(
        name="brats2015",
        title="BraTS 2015 (FLAIR + T1c samples)",
        modality="mri",
        target="glioma",
        targets=BRATS_TARGETS,
        dim="3d",
        layout="BraTS case folders",
        expected="<case>/Flair_subtrMeanDivStd.nii.gz, T1c_subtrMeanDivStd.nii.gz, OTMultiClass.nii.gz",
        folders=("brats2015-samples", "brats2015"),
        citation="Menze B. et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), "
        "IEEE TMI 34:1993-2024 (2015)",
        licence="CC BY-NC-SA 3.0",
        url="https://www.smir.ch/BRATS/Start2015",
        notes="channels [FLAIR, T1c]; WT = labels 1-4, TC = 1, 3, 4, ET = 4",
    ),
    DatasetInfo(
        name="brats2021",
        title="BraTS 2021 (RSNA-ASNR-MICCAI)",
        modality="mri",
        target="glioma",
        targets=BRATS_TARGETS,
        dim="3d",
        layout="BraTS case folders",
        expected="<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz",
        folders=("brats2021", "BraTS2021_Training_Data"),
        citation="Baid U. et al., The RSNA-ASNR-MICCAI BraTS 2021 Benchmark on Brain Tumor Segmentation and "
        "Radiogenomic Classification, arXiv:2107.02314",
        licence="BraTS data-use terms (Synapse)",
        url="https://www.synapse.org/#!Synapse:syn25829067",
        notes="channels [FLAIR, T1w, T1gd, T2w]; WT = labels 1, 2, 4, TC = 1, 4, ET = 4 (2017-2021 labels)",
    ),
    DatasetInfo(
        name="ircadb-liver-slices",
        title="3D-IRCADb liver slices (2D derived set)",
        modality="ct",
        target="liver",
        targets=("liver",),
        dim="2d",
        layout="image/mask folders",
        expected="images/<patient>_<slice>.png + masks/<patient>_<slice>.png",
        folders=("ircadb-liver-slices",),
        citation="3D-IRCADb-01 (IRCAD), slices from a public derived set",
        licence="CDLA-Sharing-1.0 (derived set)",
        url="https://www.ircad.fr/research/data-sets/liver-segmentation-3d-ircadb-01/",
        notes="PNG slices already windowed and rotated 90 degrees clockwise; split by patient",
    ),
    DatasetInfo(
        name="totalsegmentator-example",
        title="TotalSegmentator example files",
        modality="ct",
        target="117-class body map",
        targets=("liver",),
        dim="3d",
        layout="TotalSegmentator example",
        expected="example_ct_sm.nii.gz + example_seg.nii.gz, example_ct_dicom/ + example_seg_dicom.nii.gz, "
        "example_mr_sm.nii.gz + example_seg_mr.nii.gz, label_map_total_and_total_mr.json",
        folders=("totalsegmentator-example",),
        citation="Wasserthal J. et al., TotalSegmentator: robust segmentation of 104 anatomic structures "
        "in CT images, Radiology: Artificial Intelligence 5:e230024 (2023)",
        licence="Apache-2.0",
        url="https://github.com/wasserth/TotalSegmentator",
        notes="labels are TotalSegmentator's predictions, not ground truth; one mask per organ present",
    ),
)

REGISTRY: dict[str, DatasetInfo] = {info.name: info for info in _ALL}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for a dataset name or one of its folder names (case-insensitive)."""
    key = name.strip().lower()
    if key in REGISTRY:
        return REGISTRY[key]
    for info in REGISTRY.values():
        if key in (f.lower() for f in info.folders):
            return info
    raise OncoSegError(f"unknown dataset {name!r}; expected one of: {', '.join(REGISTRY)}")


def paper_benchmarks() -> list[DatasetInfo]:
    """The datasets of the preprint's Table 7 (those with a paper Dice), best Dice first."""
    return sorted((i for i in REGISTRY.values() if i.paper_dice is not None), key=lambda i: -i.paper_dice)
