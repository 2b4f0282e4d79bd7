"""Linear mode connectivity metrics: loss and accuracy barriers, interpolation curves, multi-model fusion, plots."""

from .barriers import (
    InterpolationCurve,
    MultiModelBarrier,
    accuracy_barrier,
    accuracy_barrier_terms,
    default_alphas,
    evaluate_interpolation,
    loss_barrier,
    loss_barrier_terms,
    multi_model_barrier,
)
from .evaluation import (
    Evaluation,
    average_state_dicts,
    clone_state_dict,
    evaluate_model,
    interpolate_state_dicts,
    mix_state_dicts,
)
from .plots import plot_interpolation_curves, plot_series

__all__ = [
    "Evaluation",
    "InterpolationCurve",
    "MultiModelBarrier",
    "accuracy_barrier",
    "accuracy_barrier_terms",
    "average_state_dicts",
    "clone_state_dict",
    "default_alphas",
    "evaluate_interpolation",
    "evaluate_model",
    "interpolate_state_dicts",
    "loss_barrier",
    "loss_barrier_terms",
    "mix_state_dicts",
    "multi_model_barrier",
    "plot_interpolation_curves",
    "plot_series",
]
