"""Evaluation: metrics, prompt protocols, the runner over dataset splits, and reports.

>>> from oncoseg.evaluate import evaluate
>>> summary = evaluate("kvasir-seg", "runs/kvasir", split="test", protocol="box")
"""

from typing import Any

__all__ = ["EvaluationConfig", "evaluate", "evaluate_distributed", "write_report"]


def __getattr__(name: str) -> Any:  # the runner imports torch: load it only when asked for
    if name in ("evaluate", "EvaluationConfig"):
        from oncoseg.evaluate import runner

        return getattr(runner, name)
    if name == "evaluate_distributed":
        from oncoseg.evaluate.distributed import evaluate_distributed

        return evaluate_distributed
    if name == "write_report":
        from oncoseg.evaluate.report import write_report

        return write_report
    raise AttributeError(name)
