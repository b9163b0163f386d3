"""Exception hierarchy: each class tells the orchestrator what to do next.

================  =====================================  =========
class             orchestrator action                    CLI exit
================  =====================================  =========
ConfigError       stop the run, tell the user            2
InputDataError    skip this ObsID, record the reason     3
ToolError         skip this ObsID (or step), record it   4
TransientError    retry with backoff                     5
================  =====================================  =========
"""

from __future__ import annotations

__all__ = [
    "EXIT_CODES",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "ConfigError",
    "ExternalToolError",
    "FitError",
    "InputDataError",
    "ToolError",
    "ToolNotFoundError",
    "TransientError",
    "XmmSurveyError",
    "exit_code_for",
    "exit_code_for_name",
]

#: Exit code of a command that did what was asked.
EXIT_OK = 0
#: Exit code of anything unexpected (not one of our error classes).
EXIT_UNEXPECTED = 1


class XmmSurveyError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(XmmSurveyError, ValueError):
    """The configuration is wrong: nothing can run until the user fixes it."""

    exit_code = 2


class InputDataError(XmmSurveyError, ValueError):
    """An input file of one observation is unusable; skip that ObsID and record why.

    Parameters
    ----------
    message : str
        What is wrong.
    path : str or Path, optional
        The offending file; it is put at the front of the message.
    """

    exit_code = 3

    def __init__(self, message: str, path: object | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ToolError(XmmSurveyError, RuntimeError):
    """A processing step (external tool or algorithm) failed for this observation."""

    exit_code = 4


class ExternalToolError(ToolError):
    """An external command exited non-zero, timed out or printed an error line.

    Attributes hold the argv, exit code and the tail of the output so that the
    failure can be recorded without the log.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        output_tail: str = "",
        reason: str | None = None,
    ):
        self.argv = list(argv or [])
        self.returncode = returncode
        self.output_tail = output_tail
        self.reason = reason or message
        cmd = " ".join(self.argv)
        text = message
        if cmd:
            text += f"\n  command: {cmd}"
        if returncode is not None:
            text += f"\n  exit code: {returncode}"
        if output_tail:
            text += "\n  output tail:\n    " + "\n    ".join(output_tail.splitlines()[-20:])
        super().__init__(text)


class ToolNotFoundError(ToolError, ConfigError):
    """A tool selected in the configuration is not installed or not on PATH."""

    exit_code = 2


class FitError(ToolError):
    """A spectral fit could not be done (no counts, no convergence, bad model)."""


class TransientError(XmmSurveyError):
    """A failure that may go away on retry (lost worker, NFS hiccup, timeout on a busy node)."""

    exit_code = 5


#: CLI exit code of each error family; the ``exit_code`` class attributes above are the one definition.
EXIT_CODES: dict[type[XmmSurveyError], int] = {
    cls: cls.exit_code for cls in (ConfigError, InputDataError, ToolError, TransientError)
}


def exit_code_for(exc: BaseException) -> int:
    """Return the CLI exit code for an exception (1 for anything unexpected)."""
    if isinstance(exc, XmmSurveyError):
        return exc.exit_code
    return EXIT_UNEXPECTED


def _all_error_classes(cls: type[XmmSurveyError]) -> list[type[XmmSurveyError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_error_classes(sub)
    return out


def exit_code_for_name(name: str | None) -> int:
    """Exit code of an error recorded by class name (step records keep ``exception`` as a name).

    ``"ToolNotFoundError"`` -> 2, ``"FitError"`` -> 4, an unknown or empty name -> 1.
    """
    for cls in _all_error_classes(XmmSurveyError):
        if cls.__name__ == name:
            return cls.exit_code
    return EXIT_UNEXPECTED
