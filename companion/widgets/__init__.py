"""Interactive widgets that work without a kernel.

Each widget is an ``anywidget`` whose JavaScript computes and draws from the widget's state, so it
responds in JupyterLab, on Colab and in the static site alike. Python only sets that state.
"""

from companion.widgets.sequence_cost import SequenceCost, sequence_costs

__all__ = ["SequenceCost", "sequence_costs"]
