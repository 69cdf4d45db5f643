"""The `jaxrank` command line: `jaxrank --help`; every sub-command has `--help`.

Bad input exits with status 2 and one line, `jaxrank: error: ...`, naming the argument.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from jaxrank.commands._common import CliError, err_console

# Sub-command modules, registered in this order (each has `register(subparsers)`).
COMMAND_MODULES = (
    "jaxrank.commands.demo",
    "jaxrank.commands.prioritize",
    "jaxrank.commands.budget",
    "jaxrank.commands.plan",
    "jaxrank.commands.leaderboard",
    "jaxrank.commands.evaluate",
    "jaxrank.commands.p2l",
)


def build_parser() -> argparse.ArgumentParser:
    from jaxrank import __version__

    parser = argparse.ArgumentParser(
        prog="jaxrank",
        description="Label-efficient LLM evaluation on accelerators (JAX).",
    )
    parser.add_argument("--version", action="version", version=f"jaxrank {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # jaxrank runs transformers' tokenizers and configs only, never its PyTorch models: its advisory
    # "PyTorch was not found" notice is noise here (set before any command imports transformers).
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        err_console.print(f"jaxrank: error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as err:
        # Library validation errors name the argument; show them as one line, not a traceback.
        err_console.print(f"jaxrank: error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("jaxrank: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
