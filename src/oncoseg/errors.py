"""Errors that reach the user as one clear line (the CLI maps them to exit code 2)."""


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
