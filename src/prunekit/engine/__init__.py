"""Layer-sequential calibration engine."""

from .layerwise import BlockInputs, BlockLocator, capture_block_inputs, run_layerwise
from .stats import STATS_DTYPE, LayerStats, Stat, StatCollector, StatsComplete
from .targets import ExpertSlice, prunable_in, weight_of, write_weight

__all__ = [
    "STATS_DTYPE",
    "BlockInputs",
    "BlockLocator",
    "ExpertSlice",
    "LayerStats",
    "Stat",
    "StatCollector",
    "StatsComplete",
    "capture_block_inputs",
    "prunable_in",
    "run_layerwise",
    "weight_of",
    "write_weight",
]
