"""The one stratified sampler: the bundled targets' fixed test splits and every labels_per_class subset."""

from __future__ import annotations

from collections.abc import Mapping

import torch


# Not scikit-learn's StratifiedShuffleSplit: these draws are the bundled targets' published splits, kept stable.
def stratified_sample(labels: torch.Tensor, counts: Mapping[int, int], generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of `counts[c]` randomly chosen examples of each class c.

    Args:
        labels: (N,) int64 class labels.
        counts: class -> how many of it to take (at most its count).
        generator: draws one permutation of all N examples; each class takes its first counts[c].
    """
    order = torch.randperm(len(labels), generator=generator)
    picked = [order[labels[order] == c][:k] for c, k in counts.items()]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.int64)
