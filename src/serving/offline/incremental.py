"""``--incremental``: score only what no earlier published run of the same model version scored.

The previous run's ``_manifest.json`` lists each input file it read (path, size, footer sha256)
with the output files made from it. A file that is still there, unchanged (same size and
footer), scored by the same model version (same artifact sha256), keeps its outputs; a new or
changed file is scored (a changed file's old outputs are not carried over, so they are
replaced); a file gone from the input loses its outputs. Another model version re-scores
everything: an output folder holds one model version's answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.offline.inputs import InputSet


@dataclass(frozen=True)
class Increment:
    """What this run scores and what it keeps from the previous one."""

    score: frozenset[str]
    """Input paths to score."""
    kept: dict[str, list[str]] = field(default_factory=dict)
    """Input path -> output files (relative) carried over unchanged."""
    dropped: tuple[str, ...] = ()
    """Input paths of the previous run that are no longer in the input."""
    reason: str = ""

    @property
    def nothing_to_do(self) -> bool:
        return not self.score and not self.dropped


def plan_increment(
    inputs: InputSet, previous: dict[str, Any] | None, model: str, version: int, sha256: str
) -> Increment:
    everything = frozenset(f.path for f in inputs.files)
    if previous is None:
        return Increment(everything, reason="no earlier run in this output")
    prev_model = previous.get("model", {})
    if (prev_model.get("name"), prev_model.get("version"), prev_model.get("sha256")) != (model, version, sha256):
        return Increment(
            everything,
            reason=f"the earlier run used {prev_model.get('name')} v{prev_model.get('version')} "
            f"(sha256 {str(prev_model.get('sha256'))[:12]}): everything is scored again",
        )
    before = {f["path"]: f for f in previous.get("input", {}).get("files", [])}
    kept: dict[str, list[str]] = {}
    for f in inputs.files:
        old = before.get(f.path)
        if old is not None and (old.get("size"), old.get("footer_sha256")) == (f.size, f.footer_sha256):
            kept[f.path] = list(old.get("outputs", []))
    score = everything - kept.keys()
    dropped = tuple(sorted(before.keys() - everything))
    changed = sum(1 for p in score if p in before)
    return Increment(
        frozenset(score),
        kept,
        dropped,
        reason=f"{len(score) - changed} new and {changed} changed input files to score, {len(kept)} unchanged "
        f"(kept), {len(dropped)} gone from the input",
    )
