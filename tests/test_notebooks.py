"""Run every notebook in nbs/ as a test, the way `nbdev_test` does, so pytest reports one result per notebook."""
import importlib.util
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook  # renamed so pytest does not collect it

import memvlm.models  # noqa: F401  the library's registry, every family in it, is what each chapter leaves behind
from memvlm import registry
from memvlm.encoders import open_clip_towers_supported

LIBRARY_REGISTRY = dict(registry.ARCHITECTURES), dict(registry.MODEL_CONFIGS)  # what importing memvlm.models registers


def _put_back(tables: tuple):
    for table, before in zip((registry.ARCHITECTURES, registry.MODEL_CONFIGS), tables): table.clear(); table.update(before)


NBS = Path(__file__).resolve().parent.parent / 'nbs'
# the quick start runs in tests/test_kaggle.py, top to bottom in a Kaggle-like image: not twice
NOTEBOOKS = sorted(p for p in NBS.rglob('*.ipynb') if not any(part.startswith(('.', '_')) for part in p.relative_to(NBS).parts)
                   and p.name != 'kaggle_quickstart.ipynb')


@pytest.mark.parametrize('notebook', NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook(notebook, monkeypatch):
    monkeypatch.setenv('MPLBACKEND', 'agg')
    skip_flags = get_config().tst_flags.split('|')  # cells marked slow, gpu or network are skipped, as nbdev_test does
    if not open_clip_towers_supported(): skip_flags.append('open_clip_towers')  # cells that build open_clip towers need open_clip >= 3.1
    if importlib.util.find_spec('transformers') is None: skip_flags.append('transformers')  # optional: seed 000's towers
    # a chapter run in this process registers its own copies of the architectures (07_models defines MemoryCLIP anew):
    # it starts from the library's registry alone (not from models other test modules registered, whose configs are
    # the library's classes), and the registry as it was is put back afterwards
    saved = dict(registry.ARCHITECTURES), dict(registry.MODEL_CONFIGS)
    _put_back(LIBRARY_REGISTRY)
    try: ok, _ = run_notebook(notebook, skip_flags=skip_flags, showerr=True)
    finally: _put_back(saved)
    assert ok, f'{notebook.name} failed; the traceback is printed above'
