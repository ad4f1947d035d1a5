"""The subset of MONAI Label's REST API that its viewer plugins (3D Slicer, OHIF) use for interactive
segmentation, so they can use Onco-Seg as their server:

* ``GET /info/`` — app name, labels and models (``oncoseg``: clicks → 3D propagation, ``oncoseg_slice``: clicks →
  the clicked slice only; both of MONAI Label's ``deepgrow`` type).
* ``GET/PUT/DELETE /datastore/``, ``GET /datastore/image``, ``PUT/GET /datastore/label`` — a local datastore
  of uploaded images and saved labels.
* ``POST /infer/{model}?image=ID`` with form field ``params`` = ``{"foreground": [[i, j, k], ...],
  "background": [...]}``: click coordinates are voxel indices of the image *as stored in its file*
  (what Slicer and OHIF send). ``ID`` is a datastore image, or, with a PACS configured, a SeriesInstanceUID
  (what OHIF sends). The answer is the label volume on the image's own grid (NRRD/NIfTI) plus a JSON ``params``
  part (``output=image`` / ``json`` / ``all``, the default, as in MONAI Label).
* ``GET /auth/``, ``POST /auth/token`` — when the service has a token, a client logs in with any user name and
  the token as password and receives it back as its bearer token.

All clicks must lie on one slice for Onco-Seg's 2D model: the slice of the last foreground click is used,
with the clicks on that slice.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from oncoseg import __version__
from oncoseg.errors import OncoSegError, PromptError
from oncoseg.image import MedicalImage
from oncoseg.prompts import Point, Prompt
from oncoseg.service.cache import NotFoundError, OpenImage
from oncoseg.service.core import UPLOAD_SUFFIXES, Engine, ServiceConfig, file_ext
from oncoseg.service.security import token_matches

LABEL = "lesion"
MODELS = {
    "oncoseg": "Onco-Seg (LiteMedSAM): clicks on one slice, segmentation followed through the volume",
    "oncoseg_slice": "Onco-Seg (LiteMedSAM): clicks on one slice, that slice only",
}
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
MAX_PARAMS_CHARS = 100_000
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def file_to_array_index(ijk: list[float], image: MedicalImage) -> tuple[int, ...]:
    """A voxel index ``(i, j[, k])`` of the image file as stored → ``(z, y, x)`` (or ``(y, x)``) of the
    LPS-reoriented array `load_image` gives (the reorientation is a flip/permutation of axes)."""
    if not image.is_3d:
        if len(ijk) < 2:
            raise PromptError(f"a click needs at least 2 coordinates, got {ijk}")
        return round(ijk[1]), round(ijk[0])
    if len(ijk) != 3:
        raise PromptError(f"a click on a volume needs 3 coordinates [i, j, k], got {ijk}")
    sizes = image.shape[::-1]  # along x (L), y (P), z (S)
    code = image.source_orientation or "LPS"
    xyz = [0, 0, 0]
    for axis, letter in enumerate(code):
        same, flipped = "LPS".find(letter), "RAI".find(letter)
        lps_axis = same if same >= 0 else flipped
        index = round(float(ijk[axis]))
        xyz[lps_axis] = sizes[lps_axis] - 1 - index if same < 0 else index
    return xyz[2], xyz[1], xyz[0]


class Datastore:
    """Uploaded images and saved labels in a folder: ``images/ID.ext`` and ``labels/TAG/ID.ext``."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def check_id(image_id: str) -> str:
        if not ID_PATTERN.fullmatch(image_id or ""):
            raise OncoSegError(
                "image id must be 1-128 letters, digits, '.', '_' or '-' (not starting with a dot)"
            )
        return image_id

    def image_path(self, image_id: str) -> Path | None:
        if not ID_PATTERN.fullmatch(image_id or ""):
            return None
        return next((p for p in (self.root / "images").glob(f"{image_id}.*") if _stem(p) == image_id), None)

    def add_image(self, image_id: str, filename: str, data: BinaryIO, limits) -> str:
        """Store an uploaded image under ``image_id`` once it has been read back within ``limits`` (a file that
        names outside data, declares a huge size or is damaged is refused and leaves nothing behind)."""
        from oncoseg.io import load_image

        ext = file_ext(filename or "")
        if ext not in UPLOAD_SUFFIXES or ext == ".dcm":
            raise OncoSegError(
                f"datastore images must be one of {', '.join(s for s in UPLOAD_SUFFIXES if s != '.dcm')}"
            )
        image_id = self.check_id(image_id or _strip_ext(Path(filename).name))
        staging = self.root / f".incoming-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            candidate = staging / f"image{ext}"
            with open(candidate, "wb") as out:
                shutil.copyfileobj(data, out, 1 << 20)
            load_image(candidate, limits=limits)
            existing = self.image_path(image_id)
            if existing is not None:
                existing.unlink()
            candidate.replace(self.root / "images" / f"{image_id}{ext}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return image_id

    def remove_image(self, image_id: str) -> None:
        path = self.image_path(image_id)
        if path is None:
            raise NotFoundError("no such image in the datastore")
        path.unlink()
        for label in (self.root / "labels").glob(f"*/{image_id}.*"):
            label.unlink()

    def label_path(self, image_id: str, tag: str) -> Path | None:
        folder = self.root / "labels" / tag
        if not ID_PATTERN.fullmatch(tag) or not folder.is_dir():
            return None
        return next((p for p in folder.glob(f"{image_id}.*") if _stem(p) == image_id), None)

    def save_label(self, image_id: str, tag: str, filename: str, data: BinaryIO) -> str:
        if self.image_path(image_id) is None:
            raise NotFoundError("no such image in the datastore")
        tag = self.check_id(tag)
        ext = file_ext(filename or "label.nii.gz")
        if ext not in LABEL_SUFFIXES:
            raise OncoSegError(f"labels must be one of {', '.join(LABEL_SUFFIXES)}")
        old = self.label_path(image_id, tag)
        if old is not None:
            old.unlink()
        from oncoseg.io import atomic_write_path

        folder = self.root / "labels" / tag
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(folder / f"{image_id}{ext}") as temporary, open(temporary, "wb") as out:
            shutil.copyfileobj(data, out, 1 << 20)
        return image_id

    def objects(self) -> dict[str, Any]:
        out = {}
        for path in sorted((self.root / "images").iterdir()):
            image_id = _stem(path)
            labels = {
                folder.name: {"ext": file_ext(label.name)}
                for folder in sorted((self.root / "labels").iterdir())
                for label in folder.glob(f"{image_id}.*")
                if _stem(label) == image_id
            }
            out[image_id] = {"image": {"ext": file_ext(path.name), "info": {}}, "labels": labels}
        return out

    def status(self) -> dict[str, Any]:
        objects = self.objects()
        tags: dict[str, int] = {}
        for entry in objects.values():
            for tag in entry["labels"]:
                tags[tag] = tags.get(tag, 0) + 1
        return {
            "total": len(objects),
            "completed": sum(1 for e in objects.values() if "final" in e["labels"]),
            "label_tags": tags,
        }


def _stem(path: Path) -> str:
    return _strip_ext(path.name)


def _strip_ext(name: str) -> str:
    ext = file_ext(name)
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else name


def multipart_form(params: dict[str, Any], file_name: str, data: bytes) -> Response:
    """A ``multipart/form-data`` answer with a ``params`` JSON part and the label file (MONAI Label's "all")."""
    boundary = secrets.token_hex(16)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Response(body, media_type=f"multipart/form-data; boundary={boundary}")


def monailabel_router(engine: Engine, config: ServiceConfig) -> APIRouter:
    router = APIRouter(tags=["MONAI Label compatible"])
    datastore = Datastore(engine.workdir / "datastore")

    @router.get("/info/", summary="MONAI Label: app info, labels and models")
    async def info():
        return {
            "name": "Onco-Seg",
            "description": "Promptable segmentation (LiteMedSAM) behind MONAI Label's REST API",
            "version": __version__,
            "labels": [LABEL],
            "models": {
                name: {
                    "type": "deepgrow",
                    "labels": {LABEL: 1},
                    "dimension": 3,
                    "description": text,
                    "config": {},
                }
                for name, text in MODELS.items()
            },
            "trainers": {},
            "strategies": {},
            "scoring": {},
            "train_stats": {},
            "datastore": datastore.status(),
        }

    @router.get("/auth/", summary="MONAI Label: is authentication enabled")
    async def auth():
        return {"enabled": bool(config.token), "client_id": "oncoseg", "realm": "oncoseg"}

    @router.post("/auth/token", summary="MONAI Label: log in (password = the service token)")
    async def auth_token(
        username: str = Form(""), password: str = Form(...), grant_type: str = Form("password")
    ):
        if not config.token or not token_matches(password, config.token):
            return JSONResponse(
                {"detail": "wrong password (use the service token)", "code": "unauthorized"}, 401
            )
        return {"access_token": config.token, "token_type": "Bearer"}

    @router.get("/auth/token/valid", summary="MONAI Label: check the bearer token")
    async def auth_valid():
        return {}

    @router.get("/datastore/", summary="MONAI Label: datastore listing (output=stats|all|train)")
    async def datastore_list(output: str = Query("stats", pattern="^(stats|all|train)$")):
        if output == "all":
            return {
                "name": "oncoseg",
                "description": "Onco-Seg local datastore",
                "objects": datastore.objects(),
            }
        if output == "train":
            return [
                {"image": image_id, "label": tag}
                for image_id, entry in datastore.objects().items()
                for tag in entry["labels"]
            ]
        return datastore.status()

    @router.put("/datastore/", summary="MONAI Label: upload an image")
    async def datastore_add(
        file: Annotated[UploadFile, File()], image: str | None = Query(None), params: str = Form("{}")
    ):
        image_id = await run_in_threadpool(
            datastore.add_image, image or "", file.filename or "", file.file, config.read_limits
        )
        stale = engine.store.find(f"ml-{image_id}")
        if stale is not None:
            engine.store.remove(stale.id)
        return {"image": image_id}

    @router.delete("/datastore/", summary="MONAI Label: remove an image and its labels")
    async def datastore_remove(id: str, type: str = "image"):
        datastore.remove_image(id)
        return {}

    @router.get("/datastore/image", summary="MONAI Label: download an image")
    async def datastore_image(image: str):
        path = datastore.image_path(image)
        if path is None:
            raise NotFoundError("no such image in the datastore")
        return FileResponse(path, filename=path.name)

    @router.put("/datastore/label", summary="MONAI Label: save a label for an image")
    async def datastore_save_label(
        image: str, label: Annotated[UploadFile, File()], tag: str = "final", params: str = Form("{}")
    ):
        await run_in_threadpool(datastore.save_label, image, tag or "final", label.filename or "", label.file)
        return {"image": image, "label": image}

    @router.get("/datastore/label", summary="MONAI Label: download a label")
    async def datastore_label(label: str, tag: str = "final"):
        path = datastore.label_path(label, tag)
        if path is None:
            raise NotFoundError("no such label in the datastore")
        return FileResponse(path, filename=path.name)

    def resolve(image_id: str, upload: tuple[str, BinaryIO] | None) -> OpenImage:
        if upload is not None:
            name, data = upload
            return engine.open_upload(name, data)
        path = datastore.image_path(image_id)
        if path is not None:
            key = f"ml-{image_id}"
            session = engine.store.find(key)
            if session is not None:
                return engine.store.get(key)
            from oncoseg.io import load_image

            image = load_image(path, limits=config.read_limits)
            return engine.new_session(image, None, "datastore", session_id=key)
        if engine.pacs is not None and re.fullmatch(r"[0-9.]{1,64}", image_id or ""):
            return engine.open_series(image_id)
        raise NotFoundError(
            "unknown image: upload it to the datastore first (or configure a PACS for series UIDs)"
        )

    def run_infer(
        model: str, session: OpenImage, request: dict[str, Any]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        image = session.image
        foreground = [file_to_array_index(p, image) for p in clicks_of(request, "foreground")]
        background = [file_to_array_index(p, image) for p in clicks_of(request, "background")]
        if not foreground:
            raise PromptError("give at least one foreground click")
        if image.is_3d:
            z = foreground[-1][0]
            points = [Point(x, y, True) for zz, y, x in foreground if zz == z]
            points += [Point(x, y, False) for zz, y, x in background if zz == z]
        else:
            z = None
            points = [Point(x, y, True) for y, x in foreground] + [Point(x, y, False) for y, x in background]
        prompt = Prompt(points=tuple(points))
        z = engine.check_prompt(session, prompt, z)
        if model == "oncoseg" and image.is_3d:
            answer = engine.propagate(session, prompt, z, request.get("max_slices"))
        else:
            answer = engine.segment(session, prompt, z, overlay=False, outlines=False)
            answer = {k: v for k, v in answer.items() if k != "mask"}
        return session.result, answer

    @router.post("/infer/{model}", summary="MONAI Label: interactive segmentation from clicks")
    async def infer(
        model: str,
        image: str = "",
        output: str | None = Query(None, pattern="^(image|json|all)$"),
        session_id: str = "",
        params: str = Form("{}"),
        file: Annotated[UploadFile | None, File()] = None,
        label: Annotated[UploadFile | None, File()] = None,
    ):
        if model not in MODELS:
            raise NotFoundError(f"unknown model {model!r}; available: {', '.join(MODELS)}")
        if len(params or "") > MAX_PARAMS_CHARS:
            raise OncoSegError(f"params is longer than {MAX_PARAMS_CHARS} characters")
        try:
            request = json.loads(params or "{}")
        except (json.JSONDecodeError, RecursionError):
            raise OncoSegError("params must be a JSON object (of modest nesting)") from None
        if not isinstance(request, dict):
            raise OncoSegError("params must be a JSON object")
        ext = check_params(request)  # before any upload is read or model time spent
        upload = (file.filename or "image.nii.gz", file.file) if file is not None else None
        session = await run_in_threadpool(resolve, image, upload)
        mask, answer = await engine.worker.run(run_infer, model, session, request)
        data = await run_in_threadpool(_label_bytes, mask, session.image, ext, engine.workdir)
        result = {"label_names": {LABEL: 1}, "model": model, **answer}
        if output == "json":
            return result
        if output == "image":
            return Response(
                data,
                media_type="application/octet-stream",
                headers={"Content-Disposition": f'attachment; filename="label{ext}"'},
            )
        return multipart_form(result, f"label{ext}", data)

    return router


def check_params(request: dict[str, Any]) -> str:
    """Check an /infer request's ``params`` (types and ranges) and return its result extension."""
    for key in ("foreground", "background"):
        clicks_of(request, key)
    max_slices = request.get("max_slices")
    if max_slices is not None and (
        isinstance(max_slices, bool) or not isinstance(max_slices, int) or not 1 <= max_slices <= 100_000
    ):
        raise OncoSegError("max_slices must be a whole number of at least 1")
    ext = request.get("result_extension") or ".nii.gz"
    if ext not in LABEL_SUFFIXES:
        raise OncoSegError(f"result_extension must be one of {', '.join(LABEL_SUFFIXES)}")
    return ext


def clicks_of(request: dict[str, Any], key: str) -> list[list[float]]:
    """``request[key]``: a list of at most 64 clicks, each 2 or 3 finite numbers within ±1e6 (else PromptError)."""
    clicks = request.get(key) or []
    if not isinstance(clicks, list) or len(clicks) > 64:
        raise PromptError(f"{key} must be a list of at most 64 clicks [i, j, k]")
    for click in clicks:
        if (
            not isinstance(click, list)
            or len(click) not in (2, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in click)
            or not all(math.isfinite(v) and abs(v) <= 1e6 for v in click)
        ):
            raise PromptError(f"each {key} click must be 2 or 3 finite numbers [i, j, k]")
    return clicks


def _label_bytes(mask: np.ndarray, image: MedicalImage, ext: str, workdir: Path) -> bytes:
    """The mask as a label file on the image's own grid and orientation (value 1 = lesion)."""
    from oncoseg.io import save_mask

    folder = workdir / "labels-out" / secrets.token_hex(6)
    folder.mkdir(parents=True)
    try:
        path = save_mask(mask.astype(np.uint8), image, folder / f"label{ext}")
        return path.read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
