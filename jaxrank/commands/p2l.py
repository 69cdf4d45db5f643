"""`jaxrank p2l train | leaderboard | route`: Prompt-to-Leaderboard from the command line.

- `train VOTES --out DIR`: votes with their prompt texts -> prompt features (a pretrained encoder in JAX,
  or `--features FILE.npy`) -> a trained P2L head saved in DIR.
- `leaderboard DIR PROMPTS`: the aggregate leaderboard of a set of prompts, with bootstrap intervals.
- `route DIR PROMPTS --costs costs.json --budget C`: the best model (or two-model mix) for each prompt
  under a cost budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import warnings
from typing import Any

import numpy as np

from jaxrank.commands._common import (
    FIGURE_FORMATS,
    TABLE_FORMATS,
    CliError,
    JobProgress,
    add_vote_arguments,
    check_distinct,
    clock,
    console,
    err_console,
    input_path,
    output_path,
    progress,
    resource_flags,
    vote_options,
)
from jaxrank.outputs import Output, check_workdir, write_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "p2l",
        help="Prompt-to-Leaderboard: per-prompt leaderboards, aggregation and cost-aware routing",
        description="Prompt-to-Leaderboard (Frick et al. 2025): train a head mapping prompt features to "
                    "Bradley-Terry coefficients, aggregate leaderboards for prompt sets, route prompts under a budget.",
    )
    sub = p.add_subparsers(dest="p2l_command", metavar="SUBCOMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a P2L head on votes with their prompts",
                       description="Train a P2L head. VOTES (.csv, .tsv, .jsonl/.json, .parquet) is any layout "
                                   "jaxrank leaderboard reads (e.g. model_a, model_b, winner) with the prompt text.")
    t.add_argument("votes", metavar="VOTES", help="votes file with a prompt column")
    t.add_argument("--out", required=True, metavar="DIR", help="directory for the trained model (orbax)")
    t.add_argument("--prompts-column", metavar="NAME",
                   help="column holding the prompt text (default: the layout's, e.g. prompt, instruction, or the "
                        "first user turn of conversation_a); the same as --columns prompt=NAME")
    add_vote_arguments(t)
    t.add_argument("--encoder", default="smollm2-135m-instruct",
                   help="prompt encoder: smollm2-135m-instruct (default), all-minilm-l6-v2, or a model path")
    t.add_argument("--features", metavar="FILE.npy",
                   help="precomputed float [P, D] features, one row per distinct prompt in order of first appearance "
                        "(skips the encoder)")
    t.add_argument("--cache-dir", metavar="DIR", help="cache computed prompt features here")
    t.add_argument("--max-length", type=int, default=256, help="most tokens read per prompt (default 256)")
    t.add_argument("--loss", choices=("bt", "bt-tie", "rao-kupper", "grounded-rao-kupper"), default="bt-tie",
                   help="P2L loss (default bt-tie: a tie is half a win each way)")
    t.add_argument("--hidden", default="", metavar="W1,W2", help="hidden layer widths (default: a linear head)")
    t.add_argument("--epochs", type=int, default=50, help="maximum epochs (default 50)")
    t.add_argument("--batch-size", type=int, default=64, help="votes per minibatch (default 64)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="AdamW weight decay (default 0 for the residual head, 1e-4 with --delta-l2 none)")
    t.add_argument("--delta-l2", default=DELTA_L2_DEFAULT, metavar="L2[,L2...]|none",
                   help="residual head beta = beta_global + Delta(prompt): the L2 strengths of Delta tried, the best "
                        f"on the validation prompts kept, the global fit included (default {DELTA_L2_DEFAULT}); "
                        "'none': the plain head")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of prompts held out (default 0.1)")
    t.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs (default 5)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--finetune", choices=("last-k", "lora"),
                   help="fine-tune the encoder (a causal LM) with the residual head: its last K blocks (the frozen "
                        "blocks run once and are cached) or LoRA adapters on every block (jaxrank.p2l_finetune); "
                        "default: a head on frozen features")
    t.add_argument("--k", type=int, default=2, help="--finetune last-k: blocks trained (default 2)")
    t.add_argument("--lora-rank", type=int, default=8, help="--finetune lora: adapter rank (default 8)")
    t.add_argument("--backbone-lr", type=float, default=1e-4,
                   help="--finetune: peak learning rate of the backbone's weights (default 1e-4; --lr is the head's)")
    t.add_argument("--batch-prompts", type=int, default=8,
                   help="--finetune: prompts (with all their votes) per optimiser step (default 8)")
    t.add_argument("--accumulate", type=int, default=1,
                   help="--finetune: micro-batches per step (gradient accumulation; default 1)")
    t.add_argument("--folds", type=int, default=5,
                   help="folds over prompts choosing --delta-l2 from several values (default 5; 0: the validation "
                        "split, as before)")
    t.add_argument("--checkpoint-dir", metavar="DIR", help="training checkpoints (orbax CheckpointManager)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --checkpoint-dir")
    t.add_argument("--force", action="store_true",
                   help="replace --out if it is a model directory jaxrank wrote (only once the new one is complete)")
    t.set_defaults(func=run_train)

    for name, helptext in (("leaderboard", "aggregate leaderboard of a set of prompts"),
                           ("route", "route each prompt to the best model under a cost budget")):
        s = sub.add_parser(name, help=helptext, description=helptext + ". PROMPTS: .jsonl/.json (prompt or turns), "
                                                                      ".csv (prompt column) or text (one a line).")
        s.add_argument("model", metavar="DIR", help="a trained P2L model (jaxrank p2l train --out DIR)")
        s.add_argument("prompts", metavar="PROMPTS", help="prompts file")
        s.add_argument("--features", metavar="FILE.npy", help="precomputed [P, D] features of PROMPTS, in file order")
        s.add_argument("--cache-dir", metavar="DIR", help="cache computed prompt features here")
        s.add_argument("--max-length", type=int, default=None,
                       help="most tokens read per prompt (default: what DIR was trained with, else 256)")
        s.add_argument("--out", metavar="FILE", help="write the table (.csv, .jsonl or .parquet)")
        s.add_argument("--force", action="store_true", help="replace outputs if they exist (files only)")
        if name == "leaderboard":
            s.add_argument("--bootstrap", type=int, default=0, metavar="N",
                           help="bootstrap rounds over prompts for the intervals (default 0)")
            s.add_argument("--ci", type=float, default=0.95, metavar="C", help="interval coverage (default 0.95)")
            s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
            s.add_argument("--plot", metavar="FILE", help="forest plot (.png, .pdf, .svg)")
            s.add_argument("--per-prompt", metavar="FILE",
                           help="also write one ranked leaderboard per prompt (.csv, .jsonl or .parquet): columns "
                                "prompt_id, rank, model, rating, theta")
            s.set_defaults(func=run_leaderboard)
        else:
            s.add_argument("--costs", required=True, metavar="FILE.json",
                           help='per-model costs, a JSON object {"model": cost, ...} covering every model')
            s.add_argument("--budget", required=True, type=float, metavar="C", help="cost budget per prompt")
            s.add_argument("--average", action="store_true",
                           help="the budget bounds the AVERAGE cost over the prompts (P2L's setting), not each prompt")
            s.set_defaults(func=run_route)




def _load_features(path: str, num_prompts: int) -> np.ndarray:
    p = input_path(path, arg="--features")
    try:
        feats = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CliError(f"--features {p}: not a .npy array ({err})") from None
    if feats.ndim != 2 or feats.shape[0] != num_prompts:
        raise CliError(f"--features {p}: expected shape [P, D] with P = {num_prompts} prompts, got {feats.shape}")
    if not np.issubdtype(feats.dtype, np.floating):
        raise CliError(f"--features {p}: expected floating point values, got dtype {feats.dtype}")
    if not np.isfinite(feats).all():
        raise CliError(f"--features {p}: contains NaN or infinite values")
    return feats.astype(np.float32)


def _compute_features(texts: list[str], encoder: str, cache_dir: str | None, max_length: int) -> np.ndarray:
    from jaxrank.lm.features import prompt_features

    job = JobProgress("p2l train", [("features", 1.0)], items=len(texts), unit="prompts")

    def plan(p) -> None:
        from jaxrank.lm.cost import forward_seconds, measure_rates

        rates = measure_rates(p.hidden_size or 512, p.batch_size)
        seconds = forward_seconds(p.parameters, p.padded_positions, rates)
        job.estimate = seconds
        job.plan(f"prompt features of {p.prompts} prompts with {encoder}: {p.tokens:,} tokens in {p.batches} batches "
                 f"of {p.batch_size} ({p.padded_positions:,} padded positions, {p.shapes} program(s) to compile on a "
                 f"first run); estimate ~{clock(seconds)} on this machine ({rates.device}: 2 x {p.parameters:,} "
                 f"FLOPs per position at the {rates.full / 1e9:.0f} GFLOP/s a matmul measured now; compilation not "
                 "included)")

    def update(stage, advance, total, tokens):
        job.items_done += advance
        job.update("features", job.items_done, total)

    with warnings.catch_warnings(record=True) as caught, job, resource_flags(max_length="--max-length"):
        warnings.simplefilter("always")
        feats = prompt_features(texts, encoder=encoder, cache_dir=cache_dir, max_length=max_length, progress=update,
                                on_plan=plan)
    _print_warnings(caught)  # e.g. truncated prompts: one `jaxrank: warning:` line, not a source path
    return feats


DELTA_L2_DEFAULT = "1e-4,1e-3,1e-2,1e-1,1,10"


def _delta_l2(text: str) -> tuple[float, ...] | None:
    if text.strip().lower() == "none":
        return None
    try:
        grid = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise CliError(f"--delta-l2: expected comma-separated numbers or 'none', got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in grid):
        raise CliError(f"--delta-l2: strengths must be finite numbers >= 0, got {text!r}")
    return grid


def _hidden(text: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise CliError(f"--hidden: expected comma-separated integer widths, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise CliError(f"--hidden: widths must be >= 1, got {text!r}")
    return widths


def _print_warnings(caught) -> None:
    for note in dict.fromkeys(str(w.message) for w in caught):  # each warning once
        err_console.print(f"jaxrank: warning: {note}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _diverged_hint(lr: float):
    from jaxrank.p2l import TrainingDivergedError

    try:
        yield
    except TrainingDivergedError as err:
        raise CliError(f"{err}; nothing was saved: lower --lr (now {lr:g})") from None


def run_train(args: argparse.Namespace) -> int:
    import jax

    from jaxrank.p2l import save_p2l, train_p2l
    from jaxrank.votes import load_votes

    votes_path = input_path(args.votes, arg="VOTES")
    inputs = [votes_path, args.features]
    # The model directory: checked now, written at the end into a sibling and swapped in (an old model under
    # --force is replaced only once the new one is complete).
    out = output_path(args.out, force=args.force, arg="--out", kind="dir", inputs=inputs)
    for flag, folder in (("--checkpoint-dir", args.checkpoint_dir), ("--cache-dir", args.cache_dir)):
        if folder:
            check_workdir(folder, label=flag, inputs=inputs, outputs=[out])
    if args.checkpoint_dir and args.cache_dir:
        check_workdir(args.cache_dir, label="--cache-dir", outputs=[Output(pathlib.Path(args.checkpoint_dir).absolute(),
                                                                           label="--checkpoint-dir",
                                                                           named=args.checkpoint_dir)])
    if args.resume and not args.checkpoint_dir:
        raise CliError("--resume needs --checkpoint-dir (where the training checkpoints are)")
    # Every option is checked here, before the prompt features (minutes with the default encoder).
    if args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.patience < 1:
        raise CliError(f"--patience must be >= 1 epoch, got {args.patience}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise CliError(f"--val-fraction must lie in [0, 1), got {args.val_fraction}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise CliError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise CliError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if args.max_length < 2:
        raise CliError(f"--max-length must be >= 2 tokens, got {args.max_length}")
    if args.checkpoint_dir:
        ckpt = pathlib.Path(args.checkpoint_dir)
        holds = ckpt.is_dir() and any(ckpt.iterdir())
        if holds and not args.resume:
            raise CliError(f"--checkpoint-dir {ckpt} is not empty (checkpoints of an earlier run?); pass --resume to "
                           "continue it, or use a new directory")
        if args.resume and not holds:
            raise CliError(f"--resume: --checkpoint-dir {ckpt} holds no checkpoint")
    hidden = _hidden(args.hidden)
    delta_l2 = _delta_l2(args.delta_l2)
    if args.folds < 0 or args.folds == 1:
        raise CliError(f"--folds must be 0 or >= 2, got {args.folds}")
    if args.finetune:
        if args.features:
            raise CliError("--finetune trains the encoder itself: it reads the prompt texts, not --features")
        if args.encoder.lower() in ("all-minilm-l6-v2",):
            raise CliError("--finetune needs a causal LM --encoder (e.g. smollm2-135m-instruct), not a sentence encoder")
        if delta_l2 is None:
            raise CliError("--finetune trains the residual head: --delta-l2 must be numbers, not 'none'")
        if hidden:
            raise CliError("--finetune trains a linear residual head: drop --hidden")
        for flag, value, lo in (("--k", args.k, 1), ("--lora-rank", args.lora_rank, 1),
                                ("--batch-prompts", args.batch_prompts, 1), ("--accumulate", args.accumulate, 1)):
            if value < lo:
                raise CliError(f"{flag} must be >= {lo}, got {value}")
        if args.batch_prompts % args.accumulate:
            raise CliError(f"--batch-prompts {args.batch_prompts} must be a multiple of --accumulate {args.accumulate}")
        if not (math.isfinite(args.backbone_lr) and args.backbone_lr > 0):
            raise CliError(f"--backbone-lr must be a finite number > 0, got {args.backbone_lr}")
    if delta_l2 is not None and len(delta_l2) > 1 and args.val_fraction == 0 and args.folds == 0:
        raise CliError("--delta-l2 with several strengths and --folds 0 chooses one on validation prompts: "
                       "--val-fraction must be > 0")
    read = vote_options(args, columns_extra={"prompt": args.prompts_column} if args.prompts_column else None)
    votes = load_votes(votes_path, **read)
    if votes.prompt_text is None:
        raise CliError(f"VOTES {votes_path} has no prompt text column (the layout's default, e.g. prompt, is absent); "
                       "name yours with --prompts-column NAME")
    # Features are rows in order of the prompts' first appearance in VOTES (what --features files hold).
    present, first = np.unique(np.asarray(votes.prompt), return_index=True)
    appearance = present[np.argsort(first, kind="stable")]  # prompt-table index of the r-th prompt to appear
    prompts = [votes.prompt_text[i] for i in appearance]
    if args.finetune and args.val_fraction > 0 and not 1 <= round(args.val_fraction * len(prompts)) < len(prompts):
        raise CliError(f"--val-fraction {args.val_fraction} of {len(prompts)} prompts leaves no validation or "
                       "training prompts")
    loaded = _finetune_backbone(args) if args.finetune else None  # its checks before any features or training
    if args.finetune and not (len(delta_l2) > 1 and args.folds):
        return _run_finetune(args, loaded, votes, out, delta_l2[0])  # frozen features only serve to choose the L2
    if args.features:
        feats, encoder = _load_features(args.features, len(prompts)), None
    else:
        feats, encoder = _compute_features(prompts, args.encoder, args.cache_dir, args.max_length), args.encoder
    aligned = np.empty((votes.num_prompts, feats.shape[1]), feats.dtype)  # rows in votes.prompt_ids order
    aligned[appearance] = feats
    feats = aligned
    err_console.print(f"[dim]{votes.num_votes} votes, {len(prompts)} prompts, {votes.num_models} models, "
                      f"features {feats.shape[1]}-d[/dim]")
    if delta_l2 is not None and len(delta_l2) > 1 and args.folds:
        from jaxrank.p2l import choose_delta_l2

        with warnings.catch_warnings(record=True) as caught, resource_flags(batch_size="--batch-size"), \
                _diverged_hint(args.lr):
            warnings.simplefilter("always")
            choice = choose_delta_l2(jax.random.key(args.seed), feats, votes, delta_l2, folds=args.folds,
                                     loss=args.loss, hidden=hidden, learning_rate=args.lr,
                                     weight_decay=args.weight_decay, batch_size=args.batch_size,
                                     max_epochs=args.epochs, patience=args.patience)
        _print_warnings(caught)
        err_console.print(f"[dim]--delta-l2 {choice.chosen:g} chosen by {args.folds}-fold cross-validation over "
                          f"prompts (mean NLL {min(choice.mean_nll):.4f})[/dim]")
        delta_l2 = (choice.chosen,)
    if args.finetune:
        return _run_finetune(args, loaded, votes, out, delta_l2[0])

    bar = progress("training", args.epochs, transient=True)
    task = bar.add_task("training", total=args.epochs, rate="")

    def update(epoch, total, metrics):
        bar.update(task, completed=epoch, rate=f"val NLL {metrics['val_nll']:.4f}")

    with warnings.catch_warnings(record=True) as caught, bar, resource_flags(batch_size="--batch-size"), \
            _diverged_hint(args.lr):
        warnings.simplefilter("always")
        model = train_p2l(
            jax.random.key(args.seed), feats, votes, loss=args.loss, hidden=hidden, learning_rate=args.lr,
            weight_decay=args.weight_decay, delta_l2=delta_l2, batch_size=args.batch_size, max_epochs=args.epochs,
            val_fraction=args.val_fraction, patience=args.patience, checkpoint_dir=args.checkpoint_dir,
            resume=args.resume, encoder=encoder, max_length=None if encoder is None else args.max_length,
            progress=update,
        )
    _print_warnings(caught)
    save_p2l(model, out)
    h = model.history
    best = math.nan if h.get("best_val_nll") is None else h["best_val_nll"]
    glob = math.nan if h.get("baseline_val_nll") is None else h["baseline_val_nll"]
    kind = "residual" if delta_l2 is not None else "plain"
    chosen = f", L2 {model.config['chosen_delta_l2']:g}" if delta_l2 is not None else ""
    console.print(f"trained {args.loss} P2L head ({kind}{chosen}) on {votes.num_votes} votes: {h['epochs']} epochs, "
                  f"best validation NLL {best:.4f} at epoch {h['best_epoch']} (prompt-blind global fit {glob:.4f}); "
                  f"saved to {out.named}", soft_wrap=True, highlight=False, markup=False)
    return 0


def _finetune_backbone(args: argparse.Namespace) -> Any:
    """The --encoder to fine-tune, loaded (seconds), and the options that depend on it checked."""
    from jaxrank.lm import load_model

    loaded = load_model(args.encoder)
    layers = loaded.model.config.num_layers
    if args.finetune == "last-k" and args.k > layers:
        raise CliError(f"--k {args.k}: --encoder {args.encoder} has {layers} blocks; --k must be in [1, {layers}]")
    return loaded


def _run_finetune(args: argparse.Namespace, loaded: Any, votes: Any, out: Any, delta_l2: float) -> int:
    import jax

    from jaxrank.p2l_finetune import save_p2l_finetune, tokenize_prompts, train_p2l_finetune

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, mask = tokenize_prompts(loaded, list(votes.prompt_text), max_length=args.max_length)
    _print_warnings(caught)
    bar = progress("fine-tuning", args.epochs, transient=True)
    task = bar.add_task("fine-tuning", total=args.epochs, rate="")

    def update(epoch, total, metrics):
        bar.update(task, completed=epoch, rate=f"val NLL {metrics['val_nll']:.4f}")

    with bar, _diverged_hint(args.lr):
        fit = train_p2l_finetune(jax.random.key(args.seed),
            loaded.model, ids, mask, votes, mode=args.finetune, k=args.k, lora_rank=args.lora_rank, loss=args.loss,
            delta_l2=delta_l2, learning_rate=args.backbone_lr, head_learning_rate=args.lr,
            weight_decay=args.weight_decay or 0.0, batch_prompts=args.batch_prompts, accumulate=args.accumulate,
            max_epochs=args.epochs, val_fraction=args.val_fraction, patience=args.patience,
            checkpoint_dir=args.checkpoint_dir, resume=args.resume, encoder=args.encoder, max_length=args.max_length,
            progress=update)
    save_p2l_finetune(fit, out)
    h = fit.history
    best = math.nan if h.get("best_val_nll") is None else h["best_val_nll"]
    glob = math.nan if h.get("baseline_val_nll") is None else h["baseline_val_nll"]
    what = f"last {args.k} blocks" if args.finetune == "last-k" else f"LoRA rank {args.lora_rank}"
    console.print(f"fine-tuned {args.encoder} ({what}) with a residual {args.loss} P2L head (L2 {delta_l2:g}) on "
                  f"{votes.num_votes} votes: {h['epochs']} epochs, best validation NLL {best:.4f} at epoch "
                  f"{h['best_epoch']} (prompt-blind global fit {glob:.4f}); saved to {out.named}", soft_wrap=True,
                  highlight=False, markup=False)
    return 0


def _max_length(args: argparse.Namespace, config: dict, model_dir: pathlib.Path) -> int:
    """--max-length, else the one the model was trained with (recorded in its config), else 256; a warning
    when the two differ (the prompts are then read unlike the training prompts)."""
    trained = config.get("max_length")
    if args.max_length is None:
        return 256 if trained is None else int(trained)
    if args.max_length < 2:
        raise CliError(f"--max-length must be >= 2 tokens, got {args.max_length}")
    if trained is not None and int(trained) != args.max_length:
        err_console.print(f"jaxrank: warning: DIR {model_dir} was trained on prompts read with --max-length {trained}; "
                          f"--max-length {args.max_length} reads these differently", markup=False, highlight=False,
                          soft_wrap=True)
    return args.max_length


def _finetuned_coefficients(model_dir: pathlib.Path, args: argparse.Namespace, prompts: list) -> tuple:
    from jaxrank.lm import load_model
    from jaxrank.p2l_finetune import load_p2l_finetune

    if args.features:
        raise CliError(f"DIR {model_dir} fine-tuned its encoder: it reads the prompt texts, not --features")
    from jaxrank.checkpoint import restore_state

    _, meta = restore_state(model_dir)
    loaded = load_model(meta["encoder"])
    fit = load_p2l_finetune(model_dir, loaded.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, mask = fit.tokenize(loaded, [p.text for p in prompts],
                                 max_length=_max_length(args, fit.config, model_dir))
    _print_warnings(caught)
    beta, alpha = fit.coefficients(loaded.model, ids, mask)
    return fit, prompts, beta, alpha


def _model_and_coefficients(args: argparse.Namespace):
    from jaxrank.lm.prompts import read_prompts
    from jaxrank.p2l import load_p2l

    model_dir = pathlib.Path(args.model)
    if not model_dir.is_dir():
        raise CliError(f"DIR {model_dir} is not a directory (train one with jaxrank p2l train --out DIR)")
    try:
        model = load_p2l(model_dir)
    except ValueError as err:
        if "jaxrank.p2l-finetune" not in str(err):
            raise CliError(f"DIR {model_dir}: {err}") from None
        return _finetuned_coefficients(model_dir, args, read_prompts(input_path(args.prompts, arg="PROMPTS")))
    except FileNotFoundError as err:
        raise CliError(f"DIR {model_dir}: {err}") from None
    except Exception as err:  # orbax raises several types for a folder that is not a checkpoint
        raise CliError(f"DIR {model_dir} is not a P2L model ({type(err).__name__})") from None
    prompts = read_prompts(input_path(args.prompts, arg="PROMPTS"))
    if args.features:
        feats = _load_features(args.features, len(prompts))
    else:
        if model.encoder is None:
            raise CliError(f"DIR {model_dir} was trained on --features (no encoder recorded); pass --features")
        feats = _compute_features([p.text for p in prompts], model.encoder, args.cache_dir,
                                  _max_length(args, model.config, model_dir))
    if feats.shape[1] != int(model.config["in_features"]):
        raise CliError(f"--features has {feats.shape[1]} columns but the model was trained on "
                       f"{model.config['in_features']}-d features")
    beta, alpha = model.coefficients(feats)
    return model, prompts, beta, alpha


def run_leaderboard(args: argparse.Namespace) -> int:
    import jax
    import pandas as pd

    from jaxrank.p2l import aggregate_leaderboard

    if args.bootstrap < 0 or args.bootstrap == 1:
        raise CliError(f"--bootstrap must be 0 or >= 2 rounds, got {args.bootstrap}")
    if not 0.0 < args.ci < 1.0:
        raise CliError(f"--ci must lie strictly between 0 and 1, got {args.ci}")
    inputs = [args.model, args.prompts, args.features]
    out = output_path(args.out, force=args.force, arg="--out", inputs=inputs, suffixes=TABLE_FORMATS)
    plot = output_path(args.plot, force=args.force, arg="--plot", inputs=inputs, suffixes=FIGURE_FORMATS)
    per_prompt = output_path(args.per_prompt, force=args.force, arg="--per-prompt", inputs=inputs,
                             suffixes=TABLE_FORMATS)
    check_distinct(out, plot, per_prompt)
    if args.cache_dir:
        check_workdir(args.cache_dir, label="--cache-dir", inputs=inputs, outputs=[out, plot, per_prompt])
    model, prompts, beta, alpha = _model_and_coefficients(args)
    if per_prompt is not None:
        from jaxrank.p2l import per_prompt_leaderboards

        table = per_prompt_leaderboards(beta, models=model.models, prompt_ids=[p.id for p in prompts], loss=model.loss)
        write_table(table, per_prompt)
        console.print(f"wrote {per_prompt.named} ({len(prompts)} leaderboards of {len(model.models)} models)")
    with resource_flags(bootstrap="--bootstrap"):
        lb = aggregate_leaderboard(beta, alpha, loss=model.loss, models=model.models, bootstrap=args.bootstrap,
                                   key=jax.random.key(args.seed), confidence=args.ci)
    frame = lb.to_frame()
    from rich.table import Table

    table = Table(title=f"P2L leaderboard of {len(prompts)} prompts ({model.loss})")
    for col in ("rank_ub", "model", "rating", "lower", "upper"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for row in frame.itertuples():
        table.add_row(str(row.rank_ub), row.model, f"{row.rating:.1f}", f"{row.lower:.1f}", f"{row.upper:.1f}")
    console.print(table)
    if out is not None:
        write_table(pd.DataFrame(frame), out)
        console.print(f"wrote {out.named}")
    if plot is not None:
        from jaxrank.plots import plot_leaderboard

        plot_leaderboard(frame.model.tolist(), frame.rating, frame.lower, frame.upper, path=plot,
                         title=f"P2L: {len(prompts)} prompts")
        console.print(f"wrote {plot.named}")
    return 0


def run_route(args: argparse.Namespace) -> int:
    import pandas as pd

    from jaxrank.p2l import route, route_average_budget

    costs_path = input_path(args.costs, arg="--costs")
    inputs = [args.model, args.prompts, args.features, costs_path]
    out = output_path(args.out, force=args.force, arg="--out", inputs=inputs, suffixes=TABLE_FORMATS)
    if args.cache_dir:
        check_workdir(args.cache_dir, label="--cache-dir", inputs=inputs, outputs=[out])
    try:
        costs_map = json.loads(costs_path.read_text())
    except json.JSONDecodeError as err:
        raise CliError(f"--costs {costs_path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(costs_map, dict):
        raise CliError(f'--costs {costs_path}: expected a JSON object {{"model": cost, ...}}')
    if not math.isfinite(args.budget) or args.budget < 0:
        raise CliError(f"--budget must be a finite number >= 0, got {args.budget}")
    model, prompts, beta, alpha = _model_and_coefficients(args)
    missing = [m for m in model.models if m not in costs_map]
    if missing:
        raise CliError(f"--costs {costs_path} has no cost for model(s) {', '.join(map(repr, missing[:5]))}")
    not_numbers = [m for m in model.models if isinstance(costs_map[m], bool) or not isinstance(costs_map[m], (int, float))]
    if not_numbers:  # JSON true/false, strings, lists: float() would take true as 1.0 and "0.5" as 0.5
        raise CliError(f"--costs {costs_path}: every cost must be a number, got "
                       f"{', '.join(f'{m!r}: {json.dumps(costs_map[m])}' for m in not_numbers[:3])}")
    cost_list = [float(costs_map[m]) for m in model.models]
    if not all(math.isfinite(c) and c >= 0 for c in cost_list):
        raise CliError(f"--costs {costs_path}: every cost must be finite and >= 0")
    if args.budget < min(cost_list):
        raise CliError(f"--budget {args.budget:g} is below the cheapest model's cost {min(cost_list):g}")
    costs = np.asarray(cost_list, np.float64)  # route() shifts and checks in float64
    tie = alpha if model.loss in ("rao-kupper", "grounded-rao-kupper") else None
    if args.average:
        res = route_average_budget(beta, costs, args.budget, ties=model.loss, tie_param=tie)
    else:
        res = route(beta, costs, args.budget, ties=model.loss, tie_param=tie)
    policy = np.asarray(res.policy, np.float64)
    frame = pd.DataFrame({
        "id": [p.id for p in prompts],
        "model": [model.models[i] for i in np.asarray(res.chosen)],
        "expected_win_rate": np.asarray(res.expected_win_rate, np.float64),
        "expected_cost": np.asarray(res.expected_cost, np.float64),
    })
    for j, name in enumerate(model.models):
        frame[f"p({name})"] = policy[:, j]
    console.print(f"routed {len(prompts)} prompts under budget {args.budget:g}"
                  f"{' (average)' if args.average else ' (per prompt)'}: mean expected win rate "
                  f"{frame.expected_win_rate.mean():.3f}, mean expected cost {frame.expected_cost.mean():.4g}")
    counts = frame.model.value_counts()
    console.print("chosen: " + ", ".join(f"{m} {c}" for m, c in counts.items()))
    if out is not None:
        write_table(frame, out)
        console.print(f"wrote {out.named}")
    return 0
