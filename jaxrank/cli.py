"""The `jaxrank` command line: `jaxrank --help`; every sub-command has `--help`.

Bad input exits with status 2 and one line, `jaxrank: error: ...`, naming the argument.

Start-up is kept short: building the parser imports no JAX (each command imports what it needs when
it runs), and compiled XLA programs are kept in JAX's persistent compilation cache between runs
(`jaxrank.cache`: `~/.cache/jaxrank/xla` by default; `--no-cache` or `JAXRANK_NO_CACHE=1` turn it off).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Sequence

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

_NO_CACHE_HELP = ("do not use the persistent compilation cache (default: on, in $JAXRANK_CACHE_DIR or "
                  "$XDG_CACHE_HOME/jaxrank/xla or ~/.cache/jaxrank/xla; JAXRANK_NO_CACHE=1 turns it off too)")


def _leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `parser` that has no sub-commands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
            yield from _leaf_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    from jaxrank import __version__

    parser = argparse.ArgumentParser(
        prog="jaxrank",
        description="Label-efficient LLM evaluation on accelerators (JAX).",
    )
    parser.add_argument("--version", action="version", version=f"jaxrank {__version__}")
    parser.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # Also accepted after the sub-command (`jaxrank leaderboard v.csv --no-cache`); SUPPRESS keeps a
    # sub-command's default from overwriting the top-level flag.
    for leaf in _leaf_parsers(parser):
        leaf.add_argument("--no-cache", action="store_true", default=argparse.SUPPRESS, help=_NO_CACHE_HELP)
    return parser


def _error(text: str) -> int:
    # One line: a multi-line message from a library (e.g. an XLA status) keeps its first line only.
    first = str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"
    err_console.print(f"jaxrank: error: {first}", markup=False, highlight=False, soft_wrap=True)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    # jaxrank runs transformers' tokenizers and configs only, never its PyTorch models: its advisory
    # "PyTorch was not found" notice is noise here (set before any command imports transformers).
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if not args.no_cache:
            from jaxrank.cache import enable_compilation_cache

            enable_compilation_cache()
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
