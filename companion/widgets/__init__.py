"""Interactive widgets that work without a kernel.

Each widget is an ``anywidget`` whose JavaScript computes and draws from the widget's state, so it
responds in JupyterLab, on Colab and in the static site alike. Python only sets that state.
"""

from companion.widgets.attention_explorer import AttentionExplorer, display_token, top_attended
from companion.widgets.course_map import CourseMap, dependents, drawn_edges, map_layout, prerequisites
from companion.widgets.flash_stepper import FlashStepper, online_softmax_steps, softmax_attention
from companion.widgets.kv_cache import KVCacheCalculator, kv_bytes_per_token, kv_cache_bytes, tokens_that_fit
from companion.widgets.mask_explorer import MaskExplorer, describe_query, mask_matrix
from companion.widgets.patchify_explorer import (PatchifyExplorer, attention_entries, patch_grid, patchify,
                                                 sequence_length)
from companion.widgets.rope_dial import RopeDial, rope_angles
from companion.widgets.routing_view import RoutingView, expert_load
from companion.widgets.selective_memory import SelectiveMemory, memory_horizon, step_sizes, survival
from companion.widgets.sequence_cost import SequenceCost, sequence_costs

__all__ = ["AttentionExplorer", "CourseMap", "FlashStepper", "KVCacheCalculator", "MaskExplorer", "PatchifyExplorer",
           "RopeDial", "RoutingView", "SelectiveMemory", "SequenceCost", "attention_entries", "dependents",
           "describe_query", "display_token", "drawn_edges", "expert_load", "kv_bytes_per_token", "kv_cache_bytes",
           "map_layout", "mask_matrix", "memory_horizon", "online_softmax_steps", "patch_grid", "patchify",
           "prerequisites", "rope_angles", "sequence_costs", "sequence_length", "softmax_attention", "step_sizes",
           "survival", "tokens_that_fit", "top_attended"]
