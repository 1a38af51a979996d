"""The one exception type for bad user input, and the CLI wrapper that prints it."""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input (a file, a flag, a config key): shown to the user as one line, exit code 2."""


class TrainingStopped(Exception):
    """A run stopped on request (SIGTERM, SIGINT) after saving its state: ``str`` says how to
    continue it; the process exits with ``exit_code`` (128 + the signal number)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def cli_main(main: Callable[[], object],
             resume_hint: str = "rerun the same command to continue") -> None:
    """Run ``main`` and turn a :class:`UserError` into a one-line message and a non-zero exit.

    ``resume_hint`` ends the Ctrl-C message: how this entry point continues what it stopped
    (the trainer needs ``--resume``; the others skip their finished outputs).
    """
    try:
        main()
    except UserError as e:
        print(f"error: {message(e)}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"interrupted: finished outputs are kept; {resume_hint}", file=sys.stderr)
        sys.exit(130)


def message(e: UserError) -> str:
    """What ``cli_main`` prints: one line, or all of them for an error made to list several
    problems (``multiline``, the preflight's: METHOD.md 12.7)."""
    return str(e).strip() if getattr(e, "multiline", False) else one_line(e)


def one_line(e: UserError) -> str:
    """The message of ``e``; for errors re-raised by a DataLoader worker (which wraps them in
    the worker's traceback), the original message only."""
    text = str(e).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split("UserError: ", 1)[-1]
    return text.splitlines()[0] if text else type(e).__name__
