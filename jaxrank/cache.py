"""JAX's persistent compilation cache: compiled XLA programs kept on disk between processes.

A `jaxrank` command spends most of a short run compiling; with the cache, the second run of the same
command on data of the same shapes loads the compiled programs instead (docs/cli.md has figures).
The command line turns it on by default; library users opt in with one line:

    import jaxrank
    jaxrank.enable_compilation_cache()          # ~/.cache/jaxrank/xla, at most 1 GiB

Location: `$JAXRANK_CACHE_DIR` if set, else `$XDG_CACHE_HOME/jaxrank/xla`, else
`~/.cache/jaxrank/xla`. `JAXRANK_NO_CACHE=1` (or `jaxrank --no-cache ...`) turns it off. The least
recently used entries are evicted once the folder grows past the size bound. The folder is created
private to the user (mode 0700): JAX treats cached programs as trusted code, so the cache must not be
writable by anyone else.
"""

from __future__ import annotations

import os
import pathlib
import warnings

__all__ = ["DEFAULT_MAX_BYTES", "ENV_DIR", "ENV_OFF", "cache_dir", "cache_disabled", "enable_compilation_cache"]

ENV_DIR = "JAXRANK_CACHE_DIR"
ENV_OFF = "JAXRANK_NO_CACHE"
DEFAULT_MAX_BYTES = 1 << 30
# Cache every program that took at least this long to compile. JAX's default (1 s) would skip most
# of a CLI run's programs, which take 0.05-0.5 s each but add up to seconds.
DEFAULT_MIN_COMPILE_SECS = 0.0

_FALSE = ("", "0", "false", "no", "off")


def cache_disabled() -> bool:
    """True when `JAXRANK_NO_CACHE` is set to anything but an empty string, 0, false, no or off."""
    return os.environ.get(ENV_OFF, "").strip().lower() not in _FALSE


def cache_dir() -> pathlib.Path:
    """Where the cache lives: `$JAXRANK_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxrank/xla`, else
    `~/.cache/jaxrank/xla` (the XDG base-directory default)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return pathlib.Path(explicit).expanduser()
    base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "").expanduser()
    if not base.is_absolute():  # unset, empty or relative: the XDG spec says to use the default
        base = pathlib.Path.home() / ".cache"
    return base / "jaxrank" / "xla"


def enable_compilation_cache(
    path: str | os.PathLike | None = None,
    *,
    max_size_bytes: int = DEFAULT_MAX_BYTES,
    min_compile_time_secs: float = DEFAULT_MIN_COMPILE_SECS,
) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache for this process.

    Compiled programs are written to `path` and read back by later processes, which then skip the
    compilation (minutes on large models, seconds for a CLI run). Call it before the first
    compilation you want cached; calling it again moves the cache.

    Args:
      path: the cache folder; default `cache_dir()`. Created (mode 0700) when missing.
      max_size_bytes: size bound of the folder; least recently used entries are evicted beyond it
        (-1: no bound).
      min_compile_time_secs: cache only programs whose compilation took at least this long.

    Returns:
      The folder in use, or None when the cache stays off: `JAXRANK_NO_CACHE` is set, or the folder
      cannot be created or written (a `RuntimeWarning` says why; the run goes on without the cache).

    Raises:
      TypeError / ValueError: a bad `max_size_bytes` or `min_compile_time_secs`.

    Example:
      >>> import jaxrank
      >>> jaxrank.enable_compilation_cache("/tmp/jaxrank-doc-cache")  # doctest: +SKIP
      PosixPath('/tmp/jaxrank-doc-cache')
    """
    if isinstance(max_size_bytes, bool) or not isinstance(max_size_bytes, int):
        raise TypeError(f"max_size_bytes must be an int (bytes, or -1 for no bound), got {max_size_bytes!r}")
    if max_size_bytes < 1 and max_size_bytes != -1:
        raise ValueError(f"max_size_bytes must be > 0 or -1 (no bound), got {max_size_bytes}")
    if isinstance(min_compile_time_secs, bool) or not isinstance(min_compile_time_secs, (int, float)):
        raise TypeError(f"min_compile_time_secs must be a number >= 0, got {min_compile_time_secs!r}")
    if not min_compile_time_secs >= 0:
        raise ValueError(f"min_compile_time_secs must be >= 0, got {min_compile_time_secs!r}")
    if cache_disabled():
        return None
    folder = pathlib.Path(path).expanduser() if path is not None else cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:
        warnings.warn(f"compilation cache off: cannot use {folder} ({err})", RuntimeWarning, stacklevel=2)
        return None

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_max_size", int(max_size_bytes))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.set_cache_dir(str(folder))
    # JAX decides once per process whether (and where) to cache, at the first compilation: start
    # over so that a call after some compilations takes effect too.
    compilation_cache.reset_cache()
    return folder
