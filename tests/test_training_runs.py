"""In-process training runs: the same seed gives the same run, and bf16 autocast trains on the CPU."""
import math

import pytest
import torch

from memvlm.recipes import train
from memvlm.config import RunConfig, update_config

TINY = {'epochs': 2, 'vision_depth': 1, 'text_depth': 1, 'device': 'cpu'}


def tiny_run(tmp_path, **options):
    cfg = update_config(RunConfig(), {**TINY, 'output_dir': str(tmp_path), **options})
    return train(cfg, progress=False)


def test_same_seed_same_run(tmp_path):
    a, b = tiny_run(tmp_path / 'a'), tiny_run(tmp_path / 'b')
    c = tiny_run(tmp_path / 'c', seed=1)
    losses = lambda m: [r['train_loss'] for r in m['history']]
    assert losses(a) == losses(b) and a['test_zero_shot_acc'] == b['test_zero_shot_acc']
    assert losses(a) != losses(c)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    m = tiny_run(tmp_path, precision='bf16', epochs=1)
    assert math.isfinite(m['history'][-1]['train_loss']) and math.isfinite(m['history'][-1]['val_loss'])


@pytest.mark.skipif(torch.cuda.is_available(), reason='fp16 runs where there is a CUDA GPU')
def test_fp16_without_gpu_fails_before_training(tmp_path):
    with pytest.raises(RuntimeError, match='fp16 needs a CUDA GPU'):
        tiny_run(tmp_path, precision='fp16')
    assert not (tmp_path / 'history.csv').exists()
