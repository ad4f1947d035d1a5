"""The docs agree with the code: every ``oncoseg SUBCOMMAND --option`` that README.md and docs/*.md name exists
in that subcommand's ``--help``; every Python block compiles and its imports resolve; and the first example of
each document runs for real where it can in test time (bundled samples or small real data, one torch thread),
else its subcommand's ``--help`` runs. A document whose first example changes must be looked at here again:
the test names the example it expected."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from oncoseg.cli import build_parser
from oncoseg.samples import sample_path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ONCOSEG = Path(sys.executable).with_name("oncoseg")
DATA = REPO.parent / "shared" / "data"
CT_DICOM = DATA / "totalsegmentator-example" / "example_ct_dicom"

BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND = re.compile(r"(?<![\w./\[-])oncoseg\s+([a-z][\w-]*)([^\n]*)")
OPTION = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
SHELL = {"", "bash", "sh", "shell", "console"}


def blocks(path: Path, languages=SHELL) -> list[str]:
    return [body for lang, body in BLOCK.findall(path.read_text(encoding="utf-8")) if lang in languages]


def shell_lines(body: str) -> list[str]:
    """The lines of a shell block, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [" ".join(re.split(r"\s#\s", line, maxsplit=1)[0].split()) for line in joined.splitlines()]


def commands(path: Path) -> list[tuple[str, str]]:
    """Every ``oncoseg SUB ...`` in the shell blocks and inline code of ``path``: (subcommand, the rest)."""
    text = path.read_text(encoding="utf-8")
    found = []
    for body in blocks(path):
        for line in shell_lines(body):
            found += COMMAND.findall(line)
    prose = BLOCK.sub("", text)
    for span in SPAN.findall(
        prose
    ):  # inline code: only real subcommands (`oncoseg points` is a napari layer)
        found += [(sub, rest) for sub, rest in COMMAND.findall(span) if sub in SUBCOMMANDS]
    return [(sub, re.split(r"\s(?:\||&&|;)\s", rest)[0]) for sub, rest in found]


@cache
def help_text(sub: str) -> str:
    """``oncoseg SUB --help`` as the parser prints it (in-process: the same text as the command's)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([sub, "--help"])
    assert done.value.code == 0
    return out.getvalue()


SUBCOMMANDS = set(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_option_the_docs_name_exists_in_its_subcommands_help(doc):
    unknown = []
    for sub, rest in commands(doc):
        if sub not in SUBCOMMANDS:
            unknown.append(f"oncoseg {sub}: no such subcommand")
            continue
        options = set(OPTION.findall(help_text(sub)))
        unknown += [f"oncoseg {sub} {opt}" for opt in OPTION.findall(rest) if opt not in options]
    assert not unknown, f"{doc.name} names options its subcommands lack: {sorted(set(unknown))}"


def test_the_docs_name_commands_at_all():
    """The extraction above finds what it should (a check that could fail if the patterns broke)."""
    readme = commands(REPO / "README.md")
    example = "--box 14,16,80,76,24 --3d -o liver.nii.gz --overlay liver.png"
    assert any(sub == "segment" and rest.endswith(example) for sub, rest in readme), readme
    assert len({sub for doc in DOCS for sub, _ in commands(doc)}) >= 10


@pytest.mark.parametrize("doc", [d for d in DOCS if blocks(d, {"python"})], ids=lambda p: p.name)
def test_python_blocks_compile_and_their_imports_resolve(doc):
    for body in blocks(doc, {"python"}):
        tree = ast.parse(body, filename=doc.name)
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(imports, type_ignores=[]), doc.name, "exec"), {})  # noqa: S102 - our own docs


# --- the first example of each document, run ------------------------------------------------------------------


def first_example(doc: Path) -> str | None:
    """The first ``oncoseg ...`` command line in the document's shell blocks."""
    for body in blocks(doc):
        for line in shell_lines(body):
            if COMMAND.search(line) and line.startswith(("oncoseg", "ONCOSEG_")):
                return line
    return None


# Placeholders in the examples → real inputs (the bundled samples, or the real CT DICOM series).
INPUTS = {
    "polyp.jpg": str(sample_path("polyp")),
    "us.png": str(sample_path("breast_ultrasound")),
    "ct.nii.gz": str(sample_path("ct_abdomen")),
    "brain.nii.gz": str(sample_path("hippocampus")),
    "ct_dicom_folder/": str(CT_DICOM),
    "ct_dicom/": str(CT_DICOM),
}
# What each document's first example is, and whether it runs here ("run") or only its --help ("help": it needs
# a GUI, a server, downloaded weights, a trained model or a long training run).
NNUNET_MODEL = "~/nnUNet_results/Dataset501_MyOARs/nnUNetTrainer__nnUNetPlans__3d_fullres"
FIRST = {
    "README.md": ("oncoseg info IMAGE", "help"),
    "concepts.md": ("oncoseg concepts", "run"),
    "contour.md": ("oncoseg contour --list", "run"),
    "dicom.md": (
        "oncoseg export rtstruct labels.nii.gz --reference ct_dicom/ -o contours.dcm --names 1=Liver,2=Kidney_L",
        "run",
    ),
    "evaluation.md": (
        "oncoseg evaluate kvasir-seg --protocol box:jitter=0.1 --limit 2 -o runs/kvasir-jitter",
        "run",
    ),
    "napari.md": ("oncoseg napari", "help"),
    "nnunet.md": (
        f"oncoseg contour ct_dicom_folder/ --engine nnunet --model {NNUNET_MODEL} -o oars.dcm --output-type rtstruct",
        "help",
    ),
    "sam3.md": (
        "oncoseg segment polyp.jpg --backend sam3 --weights ~/models/sam3 --box 120,80,300,260 -o polyp.png",
        "help",
    ),
    "service.md": ("oncoseg serve", "help"),
    "student.md": ("oncoseg segment polyp.jpg --box 120,80,300,260 -o mask.png", "help"),
    "training.md": ("oncoseg train configs/finetune-hippocampus.yaml", "help"),
}


def oncoseg(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return subprocess.run([str(ONCOSEG), *args], cwd=cwd, env=environment, check=False, capture_output=True,
                          encoding="utf-8", timeout=900)  # fmt: skip


def test_every_document_with_an_example_is_listed_here():
    assert {d.name: first_example(d) for d in DOCS if first_example(d)} == {
        name: command for name, (command, _) in FIRST.items()
    }


@pytest.mark.parametrize("name", list(FIRST))
def test_the_first_example_of_each_document_runs(name, tmp_path):
    command, how = FIRST[name]
    args = [INPUTS.get(token, token) for token in shlex.split(command)][1:]
    if how == "help":
        done = oncoseg([args[0], "--help"], tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("usage: oncoseg " + args[0]), done.stderr
        return
    if name == "dicom.md":
        if not CT_DICOM.is_dir():
            pytest.skip(f"real CT DICOM series {CT_DICOM} is absent")
        make_labels(tmp_path / "labels.nii.gz")
    if name == "evaluation.md" and not (DATA / "kvasir-seg").is_dir():
        pytest.skip(f"{DATA / 'kvasir-seg'} is absent")
    done = oncoseg(args, tmp_path, ONCOSEG_DATA=str(DATA))
    assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    outputs = [args[i + 1] for i, a in enumerate(args) if a in ("-o", "--output")]
    assert all((tmp_path / out).exists() for out in outputs), (
        outputs,
        sorted(p.name for p in tmp_path.iterdir()),
    )
    if not outputs:
        assert done.stdout.strip(), f"{command} printed nothing"


def make_labels(path: Path) -> None:
    """A label map with two small objects on the real CT DICOM series' grid (what `oncoseg export` reads)."""
    from oncoseg.io import load_image, save_mask

    ct = load_image(CT_DICOM)
    labels = np.zeros(ct.shape, np.uint8)
    z, y, x = (s // 2 for s in ct.shape)
    labels[z - 2 : z + 2, y - 20 : y, x - 30 : x - 10] = 1
    labels[z - 2 : z + 2, y + 5 : y + 25, x + 10 : x + 30] = 2
    save_mask(labels, ct, path)


# --- the README's own examples, run on the bundled samples ----------------------------------------------------


@pytest.mark.slow
def test_readme_cli_example_and_python_api_run(tmp_path):
    """The README's concrete CLI example (the CT sample through the volume) and its Python API block, as
    written, in one process each with one torch thread; they share an on-disk embedding store, so the CT's
    slices are encoded once."""
    store = str(tmp_path / "embeddings")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(
        line for body in blocks(REPO / "README.md") for line in shell_lines(body) if "$(python" in line
    )
    args = shlex.split(line.replace("$(python -c \"from oncoseg.samples import sample_path as p; "
                                    "print(p('ct_abdomen'))\")", str(sample_path("ct_abdomen"))))  # fmt: skip
    assert args[:2] == ["oncoseg", "segment"] and "$(" not in " ".join(args), line
    done = oncoseg(args[1:], tmp_path, ONCOSEG_EMBEDDING_CACHE=store)
    assert done.returncode == 0, done.stderr[-2000:]
    assert " mL, RECIST long " in done.stdout and (tmp_path / "liver.nii.gz").is_file()
    code = blocks(REPO / "README.md", {"python"})[0]
    assert "oncoseg.segment(" in code and readme.count("```python") >= 1
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=False, capture_output=True,
                         encoding="utf-8", timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "ONCOSEG_EMBEDDING_CACHE": store})  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert " px², RECIST " in ran.stdout and " mL, RECIST " in ran.stdout  # a JPEG in pixels, the CT in mm
