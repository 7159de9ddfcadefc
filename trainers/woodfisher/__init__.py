"""WoodFisher: second-order (OBS) pruning with a blockwise inverse empirical Fisher.

``fisher`` estimates and inverts the Fisher, ``obs`` prunes single weights (and the magnitude
and diagonal-Fisher baselines), ``group_obs`` prunes whole zero-invariant groups so the result
shrinks (to a group sparsity, or with ``macs`` to a MAC budget), ``schedule`` runs gradual
pruning. See DESIGN.md section 5.
"""

from trainers.woodfisher.fisher import (
    BlockFisher,
    BlockLayout,
    FisherOptions,
    collect_gradients,
    fisher_memory,
    inverse_fisher,
    inverse_fisher_rank1,
)
from trainers.woodfisher.group_obs import GROUP_CRITERIA, GroupOBS, prune_groups, zig_axes
from trainers.woodfisher.macs import MacCounter, MacTarget
from trainers.woodfisher.obs import (
    CRITERIA,
    apply_masks,
    diagonal_fisher,
    obs_update,
    prune_unstructured,
    saliencies,
    select,
)
from trainers.woodfisher.schedule import CubicSchedule, GradualPruner

__all__ = ["CRITERIA", "GROUP_CRITERIA", "BlockFisher", "BlockLayout", "CubicSchedule",
           "FisherOptions", "GradualPruner", "GroupOBS", "MacCounter", "MacTarget", "apply_masks",
           "collect_gradients",
           "diagonal_fisher", "fisher_memory", "inverse_fisher", "inverse_fisher_rank1",
           "obs_update", "prune_groups", "prune_unstructured", "saliencies", "select",
           "zig_axes"]
