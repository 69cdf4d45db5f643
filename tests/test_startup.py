"""Start-up: `import jaxrank` and `jaxrank --help` import no heavy library; the CLI's compilation cache."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import jaxrank
from jaxrank import cache

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jax", "pandas", "flax", "transformers", "matplotlib", "orbax", "torch", "scipy", "optax")


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=timeout)


def test_import_and_help_load_no_heavy_library():
    code = f"""
import json, sys
import jaxrank
seen = {{"import": [m for m in {HEAVY!r} if m in sys.modules]}}
from jaxrank.cli import main
for argv in (["--help"], ["leaderboard", "--help"], ["budget", "simulate", "--help"], ["p2l", "train", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
seen["help"] = [m for m in {HEAVY!r} if m in sys.modules]
print("SEEN", json.dumps(seen))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.split("SEEN ", 1)[1])
    assert seen == {"import": [], "help": []}, f"imported at start-up: {seen}"


def test_every_public_name_resolves_lazily():
    for name in jaxrank.__all__:
        assert getattr(jaxrank, name) is not None, name
    assert set(jaxrank.__all__) <= set(dir(jaxrank))
    assert jaxrank.score_pairs is __import__("jaxrank.scoring", fromlist=["x"]).score_pairs
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxrank.nope  # noqa: B018
    ns: dict = {}
    exec("from jaxrank import *", ns)
    assert "score_pairs" in ns and "enable_compilation_cache" in ns


def test_cache_dir_follows_xdg_and_the_override(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "jaxrank" / "xla"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "jaxrank" / "xla"
    monkeypatch.setenv(cache.ENV_DIR, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    for value, off in (("1", True), ("yes", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(cache.ENV_OFF, value)
        assert cache.cache_disabled() is off


def test_enable_compilation_cache_bad_arguments_and_unwritable_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV_OFF, raising=False)
    with pytest.raises(ValueError, match="max_size_bytes"):
        cache.enable_compilation_cache(tmp_path, max_size_bytes=0)
    with pytest.raises(TypeError, match="max_size_bytes"):
        cache.enable_compilation_cache(tmp_path, max_size_bytes=1.5)
    with pytest.raises(ValueError, match="min_compile_time_secs"):
        cache.enable_compilation_cache(tmp_path, min_compile_time_secs=-1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="compilation cache off"):
        assert cache.enable_compilation_cache(blocker / "sub") is None
    monkeypatch.setenv(cache.ENV_OFF, "1")
    assert cache.enable_compilation_cache(tmp_path / "never") is None
    assert not (tmp_path / "never").exists()


def test_cli_writes_the_cache_where_told_and_not_when_turned_off(tmp_path):
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": i, "scores": [1.0 + i % 3, 2.0, 3.0]}) + "\n" for i in range(6)))
    run = ("import sys; from jaxrank.cli import main; "
           f"sys.exit(main(['budget', 'simulate', {str(scores)!r}, '--budget', '60', '--runs', '2', "
           "'--allocator', 'uniform'] + sys.argv[1:]))")
    env = {cache.ENV_OFF: "", cache.ENV_DIR: str(tmp_path / "cache"), "HOME": str(tmp_path / "home"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}

    def cli(*extra, **more):
        proc = subprocess.run([sys.executable, "-c", run, *extra], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO), **env, **more})
        assert proc.returncode == 0, proc.stderr
        return proc

    cli()
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries, "the first run should fill the cache"
    assert (tmp_path / "cache").stat().st_mode & 0o077 == 0, "the cache must be private to the user"
    cli("--no-cache", **{cache.ENV_DIR: str(tmp_path / "off1")})
    cli(**{cache.ENV_OFF: "1", cache.ENV_DIR: str(tmp_path / "off2")})
    assert not (tmp_path / "off1").exists() and not (tmp_path / "off2").exists()
    # A second run with the cache reads it back: nothing new to write for the same program.
    cli()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries
    # The default location when nothing is set: XDG_CACHE_HOME, never the real home.
    cli(**{cache.ENV_DIR: ""})
    assert any((tmp_path / "xdg" / "jaxrank" / "xla").iterdir())
    assert not (tmp_path / "home").exists()
