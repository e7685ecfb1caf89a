"""Intensities matched to the template inside the brain: a piecewise-linear map between intensity
landmarks (Nyúl & Udupa 2000, "New variants of a method of MRI scale standardization"): the
conformed scan's 1st, 10th, 20th, ..., 90th and 99th percentiles within the brain go to the
template's, linearly in between, so white matter, grey matter and CSF land where OASIS puts them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PERCENTILES = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


class Landmarks(NamedTuple):
    source: list[float]  # the scan's percentiles within the brain
    target: list[float]  # the template's


def landmarks(scan: np.ndarray, template: np.ndarray, brain: np.ndarray) -> Landmarks:
    source = np.percentile(scan[brain], PERCENTILES)
    target = np.percentile(template[brain], PERCENTILES)
    return Landmarks([float(v) for v in source], [float(v) for v in target])


def apply(scan: np.ndarray, marks: Landmarks) -> np.ndarray:
    """The piecewise-linear map, extended linearly beyond the outer landmarks, clipped to [0, 1]."""
    source = np.maximum.accumulate(np.asarray(marks.source))  # monotone, so the map is a function
    source = source + np.arange(len(source)) * 1e-6  # strictly increasing for np.interp
    target = np.asarray(marks.target)
    mapped = np.interp(scan, source, target)
    low_slope = (target[1] - target[0]) / (source[1] - source[0])
    high_slope = (target[-1] - target[-2]) / (source[-1] - source[-2])
    mapped = np.where(scan < source[0], target[0] + (scan - source[0]) * low_slope, mapped)
    mapped = np.where(scan > source[-1], target[-1] + (scan - source[-1]) * high_slope, mapped)
    return np.clip(mapped, 0.0, 1.0).astype(np.float32)
