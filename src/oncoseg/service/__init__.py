"""The interactive sidecar (``oncoseg serve``): a FastAPI service over the Python API, with a web page and
MONAI Label-compatible routes. ``from oncoseg.service import ServiceConfig, create_app, serve``; the heavy
parts (model, FastAPI) load only when one of these is used."""

__all__ = ["Engine", "ServiceConfig", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("Engine", "ServiceConfig"):
        from oncoseg.service import core

        return getattr(core, name)
    if name in ("create_app", "serve"):
        from oncoseg.service import app

        return getattr(app, name)
    raise AttributeError(name)
