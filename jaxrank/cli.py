"""The `jaxrank` command line: `jaxrank --help`; every sub-command has `--help`.

Bad input exits with status 2 and one line, `jaxrank: error: ...`, naming the argument.
"""

from __future__ import annotations

import argparse
import importlib
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


def _error(text: str) -> int:
    # One line: a multi-line message from a library (e.g. an XLA status) keeps its first line only.
    first = str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"
    err_console.print(f"jaxrank: error: {first}", markup=False, highlight=False, soft_wrap=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        return _error(str(err))
    except (ValueError, TypeError, OSError) as err:
        # Library validation errors name the argument, and OS errors (a file that cannot be read or written)
        # name the file: show them as one line, not a traceback.
        return _error(str(err))
    except MemoryError:
        return _error("out of memory; use a smaller size option (e.g. --batch-size, --bootstrap, --runs) or set "
                      "JAXRANK_MEMORY_LIMIT so that the memory plan refuses it up front")
    except KeyboardInterrupt:
        err_console.print("jaxrank: interrupted", markup=False, highlight=False)
        return 130
    except Exception as err:  # noqa: BLE001
        # XLA reports an allocation failure as an XlaRuntimeError "RESOURCE_EXHAUSTED: ...".
        if "RESOURCE_EXHAUSTED" in str(err):
            return _error(f"out of memory ({str(err).strip().splitlines()[0][:200]}); use a smaller size option")
        raise


if __name__ == "__main__":
    sys.exit(main())
