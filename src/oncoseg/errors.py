"""Every error Onco-Seg raises on purpose: one clear line for the user (the CLI maps them to exit code 2, the
service to HTTP statuses)."""


class OncoSegError(ValueError):
    """Bad input or an impossible request: the message names the problem in one line."""


class ImageReadError(OncoSegError):
    """A file or folder could not be read as a medical image."""


class PromptError(OncoSegError):
    """A prompt lies outside the image, has zero area, or names a wrong slice."""


class ModelError(OncoSegError):
    """Model weights are missing, corrupt or do not fit the architecture."""


class EmptyResultError(OncoSegError):
    """The model found nothing where the prompt pointed."""


class ImageTooLargeError(ImageReadError):
    """The file declares more voxels or bytes than the reader's `ReadLimits` allow."""


class ShapeError(OncoSegError):
    """An array whose shape does not fit: pixels for another grid, or not 2D/3D (plus channels)."""


class DicomExportError(OncoSegError):
    """Masks or DICOM objects that do not fit the reference series, or a reference that cannot be used."""


class ConceptError(OncoSegError):
    """The text names no concept this model knows."""


class PacsError(OncoSegError):
    """The PACS refused a request (HTTP 4xx), the URL is wrong, or a UID is unknown."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class PacsUnavailableError(PacsError):
    """The PACS could not be reached (or kept answering 5xx) after all retries."""


# The service's errors (mapped to HTTP statuses by oncoseg.service.app.ERROR_STATUS).


class NotFoundError(OncoSegError):
    """An image id, series or label the service does not know."""


class TooLargeError(OncoSegError):
    """An image that alone does not fit the service's memory budget."""


class ConflictError(OncoSegError):
    """The request does not fit the image's state (e.g. storing a result that does not exist)."""


class BusyError(OncoSegError):
    """The model queue is full: try again shortly (HTTP 503 with Retry-After)."""
