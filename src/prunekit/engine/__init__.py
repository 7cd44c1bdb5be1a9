"""Layer-sequential calibration engine."""

from .layerwise import BlockInputs, capture_block_inputs, run_layerwise
from .stats import STATS_DTYPE, LayerStats, Stat, StatCollector, StatsComplete

__all__ = [
    "STATS_DTYPE",
    "BlockInputs",
    "LayerStats",
    "Stat",
    "StatCollector",
    "StatsComplete",
    "capture_block_inputs",
    "run_layerwise",
]
