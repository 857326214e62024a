"""`lendstream.gc_tuning`: run in a child interpreter, since it changes the whole process."""

from __future__ import annotations

import subprocess
import sys

from lendstream.gc_tuning import THRESHOLDS


def test_tune_gc_raises_the_thresholds_and_freezes_what_exists() -> None:
    code = (
        "import gc\n"
        "from lendstream.gc_tuning import tune_gc\n"
        "tune_gc()\n"
        "print(gc.get_threshold(), gc.get_freeze_count() > 1000)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == f"{THRESHOLDS} True"
