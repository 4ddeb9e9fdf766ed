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


@pytest.fixture(autouse=True)
def torch_global_state():
    """Notebooks run in this process (tests/test_notebooks.py) and may switch torch's global modes, as a user's notebook
    does (`torch.set_grad_enabled(False)`): restore them after each test so later tests start from torch's defaults."""
    import torch
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    yield
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
