"""Figures for the notebooks, built with matplotlib's object API, by topic: :mod:`.training`,
:mod:`.optimizers`, :mod:`.gradients`, :mod:`.serving`, :mod:`.explanations`,
:mod:`.language_models`, and what they share (:mod:`.figures`). (Live dashboards draw their curves as SVG
with ``maaskit.widgets.svgchart``.)

Every function returns a ``matplotlib.figure.Figure`` and touches no pyplot state, so
figures never pile up across cells, work the same under papermill and in scripts, and
can be saved with ``fig.savefig(...)``. In a notebook, a returned figure is displayed: importing
this package calls :func:`show_figures_in_ipython` once (it does nothing outside IPython).
"""

from __future__ import annotations

from .explanations import attributions, deletion_curves, projection
from .figures import ArrayLike, FigureLike, as_array, function_grid, log_curve, png_bytes, show_figures_in_ipython
from .gradients import gradient_inspection
from .language_models import loss_and_perplexity
from .optimizers import convergence, optimizer_paths
from .serving import latency_histogram, prediction
from .training import confusion_matrix, history, image_grid

__all__ = [
    "ArrayLike",
    "FigureLike",
    "as_array",
    "attributions",
    "deletion_curves",
    "confusion_matrix",
    "convergence",
    "function_grid",
    "gradient_inspection",
    "history",
    "image_grid",
    "latency_histogram",
    "log_curve",
    "loss_and_perplexity",
    "optimizer_paths",
    "png_bytes",
    "prediction",
    "projection",
    "show_figures_in_ipython",
]

show_figures_in_ipython()
