"""Interactive widgets that work without a kernel.

Each widget is an ``anywidget`` whose JavaScript computes and draws from the widget's state, so it
responds in JupyterLab, on Colab and in the static site alike. Python only sets that state.
"""

from companion.widgets.attention_explorer import AttentionExplorer, display_token, top_attended
from companion.widgets.mask_explorer import MaskExplorer, describe_query, mask_matrix
from companion.widgets.sequence_cost import SequenceCost, sequence_costs

__all__ = ["AttentionExplorer", "MaskExplorer", "SequenceCost", "describe_query", "display_token", "mask_matrix",
           "sequence_costs", "top_attended"]
