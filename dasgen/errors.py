"""User-facing errors: one line that names the file or key at fault; the CLI prints it and exits non-zero."""


class DasgenError(Exception):
    """A problem with the user's input, params or files (not a bug). ``str(error)`` is the whole message."""


class ConfigError(DasgenError):
    """params.yaml is wrong: unknown key, wrong type or out-of-range value."""


class DatasetError(DasgenError):
    """A dataset root, file or pair cannot be used."""


class CheckpointError(DasgenError):
    """A checkpoint is missing, of another architecture or class count, or in a refused (pickle) format."""
