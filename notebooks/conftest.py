"""Notebooks run by pytest (nbmake) get the test suite's environment: nbmake's kernels
inherit this process's environment variables, which tests/conftest.py sets (8 simulated
CPU devices, the shared compilation cache). Loaded here too so that `pytest
notebooks/<name>.ipynb` alone behaves as the whole suite does."""

import os
import runpy

runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "conftest.py")
)
