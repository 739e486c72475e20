"""The one exception type the data modules raise for user-fixable data problems."""


class DatasetError(ValueError):
    """A dataset is missing, malformed or inconsistent with the configuration.

    The message always names the offending path or value and how to fix it, so
    a failing run can be repaired without reading a traceback.
    """
