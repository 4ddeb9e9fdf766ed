import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def memvlm_cli(tmp_path):
    """Run the `memvlm` console script in a clean environment (no MEMVLM_* from the caller) and return the result."""
    def run(*args, env=None, timeout=600):
        base = {k: v for k, v in os.environ.items() if not k.startswith('MEMVLM_')}
        exe = Path(sys.executable).with_name('memvlm')
        return subprocess.run([str(exe), *args], cwd=tmp_path, env={**base, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    return run
