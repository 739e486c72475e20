"""The one exception type the data modules raise for user-fixable data problems."""


class DatasetError(ValueError):
    """A dataset is missing, malformed or inconsistent with the configuration.

    The message always names the offending path or value and how to fix it, so
    a failing run can be repaired without reading a traceback.
    """


class ImageDecodeError(ValueError):
    """An encoded image that no decoder reads, or one over the pixel limit: a corrupt file for the callers'
    ``on_corrupt`` policy. Its message already names the decoder's own error type, if any."""


def decode_failure(exc: BaseException) -> str:
    """Why a file could not be used, for messages that name the file."""
    return str(exc) if isinstance(exc, ImageDecodeError) else f"{type(exc).__name__}: {exc}"
