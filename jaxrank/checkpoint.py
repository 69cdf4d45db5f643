"""Save and restore fitted states (pytrees of arrays) with orbax, plus JSON metadata.

Every stateful result in jaxrank (a fitted leaderboard, a judge-budget allocator state, a P2L head) is a
pytree of arrays; `save_state` writes it with orbax's `StandardSave` and a small JSON side item (model
names, options, versions) with `JsonSave`, in one directory. `restore_state(path, like=state)` gives
back the same pytree type (NamedTuple, `flax.struct.dataclass`, dict, ...) bit for bit.

Example:
    >>> import jax.numpy as jnp, tempfile, pathlib
    >>> from jaxrank.checkpoint import save_state, restore_state
    >>> state = {"ratings": jnp.array([1000.0, 1012.5]), "step": jnp.array(3)}
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "fit"
    >>> save_state(path, state, metadata={"models": ["a", "b"]})
    >>> restored, meta = restore_state(path, like=state)
    >>> meta["models"]
    ['a', 'b']
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxrank import __version__
from jaxrank.outputs import Output, write_dir

_STATE = "state"
_META = "metadata"


class UnreadableCheckpointError(ValueError):
    """A checkpoint directory that is incomplete, truncated or not a jaxrank checkpoint (names the path)."""


def _as_arrays(tree: Any) -> Any:
    """Leaves as jax arrays (orbax refuses NumPy scalars and Python numbers as restore targets)."""

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            raise TypeError(
                "state holds a typed PRNG key; store jax.random.key_data(key) instead and rebuild the key "
                "with jax.random.wrap_key_data after restoring"
            )
        return x if isinstance(x, jax.Array) else jnp.asarray(np.asarray(x))

    return jax.tree_util.tree_map(leaf, tree)


def save_state(
    path: str | os.PathLike | Output,
    state: Any,
    *,
    metadata: Mapping[str, Any] | None = None,
    force: bool = False,
) -> pathlib.Path:
    """Write `state` (a pytree of arrays) and JSON `metadata` to the directory `path`, atomically.

    The checkpoint is written to a temporary sibling directory and renamed into place when complete
    (`jaxrank.outputs.write_dir`): a failed or interrupted save leaves an existing `path` as it was.

    Args:
      path: the checkpoint directory (or an `Output` checked earlier with `jaxrank.outputs.check_output`).
      state: any pytree whose leaves are arrays or scalars.
      metadata: JSON-serialisable mapping stored beside the arrays (`jaxrank_version` is added).
      force: replace an existing checkpoint directory that jaxrank wrote; without it an existing path is a
        `FileExistsError` (`jaxrank.outputs.OutputExistsError`). A directory jaxrank did not write, or one
        holding files jaxrank did not put there, is never replaced (`jaxrank.outputs.OutputError`).

    Returns:
      The absolute path written.
    """
    meta = {"jaxrank_version": __version__, **dict(metadata or {})}
    arrays = _as_arrays(state)
    kind = meta.get("kind") if isinstance(meta.get("kind"), str) else "jaxrank.checkpoint"

    def write(tmp: pathlib.Path) -> None:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(tmp, ocp.args.Composite(**{_STATE: ocp.args.StandardSave(arrays),
                                                  _META: ocp.args.JsonSave(meta)}))

    return write_dir(path, write, force=force, label="checkpoint path", kind=kind)


def restore_state(path: str | os.PathLike, *, like: Any = None) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by `save_state`.

    Args:
      path: the checkpoint directory.
      like: a pytree with the structure (and dtypes/shapes) of the saved state, e.g. a freshly initialised
        state; the result then has its type. Without it the arrays come back as nested dicts.

    Returns:
      `(state, metadata)`.
    """
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} does not exist or is not a directory")
    target = None if like is None else _as_arrays(like)
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            restored = ckptr.restore(
                path,
                ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(target), _META: ocp.args.JsonRestore()}
                ),
            )
    except Exception as err:  # orbax/tensorstore raise many types (ValueError, KeyError, OSError, ...)
        raise UnreadableCheckpointError(
            f"checkpoint {path} is incomplete, truncated or not a jaxrank checkpoint ({describe_error(err)})"
        ) from err
    if not isinstance(restored.get(_META) if hasattr(restored, "get") else None, Mapping):
        raise UnreadableCheckpointError(f"checkpoint {path} has no jaxrank metadata (not a jaxrank checkpoint)")
    state = restored[_STATE]
    if like is not None:
        # StandardRestore returns the target's structure, but containers such as NamedTuples can come back as
        # plain sequences depending on the orbax version: rebuild the exact type from `like`'s treedef.
        state = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(like), jax.tree_util.tree_leaves(state)
        )
    return state, dict(restored[_META])


def describe_error(err: BaseException, limit: int = 160) -> str:
    """`Type: first line of the message`, shortened: a readable cause for a one-line error."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------------
# Training checkpoints (one step per epoch), shared by the P2L trainers


def flat_leaves(tree: Any) -> dict[str, Any]:
    """The leaves of any pytree under zero-padded index keys (orbax-friendly, order-preserving)."""
    return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}


def unflat_leaves(flat: Mapping[str, Any], like: Any, *, cast: bool = False) -> Any:
    """Inverse of `flat_leaves`: the leaves put back into the structure of `like`, checked leaf by leaf
    (count and shapes; `cast=True` also gives each leaf `like`'s dtype)."""
    leaves = [jnp.asarray(flat[k]) for k in sorted(flat)]
    treedef = jax.tree_util.tree_structure(like)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(f"checkpoint holds {len(leaves)} arrays, expected {treedef.num_leaves} (other options?)")
    wants = jax.tree_util.tree_leaves(like)
    for got, want in zip(leaves, wants):
        if got.shape != want.shape:
            raise ValueError(f"checkpoint array of shape {got.shape} does not fit (expected {want.shape})")
    if cast:
        leaves = [x.astype(w.dtype) for x, w in zip(leaves, wants)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def open_training_checkpoints(checkpoint_dir: str | os.PathLike, *, resume: bool,
                              config: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """An orbax `CheckpointManager` over `checkpoint_dir` (items `state` and `meta`, the last 2 steps kept)
    and, with `resume=True`, its latest step restored: `{"state": flat leaves, "meta": dict}`.

    Refuses (ValueError, the manager closed) a path that is not a directory, checkpoints there without
    `resume`, `resume` with none, and a checkpoint written with another `config` (naming the keys that
    differ); a damaged latest step raises `UnreadableCheckpointError`.
    """
    path = pathlib.Path(checkpoint_dir).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir {path} exists and is not a directory")
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
        max_to_keep=2, create=True, enable_async_checkpointing=False), item_names=("state", "meta"))
    latest = manager.latest_step()
    if latest is not None and not resume:
        manager.close()
        raise ValueError(f"checkpoint_dir {path} already holds checkpoints (latest epoch {latest}); pass "
                         "resume=True to continue, or use a new directory")
    if not resume:
        return manager, None
    if latest is None:
        manager.close()
        raise ValueError(f"resume=True but checkpoint_dir {path} holds no checkpoint")
    try:
        restored = manager.restore(latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                    meta=ocp.args.JsonRestore()))
    except Exception as err:  # orbax/tensorstore raise many types for a damaged step
        manager.close()
        raise UnreadableCheckpointError(
            f"checkpoint_dir {path}: the latest checkpoint (epoch {latest}) is incomplete or damaged "
            f"({describe_error(err)}); remove that step's folder to resume from the one before") from err
    meta = dict(restored["meta"])
    if meta["config"] != dict(config):
        diff = sorted(k for k in config if meta["config"].get(k) != config[k])
        manager.close()
        raise ValueError(f"resume=True with other options than the checkpoint's: {', '.join(diff)} differ")
    return manager, {"state": restored["state"], "meta": meta}
