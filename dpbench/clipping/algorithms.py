"""The registry of clipping algorithms, each a pair (norm strategy, sum strategy); the README's
"The clipping engine" describes each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    """How an algorithm computes per-sample norms and the clipped sum."""

    name: str
    backend: str  # "plain", "own" or "opacus"
    norms: str | None  # own: "instantiate", "ghost", "mixed"; opacus: "hooks", "ghost"
    sums: str  # "autograd", "second_backward", "bookkeeping", "opacus"
    backprops: int
    description: str


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("nonprivate", "plain", None, "autograd", 1, "plain training, no clipping, no noise"),
    Algorithm("opacus", "opacus", "hooks", "opacus", 1,
              "Opacus 1.6 GradSampleModule (hooks): per-sample gradients of every layer, weighted sum"),
    Algorithm("opacus_ghost", "opacus", "ghost", "second_backward", 2,
              "Opacus 1.6 ghost clipping (true ghost norms for Linear/Embedding only), two backward passes"),
    Algorithm("per_sample", "own", "instantiate", "bookkeeping", 1,
              "instantiate every layer's per-sample gradients, weighted sum of them"),
    Algorithm("fastgradclip", "own", "instantiate", "second_backward", 2,
              "FastGradClip: instantiate layer by layer only for norms, second backward of Σ Cᵢ Lᵢ"),
    Algorithm("ghost", "own", "ghost", "second_backward", 2,
              "ghost norms on every layer that has one, second backward"),
    Algorithm("mixed_ghost", "own", "mixed", "second_backward", 2,
              "mixed ghost clipping: per layer ghost iff 2T² ≤ p·d, else instantiate; second backward"),
    Algorithm("bk_ghost", "own", "ghost", "bookkeeping", 1,
              "book-keeping: ghost norms, clipped sum from stored activations and output gradients"),
    Algorithm("bk_mixed", "own", "mixed", "bookkeeping", 1,
              "book-keeping with the mixed rule; instantiated layers reuse their per-sample gradients"),
]}
