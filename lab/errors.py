"""Errors a user can act on. The command line prints them as one line, without a traceback."""


class LabError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(LabError):
    """lab.yaml (or a scenario file) is wrong; the message names the file and the field."""


class ExportError(LabError):
    """`lab export` cannot write the dataset; nothing was written. The message names the path and the fix."""


class NotARunError(ExportError):
    """An input of `lab export` is neither a run directory nor a sweep directory."""


class SweepFileError(ExportError):
    """A sweep directory's sweep.json cannot be read as a list of runs."""


class ExportTargetError(ExportError):
    """The export's DIR cannot be (re)placed: a file, not empty, or holding the runs exported."""


class ColumnTypeError(ExportError):
    """One column has types in two runs that no common type holds, so the runs cannot share one table."""


class ManifestError(LabError):
    """A run directory's manifest.json cannot be read; the message names the file and the fix."""


class ManifestMissingError(ManifestError):
    """A directory holds no manifest.json."""
