"""The one vote table: `Votes` (per-vote data, validated once), its kernel encoding `VoteRows`, and
`load_votes`, which reads every supported layout (Chatbot Arena, the Kaggle 55k one-hot file, FastChat
`clean_battle`, MT-Bench human judgments, AlpacaEval annotations, LLMFAO, PandaLM), auto-detected by its
columns, from CSV, TSV, JSON Lines, JSON, Parquet or a pandas DataFrame."""

from jaxrank.votes.readers import FORMATS, Table, detect_format, load_votes, read_table
from jaxrank.votes.table import (
    A_WINS,
    B_WINS,
    OUTCOME_NAMES,
    TIE,
    TIE_BOTHBAD,
    WINNER_LABELS,
    VoteRows,
    Votes,
    comparison_components,
    describe_components,
    outcome_codes,
    warn_if_disconnected,
)

__all__ = [
    "A_WINS",
    "B_WINS",
    "TIE",
    "TIE_BOTHBAD",
    "OUTCOME_NAMES",
    "WINNER_LABELS",
    "Votes",
    "VoteRows",
    "outcome_codes",
    "comparison_components",
    "describe_components",
    "warn_if_disconnected",
    "FORMATS",
    "Table",
    "read_table",
    "detect_format",
    "load_votes",
]
