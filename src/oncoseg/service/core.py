"""What the service does, without HTTP: open images (upload, DICOMweb), segment a slice from clicks/boxes,
propagate in 3D and correct a 3D result on any slice (as jobs with progress and cancel), measure, render PNGs,
download the result, store it back to the PACS. The routes in `app` and `monailabel`
are thin shells over `Engine`; model work runs on the `ModelWorker` thread.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from oncoseg.errors import ConflictError, EmptyResultError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.measure import measure
from oncoseg.models.base import MaskPrediction
from oncoseg.models.spec import ModelSpec
from oncoseg.pacs import PacsClient, uid_hash
from oncoseg.predictor import Predictor, blank_error
from oncoseg.prompts import Box, Point, Prompt, validate_prompt
from oncoseg.render import DEFAULT_CT_PRESET, mask_rgba, mask_to_polygons, png_bytes, window_slice
from oncoseg.service import ahead
from oncoseg.service.cache import NotFoundError, OpenImage, SessionStore, WatchedPredictor
from oncoseg.service.jobs import CANCELLED, DONE, FAILED, FINISHED, KEEP_JOBS, Job, JobCancelled, walk_extent
from oncoseg.service.worker import BusyError, ModelWorker, Preempted
from oncoseg.session import SegmentedObject, Session
from oncoseg.volume import PropagationSettings

log = logging.getLogger("oncoseg.service")

UPLOAD_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".nrrd",
    ".mha",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
    ".bmp",
    ".dcm",
)


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    pacs_url: str | None = None  # Orthanc base URL (REST + /dicom-web)
    dicomweb_url: str | None = None  # another DICOMweb root; default pacs_url + "/dicom-web"
    pacs_auth: tuple[str, str] | str | None = None
    memory_budget_mb: float = 2048.0  # images, normalised pixels, embeddings and results of open images
    max_upload_mb: float = 512.0
    max_image_voxels: int | None = None  # largest image an upload may declare; default: budget / 8 bytes
    max_concurrent_uploads: int = 2  # uploads decoded at once; more get HTTP 503 (Retry-After)
    allowed_hosts: tuple[str, ...] = ()  # extra Host header names to answer to (loopback names always)
    max_queue: int = 8
    workdir: str | None = None
    backend: str = "litemedsam"
    checkpoint: str | None = None
    encoder: str = "auto"  # LiteMedSAM's image encoder: auto, student or teacher (ModelSpec.encoder)
    warmup: bool = True
    threads: int | None = None  # torch CPU threads (None: torch's default)
    encode_ahead: int = 24  # slices each way around the one on screen encoded in the background (0: that one)

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_budget_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def read_limits(self):
        """What an uploaded image may declare (checked from its header before any pixel is decoded), and no
        data file outside the upload: the service reads images only from the bytes it was given."""
        from oncoseg.io import ReadLimits

        voxels = self.max_image_voxels or max(self.budget_bytes // 8, 1)
        return ReadLimits(max_voxels=voxels, max_bytes=max(self.budget_bytes // 2, 1), external_data=False)

    @property
    def max_unzipped_bytes(self) -> int:
        """The most a .zip upload (a DICOM series) may unpack to."""
        return min(4 * self.max_body_bytes, max(self.budget_bytes // 2, 1))


def build_prompt(
    points: list[tuple[float, float, bool]] | None, box: list[float] | None, z: int | None
) -> Prompt:
    """A prompt on slice ``z`` from ``(x, y, positive)`` points and an optional ``[x0, y0, x1, y1]`` box."""
    if box is not None and len(box) != 4:
        raise PromptError(f"box needs 4 numbers [x0, y0, x1, y1], got {len(box)}")
    return Prompt(
        box=Box(*map(float, box), z=z) if box is not None else None,
        points=tuple(Point(float(x), float(y), bool(positive), z) for x, y, positive in points or ()),
    )


class Engine:
    """Open images and answer prompts on them; one per service process. Every model action on an image goes
    through its core `oncoseg.session.Session` (`OpenImage.core`): a click or box on a slice is
    `Session.segment`, or `Session.refine` when it adds to the clicks behind the current result there;
    propagation is `Session.segment(..., volume=True)`; a correction on a slice of a 3D result is
    `Session.refine`, which walks the volume again from that slice."""

    def __init__(self, config: ServiceConfig, backend=None):
        self.config = config
        self.worker = ModelWorker(config.max_queue)
        # built on the model thread, so that torch's OpenMP thread pool lives there only (see oncoseg.service.worker)
        self.backend = backend or self.worker.call(
            lambda: ModelSpec(
                backend=config.backend,
                checkpoint=config.checkpoint,
                threads=config.threads,
                encoder=config.encoder,
            ).build_backend()
        )
        self.store = SessionStore(config.budget_bytes)
        self.upload_slots = threading.BoundedSemaphore(max(1, config.max_concurrent_uploads))
        self._jobs_lock = threading.Lock()
        self._own_workdir = config.workdir is None
        self.workdir = Path(config.workdir or tempfile.mkdtemp(prefix="oncoseg-serve-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pacs = (
            PacsClient(config.pacs_url, auth=config.pacs_auth, dicomweb_url=config.dicomweb_url)
            if config.pacs_url
            else None
        )
        self.started = time.time()
        self.warm = False
        self._ahead_lock = threading.Lock()
        self._ahead_queued = False  # an `_ahead_step` waits in the worker's queue
        self._ahead_image: OpenImage | None = None  # the image being encoded ahead right now
        self._ahead_slice: int | None = None  # and its slice

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self) -> float:
        """Run the encoder and decoder once on a dummy 512x512 slice (first real click is then fast)."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        image = MedicalImage.from_array(rng.random((512, 512), dtype=np.float32))
        session = Session(image, Predictor(self.backend))
        for prompt in (Prompt(points=(Point(256, 256),)), Prompt(box=Box(200, 200, 300, 300))):
            try:
                session.segment(prompt)
            except EmptyResultError:  # noise may hold nothing: the model ran all the same
                pass
        self.warm = True
        return time.perf_counter() - start

    def close(self) -> None:
        # a running job stops at its next slice instead of holding up the model thread's stop
        for opened in self.store.list():
            for job in list(opened.jobs.values()):
                job.cancel()
        self.worker.stop()
        self.store.close_all()
        if self.pacs is not None:
            self.pacs.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "warm": self.warm,
            "queue": self.worker.pending,
            "max_queue": self.worker.max_queue,
            "rejected": self.worker.rejected,
            "preempted": self.worker.preempted,
            "completed": self.worker.completed,
            "uptime_s": round(time.time() - self.started, 1),
            **self.store.stats(),
        }

    # ------------------------------------------------------------------ opening images
    def new_session(
        self,
        image: MedicalImage,
        folder: Path | None,
        source: str,
        session_id: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> OpenImage:
        """An `OpenImage` over a core `Session` with its own predictor (embeddings bounded by bytes in the
        `SessionStore`, not by count)."""

        def create() -> OpenImage:  # on the model thread, like every change to the images' caches
            core = Session(image, WatchedPredictor(self.backend, cache_slices=100_000))
            opened = OpenImage(
                session_id or self.store.new_id(),
                core,
                folder=folder,
                source=source,
                study_uid=study_uid or image.metadata.get("StudyInstanceUID"),
                series_uid=series_uid or image.metadata.get("SeriesInstanceUID"),
            )
            return self.store.add(opened)

        try:
            return self.worker.call(create)
        except BaseException:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def session_folder(self) -> Path:
        folder = self.workdir / "sessions" / self.store.new_id()
        folder.mkdir(parents=True)
        return folder

    def open_upload(self, filename: str, data: bytes | BinaryIO, modality: str | None = None) -> OpenImage:
        """An uploaded image file (NIfTI, NRRD, MHA, PNG/JPEG/TIFF, one DICOM file) or a .zip of a DICOM series.

        ``data`` is the bytes or a readable, seekable file (it is copied in chunks, never held whole). At most
        ``max_concurrent_uploads`` are decoded at once (else `BusyError`); the image's header is checked
        against `ServiceConfig.read_limits` before its pixels are read; a refused upload leaves no file."""
        from oncoseg.io import load_image

        name = (filename or "").lower()
        suffix = next((s for s in UPLOAD_SUFFIXES if name.endswith(s)), None)
        if suffix is None and not name.endswith(".zip"):
            raise OncoSegError(
                f"unsupported upload type (expected a .zip of DICOM files or one of {', '.join(UPLOAD_SUFFIXES)})"
            )
        if not self.upload_slots.acquire(blocking=False):
            raise BusyError("too many uploads are being opened at once: retry in a moment")
        folder = self.session_folder()
        try:
            source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
            if suffix is None:
                target = _extract_zip(source, folder / "dicom", limit=self.config.max_unzipped_bytes)
            else:
                target = folder / f"image{suffix}"
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            image = load_image(target, modality=modality, limits=self.config.read_limits)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self.upload_slots.release()
        return self.new_session(image, folder, "upload")

    def require_pacs(self) -> PacsClient:
        if self.pacs is None:
            raise ConflictError("no PACS configured: start the service with --pacs URL")
        return self.pacs

    def open_series(
        self,
        series_uid: str,
        study_uid: str | None = None,
        modality: str | None = None,
        session_id: str | None = None,
    ) -> OpenImage:
        """A series from the PACS by UID, retrieved with DICOMweb (WADO-RS); reuses an open image."""
        for opened in self.store.list():
            if opened.series_uid == series_uid and opened.source == "pacs":
                return self.store.get(opened.id)
        pacs = self.require_pacs()
        if not study_uid:
            found = pacs.qido_series(SeriesInstanceUID=series_uid)
            if not found:
                raise NotFoundError(f"no series with that UID (hash {uid_hash(series_uid)}) on the PACS")
            study_uid = found[0].study_uid
        folder = self.session_folder()
        try:
            image = pacs.load_dicomweb_series(study_uid, series_uid, folder / "dicom", modality=modality)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("opened series %s from the PACS: %s", uid_hash(series_uid), image.shape)
        return self.new_session(image, folder, "pacs", session_id, study_uid, series_uid)

    def list_series(self) -> list[dict[str, Any]]:
        pacs = self.require_pacs()
        try:
            series = pacs.series()
        except OncoSegError:  # not an Orthanc: plain DICOMweb
            series = pacs.qido_series()
        return [s.as_dict() for s in series]

    # ------------------------------------------------------------------ prompts
    def check_prompt(self, opened: OpenImage, prompt: Prompt, z: int | None) -> int | None:
        """Validate before queueing (bad input never occupies the model). Returns the slice index."""
        image = opened.image
        if image.is_3d:
            if z is None:
                raise PromptError(f"this is a volume of {image.num_slices} slices: give the slice index z")
            if not 0 <= z < image.num_slices:
                raise PromptError(f"slice {z} is outside the volume (slices 0..{image.num_slices - 1})")
        elif z not in (None, 0):
            raise PromptError(f"slice {z} given for a 2D image (use z=0 or leave it out)")
        else:
            z = None
        validate_prompt(prompt.on_slice(z), image.shape)
        return z

    def segment(
        self, opened: OpenImage, prompt: Prompt, z: int | None, overlay: bool = True, outlines: bool = True
    ) -> dict[str, Any]:
        """Model thread: one slice from a prompt; becomes the image's result. Clicks that add to the clicks
        behind the current slice result refine it (`Session.refine`, the core's grown-box rule); anything else
        starts afresh (`Session.segment`). The model finding nothing is an empty result (``"empty": true``);
        a blank region under the prompt is refused (EmptyResultError) and keeps the result."""
        start = time.perf_counter()
        predictor = opened.predictor
        cached = predictor.is_cached(z)
        prompt = prompt.on_slice(z)
        added = added_clicks(opened, prompt, z)
        if added is not None:
            predictor.last = None
            try:
                opened.core.refine(opened.obj, Prompt(points=added), repropagate=False)
                opened.shown_empty = False
            except EmptyResultError:
                if predictor.last is None:  # refused before any model work (blank under the grown box)
                    raise
                # the clicks removed everything: shown empty, the object stays for the next click
                opened.shown_empty = True
        else:
            self._replace_result(opened, lambda: opened.core.segment(prompt), empty_ok=True)
        self._keep_info(opened, {"kind": "slice", "z": z})
        mask = self._slice_of(opened, z)
        if opened.shown_empty:  # the model's (last) answer, empty
            score = float(predictor.last[1].scores[0])
        else:  # the score of the mask the core kept (a correction may try several boxes)
            score = float(opened.obj.slice_scores[z])
        opened.result_info["score"] = score
        answer = self._slice_answer(opened, z, mask, score, overlay, outlines)
        answer.update(embedding_cached=cached, refined=added is not None)
        answer["compute_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer

    def _slice_answer(
        self, opened: OpenImage, z: int | None, mask: np.ndarray, score: float, overlay: bool, outlines: bool
    ) -> dict[str, Any]:
        """A click answer's fields for slice ``z`` of the result: mask, measurements, quality, and how many
        smaller/larger masks also answer its clicks there (`choose`)."""
        return {
            "image_id": opened.id,
            "z": z,
            "score": round(score, 4),
            "empty": not bool(mask.any()),
            **mask_payload(mask, overlay, outlines),
            "measurements": self._measure(mask, opened.image, slice_only=True),
            "quality": quality_of(opened.obj) if mask.any() else None,
            "alternatives": alternatives_of(opened, z),
            "warnings": list(opened.image.metadata.get("warnings", [])),
        }

    def choose(
        self, opened: OpenImage, which: str, z: int | None, overlay: bool = True, outlines: bool = True
    ) -> dict[str, Any]:
        """Model thread: swap in the next smaller or larger mask that also answered the result's clicks on
        slice ``z`` (`Session.choose`; a 3D result is walked again from there). Answers like a click."""
        start = time.perf_counter()
        z = check_choice(opened, which, z)
        obj = opened.obj
        opened.core.choose(obj, which, z=z)
        info = {"kind": "slice", "z": z}
        if obj.volume:
            self._volume_answer(opened, obj, z, start)  # keeps the 3D result's slices and scores
            info = opened.result_info
        self._keep_info(opened, {**info, "score": float(obj.slice_scores[z])})
        mask = self._slice_of(opened, z)
        answer = self._slice_answer(opened, z, mask, float(obj.slice_scores[z]), overlay, outlines)
        answer.update(embedding_cached=True, refined=False, chosen=which)
        if obj.volume:
            answer.update(
                slices=list(obj.slice_range or ()), volume_measurements=self._measure(obj.mask, opened.image)
            )
        answer["compute_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer

    def _replace_result(self, opened: OpenImage, make, empty_ok: bool = False) -> SegmentedObject | None:
        """Run ``make`` (a core segment) to make the image's new result. The old object leaves the core session
        first (so the new one takes its label, 1) and comes back when ``make`` fails or is cancelled. With
        ``empty_ok`` the model finding nothing (after it ran) gives an empty result instead of the error."""
        core, previous = opened.core, opened.obj
        if previous is not None:
            core.remove(previous)
        opened.predictor.last = None
        try:
            obj = make()
        except EmptyResultError:
            if empty_ok and opened.predictor.last is not None:
                opened.obj, opened.shown_empty = None, True
                return None
            self._restore(opened, previous)
            raise
        except BaseException:
            self._restore(opened, previous)
            raise
        opened.obj, opened.shown_empty = obj, False
        return obj

    @staticmethod
    def _restore(opened: OpenImage, previous: SegmentedObject | None) -> None:
        if previous is not None and previous not in opened.core.objects:
            opened.core.objects.append(previous)

    def _keep_info(self, opened: OpenImage, info: dict[str, Any]) -> None:
        opened.result_info = info
        self.store.enforce(opened.id)

    @staticmethod
    def _slice_of(opened: OpenImage, z: int | None) -> np.ndarray:
        result = opened.result
        return result[z] if opened.image.is_3d else result

    def check_text(self, opened: OpenImage, text: str, points, box, z: int | None) -> int | None:
        """Validate a text request before queueing: no clicks or box with it, a valid slice, a known concept."""
        if points or box is not None:
            raise PromptError("a text prompt finds every instance by itself: send it without points or box")
        if not self.backend.supports_text:
            raise PromptError(f"the {self.backend.name} backend has no text prompts")
        self._text_doubt(opened, text)  # a concept outside the vocabulary or the image's modality fails here
        return self.check_prompt(opened, Prompt(text=text), z)

    def _text_doubt(self, opened: OpenImage, text: str) -> str | None:
        """`Backend.check_text` on the opened image's modality: a reason to review the answer, or None."""
        image = opened.image
        return self.backend.check_text(text, image.modality, image.metadata.get("modality_source"))

    def segment_text(
        self, opened: OpenImage, text: str, z: int | None, overlay: bool = True, outlines: bool = True
    ) -> dict[str, Any]:
        """Model thread: every instance of the concept ``text`` on one slice; their union becomes the result
        (an object of the core session, `Session.add`)."""
        start = time.perf_counter()
        predictor = opened.predictor
        cached = predictor.is_cached(z)
        image = opened.image
        shape = image.shape[-2:] if image.is_3d else image.shape
        if predictor.blank_reason(Prompt(text=text), z) is not None:  # nothing to find on a blank slice
            found = MaskPrediction(np.zeros((0, *shape), bool), np.zeros(0, np.float32))
        else:
            found = self.backend.detect(predictor.embedding(z), text)
        mask = np.logical_or.reduce(found.masks, axis=0) if len(found.masks) else np.zeros(shape, bool)
        scores = [round(float(s), 4) for s in found.scores]
        whole = np.zeros(image.shape, dtype=bool)
        if image.is_3d:
            whole[z] = mask
        else:
            whole = mask.copy()
        self._replace_result(
            opened,
            lambda: opened.core.add(
                whole, name=text, score=scores[0] if scores else 0.0, doubts=(self._text_doubt(opened, text),)
            ),
        )
        if not mask.any():
            opened.core.remove(opened.obj)
            opened.obj, opened.shown_empty = None, True
        self._keep_info(opened, {"kind": "slice", "z": z, "text": text, "scores": scores})
        answer = {
            "image_id": opened.id,
            "z": z,
            "text": text,
            "instances": len(scores),
            "scores": scores,
            "score": scores[0] if scores else 0.0,
            "embedding_cached": cached,
            "refined": False,
            "empty": not bool(mask.any()),
            **mask_payload(mask, overlay, outlines),
            "measurements": self._measure(mask, image, slice_only=True),
            "quality": quality_of(opened.obj) if mask.any() else None,
            "warnings": list(image.metadata.get("warnings", [])),
        }
        answer["compute_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer

    # ------------------------------------------------------------------ 3D
    def propagate(
        self,
        opened: OpenImage,
        prompt: Prompt,
        z: int,
        max_slices: int | None = None,
        on_slice: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Model thread: segment slice ``z`` from the prompt and follow the object through the volume
        (`Session.segment(..., volume=True)`); an error or a cancel (raised by ``on_slice``) keeps the result."""
        if not opened.image.is_3d:
            raise OncoSegError("3D propagation needs a volume; this image is 2D")
        start = time.perf_counter()
        core = opened.core
        core.propagation = PropagationSettings(max_slices=max_slices)
        try:
            obj = self._replace_result(
                opened,
                lambda: core.segment(prompt.on_slice(z), volume=True, name="Lesion", on_slice=on_slice),
            )
        finally:
            self.store.enforce(opened.id)
        return self._volume_answer(opened, obj, z, start)

    def refine_volume(
        self,
        opened: OpenImage,
        prompt: Prompt,
        z: int,
        max_slices: int | None = None,
        on_slice: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Model thread: correct the 3D result on slice ``z`` (`Session.refine`): clicks are added to those
        already given there (the ones the request repeats are not added twice), a box replaces them; the slice
        is segmented again and the volume walked again from it up to the next corrected slice, or up to the
        first slice it segments as the result has it (the rest is kept: `Session.refine`). An error or a
        cancel (raised by ``on_slice``) changes nothing."""
        obj = require_volume_result(opened)
        start = time.perf_counter()
        core = opened.core
        if max_slices is not None:
            core.propagation = replace(core.propagation, max_slices=max_slices)
        try:
            core.refine(obj, correction(obj, prompt.on_slice(z), z), repropagate=True, on_slice=on_slice)
        finally:
            self.store.enforce(opened.id)
        answer = self._volume_answer(opened, obj, opened.result_info.get("z", z), start)
        answer.update(refined=True, refined_slice=z)
        return answer

    def _volume_answer(self, opened: OpenImage, obj: SegmentedObject, z: int, start: float) -> dict[str, Any]:
        slices = list(obj.slice_range)
        anchors = sorted(a for a in obj.anchors if a is not None)
        scores = {str(k): round(v, 4) for k, v in sorted(obj.slice_scores.items())}
        info = {"kind": "volume", "z": z, "slices": slices, "anchors": anchors, "slice_scores": scores}
        self._keep_info(opened, info)
        return {
            "image_id": opened.id,
            "z": z,
            "slices": slices,
            "slice_scores": scores,
            "anchors": anchors,
            "refined": False,
            "measurements": self._measure(obj.mask, opened.image),
            "quality": quality_of(obj),
            "warnings": list(opened.image.metadata.get("warnings", [])),
            "compute_ms": round(1000 * (time.perf_counter() - start), 1),
        }

    def start_job(
        self, opened: OpenImage, action: str, prompt: Prompt, z: int, max_slices: int | None = None
    ) -> Job:
        """Queue a 3D job on the model thread and return at once: ``"propagate"`` (a new 3D result from the
        prompt on slice ``z``) or ``"refine"`` (a correction on slice ``z`` of the 3D result). What can be
        refused without model work is refused here: a 2D image, no 3D result to correct, a blank region, a job
        already running on this image, a full queue (BusyError)."""
        if not opened.image.is_3d:
            raise OncoSegError("3D jobs need a volume; this image is 2D")
        prompt = prompt.on_slice(z)
        if action == "propagate":
            opened.core.check(prompt, volume=True)
            reason = opened.predictor.blank_reason(prompt, z)  # e.g. constant after the CT window
            if reason is not None:
                raise blank_error(f"slice {z}", reason)
            job = Job(opened.id, action, z, walk_extent(opened.image.num_slices, z, max_slices))
        elif action == "refine":
            obj = require_volume_result(opened)
            settings_max = max_slices if max_slices is not None else opened.core.propagation.max_slices
            total = walk_extent(opened.image.num_slices, z, settings_max, [a for a in obj.anchors if a != z])
            job = Job(opened.id, action, z, total, base=obj.mask)
        else:
            raise OncoSegError(f"action must be 'propagate' or 'refine', not {action!r}")
        with self._jobs_lock:
            if any(j.state not in FINISHED for j in opened.jobs.values()):
                raise ConflictError("a 3D job is already running on this image: cancel it or wait for it")
            self.worker.submit(self._run_job, opened, job, prompt, max_slices)
            for older in opened.jobs.values():  # one finished result mask kept per image at most
                older.release()
            opened.jobs[job.id] = job
            finished = [key for key, j in opened.jobs.items() if j.state in FINISHED]
            for key in finished[: max(0, len(opened.jobs) - KEEP_JOBS)]:
                del opened.jobs[key]
        return job

    def _run_job(self, opened: OpenImage, job: Job, prompt: Prompt, max_slices: int | None) -> None:
        """Model thread: run ``job``; its state tells the outcome (the worker's future holds nothing)."""
        if not job.start():
            return
        predictor = opened.predictor
        predictor.listener = job.answered
        try:
            if self.store.find(opened.id) is not opened:
                raise NotFoundError("the image was closed before the job started")
            run = self.propagate if job.action == "propagate" else self.refine_volume
            answer = run(opened, prompt, job.z, max_slices, on_slice=job.on_slice)
        except JobCancelled:
            job.finish(CANCELLED)
        except Exception as error:  # noqa: BLE001 - the client reads it from the job
            if not isinstance(error, OncoSegError):
                log.error("3D job failed: %s", type(error).__name__)
            job.finish(FAILED, error=error)
        else:
            job.finish(DONE, result=answer, final=opened.obj.mask)
        finally:
            predictor.listener = None

    @staticmethod
    def find_job(opened: OpenImage, job_id: str) -> Job:
        job = opened.jobs.get(job_id)
        if job is None:
            raise NotFoundError(
                "no such job on this image (it may be finished long ago or the image reopened)"
            )
        return job

    def job_png(self, opened: OpenImage, job: Job, z: int) -> bytes:
        """The job's mask on slice ``z`` as an overlay PNG (the slices finished so far while it runs)."""
        check_slice(opened.image, z)
        mask = job.view(z, opened.image.shape[-2:])
        if mask is None:
            what = (
                "superseded by a newer job" if job.state == DONE else f"{job.state}: the result is unchanged"
            )
            raise ConflictError(f"the job was {what} (see the image's result)")
        return png_bytes(mask_rgba(mask))

    # ------------------------------------------------------------------ results
    def measurements(self, opened: OpenImage) -> dict[str, Any]:
        if not opened.has_result:
            raise ConflictError("no result yet: segment (or propagate) first")
        return {
            "image_id": opened.id,
            **opened.result_info,
            "measurements": self._measure(opened.result, opened.image),
            "warnings": list(opened.image.metadata.get("warnings", [])),
        }

    @staticmethod
    def _measure(mask: np.ndarray, image: MedicalImage, slice_only: bool = False) -> dict[str, Any] | None:
        if not mask.any():
            return None
        spacing = image.spacing[:2] if slice_only or mask.ndim == 2 else image.spacing
        return measure(mask, spacing, unit=image.spacing_unit).to_dict()  # px keys for a picture without mm

    def download(self, opened: OpenImage, fmt: str = "nifti", name: str = "Lesion") -> tuple[Path, str]:
        """The result as a file in a new temporary folder (the caller deletes the folder once it is sent):
        ``"nifti"``, the label mask (1 = the object) on the image's grid and in its file's orientation, or
        ``"seg"``, a DICOM SEG over the series the image was read from. Returns the file and its folder."""
        from oncoseg.dicom import write_seg
        from oncoseg.io import save_mask

        if fmt not in ("nifti", "seg"):
            raise OncoSegError(f"format must be 'nifti' or 'seg', not {fmt!r}")
        if not opened.has_result:
            raise ConflictError("no result to download: segment (or propagate) first")
        obj, reference = opened.obj, opened.dicom_folder
        if fmt == "seg" and (reference is None or not opened.image.is_3d):
            raise ConflictError("DICOM SEG needs an image opened from a DICOM series; download NIfTI instead")
        folder = self.workdir / "downloads" / self.store.new_id()
        folder.mkdir(parents=True)
        try:
            if fmt == "nifti":
                path = save_mask(opened.core.labels(), opened.image, folder / "oncoseg-result.nii.gz")
            else:
                path = write_seg({name: obj.mask}, reference, folder / "oncoseg-result-seg.dcm")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return path, folder

    # ------------------------------------------------------------------ store back
    def store_result(self, opened: OpenImage, fmt: str, name: str) -> dict[str, Any]:
        """Write the result as DICOM SEG or RTSTRUCT over the source series and upload it to the PACS."""
        from oncoseg.dicom import write_rtstruct, write_seg

        pacs = self.require_pacs()
        if not opened.has_result:
            raise ConflictError("no result to store: segment (or propagate) first")
        reference = opened.dicom_folder
        if reference is None or not opened.image.is_3d:
            raise ConflictError("only results on a DICOM series can be stored to the PACS as SEG/RTSTRUCT")
        writers = {"seg": write_seg, "rtstruct": write_rtstruct}
        if fmt not in writers:
            raise OncoSegError(f"format must be 'seg' or 'rtstruct', not {fmt!r}")
        out = (opened.folder or self.workdir) / "export" / f"{fmt}-{self.store.new_id()}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        writers[fmt]({name: opened.result}, reference, out)
        import pydicom

        header = pydicom.dcmread(out, stop_before_pixels=True)
        ids = pacs.upload(out)
        log.info("stored a %s (%d bytes) to the PACS", fmt.upper(), out.stat().st_size)
        return {
            "image_id": opened.id,
            "format": fmt,
            "name": name,
            "sop_instance_uid": str(header.SOPInstanceUID),
            "series_instance_uid": str(header.SeriesInstanceUID),
            "orthanc_ids": ids,
        }

    # ------------------------------------------------------------------ pictures
    def slice_png(self, opened: OpenImage, z: int | None, window: str | None = None) -> bytes:
        image = opened.image
        check_slice(image, z)
        pixels = image.slice(z if image.is_3d else 0)
        return png_bytes(window_slice(pixels, image.channels, window or default_window(image)))

    def prefetch(self, opened: OpenImage, z: int | None) -> None:
        """Slice ``z`` of ``opened`` is on screen: encode it and then its neighbours outward in the background
        (`oncoseg.service.ahead`), so that a click there only runs the decoder. The work yields to requests
        (`ModelWorker.yielding`) and follows the image viewed last."""
        if opened.image.is_3d and (z is None or not 0 <= z < opened.image.num_slices):
            return
        opened.last_viewed = z
        opened.viewed_at = time.monotonic()
        opened.ahead_done = False
        self._schedule_ahead()

    def needs(self, opened: OpenImage, z: int | None) -> None:
        """A request on slice ``z`` of ``opened`` is about to be queued: when that slice is being encoded ahead
        right now, the encode finishes instead of being abandoned (the request would redo it from the start)."""
        if self._ahead_image is opened and self._ahead_slice == (z if opened.image.is_3d else None):
            self.worker.finish_background()

    def close_image(self, image_id: str) -> None:
        """Close an open image; encoding ahead on it stops at its next module call."""
        opened = self.store.find(image_id)
        if opened is not None and self._ahead_image is opened:
            self.worker.abandon()
        self.store.remove(image_id)

    def _schedule_ahead(self) -> None:
        with self._ahead_lock:
            if self._ahead_queued:
                return
            self._ahead_queued = True
        self.worker.background(self._ahead_step)

    def _ahead_step(self) -> None:
        """Model thread, low priority: encode one slice ahead for the most recently viewed image that wants
        one, and queue the next step; a request arriving abandons the encode (it is redone later). Room is
        made from this image's less wanted embeddings and, for the displayed slice only, from other images'
        (never their displayed slice or result slices): a prefetch never closes an image."""
        with self._ahead_lock:
            self._ahead_queued = False
        viewed = sorted(
            (o for o in self.store.list() if o.viewed_at is not None and not o.ahead_done),
            key=lambda o: o.viewed_at,
            reverse=True,
        )
        images = self.store.list()  # least recently used first
        orders = {o.id: self._ahead_order(o) for o in images}
        free = self.store.budget_bytes - self.store.nbytes()
        sizes = [ahead.embedding_bytes(o) for o in images]
        size = max((b for b in sizes if b), default=0)
        for opened in viewed:
            order = orders[opened.id]
            elsewhere = sum(
                len(ahead.droppable(o, orders[o.id])) * (ahead.embedding_bytes(o) or 0)
                for o in images
                if o is not opened
            )
            z = ahead.next_slice(opened, order, free, elsewhere, size)
            if z is None:
                opened.ahead_done = True
                continue
            self._ahead_image, self._ahead_slice = opened, z
            try:
                if self.store.find(opened.id) is not opened:
                    continue
                with self.worker.yielding():
                    opened.predictor.embedding(z)
            except Preempted:
                self.worker.preempted += 1
            finally:
                self._ahead_image = None
            if self.store.find(opened.id) is not opened:  # closed meanwhile
                opened.predictor.trim_cache(0)
                return self._schedule_ahead()
            over = self.store.nbytes() - self.store.budget_bytes
            if over > 0:
                over -= ahead.trim(opened, order, over)
            # only for the displayed slice: other images' droppable embeddings, least recently used image first
            for other in images:
                if over <= 0 or z != order[0]:
                    break
                if other is not opened:
                    over -= ahead.trim(other, orders[other.id], over)
            ahead.arrange(opened, order)
            self.store.recount()
            return self._schedule_ahead()

    def _ahead_order(self, opened: OpenImage) -> list[int | None]:
        return ahead.outward(opened.last_viewed, opened.image.num_slices, self.config.encode_ahead)

    def ready(self, opened: OpenImage) -> dict[str, Any]:
        """Which slices' embeddings are cached (a click there only runs the decoder), the slice on screen, and
        whether encoding ahead still has work on this image."""
        return {
            "image_id": opened.id,
            "num_slices": opened.image.num_slices,
            "viewed": opened.last_viewed,
            "ready": [0 if z is None else z for z in ahead.cached_slices(opened)],
            "encoding": opened.viewed_at is not None and not opened.ahead_done,
        }

    def result_png(self, opened: OpenImage, z: int | None) -> bytes:
        result = opened.result
        if result is None:
            raise ConflictError("no result yet: segment (or propagate) first")
        check_slice(opened.image, z)
        return png_bytes(mask_rgba(result[z] if opened.image.is_3d else result))


# ---------------------------------------------------------------------- helpers
def quality_of(obj: SegmentedObject | None) -> dict[str, Any] | None:
    """The result's quality estimate and review flag (`oncoseg.quality`) for JSON, None without a result."""
    return None if obj is None else obj.quality.to_dict()


def alternatives_of(opened: OpenImage, z: int | None) -> dict[str, int]:
    """How many masks smaller / larger than the result on slice ``z`` also answer its clicks there."""
    obj = opened.obj
    if obj is None or opened.shown_empty or opened.text_mask is not None:
        return {"smaller": 0, "larger": 0}
    current = int((obj.mask[z] if obj.mask.ndim == 3 else obj.mask).sum())
    areas = [int(mask.sum()) for mask, _ in obj.alternatives.get(z, ())]
    return {"smaller": sum(a < current for a in areas), "larger": sum(a > current for a in areas)}


def check_choice(opened: OpenImage, which: str, z: int | None) -> int | None:
    """The slice `Engine.choose` works on (default: the result's), or a one-line error: an unknown ``which``,
    a slice outside the image, no result, no such alternative."""
    if which not in ("smaller", "larger"):
        raise PromptError(f"which must be 'smaller' or 'larger', not {which!r}")
    if opened.obj is None or opened.shown_empty or opened.text_mask is not None:
        raise ConflictError("no click result to choose another size of: click first")
    if not opened.image.is_3d:
        check_slice(opened.image, z)
        z = None
    elif z is None:
        z = opened.result_info.get("z")
    check_slice(opened.image, z)
    if not alternatives_of(opened, z)[which]:
        where = f" on slice {z}" if z is not None else ""
        raise ConflictError(f"no {which} answer to the clicks{where}: the model offered none")
    return z


def check_slice(image: MedicalImage, z: int | None) -> None:
    """Raise PromptError unless ``z`` names a slice of ``image`` (0-based; 0 or None for a 2D image)."""
    if image.is_3d and (z is None or not 0 <= z < image.num_slices):
        raise PromptError(f"slice {z} is outside the volume (slices 0..{image.num_slices - 1})")
    if not image.is_3d and z not in (None, 0):
        raise PromptError(f"slice {z} given for a 2D image (use 0)")


def added_clicks(opened: OpenImage, prompt: Prompt, z: int | None) -> tuple[Point, ...] | None:
    """The clicks ``prompt`` adds when it repeats every click behind the current slice result on slice ``z``
    and adds more (the web page sends all clicks on a slice each time): those are a refinement, given to
    `Session.refine`. None when the prompt is not such a continuation (a box, another slice, a 3D result, a
    result not made from clicks alone): then it starts afresh."""
    obj = opened.obj
    if obj is None or obj.volume or prompt.box is not None:
        return None
    given = obj.anchors.get(z)
    if given is None or given.box is not None or not given.points:
        return None
    count = len(given.points)
    if len(prompt.points) <= count or tuple(prompt.points[:count]) != tuple(given.points):
        return None
    return tuple(prompt.points[count:])


def correction(obj: SegmentedObject, prompt: Prompt, z: int) -> Prompt:
    """What a correction request on slice ``z`` of a 3D result gives `Session.refine`: a box as it is (it
    replaces the slice's prompt); else the clicks not yet given there (a request that repeats the slice's
    clicks, as the web page's does, adds only the new ones)."""
    if prompt.box is not None:
        return prompt
    given = obj.anchors.get(z)
    known = given.points if given is not None else ()
    if known and tuple(prompt.points[: len(known)]) == tuple(known):
        if len(prompt.points) == len(known):
            raise PromptError(f"these clicks are already applied on slice {z}: add a click or a box")
        return Prompt(points=tuple(prompt.points[len(known) :]))
    return prompt


def require_volume_result(opened: OpenImage) -> SegmentedObject:
    """The image's 3D result, or ConflictError."""
    obj = opened.obj
    if obj is None or not obj.volume or opened.shown_empty:
        raise ConflictError("no 3D result to correct: propagate first")
    return obj


def default_window(image: MedicalImage) -> str:
    return DEFAULT_CT_PRESET if image.modality == "ct" and image.channels == 1 else "auto"


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Run lengths of a 2D mask in row-major order, starting with a run of 0s (possibly of length 0)."""
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return {"size": list(mask.shape), "order": "C", "counts": []}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "order": "C", "counts": counts}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(rle["size"])


def contours(mask: np.ndarray, tolerance: float = 0.5) -> list[list[list[float]]]:
    """Outlines of a 2D mask for JSON: closed polygons of ``[x, y]`` pixel coordinates (pixel centres are
    integers; the first point is repeated at the end), simplified to ``tolerance`` pixels, 2 decimals."""
    return [
        [[round(float(x), 2), round(float(y), 2)] for x, y in (*polygon, polygon[0])]
        for polygon in mask_to_polygons(mask, order="xy", tolerance=tolerance)
    ]


def mask_payload(mask: np.ndarray, overlay: bool = True, outlines: bool = True) -> dict[str, Any]:
    payload = {"mask": rle_encode(mask)}
    if outlines:
        payload["contours"] = contours(mask)
    if overlay:
        payload["overlay_png"] = base64.b64encode(png_bytes(mask_rgba(mask))).decode("ascii")
    return payload


MAX_ZIP_MEMBERS = 10_000  # a DICOM series of 10,000 files is a lot; more is an attack on the file system


def _extract_zip(source: BinaryIO, folder: Path, limit: int) -> Path:
    """Files of a zip (a DICOM series), flattened into ``folder`` under numbered names (the archive's own names
    and links are never used), read in chunks with at most ``limit`` bytes unpacked in all: the sizes the
    archive declares are checked first, and the bytes actually inflated are counted, since headers can lie."""
    too_big = OncoSegError(f"the uploaded zip unpacks to more than {limit / 2**20:.0f} MiB")
    folder.mkdir(parents=True)
    try:
        with zipfile.ZipFile(source) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if not members:
                raise OncoSegError("the uploaded zip holds no files")
            if len(members) > MAX_ZIP_MEMBERS:
                raise OncoSegError(f"the uploaded zip holds more than {MAX_ZIP_MEMBERS} files")
            if sum(m.file_size for m in members) > limit:
                raise too_big
            left = limit
            for index, member in enumerate(members):
                if member.flag_bits & 0x1:
                    raise OncoSegError("the uploaded zip is encrypted: upload an unencrypted archive")
                if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise OncoSegError(
                        "the uploaded zip uses a compression method other than deflate or none"
                    )
                with archive.open(member) as entry, open(folder / f"{index:05d}.dcm", "wb") as target:
                    while chunk := entry.read(min(1 << 20, left + 1)):
                        left -= len(chunk)
                        if left < 0:
                            raise too_big
                        target.write(chunk)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ):
        raise OncoSegError("the uploaded .zip is damaged or not a zip archive this service reads") from None
    return folder


def file_ext(name: str) -> str:
    """The (double) extension of a file name, e.g. ".nii.gz"."""
    lower = name.lower()
    return next((s for s in UPLOAD_SUFFIXES if lower.endswith(s)), os.path.splitext(lower)[1])
