"""The package as a user imports it: the Python API's names, and its version."""

from __future__ import annotations

import subprocess
import sys


def test_the_sampling_module_is_not_shadowed_by_the_sample_function() -> None:
    """`import brainvq` keeps every module the README names reachable: `brainvq.sample` is the function,
    `brainvq.sampling` the module (issue 35, item 9: `brainvq.sample.resample_codes` was an AttributeError)."""
    code = (
        "import brainvq; "
        "assert callable(brainvq.sample) and brainvq.sample is brainvq.sampling.sample; "
        "assert callable(brainvq.sampling.resample_codes) and callable(brainvq.sampling.nucleus); "
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
