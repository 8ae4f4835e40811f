"""Evaluation: answers, the paper's LLM-judge score, pairwise win rate, judge-free metrics, checkpoint selection and
the HTML report. The functions below are the public API (the CLI and the demo call them)."""

from gad.evaluation.evaluate import GenerationConfig, JudgeConfig, ModelSpec, evaluate
from gad.evaluation.generate import generate_answers, generate_file, read_answers, write_answers
from gad.evaluation.prompt_sets import PROMPT_SETS, load_prompt_set, resolve_prompt_set
from gad.evaluation.report import build_report
from gad.evaluation.selection import choose, find_checkpoints, select_checkpoint

__all__ = [
    "PROMPT_SETS",
    "GenerationConfig",
    "JudgeConfig",
    "ModelSpec",
    "build_report",
    "choose",
    "evaluate",
    "find_checkpoints",
    "generate_answers",
    "generate_file",
    "load_prompt_set",
    "read_answers",
    "resolve_prompt_set",
    "select_checkpoint",
    "write_answers",
]
