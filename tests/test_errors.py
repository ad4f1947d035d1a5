"""The error family lives in oncoseg.errors: every error class of the package, mapped once to the CLI's exit 2
and the service's HTTP statuses."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from oncoseg import errors
from oncoseg.errors import OncoSegError, ShapeError
from oncoseg.image import MedicalImage

SRC = Path(__file__).resolve().parents[1] / "src" / "oncoseg"


def test_every_error_class_is_defined_in_errors_py():
    elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert elsewhere == []


def test_moved_errors_stay_importable_from_their_old_modules():
    from oncoseg.concepts.vocabulary import ConceptError
    from oncoseg.dicom.reference import DicomExportError
    from oncoseg.pacs import PacsError, PacsUnavailableError
    from oncoseg.service.cache import NotFoundError, TooLargeError
    from oncoseg.service.worker import BusyError

    moved = [ConceptError, DicomExportError, PacsError, PacsUnavailableError, NotFoundError, TooLargeError]
    for cls in [*moved, BusyError, errors.ConflictError]:
        assert getattr(errors, cls.__name__) is cls and issubclass(cls, OncoSegError)
    assert PacsError("refused", status_code=404).status_code == 404


def test_the_service_maps_the_error_family_of_errors_py():
    pytest.importorskip("fastapi")
    from oncoseg.service.app import ERROR_STATUS

    assert all(cls.__module__ == "oncoseg.errors" for cls, _status, _code in ERROR_STATUS)
    assert {"BusyError", "NotFoundError", "TooLargeError", "ConflictError"} <= {
        c.__name__ for c, *_ in ERROR_STATUS
    }


def test_wrong_array_shapes_are_oncoseg_errors_not_plain_value_errors():
    """A plain ValueError escaped the CLI's exit-2 mapping (and the service's 400)."""
    image = MedicalImage.from_array(np.zeros((4, 5), np.float32))
    with pytest.raises(ShapeError, match=r"does not match image shape \(4, 5\)"):
        image.with_array(np.zeros((5, 4), np.uint8))
    with pytest.raises(ShapeError, match="expected a 2D or 3D array"):
        MedicalImage.from_array(np.zeros(7))
    with pytest.raises(OncoSegError):
        MedicalImage.from_array(np.zeros((2, 3, 4, 5)))
