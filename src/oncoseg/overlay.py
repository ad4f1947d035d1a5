"""Moved to `oncoseg.render`. Only `oncoseg.api` still imports from here: delete this file once it imports
`render_overlay`, `save_overlay` and `check_overlay_path` from `oncoseg.render`."""

from oncoseg.render import COLOURS, MIN_SIZE, check_overlay_path, render_overlay, save_overlay

__all__ = ["COLOURS", "MIN_SIZE", "check_overlay_path", "render_overlay", "save_overlay"]
