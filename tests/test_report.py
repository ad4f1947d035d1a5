"""Reports of evaluation folders, built here from real cases with synthetic predictions (no model)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from oncoseg.data import open_dataset
from oncoseg.errors import OncoSegError
from oncoseg.evaluate.metrics import score
from oncoseg.evaluate.protocols import Protocol
from oncoseg.evaluate.report import (
    BOX,
    EXCLUDE,
    INCLUDE,
    TRUTH,
    pick_cases,
    render_case,
    results_table,
    shown_slice,
    write_report,
)
from oncoseg.evaluate.results import ResultStore, read_rows, save_prediction

pytest.importorskip("matplotlib")

KVASIR_EROSIONS = (12, 0, 60, 4)  # pixels eroded per case: 0 gives Dice 1 (best), 60 the worst


def damage(truth: np.ndarray, iterations: int) -> np.ndarray:
    """A 'prediction': the truth eroded (> 0) or dilated (< 0) by ``iterations`` voxels."""
    if iterations > 0:
        return ndimage.binary_erosion(truth, iterations=iterations)
    if iterations < 0:
        return ndimage.binary_dilation(truth, iterations=-iterations)
    return truth.copy()


def build_folder(folder: Path, name: str, root: Path, cases: dict[str, int], modes: tuple[str, ...]) -> dict:
    """An evaluation folder as `oncoseg evaluate` writes it; ``cases``: case id → damage per case."""
    dataset = open_dataset(name, root)
    run = {
        "dataset": name, "split": "test", "protocol": {"kind": "box"}, "prompt": "GT box",
        "backend": "litemedsam", "precision": "auto", "tolerance": 2.0, "data_root": str(dataset.folder),
        "dim": dataset.info.dim, "modes": list(modes),
    }  # fmt: skip
    store = ResultStore(folder, run)
    for case_id, iterations in cases.items():
        case = dataset.case(case_id)
        image, truths = case.load()
        rows = []
        for target, truth in truths.items():
            for mode in modes:
                row = {
                    "dataset": name, "case_id": case_id, "patient_id": case.patient_id,
                    "category": case.category or "", "target": target, "mode": mode,
                    "units": "mm" if image.is_3d else "px",
                    "prompt": Protocol("box").record(truth, mode, case_id, target),
                }  # fmt: skip
                if not truth.any():
                    rows.append(
                        dict(row, note="empty ground truth", dice=None, iou=None, nsd=None, hd95=None)
                    )
                    continue
                prediction = damage(truth, iterations + (mode == "propagate"))
                row.update(score(prediction, truth, image.spacing_zyx if image.is_3d else None, 2.0))
                path = store.mask_path(case_id, target, mode)
                save_prediction(path, prediction)
                rows.append(dict(row, mask_file=str(path.relative_to(folder)), seconds=0.1, note=""))
        store.record(case_id, rows)
    return store.write_tables(list(cases), dataset.info.paper_dice)


@pytest.fixture(scope="module")
def kvasir(tmp_path_factory, shared_data) -> tuple[Path, list[str]]:
    ids = [case.case_id for case in open_dataset("kvasir-seg", shared_data).cases("test")[:4]]
    folder = tmp_path_factory.mktemp("kvasir")
    build_folder(folder, "kvasir-seg", shared_data, dict(zip(ids, KVASIR_EROSIONS)), ("2d",))
    write_report(folder)
    return folder, ids


@pytest.fixture(scope="module")
def hippocampus(tmp_path_factory, shared_data) -> Path:
    ids = [case.case_id for case in open_dataset("msd-hippocampus", shared_data).cases("test")[:2]]
    folder = tmp_path_factory.mktemp("hippocampus")
    build_folder(folder, "msd-hippocampus", shared_data, dict(zip(ids, (0, 1))), ("propagate", "per_slice"))
    write_report(folder)
    return folder


class Page(HTMLParser):
    """Checks that tags nest; collects the tags, image sources and text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in ("meta", "img", "br", "hr", "link"):  # void elements
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> does not close <{self.open[-1:]}>"

    def handle_data(self, data):
        self.text += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.open == []
    return page


def markdown_images(path: Path) -> list[Path]:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text(encoding="utf-8"))
    return [path.parent / link for link in links]


def test_report_files_html_and_markdown(kvasir):
    folder, _ = kvasir
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    dice = summary["groups"][0]["dice"]
    expected = f"{dice['mean']:.3f} ± {dice['sd']:.3f}"

    page = parse(folder / "report.html")
    assert {"table", "figure", "style"} <= page.tags and not {"script", "link", "iframe"} & page.tags
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in page.images)
    assert "http" not in (folder / "report.html").read_text(encoding="utf-8")
    assert "Kvasir-SEG" in page.text and expected in page.text and "0.714" in page.text
    assert "Paper Dice (prompts not stated)" in page.text and "does not state which prompts" in page.text

    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert expected in markdown and "GT box" in markdown and "4 cases" in markdown
    images = markdown_images(folder / "report.md")
    assert len(images) == 1 + 3  # the box plots, then best / median / worst
    assert all(image.is_file() and image.parent.name == "report_files" for image in images)
    assert not (folder / "report_files" / "metrics_by_category.png").exists()  # Kvasir has no categories


def test_strip_shows_best_median_and_worst(kvasir):
    folder, ids = kvasir
    rows = read_rows(folder)
    by_dice = sorted(rows, key=lambda row: -row["dice"])
    assert by_dice[0]["case_id"] == ids[1] and by_dice[-1]["case_id"] == ids[2]
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert f"best: {ids[1]}, Dice 1.000" in markdown
    assert f"worst: {ids[2]}, Dice {by_dice[-1]['dice']:.3f}" in markdown
    assert f"median: {by_dice[2]['case_id']}" in markdown  # 4 cases: ranks 1, 3 and 4
    x0, y0, x1, y1 = by_dice[-1]["prompt"]["prompts"][0]["box"]  # the worst case's caption names its box
    assert f"Dice {by_dice[-1]['dice']:.3f}; box x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}" in markdown
    assert "Magenta rectangle: the box prompt" in markdown
    assert [name for name, _ in pick_cases(rows, 3)] == ["best", "median", "worst"]
    assert [row["case_id"] for _, row in pick_cases(rows, 1)] == [ids[1]]


def test_volume_report(hippocampus):
    summary = json.loads((hippocampus / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["groups"]) == 6  # 3 targets × 2 modes
    markdown = (hippocampus / "report.md").read_text(encoding="utf-8")
    assert "NSD mean (2 mm)" in markdown and "HD95 median (mm)" in markdown and "Paper Dice" not in markdown
    for group in summary["groups"]:
        assert f"### {group['target']}, {group['mode']}" in markdown
        assert f"{group['dice']['mean']:.3f} ± {group['dice']['sd']:.3f}" in markdown
    assert re.search(r"Dice \d\.\d{3}; slice \d+: box x \d+–\d+, y \d+–\d+", markdown)  # propagate
    assert re.search(r"Dice \d\.\d{3}; a prompt on each of \d+ slices; slice \d+: box x \d+", markdown)
    images = markdown_images(hippocampus / "report.md")
    assert len(images) == 1 + 6 * 2 and all(image.is_file() for image in images)  # 2 cases per strip
    assert len(parse(hippocampus / "report.html").images) == len(images)


def test_categories_and_empty_ground_truth(tmp_path, shared_data):
    cases = {"benign (1)": 0, "benign (10)": 3, "malignant (1)": 8, "normal (1)": 0}
    build_folder(tmp_path, "busi", shared_data, cases, ("2d",))
    markdown, _ = write_report(tmp_path, max_strip=2)
    text = markdown.read_text(encoding="utf-8")
    assert "| 2d | lesion | benign | 2 |" in text and "| 2d | lesion | malignant | 1 |" in text
    assert "4 cases" in text and "normal (1)" not in text  # empty ground truth: counted, never drawn
    assert (tmp_path / "report_files" / "metrics_by_category.png").is_file()
    assert len(markdown_images(markdown)) == 2 + 2


def test_missing_data_still_gives_tables_and_plots(kvasir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(kvasir[0], folder)
    shutil.rmtree(folder / "report_files")
    run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    (folder / "run.json").write_text(json.dumps(dict(run, data_root=str(tmp_path / "gone"))))
    markdown, page = write_report(folder)
    text = markdown.read_text(encoding="utf-8")
    assert text.count("No case pictures") == 1 and "| 2d | polyp | all | 4 |" in text
    assert [image.name for image in markdown_images(markdown)] == ["metrics.png"]
    assert len(parse(page).images) == 1


def test_results_table_has_a_line_per_group(kvasir, hippocampus):
    table = results_table([kvasir[0], hippocampus])
    lines = table.splitlines()
    assert lines[0].startswith("| Dataset | Target |") and set(lines[1]) <= {"|", "-", " "}
    assert "| Paper Dice (prompts not stated) |" in lines[0]
    assert len(lines) == 2 + 1 + 6
    assert lines[2].startswith("| Kvasir-SEG | polyp | all | 2d | 4 |") and "| 0.714 | GT box |" in lines[2]
    assert all(line.startswith("| MSD Task04 Hippocampus |") and " mm" in line for line in lines[3:])


def test_render_case_draws_prediction_and_outline():
    truth = np.zeros((40, 60), bool)
    truth[10:30, 10:30] = True
    prediction = np.zeros_like(truth)
    prediction[12:28, 35:50] = True
    picture = np.asarray(render_case(np.full((40, 60), 0.5), prediction, truth))
    assert picture.shape == (213, 320, 3)
    colours = {tuple(int(c) for c in pixel) for pixel in picture.reshape(-1, 3)}
    assert tuple(TRUTH.astype(int)) in colours and (127, 127, 127) in colours and len(colours) == 3


def test_render_case_draws_the_box_and_the_clicks_where_they_were():
    truth = np.zeros((40, 60), bool)
    truth[10:30, 10:30] = True
    prompt = {
        "prompts": [{"slice": None, "box": [5.0, 5.0, 40.0, 35.0], "points": [[20, 20, 1], [50, 8, 0]]}]
    }
    picture = np.asarray(render_case(np.full((40, 60), 0.5), truth.copy(), truth, prompt))
    scale = 320 / 60
    assert tuple(picture[round(20 * scale), round(5 * scale)]) == BOX  # the box's left side
    assert tuple(picture[round(20.5 * scale), round(20.5 * scale)]) == INCLUDE  # click 1
    assert tuple(picture[round(8.5 * scale), round(50.5 * scale)]) == EXCLUDE  # click 2
    plain = np.asarray(render_case(np.full((40, 60), 0.5), truth.copy(), truth))
    assert not (plain == np.array(BOX)).all(axis=2).any()  # without a prompt nothing is drawn


def test_a_volume_shows_the_prompted_slice():
    truth = np.zeros((5, 8, 8), bool)
    truth[1:4, 2:6, 2:6] = True
    truth[2, 0, 0] = True  # slice 2 is the largest
    assert shown_slice(truth) == 2
    assert shown_slice(truth, {"prompts": [{"slice": 3, "box": [2, 2, 5, 5], "points": []}]}) == 3
    per_slice = {"prompts": [{"slice": z, "box": [2, 2, 5, 5], "points": []} for z in (1, 2, 3)]}
    assert shown_slice(truth, per_slice) == 2


def test_missing_matplotlib_is_one_clear_error(kvasir, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(OncoSegError, match=r"pip install 'oncoseg\[plot\]'"):
        write_report(kvasir[0], max_strip=0)
