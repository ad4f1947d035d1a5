"""Reports on evaluations: `write_report` turns one `oncoseg evaluate` folder into ``report.md`` and a
self-contained ``report.html`` (summary table, box plots, the best / median / worst cases drawn over their
images, with the prompt each case got); `results_table` gathers several folders into one Markdown table for ``docs/results.md``.

    >>> from oncoseg.evaluate.report import results_table, write_report
    >>> markdown, page = write_report("runs/kvasir")
    >>> print(results_table(["runs/kvasir", "runs/busi"]))

The plots need matplotlib (``pip install 'oncoseg[plot]'``). Figures go to ``report_files/`` beside the
report; the HTML embeds them, so it can be sent on its own.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from oncoseg.data import get_info, open_dataset
from oncoseg.errors import OncoSegError
from oncoseg.evaluate.results import EMPTY_TRUTH, load_prediction, read_rows, safe_name
from oncoseg.io import atomic_write_path
from oncoseg.render import save_overlay

FIGURES = "report_files"
THUMBNAIL = 320  # case pictures: pixels on the longer side
PREDICTION = np.array((30, 144, 255), np.float32)  # filled
TRUTH = np.array((255, 215, 0), np.float32)  # outlined
BOX = (255, 0, 255)  # the box prompt, outlined
INCLUDE, EXCLUDE = (0, 200, 0), (230, 0, 0)  # clicks
UNDEFINED = (
    "n counts the cases with a non-empty ground truth. HD95 is undefined when exactly one of prediction and "
    "truth is empty: such cases are counted, not averaged."
)
LEGEND = (
    "Filled blue: the prediction. Yellow outline: the ground truth. Magenta rectangle: the box prompt; dots: "
    "the clicks, numbered in order (green include, red exclude). Volumes: the prompted slice (propagation), "
    "else the slice where the ground truth is largest. Captions give the prompt in image pixels (x, y)."
)
PAPER_PROMPTS = "prompts not stated"
PAPER_NOTE = (
    "Paper Dice: the Onco-Seg preprint's Table 7 (its SAM3 + LoRA model). The preprint does not state which "
    "prompts (box, points or text) produced these numbers, nor on which images beyond a count (BUSI: 647 "
    "images, every benign and malignant one, not a test split); its pipeline makes prompts from the masks for "
    "training (its section 2.5). The rows above use the prompt named at the top, so the two are not like for "
    "like."
)
CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f2f2f2; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
img { max-width: 100%; }
.strip { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0.5rem 0; }
figcaption { font-size: 0.85rem; color: #555; }
"""

Block = tuple[str, Any]  # ("h1" | "h2" | "h3" | "p", text), ("table", (header, rows)),
# ("figure", (path, caption)), ("strip", [(path, caption), ...])


def write_report(folder: str | Path, max_strip: int = 3) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and their figures into an evaluation folder; return both paths.

    ``max_strip``: how many cases to draw per target and mode, from the best Dice to the worst."""
    folder = Path(folder)
    run, summary = _load(folder)
    every_row = read_rows(folder)
    rows = [row for row in every_row if row.get("note") != EMPTY_TRUTH]
    figures = folder / FIGURES
    paper = summary.get("paper_dice")
    units = _units(run)
    split = f"{run['split']} split" if run.get("split") else "all cases"
    about = (
        f"Prompt: {run.get('prompt', '?')}. Backend {run.get('backend', '?')} (precision "
        f"{run.get('precision', '?')}). {len({row['case_id'] for row in every_row})} cases. "
        f"NSD tolerance {run['tolerance']:g} {units}."
        + (f" Started {run['started']}." if run.get("started") else "")
    )
    caption = "Dice and NSD per target and mode" + ("; dashed: the paper's Dice" if paper is not None else "")
    blocks: list[Block] = [
        ("h1", f"{get_info(run['dataset']).title}: {split}"),
        ("p", about),
        ("h2", "Summary"),
        ("table", summary_table(summary, run)),
        ("p", UNDEFINED),
        *([("p", PAPER_NOTE)] if paper is not None else []),
        ("h2", "Distributions"),
        ("figure", (box_plots(rows, run, paper, figures / "metrics.png"), caption)),
    ]
    if any(row.get("category") for row in rows):
        path = box_plots(rows, run, paper, figures / "metrics_by_category.png", by_category=True)
        blocks.append(("figure", (path, "Dice and NSD per target, mode and category")))
    if max_strip > 0:
        blocks += [("h2", "Cases"), *case_strips(folder, run, rows, summary["groups"], max_strip)]
    markdown, page = folder / "report.md", folder / "report.html"
    _write_text(markdown, _markdown(blocks, folder))
    _write_text(page, _html(blocks))
    return markdown, page


def results_table(folders: Iterable[str | Path]) -> str:
    """One Markdown table over several evaluation folders: a line per summary group."""
    header = ["Dataset", "Target", "Category", "Mode", "n", "Dice mean ± sd", "Dice median", "NSD",
              "HD95 median", f"Paper Dice ({PAPER_PROMPTS})", "Prompt"]  # fmt: skip
    lines = []
    for folder in folders:
        run, summary = _load(Path(folder))
        units, paper = _units(run), summary.get("paper_dice")
        for group in summary["groups"]:
            nsd = _number(group["nsd"].get("mean"))
            hd95 = _number(group["hd95"].get("median"), 2)
            lines.append([
                get_info(run["dataset"]).title, group["target"], group["category"], group["mode"],
                str(group["cases"]), _mean_sd(group["dice"]), _number(group["dice"].get("median")),
                f"{nsd} ({run['tolerance']:g} {units})" if nsd != "–" else nsd,
                f"{hd95} {units}" if hd95 != "–" else hd95,
                _number(paper) if group["category"] == "all" and paper is not None else "",
                run.get("prompt", ""),
            ])  # fmt: skip
    return markdown_table(header, lines)


def summary_table(summary: dict[str, Any], run: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: one row per (mode, target, category) group."""
    units, paper = _units(run), summary.get("paper_dice")
    header = ["Mode", "Target", "Category", "n", "Dice mean ± sd", "Dice median", "IoU mean",
              f"NSD mean ({run['tolerance']:g} {units})", f"HD95 median ({units})",
              "HD95 undefined"]  # fmt: skip
    rows = []
    for group in summary["groups"]:
        row = [
            group["mode"], group["target"], group["category"], str(group["cases"]), _mean_sd(group["dice"]),
            _number(group["dice"].get("median")), _number(group["iou"].get("mean")),
            _number(group["nsd"].get("mean")), _number(group["hd95"].get("median"), 2),
            str(group["hd95"]["undefined"]),
        ]  # fmt: skip
        if paper is not None:
            row.append(_number(paper) if group["category"] == "all" else "")
        rows.append(row)
    return header + ([f"Paper Dice ({PAPER_PROMPTS})"] if paper is not None else []), rows


def box_plots(
    rows: list[dict[str, Any]],
    run: dict[str, Any],
    paper: float | None,
    path: Path,
    by_category: bool = False,
) -> Path:
    """Dice and NSD box plots side by side, a box per target × mode (× category); paper Dice dashed."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if not by_category:
            groups[(row["target"], row["mode"])].append(row)
        elif row.get("category"):
            groups[(row["target"], row["mode"], row["category"])].append(row)
    labels = ["\n".join(key) for key in groups]
    positions = list(range(1, len(groups) + 1))
    figure = _figure(figsize=(max(8.0, 1.6 * len(groups)), 4.0))
    for axes, metric, title in zip(
        figure.subplots(1, 2), ("dice", "nsd"), ("Dice", f"NSD ({run['tolerance']:g} {_units(run)})")
    ):
        values = [
            [row[metric] for row in members if math.isfinite(row[metric])] for members in groups.values()
        ]
        axes.boxplot(values, positions=positions, widths=0.6)
        axes.set_xticks(positions, labels, fontsize=8)
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
        if metric == "dice" and paper is not None:
            axes.axhline(paper, linestyle="--", color="tab:red", label=f"paper {paper:.3f} ({PAPER_PROMPTS})")
            axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    with atomic_write_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return path


def pick_cases(rows: list[dict[str, Any]], count: int) -> list[tuple[str, dict[str, Any]]]:
    """Up to ``count`` rows spread evenly from the best Dice to the worst, each with a name for its rank."""
    ranked = sorted((row for row in rows if math.isfinite(row["dice"])), key=lambda row: -row["dice"])
    n = len(ranked)
    if n == 0 or count < 1:
        return []
    picks = sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))
    return [(_rank_name(i, n), ranked[i]) for i in picks]


def case_strips(
    folder: Path, run: dict[str, Any], rows: list[dict[str, Any]], groups: list[dict[str, Any]], count: int
) -> list[Block]:
    """Per target and mode, a strip of case pictures; one line instead if the data can no longer be read."""
    picks = {
        (group["target"], group["mode"]): pick_cases(
            [row for row in rows if (row["target"], row["mode"]) == (group["target"], group["mode"])], count
        )
        for group in groups
        if group["category"] == "all"
    }
    try:
        pictures = _draw_cases(folder, run, [row for chosen in picks.values() for _, row in chosen])
    except (OncoSegError, OSError) as exc:
        return [("p", f"No case pictures: the data of this evaluation can no longer be read ({exc}).")]
    blocks: list[Block] = [("p", LEGEND)]
    for (target, mode), chosen in picks.items():
        strip = []
        for name, row in chosen:
            path, words = pictures[_key(row)]
            strip.append((path, f"{name}: {row['case_id']}, Dice {_number(row['dice'])}; {words}"))
        blocks += [("h3", f"{target}, {mode}"), ("strip", strip)]
    return blocks


def render_case(
    pixels: np.ndarray, prediction: np.ndarray, truth: np.ndarray, prompt: dict[str, Any] | None = None
) -> Image.Image:
    """The picture of one case, ``THUMBNAIL`` pixels on its longer side: the prediction filled, the ground
    truth outlined, the ``prompt`` record's box and clicks drawn on top. ``pixels`` in [0, 1], ``[(z,) y, x]``
    or with 3 channels last; volumes show `shown_slice`."""
    entries = (prompt or {}).get("prompts") or []
    if truth.ndim == 3:
        z = shown_slice(truth, prompt)
        pixels, prediction, truth = pixels[z], prediction[z], truth[z]
        entries = [entry for entry in entries if entry.get("slice") == z]
    scale = THUMBNAIL / max(truth.shape)
    size = (max(1, round(truth.shape[1] * scale)), max(1, round(truth.shape[0] * scale)))
    rgb = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    picture = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    canvas = np.asarray(picture, np.float32).copy()
    predicted, true = _resize_mask(prediction, size), _resize_mask(truth, size)
    canvas[predicted] = 0.55 * canvas[predicted] + 0.45 * PREDICTION
    canvas[true & ~ndimage.binary_erosion(true, iterations=2)] = TRUTH
    picture = Image.fromarray(canvas.astype(np.uint8))
    sx, sy = size[0] / truth.shape[1], size[1] / truth.shape[0]
    for entry in entries:
        _draw_prompt(picture, entry, sx, sy)
    return picture


def shown_slice(truth: np.ndarray, prompt: dict[str, Any] | None = None) -> int:
    """The slice a volume's picture shows: the prompt's own when it has a single slice (propagation), else the
    slice where the ground truth is largest."""
    slices = {entry.get("slice") for entry in (prompt or {}).get("prompts") or []}
    if len(slices) == 1 and isinstance(z := slices.pop(), int) and 0 <= z < truth.shape[0]:
        return z
    return int(np.argmax(truth.sum(axis=(1, 2))))


def _draw_prompt(picture: Image.Image, entry: dict[str, Any], sx: float, sy: float) -> None:
    """One record entry's box (inclusive pixel corners) and numbered clicks, scaled by ``sx``, ``sy``."""
    draw = ImageDraw.Draw(picture)
    if entry.get("box"):
        x0, y0, x1, y1 = entry["box"]
        draw.rectangle((x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1), outline=BOX, width=2)
    points = entry.get("points") or []
    for number, (x, y, label) in enumerate(points, start=1):
        cx, cy = (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5
        draw.ellipse(
            (cx - 4, cy - 4, cx + 4, cy + 4), fill=INCLUDE if label else EXCLUDE, outline=(255, 255, 255)
        )
        if len(points) > 1:
            draw.text((cx + 6, cy - 6), str(number), fill=(255, 255, 255))


def prompt_words(prompt: dict[str, Any] | None, truth: np.ndarray) -> str:
    """The prompt of a case in words for its caption (image pixels; the shown slice of a volume)."""
    if prompt is None:
        return "no prompt recorded"
    if prompt.get("text"):
        return f"text prompt {prompt['text']!r}"
    entries = prompt.get("prompts") or []
    prefix = ""
    if truth.ndim == 3:
        z = shown_slice(truth, prompt)
        prefix = (
            f"slice {z}: " if len(entries) == 1 else f"a prompt on each of {len(entries)} slices; slice {z}: "
        )
        entries = [entry for entry in entries if entry.get("slice") == z]
    parts = []
    for entry in entries:
        if entry.get("box"):
            x0, y0, x1, y1 = entry["box"]
            parts.append(f"box x {x0:.0f}–{x1:.0f}, y {y0:.0f}–{y1:.0f}")
        clicks = [f"{'+' if label else '−'}({x:.0f}, {y:.0f})" for x, y, label in entry.get("points") or []]
        if clicks:
            parts.append("clicks " + " ".join(clicks))
    return prefix + ("; ".join(parts) or "no prompt on this slice")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    cells = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in cells)


# ------------------------------------------------------------------------------------------------- helpers


def _load(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``run.json`` and ``summary.json`` of an evaluation folder."""
    documents = []
    for name in ("run.json", "summary.json"):
        path = folder / name
        if not path.exists():
            raise OncoSegError(f"no {name} in {folder}: run `oncoseg evaluate` there first")
        documents.append(json.loads(path.read_text(encoding="utf-8")))
    return documents[0], documents[1]


def _draw_cases(
    folder: Path, run: dict[str, Any], rows: list[dict[str, Any]]
) -> dict[tuple, tuple[Path, str]]:
    """Draw each row's case (each case read once); ``_key(row)`` → (PNG path, the prompt in words)."""
    from oncoseg.predictor import normalise_image  # imports torch: only when pictures are drawn

    dataset = open_dataset(run["dataset"], run["data_root"])
    by_case: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_case[row["case_id"]].append(row)
    pictures = {}
    for case_id, case_rows in by_case.items():
        case = dataset.case(case_id)
        image, truths = case.load()
        pixels = normalise_image(image, case.modality)
        for row in case_rows:
            path = folder / FIGURES / ("case_" + "__".join(safe_name(part) for part in _key(row)) + ".png")
            prediction, truth, prompt = (
                load_prediction(folder / row["mask_file"]),
                truths[row["target"]],
                row.get("prompt"),
            )
            picture = save_overlay(render_case(pixels, prediction, truth, prompt), path)
            pictures[_key(row)] = (picture, prompt_words(prompt, truth))
    return pictures


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["case_id"], row["target"], row["mode"]


def _rank_name(index: int, n: int) -> str:
    if index == 0:
        return "best"
    if index == n - 1:
        return "worst"
    if index in ((n - 1) // 2, n // 2):
        return "median"
    return f"rank {index + 1} of {n}"


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def _figure(**options: Any) -> Any:
    """A matplotlib figure drawn by Agg, without pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OncoSegError("the report needs matplotlib: pip install 'oncoseg[plot]'") from None
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def _units(run: dict[str, Any]) -> str:
    return "mm" if run.get("dim") == "3d" else "px"


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_sd(stats: dict[str, Any]) -> str:
    return "–" if "mean" not in stats else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def _write_text(path: Path, text: str) -> None:
    with atomic_write_path(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def _markdown(blocks: list[Block], folder: Path) -> str:
    def link(path: Path, caption: str) -> str:
        return f"![{caption}]({path.relative_to(folder).as_posix()})"

    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            parts.append(content)
        elif kind == "table":
            parts.append(markdown_table(*content))
        elif kind == "figure":
            parts.append(f"{link(*content)}\n\n*{content[1]}*")
        elif kind == "strip":
            parts.append(
                markdown_table([caption for _, caption in content], [[link(*item) for item in content]])
            )
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[Block]) -> str:
    def figure(path: Path, caption: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        text = html.escape(caption)
        image = f'<img src="data:image/png;base64,{data}" alt="{text}">'
        return f"<figure>{image}<figcaption>{text}</figcaption></figure>"

    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{html.escape(content)}</{kind}>")
        elif kind == "table":
            parts.append(table(*content))
        elif kind == "figure":
            parts.append(figure(*content))
        elif kind == "strip":
            parts.append('<div class="strip">' + "".join(figure(*item) for item in content) + "</div>")
    title = html.escape(blocks[0][1])
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )
