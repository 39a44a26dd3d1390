"""Datasets and image preprocessing."""

from utils.datasets.dataset_megadepth import ImMatchDatasetMega

__all__ = ["ImMatchDatasetMega"]
