import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def memvlm_script(tmp_path):
    """Run the `memvlm` console script in a fresh process, in a clean environment (no MEMVLM_* from the caller), and
    return the result: what a user's terminal does."""
    def run(*args, env=None, timeout=600):
        base = {k: v for k, v in os.environ.items() if not k.startswith('MEMVLM_')}
        exe = Path(sys.executable).with_name('memvlm')
        return subprocess.run([str(exe), *args], cwd=tmp_path, env={**base, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    return run


@pytest.fixture
def memvlm_cli(tmp_path, monkeypatch):
    """Run `memvlm ARGS` as the console script would (`memvlm.cli.main`, the exit status, stdout and stderr), but in
    this process: the same environment rules (no MEMVLM_* from the caller, `env` added) and working folder, without
    paying torch's import for every command. `memvlm_script` runs the real console script."""
    import contextlib
    import io
    from memvlm.cli import main
    def run(*args, env=None, timeout=None):
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as m:
            for k in [k for k in os.environ if k.startswith('MEMVLM_')]: m.delenv(k)
            for k, v in (env or {}).items(): m.setenv(k, v)
            m.chdir(tmp_path)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try: code = main(list(args))
                except SystemExit as e: code = e.code if isinstance(e.code, int) else 1  # argparse's --help and errors
        return subprocess.CompletedProcess(['memvlm', *args], code, out.getvalue(), err.getvalue())
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


@pytest.fixture(scope='session')
def tiny_open_clip():
    """A function that registers a tiny open_clip ViT called `name` with open_clip (its config written to `folder`) and
    saves random weights for it (seed 0, open_clip's layout) to `folder/<name>.pt`, which it returns: the stand-in for
    the hub's models in every test of pretrained towers."""
    def make(folder, name: str, text_width: int = 64, vision_width: int = 64, layers: int = 2, text_heads: int = 2):
        import json
        import open_clip
        import torch
        config = {'embed_dim': 32,
                  'vision_cfg': {'image_size': 32, 'layers': layers, 'width': vision_width, 'patch_size': 8,
                                 'head_width': 32},
                  'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': text_width, 'heads': text_heads,
                               'layers': layers}}
        folder = Path(folder)
        (folder / f'{name}.json').write_text(json.dumps(config))
        open_clip.add_model_config(str(folder / f'{name}.json'))
        torch.manual_seed(0)
        torch.save(open_clip.create_model(name).state_dict(), folder / f'{name}.pt')
        return folder / f'{name}.pt'
    return make
