"""What the service does, without HTTP: open images (upload, DICOMweb), segment a slice from clicks/boxes,
propagate in 3D, measure, render PNGs, store results back to the PACS. The routes in `app` and `monailabel`
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from oncoseg.errors import ConflictError, OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.measure import measure
from oncoseg.models.base import MaskPrediction
from oncoseg.models.spec import ModelSpec
from oncoseg.pacs import PacsClient, uid_hash
from oncoseg.predictor import Predictor, blank_error
from oncoseg.prompts import Box, Point, Prompt, validate_prompt
from oncoseg.render import DEFAULT_CT_PRESET, mask_rgba, mask_to_polygons, png_bytes, window_slice
from oncoseg.service.cache import NotFoundError, Session, SessionStore
from oncoseg.service.worker import BusyError, ModelWorker
from oncoseg.session import grown_box
from oncoseg.volume import PropagationSettings, propagate

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
    warmup: bool = True

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
    """Open images and answer prompts on them; one per service process."""

    def __init__(self, config: ServiceConfig, backend=None):
        self.config = config
        self.worker = ModelWorker(config.max_queue)
        # built on the model thread, so that torch's OpenMP thread pool lives there only (see oncoseg.service.worker)
        self.backend = backend or self.worker.call(
            lambda: ModelSpec(backend=config.backend, checkpoint=config.checkpoint).build_backend()
        )
        self.store = SessionStore(config.budget_bytes)
        self.upload_slots = threading.BoundedSemaphore(max(1, config.max_concurrent_uploads))
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

    # ------------------------------------------------------------------ lifecycle
    def warm_up(self) -> float:
        """Run the encoder and decoder once on a dummy 512x512 slice (first real click is then fast)."""
        start = time.perf_counter()
        predictor = Predictor(self.backend)
        rng = np.random.default_rng(0)
        predictor.set_image(MedicalImage.from_array(rng.random((512, 512), dtype=np.float32)))
        predictor.predict(Prompt(points=(Point(256, 256),)))
        predictor.predict(Prompt(box=Box(200, 200, 300, 300)))
        self.warm = True
        return time.perf_counter() - start

    def close(self) -> None:
        self.worker.stop()
        self.store.close_all()
        if self.pacs is not None:
            self.pacs.close()
        if self._own_workdir:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "warm": self.warm,
            "queue": self.worker.pending,
            "max_queue": self.worker.max_queue,
            "rejected": self.worker.rejected,
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
    ) -> Session:
        def create() -> Session:  # on the model thread, like every change to the sessions' caches
            predictor = Predictor(self.backend, cache_slices=100_000)  # bounded by bytes in SessionStore
            predictor.set_image(image)
            session = Session(
                session_id or self.store.new_id(),
                image,
                predictor,
                folder=folder,
                source=source,
                study_uid=study_uid or image.metadata.get("StudyInstanceUID"),
                series_uid=series_uid or image.metadata.get("SeriesInstanceUID"),
            )
            return self.store.add(session)

        try:
            return self.worker.call(create)
        except BaseException:
            if folder is not None:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            raise

    def session_folder(self) -> Path:
        folder = self.workdir / "sessions" / self.store.new_id()
        folder.mkdir(parents=True)
        return folder

    def open_upload(self, filename: str, data: bytes | BinaryIO, modality: str | None = None) -> Session:
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
    ) -> Session:
        """A series from the PACS by UID, retrieved with DICOMweb (WADO-RS); reuses an open session."""
        for session in self.store.list():
            if session.series_uid == series_uid and session.source == "pacs":
                return self.store.get(session.id)
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
            import shutil

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
    def check_prompt(self, session: Session, prompt: Prompt, z: int | None) -> int | None:
        """Validate before queueing (bad input never occupies the model). Returns the slice index."""
        image = session.image
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
        self, session: Session, prompt: Prompt, z: int | None, overlay: bool = True, outlines: bool = True
    ) -> dict[str, Any]:
        """Model thread: one slice from a prompt; becomes the session's result."""
        start = time.perf_counter()
        cached = session.predictor.is_cached(z)
        clicks = prompt.points if prompt.box is None else ()
        asked = refining_prompt(session, prompt, z) or prompt
        self._refuse_blank(session, asked, z)
        prediction = session.predictor.predict(asked.on_slice(z), z=z)
        mask = prediction.masks[0]
        session.last_clicks = clicks
        if asked is prompt:  # a fresh start: forget the region of earlier clicks
            session.last_region = None
        if mask.any():
            session.last_region = (z, *bounding_box(mask))
        self._keep_slice_result(session, z, mask, {"score": float(prediction.scores[0])})
        answer = {
            "image_id": session.id,
            "z": z,
            "score": round(float(prediction.scores[0]), 4),
            "embedding_cached": cached,
            "refined": asked is not prompt,
            "empty": not bool(mask.any()),
            **mask_payload(mask, overlay, outlines),
            "measurements": self._measure(mask, session.image, slice_only=True),
            "warnings": list(session.image.metadata.get("warnings", [])),
        }
        answer["compute_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer

    @staticmethod
    def _refuse_blank(session: Session, prompt: Prompt, z: int | None) -> None:
        """EmptyResultError when the pixels under the prompt are blank (constant, or no finite values)."""
        reason = session.predictor.blank_reason(prompt.on_slice(z), z)
        if reason is not None:
            raise blank_error(f"slice {z}" if session.image.is_3d else "the image", reason)

    def _keep_slice_result(self, session: Session, z: int | None, mask: np.ndarray, info: dict) -> None:
        """A 2D mask on slice ``z`` becomes the session's result (the rest of a volume empty)."""
        if session.image.is_3d:
            result = np.zeros(session.image.shape, dtype=bool)
            result[z] = mask
        else:
            result = mask.copy()
        session.result = result
        session.result_info = {"kind": "slice", "z": z, **info}
        self.store.enforce(session.id)

    def check_text(self, session: Session, text: str, points, box, z: int | None) -> int | None:
        """Validate a text request before queueing: no clicks or box with it, a valid slice, a known concept."""
        if points or box is not None:
            raise PromptError("a text prompt finds every instance by itself: send it without points or box")
        if not self.backend.supports_text:
            raise PromptError(f"the {self.backend.name} backend has no text prompts")
        self.backend.check_text(text)  # e.g. a concept outside the model's vocabulary, with the known ones
        return self.check_prompt(session, Prompt(text=text), z)

    def segment_text(
        self, session: Session, text: str, z: int | None, overlay: bool = True, outlines: bool = True
    ) -> dict[str, Any]:
        """Model thread: every instance of the concept ``text`` on one slice; their union becomes the result."""
        start = time.perf_counter()
        cached = session.predictor.is_cached(z)
        shape = session.image.shape[-2:] if session.image.is_3d else session.image.shape
        if (
            session.predictor.blank_reason(Prompt(text=text), z) is not None
        ):  # nothing to find on a blank slice
            found = MaskPrediction(np.zeros((0, *shape), bool), np.zeros(0, np.float32))
        else:
            found = self.backend.detect(session.predictor.embedding(z), text)
        mask = np.logical_or.reduce(found.masks, axis=0) if len(found.masks) else np.zeros(shape, bool)
        session.last_clicks, session.last_region = (), None
        scores = [round(float(s), 4) for s in found.scores]
        self._keep_slice_result(session, z, mask, {"text": text, "scores": scores})
        answer = {
            "image_id": session.id,
            "z": z,
            "text": text,
            "instances": len(scores),
            "scores": scores,
            "score": scores[0] if scores else 0.0,
            "embedding_cached": cached,
            "refined": False,
            "empty": not bool(mask.any()),
            **mask_payload(mask, overlay, outlines),
            "measurements": self._measure(mask, session.image, slice_only=True),
            "warnings": list(session.image.metadata.get("warnings", [])),
        }
        answer["compute_ms"] = round(1000 * (time.perf_counter() - start), 1)
        return answer

    def propagate(
        self, session: Session, prompt: Prompt, z: int, max_slices: int | None = None
    ) -> dict[str, Any]:
        """Model thread: segment slice ``z`` from the prompt and follow the object through the volume."""
        if not session.image.is_3d:
            raise OncoSegError("3D propagation needs a volume; this image is 2D")
        start = time.perf_counter()
        self._refuse_blank(session, prompt, z)
        settings = PropagationSettings(max_slices=max_slices)
        try:
            result = propagate(session.predictor, prompt.on_slice(z), settings)
        finally:
            self.store.enforce(session.id)
        session.result = result.mask
        session.result_info = {"kind": "volume", "z": z, "slices": list(result.slice_range)}
        self.store.enforce(session.id)
        return {
            "image_id": session.id,
            "z": z,
            "slices": list(result.slice_range),
            "slice_scores": {str(k): round(v, 4) for k, v in sorted(result.slice_scores.items())},
            "measurements": self._measure(result.mask, session.image),
            "warnings": list(session.image.metadata.get("warnings", [])),
            "compute_ms": round(1000 * (time.perf_counter() - start), 1),
        }

    def measurements(self, session: Session) -> dict[str, Any]:
        if session.result is None or not session.result.any():
            raise ConflictError("no result yet: segment (or propagate) first")
        return {
            "image_id": session.id,
            **session.result_info,
            "measurements": self._measure(session.result, session.image),
            "warnings": list(session.image.metadata.get("warnings", [])),
        }

    @staticmethod
    def _measure(mask: np.ndarray, image: MedicalImage, slice_only: bool = False) -> dict[str, Any] | None:
        if not mask.any():
            return None
        spacing = image.spacing[:2] if slice_only or mask.ndim == 2 else image.spacing
        return measure(mask, spacing).to_dict()

    # ------------------------------------------------------------------ store back
    def store_result(self, session: Session, fmt: str, name: str) -> dict[str, Any]:
        """Write the result as DICOM SEG or RTSTRUCT over the source series and upload it to the PACS."""
        from oncoseg.dicom import write_rtstruct, write_seg

        pacs = self.require_pacs()
        if session.result is None or not session.result.any():
            raise ConflictError("no result to store: segment (or propagate) first")
        reference = session.dicom_folder
        if reference is None or not session.image.is_3d:
            raise ConflictError("only results on a DICOM series can be stored to the PACS as SEG/RTSTRUCT")
        writers = {"seg": write_seg, "rtstruct": write_rtstruct}
        if fmt not in writers:
            raise OncoSegError(f"format must be 'seg' or 'rtstruct', not {fmt!r}")
        out = (session.folder or self.workdir) / "export" / f"{fmt}-{self.store.new_id()}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        writers[fmt]({name: session.result}, reference, out)
        import pydicom

        header = pydicom.dcmread(out, stop_before_pixels=True)
        ids = pacs.upload(out)
        log.info("stored a %s (%d bytes) to the PACS", fmt.upper(), out.stat().st_size)
        return {
            "image_id": session.id,
            "format": fmt,
            "name": name,
            "sop_instance_uid": str(header.SOPInstanceUID),
            "series_instance_uid": str(header.SeriesInstanceUID),
            "orthanc_ids": ids,
        }

    # ------------------------------------------------------------------ pictures
    def slice_png(self, session: Session, z: int | None, window: str | None = None) -> bytes:
        image = session.image
        check_slice(image, z)
        pixels = image.slice(z if image.is_3d else 0)
        return png_bytes(window_slice(pixels, image.channels, window or default_window(image)))

    def prefetch(self, session: Session, z: int | None) -> None:
        """Compute slice ``z``'s embedding in the background if the model is idle, so the user's first click
        there only runs the decoder. Only the slice a session viewed last is prefetched (fast scrolling
        queues jobs that then skip themselves)."""
        if session.predictor.is_cached(z) or self.worker.pending:
            return
        session.last_viewed = z

        def job() -> None:
            if self.worker.pending or session.last_viewed != z or self.store.find(session.id) is None:
                return
            if not session.predictor.is_cached(z):
                session.predictor.embedding(z)
                self.store.enforce(session.id)

        self.worker.background(job)

    def result_png(self, session: Session, z: int | None) -> bytes:
        if session.result is None:
            raise ConflictError("no result yet: segment (or propagate) first")
        check_slice(session.image, z)
        mask = session.result[z] if session.image.is_3d else session.result
        return png_bytes(mask_rgba(mask))


# ---------------------------------------------------------------------- helpers
def check_slice(image: MedicalImage, z: int | None) -> None:
    """Raise PromptError unless ``z`` names a slice of ``image`` (0-based; 0 or None for a 2D image)."""
    if image.is_3d and (z is None or not 0 <= z < image.num_slices):
        raise PromptError(f"slice {z} is outside the volume (slices 0..{image.num_slices - 1})")
    if not image.is_3d and z not in (None, 0):
        raise PromptError(f"slice {z} given for a 2D image (use 0)")


def refining_prompt(session: Session, prompt: Prompt, z: int | None) -> Prompt | None:
    """A click added to the clicks behind the current result on this slice refines that result: the model gets
    the result's box (grown to take in the positive clicks, plus a margin) with all the clicks, one decode,
    instead of searching candidate boxes around the clicks anew. When an exclude click emptied the result, the
    region of the last non-empty result stands in for it. None when the prompt is not such a refinement."""
    previous, info = session.last_clicks, session.result_info
    if prompt.box is not None or not previous or info.get("kind") != "slice" or info.get("z") != z:
        return None
    if len(prompt.points) <= len(previous) or tuple(prompt.points[: len(previous)]) != tuple(previous):
        return None
    current = session.result[z] if session.image.is_3d else session.result
    if current is not None and current.any():
        x0, y0, x1, y1 = bounding_box(current)
    elif session.last_region is not None and session.last_region[0] == z:
        x0, y0, x1, y1 = session.last_region[1:]
    else:
        return None
    box = grown_box((x0, y0, x1, y1), prompt.points, current.shape, z)  # the Session's correction rule
    return Prompt(box=box, points=prompt.points)


def bounding_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` pixel extent of a non-empty 2D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1]), float(rows[-1])


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
