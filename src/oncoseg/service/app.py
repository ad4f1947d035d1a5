"""The FastAPI application: REST routes over `Engine`, JSON errors, the web page, MONAI Label routes.

Run it with ``oncoseg serve`` (see `serve`); the OpenAPI description is at ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import logging
import re
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from oncoseg import __version__
from oncoseg.errors import (
    BusyError,
    ConflictError,
    EmptyResultError,
    ImageReadError,
    ImageTooLargeError,
    NotFoundError,
    OncoSegError,
    PacsError,
    PacsUnavailableError,
    PromptError,
    TooLargeError,
)
from oncoseg.logs import SafeFormatter, route_warnings
from oncoseg.render import CT_PRESETS
from oncoseg.service.core import (
    Engine,
    ServiceConfig,
    alternatives_of,
    build_prompt,
    check_choice,
    check_slice,
)
from oncoseg.service.security import GuardMiddleware, allowed_hosts, check_bind

log = logging.getLogger("oncoseg.service")
STATIC = Path(__file__).parent / "static"


class PointIn(BaseModel):
    x: float = Field(description="column (pixels, 0 = left)")
    y: float = Field(description="row (pixels, 0 = top)")
    positive: bool = Field(True, description="true = include (left click), false = exclude (right click)")


class PromptIn(BaseModel):
    z: int | None = Field(None, description="slice index (volumes); leave out for 2D images")
    points: list[PointIn] = Field(default_factory=list, max_length=64)
    box: list[float] | None = Field(None, min_length=4, max_length=4, description="[x0, y0, x1, y1] pixels")
    text: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a concept to find every instance of (instead of clicks/box)",
    )
    overlay: bool = Field(True, description="include a transparent RGBA PNG of the mask (base64)")
    contours: bool = Field(
        True,
        description="include the mask's outlines as polygons (false saves their cost when they are not drawn)",
    )


class PropagateIn(PromptIn):
    max_slices: int | None = Field(None, ge=1, description="walk at most this many slices each way")


class JobIn(PropagateIn):
    action: Literal["propagate", "refine"] = Field(
        "propagate",
        description="propagate: a new 3D result from the prompt on slice z; refine: correct the 3D result on "
        "slice z (include/exclude clicks are added to those given there, a box replaces them) and walk the "
        "volume again from it, up to the next corrected slice or the first slice it segments as the result has "
        "it (IoU >= 0.9), beyond which the result is kept",
    )


class ChooseIn(BaseModel):
    which: Literal["smaller", "larger"] = Field(description="the next smaller or larger answer to the clicks")
    z: int | None = Field(None, description="slice (default: the result's last prompted slice)")
    overlay: bool = Field(True, description="include a transparent RGBA PNG of the mask (base64)")
    contours: bool = Field(True, description="include the mask's outlines as polygons")


class OpenSeriesIn(BaseModel):
    series_uid: str = Field(description="SeriesInstanceUID on the configured PACS (DICOMweb)")
    study_uid: str | None = Field(None, description="StudyInstanceUID (looked up with QIDO-RS when left out)")
    modality: str | None = Field(None, description="override the DICOM Modality (e.g. ct, mri)")


class StoreIn(BaseModel):
    format: Literal["seg", "rtstruct"] = "seg"
    name: str = Field("Lesion", min_length=1, max_length=64, description="structure/segment name")


ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (BusyError, 503, "busy"),
    (NotFoundError, 404, "not_found"),
    (TooLargeError, 413, "too_large"),
    (ImageTooLargeError, 413, "too_large"),
    (ConflictError, 409, "conflict"),
    (PromptError, 422, "bad_prompt"),
    (EmptyResultError, 422, "empty_result"),
    (PacsUnavailableError, 502, "pacs_unavailable"),
    (ImageReadError, 400, "unreadable_image"),
    (OncoSegError, 400, "bad_request"),
]


def error_status(error: BaseException) -> tuple[int, str]:
    """The HTTP status and error code for ``error``."""
    if isinstance(error, PacsError) and not isinstance(error, PacsUnavailableError):
        return (404, "not_found") if error.status_code == 404 else (502, "pacs_error")
    return next(((s, c) for kind, s, c in ERROR_STATUS if isinstance(error, kind)), (500, "internal"))


def error_json(error: BaseException) -> dict:
    """``{"detail", "code", "status"}`` of an error (a failed job's): the text of an error this service
    raises (`OncoSegError`), only the kind of any other."""
    status, code = error_status(error)
    detail = str(error) if isinstance(error, OncoSegError) else f"internal error ({type(error).__name__})"
    return {"detail": without_folders(detail), "code": code, "status": status}


def error_response(error: Exception) -> JSONResponse:
    status, code = error_status(error)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(
        {"detail": without_folders(str(error)), "code": code}, status_code=status, headers=headers
    )


def without_folders(message: str) -> str:
    """The message with the folders of absolute paths removed (``/srv/work/sessions/ab12/image.nii.gz`` →
    ``image.nii.gz``): the server's file layout is nobody's business."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s/'\"]+/)+", "", message)


def create_app(config: ServiceConfig, engine: Engine | None = None) -> FastAPI:
    """The application for ``config`` (an `Engine` is built unless given)."""
    engine = engine or Engine(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if config.warmup:
            seconds = await engine.worker.run(engine.warm_up)
            log.info("model warmed up in %.2f s", seconds)
        yield
        engine.close()

    app = FastAPI(
        title="Onco-Seg service",
        version=__version__,
        description="Interactive promptable segmentation of CT/MR/... images: open an image (upload or DICOMweb), "
        "click or drag a box on a slice, propagate in 3D and correct the result on any slice (jobs with progress "
        "and cancel), measure, download the result (NIfTI, DICOM SEG), store DICOM SEG/RTSTRUCT back to the PACS. "
        "Every route except /health (and the web page's files) needs `Authorization: Bearer <token>` when the "
        'service runs with a token. Errors are JSON: `{"detail": message, "code": kind}`.',
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.add_middleware(
        GuardMiddleware,
        token=config.token,
        max_body_bytes=config.max_body_bytes,
        hosts=allowed_hosts(config.host, config.token, config.allowed_hosts),
    )

    @app.exception_handler(OncoSegError)
    async def _oncoseg_error(request: Request, error: OncoSegError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return JSONResponse({"detail": "; ".join(parts), "code": "invalid_request"}, status_code=422)

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, error: RecursionError):  # JSON nested thousands of levels deep
        return JSONResponse({"detail": "request nested too deeply", "code": "invalid_request"}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse({"detail": str(error.detail), "code": code}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        log.error(
            "internal error %s in %s",
            type(error).__name__,
            request.scope.get("route", None) and request.scope["route"].path,
        )
        return JSONResponse({"detail": f"internal error ({type(error).__name__})", "code": "internal"}, 500)

    # ---------------------------------------------------------------- health and page
    @app.get("/health", tags=["service"], summary="Liveness and load (no token needed)")
    async def health():
        return engine.health()

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ---------------------------------------------------------------- images
    @app.get("/api/series", tags=["images"], summary="Series on the configured PACS (with modality)")
    async def list_series():
        return await run_in_threadpool(engine.list_series)

    @app.post("/api/images", status_code=201, tags=["images"], summary="Open a series from the PACS by UID")
    async def open_series(body: OpenSeriesIn):
        session = await run_in_threadpool(engine.open_series, body.series_uid, body.study_uid, body.modality)
        return session.describe()

    @app.post("/api/images/upload", status_code=201, tags=["images"], summary="Open an uploaded image")
    async def upload(
        file: Annotated[
            UploadFile,
            File(description="NIfTI/NRRD/MHA, PNG/JPEG/TIFF, one DICOM file or a .zip of a series"),
        ],
        modality: str | None = Form(None),
    ):
        session = await run_in_threadpool(engine.open_upload, file.filename or "", file.file, modality)
        return session.describe()

    @app.get("/api/images", tags=["images"], summary="Open images")
    async def list_images():
        return [s.describe() for s in engine.store.list()]

    @app.get("/api/images/{image_id}", tags=["images"], summary="Shape, spacing, modality of an open image")
    async def describe(image_id: str):
        return engine.store.get(image_id).describe()

    @app.delete("/api/images/{image_id}", tags=["images"], summary="Close an image and free its memory")
    async def close(image_id: str):
        engine.close_image(image_id)
        return {"image_id": image_id, "closed": True}

    @app.get("/api/windows", tags=["images"], summary="Window/level presets (centre, width)")
    async def windows():
        return {"auto": None, **{k: list(v) for k, v in CT_PRESETS.items()}}

    @app.get(
        "/api/images/{image_id}/slices/{z}",
        tags=["images"],
        summary="One slice as an 8-bit PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def slice_png(
        image_id: str,
        z: int,
        window: str | None = Query(None, description="preset (see /api/windows) or CENTRE,WIDTH"),
        prefetch: bool = Query(
            True,
            description="the slice is on screen: encode it and its neighbours in the background when idle",
        ),
    ):
        session = engine.store.get(image_id)
        data = await run_in_threadpool(engine.slice_png, session, z, window)
        if prefetch:
            engine.prefetch(session, z if session.image.is_3d else None)
        return Response(data, media_type="image/png")

    @app.get(
        "/api/images/{image_id}/result/{z}",
        tags=["segmentation"],
        summary="The current result on one slice as a transparent RGBA PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def result_png(image_id: str, z: int):
        session = engine.store.get(image_id)
        data = await run_in_threadpool(engine.result_png, session, z)
        return Response(data, media_type="image/png")

    # ---------------------------------------------------------------- segmentation
    @app.post(
        "/api/images/{image_id}/segment",
        tags=["segmentation"],
        summary="Segment one slice from clicks and/or a box, or every instance of a text concept",
        description="Returns the mask as row-major RLE (`counts` alternate 0-runs and 1-runs, starting with 0s) "
        "and as contours (`[x, y]` polygons), a transparent PNG overlay (base64) and the measurements "
        "(area mm², RECIST long/short axis mm).",
    )
    async def segment(image_id: str, body: PromptIn):
        session = engine.store.get(image_id)
        if body.text is not None:
            # matching the text may load and run the sentence-embedding model (torch): on the model thread
            z = await engine.worker.run(engine.check_text, session, body.text, body.points, body.box, body.z)
            engine.needs(session, z)
            return await engine.worker.run(
                engine.segment_text, session, body.text, z, body.overlay, body.contours
            )
        prompt = build_prompt([(p.x, p.y, p.positive) for p in body.points], body.box, body.z)
        z = engine.check_prompt(session, prompt, body.z)
        engine.needs(session, z)
        return await engine.worker.run(engine.segment, session, prompt, z, body.overlay, body.contours)

    @app.post(
        "/api/images/{image_id}/choose",
        tags=["segmentation"],
        summary="Swap in the next smaller or larger mask that also answers the clicks (see `alternatives`)",
        description="A click-only answer says in `alternatives` how many smaller and larger masks also hold its "
        "clicks; this takes the next one of them (the replaced mask becomes an alternative; a 3D result is "
        "walked again from that slice) and answers like a click. 409 when there is no result or no such answer.",
    )
    async def choose(image_id: str, body: ChooseIn):
        opened = engine.store.get(image_id)
        z = check_choice(opened, body.which, body.z)  # refused before it occupies the model
        return await engine.worker.run(engine.choose, opened, body.which, z, body.overlay, body.contours)

    @app.get(
        "/api/images/{image_id}/alternatives/{z}",
        tags=["segmentation"],
        summary="How many smaller and larger masks also answer the result's clicks on slice z (see /choose)",
        description='`{"z", "smaller", "larger"}`, as in a click\'s `alternatives`, for any slice of the '
        "current result: on a 3D result the slices whose clicks offered other sizes (the start slice of a "
        "propagation from clicks); 0/0 elsewhere and without a result. z is 0 for a 2D image.",
    )
    async def alternatives(image_id: str, z: int):
        opened = engine.store.get(image_id)
        check_slice(opened.image, z)
        return {"z": z, **alternatives_of(opened, z if opened.image.is_3d else None)}

    @app.get(
        "/api/images/{image_id}/ready",
        tags=["images"],
        summary="Which slices a click answers fast (their embedding is computed), the slice on screen",
        description="Showing a slice (`GET .../slices/{z}`) makes the idle model encode it and then its "
        "neighbours outward, within the memory budget; `ready` lists the slices done, `encoding` says whether "
        "more are coming.",
    )
    async def ready(image_id: str):
        return engine.ready(engine.store.get(image_id))

    @app.post(
        "/api/images/{image_id}/propagate",
        tags=["segmentation"],
        summary="Segment slice z from the prompt and follow the object through the volume",
    )
    async def propagate(image_id: str, body: PropagateIn):
        session = engine.store.get(image_id)
        prompt = build_prompt([(p.x, p.y, p.positive) for p in body.points], body.box, body.z)
        z = engine.check_prompt(session, prompt, body.z)
        engine.needs(session, z)
        return await engine.worker.run(engine.propagate, session, prompt, z, body.max_slices)

    @app.post(
        "/api/images/{image_id}/jobs",
        status_code=202,
        tags=["segmentation"],
        summary="Start a 3D job: propagate from a prompt, or correct the 3D result on any slice",
        description="Returns at once with the job (`job_id`, `state` queued/running/done/cancelled/failed, `done` "
        "and `total` slices). Poll `GET .../jobs/{job_id}` for progress, the slices finished so far with their "
        "scores (`slices`, `slice_scores`) and, once done, `result` (the 3D answer, as from /propagate); "
        "`GET .../jobs/{job_id}/result/{z}` is the job's mask on slice z as it stands. `DELETE` cancels: the "
        "image's result stays as it was. One job per image at a time (409); a full model queue is 503.",
    )
    async def start_job(image_id: str, body: JobIn):
        opened = engine.store.get(image_id)
        prompt = build_prompt([(p.x, p.y, p.positive) for p in body.points], body.box, body.z)
        z = engine.check_prompt(opened, prompt, body.z)
        engine.needs(opened, z)
        job = await run_in_threadpool(engine.start_job, opened, body.action, prompt, z, body.max_slices)
        return job.as_dict(error_json)

    @app.get("/api/images/{image_id}/jobs/{job_id}", tags=["segmentation"], summary="A 3D job's progress")
    async def job_state(image_id: str, job_id: str):
        return engine.find_job(engine.store.get(image_id), job_id).as_dict(error_json)

    @app.delete(
        "/api/images/{image_id}/jobs/{job_id}",
        tags=["segmentation"],
        summary="Cancel a 3D job (it stops at its next slice; the result stays as before the job)",
    )
    async def cancel_job(image_id: str, job_id: str):
        job = engine.find_job(engine.store.get(image_id), job_id)
        job.cancel()
        return job.as_dict(error_json)

    @app.get(
        "/api/images/{image_id}/jobs/{job_id}/result/{z}",
        tags=["segmentation"],
        summary="A 3D job's mask on one slice as a transparent RGBA PNG (the slices finished so far)",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def job_png(image_id: str, job_id: str, z: int):
        opened = engine.store.get(image_id)
        job = engine.find_job(opened, job_id)
        return Response(await run_in_threadpool(engine.job_png, opened, job, z), media_type="image/png")

    @app.get(
        "/api/images/{image_id}/download",
        tags=["segmentation"],
        summary="Download the current result: NIfTI label mask on the image's grid, or DICOM SEG",
        response_class=FileResponse,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def download(
        image_id: str,
        format: Literal["nifti", "seg"] = Query("nifti", description="nifti, or seg for a DICOM series"),
        name: str = Query("Lesion", min_length=1, max_length=64, description="segment name (DICOM SEG)"),
    ):
        opened = engine.store.get(image_id)
        path, folder = await run_in_threadpool(engine.download, opened, format, name)
        return FileResponse(
            path,
            filename=path.name,
            media_type="application/octet-stream",
            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
        )

    @app.get(
        "/api/images/{image_id}/measurements",
        tags=["segmentation"],
        summary="Volume (mL), RECIST diameters and extent of the current result",
    )
    async def measurements(image_id: str):
        session = engine.store.get(image_id)
        return await run_in_threadpool(engine.measurements, session)

    @app.post(
        "/api/images/{image_id}/store",
        tags=["segmentation"],
        summary="Store the current result to the PACS as DICOM SEG or RTSTRUCT",
    )
    async def store(image_id: str, body: StoreIn):
        session = engine.store.get(image_id)
        return await run_in_threadpool(engine.store_result, session, body.format, body.name)

    from oncoseg.service.monailabel import monailabel_router

    app.include_router(monailabel_router(engine, config))
    return app


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr without patient data (`SafeFormatter`: UIDs hashed, tracebacks without messages),
    for the service's loggers, uvicorn's and the root logger; uvicorn's own access log is replaced."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("oncoseg", "uvicorn", "uvicorn.error", ""):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name else logging.WARNING)
        logger.propagate = not name
    route_warnings(handler)


def serve(config: ServiceConfig) -> None:
    """Check the binding rules, build the app and run uvicorn until interrupted."""
    import uvicorn

    check_bind(config.host, config.token)
    configure_logging()
    app = create_app(config)
    log.info(
        "Onco-Seg service on http://%s:%d (token %s, PACS %s, memory budget %.0f MiB)",
        config.host if ":" not in config.host else f"[{config.host}]",
        config.port,
        "required" if config.token else "off (loopback only)",
        "configured" if config.pacs_url else "none",
        config.memory_budget_mb,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
