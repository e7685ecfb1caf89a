"""The ``brainvq`` command line: one subcommand per stage, plus ``pipeline``, ``demo``, ``report``,
``config show`` and ``devices``.

Every user-facing error (bad data, bad config, a run that would be overwritten, a mismatched
checkpoint) prints one ``brainvq: error: ...`` line and exits non-zero, without a traceback.
Files: ``common`` (shared flags), ``data``, ``conform``, ``training``, ``generation``, ``anomaly``, ``settings``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from brainvq.errors import BrainVQError


def build_parser() -> argparse.ArgumentParser:
    from brainvq import __version__
    from brainvq.cli import anomaly, conform, data, generation, settings, training

    parser = argparse.ArgumentParser(prog="brainvq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"brainvq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (data, conform, training, generation, anomaly, settings):
        module.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainvq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.handler(args))
    except BrainVQError as error:
        print(f"brainvq: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("brainvq: interrupted (the last checkpoint was saved; --resume continues)", file=sys.stderr)
        return 130
    from brainvq.devices import end_process_group

    end_process_group()  # a distributed run leaves its group together (no-op otherwise)
    return status
