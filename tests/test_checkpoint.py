"""Orbax save/restore round trips exactly, for the pytree types jaxrank uses as state."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxrank.checkpoint import restore_state, save_state


class State(NamedTuple):
    counts: jax.Array
    means: jax.Array
    step: jax.Array


@struct.dataclass
class Fitted:
    ratings: jax.Array
    tie: jax.Array
    names: tuple = struct.field(pytree_node=False, default=())


def _assert_same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_namedtuple_round_trip_is_exact(tmp_path):
    key = jax.random.key(0)
    state = State(
        counts=jnp.arange(5, dtype=jnp.int32),
        means=jax.random.normal(key, (5,), jnp.float32),
        step=jnp.asarray(7, jnp.int32),
    )
    save_state(tmp_path / "ck", state, metadata={"allocator": "robin-hood", "delta": 0.007})
    like = State(jnp.zeros(5, jnp.int32), jnp.zeros(5, jnp.float32), jnp.asarray(0, jnp.int32))
    restored, meta = restore_state(tmp_path / "ck", like=like)
    assert isinstance(restored, State)
    _assert_same(restored, state)
    assert meta["allocator"] == "robin-hood" and meta["delta"] == 0.007 and "jaxrank_version" in meta


def test_struct_dataclass_and_no_target(tmp_path):
    fitted = Fitted(ratings=jnp.array([1000.0, 1012.5, 987.25]), tie=jnp.asarray(0.3), names=("a", "b", "c"))
    save_state(tmp_path / "fit", fitted)
    restored, _ = restore_state(tmp_path / "fit", like=fitted)
    assert isinstance(restored, Fitted) and restored.names == ("a", "b", "c")
    _assert_same(restored, fitted)
    raw, _ = restore_state(tmp_path / "fit")
    np.testing.assert_array_equal(np.asarray(raw["ratings"]), np.asarray(fitted.ratings))


def test_refuses_to_overwrite_without_force(tmp_path):
    save_state(tmp_path / "ck", {"x": jnp.ones(2)})
    with pytest.raises(FileExistsError, match="force=True"):
        save_state(tmp_path / "ck", {"x": jnp.zeros(2)})
    save_state(tmp_path / "ck", {"x": jnp.zeros(2)}, force=True)
    restored, _ = restore_state(tmp_path / "ck", like={"x": jnp.ones(2)})
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.zeros(2))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        restore_state(tmp_path / "missing")
    with pytest.raises(TypeError, match="key_data"):
        save_state(tmp_path / "k", {"key": jax.random.key(1)})


def test_force_never_replaces_a_directory_jaxrank_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="did not write"):
        save_state(mine, {"x": jnp.ones(2)}, force=True)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(ValueError, match="not a directory"):
        save_state(target, {"x": jnp.ones(2)}, force=True)
    assert target.read_text() == "mine"


def test_a_save_that_fails_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    save_state(tmp_path / "ck", {"x": jnp.ones(3)}, metadata={"v": 1})

    def broken(self, directory, *args, **kwargs):
        directory.mkdir(parents=True)
        (directory / "partial").write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.Checkpointer, "save", broken)
    with pytest.raises(OSError, match="could not be written .No space left on device"):
        save_state(tmp_path / "ck", {"x": jnp.zeros(3)}, force=True)
    monkeypatch.undo()
    restored, meta = restore_state(tmp_path / "ck", like={"x": jnp.zeros(3)})
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.ones(3))
    assert meta["v"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("damage", ["metadata", "state", "everything"])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    import shutil

    from jaxrank.checkpoint import UnreadableCheckpointError

    path = tmp_path / "ck"
    save_state(path, {"x": jnp.arange(100.0)})
    if damage == "metadata":
        (path / "metadata" / "metadata").write_text('{"jaxrank_ver')
    elif damage == "state":
        for f in (path / "state").rglob("*"):
            if f.is_file() and f.stat().st_size > 100:
                with open(f, "r+b") as fh:
                    fh.truncate(40)
    else:
        for p in path.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    with pytest.raises(UnreadableCheckpointError, match=f"checkpoint {path} is incomplete, truncated"):
        restore_state(path, like={"x": jnp.zeros(100)})
