"""Whole-CT organ-at-risk contouring: atlas registration → carried-over labels → per-slice model refinement →
what is drawn and how far to trust it (`oncoseg.contour.evidence`).

from oncoseg.contour import contour

result = contour("ct_dicom_folder/", organs=["Liver", "Spleen", "kidney_left"])
result.save("oars.nii.gz")                      # label map + oars.json (TG-263 names, colours, report)
result.save("oars.dcm", output_type="rtstruct")  # DICOM-RT Structure Set over the input series (+ oars.json)
result.omitted                                   # organs asked for and not drawn, with the reason
result.evidence["Liver"].confidence              # oncoseg.quality.Quality: estimate, review, reasons
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oncoseg import __version__
from oncoseg.contour.adapt import HU_ORGANS, NO_MODEL_METHODS, adapt_priors, supported
from oncoseg.contour.bones import LEVEL_CAUTION, is_numbered
from oncoseg.contour.evidence import OrganEvidence, coverage, weigh
from oncoseg.contour.organs import MODEL_REFINED, Atlas, load_atlas, resolve_organs
from oncoseg.contour.refine import OrganRefinement, RefineSettings, model_helps, refine_priors
from oncoseg.contour.registration import register, warp_labels
from oncoseg.dicom.tg263 import default_color
from oncoseg.errors import OncoSegError
from oncoseg.image import MedicalImage
from oncoseg.io.write import OutputFiles, atomic_write_path, save_mask

OUTPUT_TYPES = ("nifti", "rtstruct")
ENGINES = ("atlas", "nnunet")  # nnunet: a trained nnU-Net v2 model folder the user brings (docs/nnunet.md)


@dataclass
class ContourResult:
    """Masks of the organs drawn (TG-263 name → bool ``[z, y, x]`` on the input's grid), how each was made and
    what speaks for it (``evidence``: confidence, or the reason an organ asked for is not drawn)."""

    image: MedicalImage
    masks: dict[str, np.ndarray]  # the organs drawn
    priors: dict[str, np.ndarray]  # the registered atlas labels before refinement, every organ asked for
    methods: dict[str, str]  # "atlas + model" or "atlas only"
    refinement: dict[str, OrganRefinement]
    timings: dict[str, float]
    atlas: str = ""
    model: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, OrganEvidence] = field(default_factory=dict)  # every organ asked for

    @property
    def omitted(self) -> dict[str, str]:
        """Organs asked for and not drawn → the reason (also those an engine lists in ``info["not_drawn"]``)."""
        reasons = dict(self.info.get("not_drawn") or {})
        reasons.update({name: e.omitted for name, e in self.evidence.items() if e.omitted})
        return reasons

    def review_first(self) -> list[str]:
        """Drawn organs whose confidence is flagged for review, least confident first."""
        flagged = [
            (e.confidence.estimate, n)
            for n, e in self.evidence.items()
            if e.confidence and e.confidence.review
        ]
        return [name for _, name in sorted(flagged)]

    def notes(self) -> dict[str, str]:
        """One line per drawn organ for the DICOM ROI description: its confidence and review flag."""
        return {name: confidence_text(self.evidence[name]) for name in self.masks if name in self.evidence}

    def label_map(self) -> tuple[np.ndarray, dict[int, str]]:
        """One uint8 label per voxel (1..N in organ order); where organs overlap the smaller one wins."""
        labels = np.zeros(self.image.shape, dtype=np.uint8)
        values = {name: i for i, name in enumerate(self.masks, start=1)}
        for name in sorted(self.masks, key=lambda n: -int(self.masks[n].sum())):
            labels[self.masks[name]] = values[name]
        return labels, {v: n for n, v in values.items()}

    def summary(self) -> dict[str, Any]:
        """Per-organ volume, method and refinement counts, plus timings: what the JSON sidecar holds."""
        voxel_ml = float(np.prod(self.image.spacing)) / 1000.0
        organs = {}
        for name, mask in self.masks.items():
            row: dict[str, Any] = {
                "volume_ml": round(float(mask.sum()) * voxel_ml, 2),
                "atlas_volume_ml": round(float(self.priors[name].sum()) * voxel_ml, 2)
                if name in self.priors
                else None,
                "method": self.methods[name],
                "color": list(default_color(name)),
            }
            if name in self.refinement:
                row["refinement"] = asdict(self.refinement[name])
            if name in self.evidence:
                row["evidence"] = self.evidence[name].to_dict()
                confidence = self.evidence[name].confidence
                row["confidence"] = confidence.to_dict() if confidence else None
            organs[name] = row
        return {
            "organs": organs,
            "review_first": self.review_first(),
            "not_drawn": self.omitted,
            "not_drawn_evidence": {n: e.to_dict() for n, e in self.evidence.items() if e.omitted},
            "atlas": self.atlas,
            "model": self.model,
            "oncoseg_version": __version__,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            **{k: v for k, v in self.info.items() if k != "not_drawn"},
        }

    def save(self, path: str | Path, output_type: str = "nifti", reference: str | Path | None = None) -> Path:
        """Write a NIfTI/NRRD/MHA label map, or an RTSTRUCT over ``reference`` (the DICOM series folder; default:
        the folder the image was read from; each ROI's description carries its confidence), each with a JSON
        sidecar (`sidecar_path`: volumes, confidence, review-first list, organs not drawn and why)."""
        path = Path(path)
        if output_type == "rtstruct":
            from oncoseg.dicom import write_rtstruct

            reference = reference or self.image.source_path
            if not reference or not Path(reference).is_dir():
                raise OncoSegError("--output-type rtstruct needs a DICOM series folder as input")
            masks = {name: mask for name, mask in self.masks.items() if mask.any()}
            if not masks:
                reasons = "; ".join(f"{n}: {r}" for n, r in self.omitted.items())
                raise OncoSegError(
                    "no organ was found in this CT: nothing to write" + (f" ({reasons})" if reasons else "")
                )
            colors = {name: default_color(name) for name in masks}
            notes = {name: note for name, note in self.notes().items() if name in masks}
            with OutputFiles() as outputs:
                write_rtstruct(
                    masks, reference, path, colors=colors, series_description="Onco-Seg OARs", notes=notes,
                    outputs=outputs,
                )  # fmt: skip
                payload = json.dumps(self.summary(), indent=2)
                outputs.write(sidecar_path(path), lambda tmp: tmp.write_text(payload, encoding="utf-8"))
            return path
        if output_type != "nifti":
            raise OncoSegError(f"unknown output type {output_type!r}; use one of {', '.join(OUTPUT_TYPES)}")
        labels, names = self.label_map()
        save_mask(labels, self.image, path)
        sidecar = sidecar_path(path)
        payload = {"labels": {str(v): n for v, n in names.items()}, **self.summary()}
        with atomic_write_path(sidecar) as tmp:
            tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return path


def sidecar_path(path: str | Path) -> Path:
    """``oars.nii.gz`` → ``oars.json`` (also for ``.dcm``)."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".json")


def make_predictor(backend: str = "litemedsam", checkpoint: str | None = None):
    """The predictor that refines the registered organs: ``backend`` with ``checkpoint`` (a LoRA adapter, a full
    state dict or a registered name; see `oncoseg.models.spec.ModelSpec`). LiteMedSAM runs its teacher encoder
    here: the refinement's acceptance rules and the measured organ Dice (benchmarks/contour.py) are the teacher's,
    not yet measured with the student encoder."""
    from oncoseg.models.spec import ModelSpec

    encoder = "teacher" if backend == "litemedsam" else "auto"
    return ModelSpec(backend=backend, checkpoint=checkpoint, encoder=encoder).build_predictor()


def contour(
    image: str | Path | MedicalImage,
    organs: Sequence[str] | None = None,
    *,
    atlas: str | Path | Atlas | None = None,
    refine: bool = True,
    predictor=None,
    backend: str = "litemedsam",
    checkpoint: str | None = None,
    registration_spacing: float = 4.0,
    deformable: bool = True,
    settings: RefineSettings | None = None,
    progress: bool = False,
    engine: str = "atlas",
    model: str | Path | Sequence[str | Path] | None = None,
    label_map: dict[str, str | None] | str | Path | None = None,
    engine_options: dict[str, Any] | None = None,
) -> ContourResult:
    """Contour the organs at risk of a CT (file or DICOM series folder) from an atlas, refined by the model.

    ``organs``: TG-263 names or aliases (default: every organ the atlas has). ``refine=False`` keeps the
    registered atlas labels (no model), which is fast but only as good as the registration. ``predictor``, else
    ``backend`` with ``checkpoint`` (`make_predictor`), refines. ``engine="nnunet"`` instead runs the nnU-Net
    v2 model folder(s) ``model`` with ``label_map`` and ``engine_options`` (`oncoseg.contour.nnunet.contour_nnunet`:
    folds, checkpoint, orientation, mirroring, step_size, threads).
    """
    from oncoseg.io import load_image

    if engine not in ENGINES:
        raise OncoSegError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "nnunet":
        from oncoseg.contour.nnunet import contour_nnunet

        if not model:
            raise OncoSegError("the nnunet engine needs a trained nnU-Net v2 model folder (--model DIR)")
        found = contour_nnunet(
            image, model, organs, label_map=label_map, progress=progress, **(engine_options or {})
        )
        return ContourResult(
            found.image, found.masks, {}, found.methods, {}, found.timings, "", found.model, found.info,
            evidence=found.evidence,
        )  # fmt: skip
    if model or label_map or engine_options:
        raise OncoSegError("a model folder and a label map are for the nnunet engine (--engine nnunet)")

    timings: dict[str, float] = {}
    start = time.perf_counter()
    if not isinstance(image, MedicalImage):
        image = load_image(image)  # modality from the DICOM header or guessed from the values
    if not image.is_3d or image.channels != 1:
        raise OncoSegError("organ contouring needs a single-channel CT volume")
    if image.modality not in (None, "ct"):
        raise OncoSegError(f"organ contouring needs a CT, but this image looks like {image.modality}")
    if not isinstance(atlas, Atlas):
        atlas = load_atlas(atlas)
    chosen = resolve_organs(list(organs) if organs else None, supported(atlas.organs()))
    timings["load"] = time.perf_counter() - start

    t = time.perf_counter()
    stages = _progress(3 if deformable else 2, "registration", "stage") if progress else None
    registration = register(
        image,
        atlas.image,
        spacing=registration_spacing,
        deformable=deformable,
        on_stage=(lambda name: stages.set_postfix_str(name, refresh=False) or stages.update(1))
        if stages
        else None,
    )
    warped = warp_labels(atlas.labels, registration, image)
    values = {name: atlas.values(name) for name in chosen}
    priors = {name: np.isin(warped, values[name]) for name in chosen}
    inside = coverage(atlas.labels, values, registration.transform, image)
    if stages:
        stages.close()
    timings["registration"] = time.perf_counter() - t
    timings.update({f"registration_{k}": v for k, v in registration.timings.items()})
    t = time.perf_counter()
    priors, inside, adapted, weak = adapt_priors(image, priors, inside, fit=refine)  # this CT's HU
    timings["ct_numbers"] = time.perf_counter() - t

    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    # organs outside the scan are decided before the model runs (it would only waste time on them)
    methods = {name: adapted.get(name, "atlas only") for name in chosen}
    evidence = {
        name: weigh(
            name, priors[name], priors[name], voxel_ml, inside[name], method=methods[name],
            weak=weak.get(name), caution=LEVEL_CAUTION if is_numbered(name) else None,
        )
        for name in chosen
    }  # fmt: skip
    masks, refinement, model = dict(priors), {}, ""
    to_refine = {
        name: priors[name]
        for name in chosen
        if name in MODEL_REFINED
        and name not in HU_ORGANS
        and methods[name] not in NO_MODEL_METHODS
        and model_helps(image.spacing[:2], name)
        and not evidence[name].omitted
    }
    if refine and to_refine:
        t = time.perf_counter()
        predictor = predictor or make_predictor(backend, checkpoint)
        predictor.set_image(image, modality="ct")
        model = predictor.backend.name
        slices = int(np.any(np.stack([p.any(axis=(1, 2)) for p in to_refine.values()]), axis=0).sum())
        bar = _progress(slices, "refinement", "slice") if progress else None
        refined, refinement = refine_priors(
            predictor,
            to_refine,
            image.spacing[:2],
            settings,
            on_slice=(lambda z: bar.update(1)) if bar else None,
        )
        if bar:
            bar.close()
        masks.update(refined)
        methods.update(
            {n: "atlas + model" if methods[n] == "atlas only" else f"{methods[n]} + model" for n in refined}
        )
        for name in refined:
            evidence[name] = weigh(name, priors[name], masks[name], voxel_ml, inside[name], refinement[name])
        timings["refine"] = time.perf_counter() - t
    masks = {name: mask for name, mask in masks.items() if not evidence[name].omitted}
    timings["total"] = time.perf_counter() - start
    info = {"registration_spacing_mm": registration_spacing, "deformable": deformable, "refine": refine}
    return ContourResult(
        image, masks, priors, methods, refinement, timings, atlas.source, model, info, evidence=evidence
    )


def confidence_text(evidence: OrganEvidence) -> str:
    """ "Onco-Seg confidence 0.68 (heuristic)" or "REVIEW: Onco-Seg confidence 0.42 (heuristic: reasons)"."""
    confidence = evidence.confidence
    if confidence is None:
        return ""
    reasons = f": {', '.join(confidence.reasons)}" if confidence.reasons else ""
    text = f"Onco-Seg confidence {confidence.estimate:.2f} (heuristic{reasons if confidence.review else ''})"
    return f"REVIEW: {text}" if confidence.review else text


def _progress(total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=True)
