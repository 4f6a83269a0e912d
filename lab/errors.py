"""Errors a user can act on. The command line prints them as one line, without a traceback."""


class LabError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(LabError):
    """lab.yaml (or a scenario file) is wrong; the message names the file and the field."""
