"""End-to-end checks of `memvlm train`: a tiny training budget, environment variables, YAML files, bad values."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memvlm.config import RunConfig, load_config, save_config, update_config
from memvlm.models import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--vision-depth', '1', '--text-depth', '1', '--quiet']


def test_train_tiny_budget_writes_the_report(memvlm_cli, tmp_path):
    r = memvlm_cli('train', '--epochs', '2', '--output-dir', 'out', *TINY)
    assert r.returncode == 0, r.stderr
    out = tmp_path / 'out'
    for name in ('best/model.safetensors', 'last/model.safetensors', 'metrics.json', 'history.csv', 'curves.png', 'config.yaml'):
        assert (out / name).is_file(), name
    metrics = json.loads((out / 'metrics.json').read_text())
    assert len(metrics['history']) == 2 and metrics['dataset'] == 'digits-captions'
    assert 0 <= metrics['test_zero_shot_acc'] <= 1 and 0 <= metrics['test_i2t_r1'] <= 1
    assert 'zero_shot_acc' in r.stdout and 'test split of digits-captions' in r.stdout
    assert load_checkpoint(out / 'best').tokenizer.vocab_size == load_checkpoint(out / 'best').model.config.vocab_size


def test_env_variables_change_the_run(memvlm_cli, tmp_path):
    env = {'MEMVLM_EPOCHS': '1', 'MEMVLM_MEMORY_TOKENS': '2', 'MEMVLM_EMBED_DIM': '32', 'MEMVLM_OUTPUT_DIR': 'envrun'}
    r = memvlm_cli('train', *TINY, env=env)
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(tmp_path / 'envrun' / 'best')
    assert (ck.model.config.memory_tokens, ck.model.config.embed_dim) == (2, 32)
    assert len(json.loads((tmp_path / 'envrun' / 'metrics.json').read_text())['history']) == 1
    assert load_config(tmp_path / 'envrun' / 'config.yaml').train.epochs == 1


def test_flags_beat_env_and_env_beats_yaml(memvlm_cli, tmp_path):
    (tmp_path / 'run.yaml').write_text(yaml.safe_dump({'train': {'epochs': 3, 'batch_size': 64}, 'model': {'memory_tokens': 1}}))
    env = {'MEMVLM_CONFIG': 'run.yaml', 'MEMVLM_EPOCHS': '2', 'MEMVLM_OUTPUT_DIR': 'layered'}
    r = memvlm_cli('train', '--epochs', '1', *TINY, env=env)
    assert r.returncode == 0, r.stderr
    cfg = load_config(tmp_path / 'layered' / 'config.yaml')
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.memory_tokens) == (1, 64, 1)


def test_yaml_round_trip(tmp_path):
    cfg = update_config(RunConfig(), {'epochs': 4, 'precision': 'bf16', 'memory_tokens': 0, 'augment': True, 'dataset': 'x.csv'})
    assert load_config(save_config(cfg, tmp_path / 'c.yaml')) == cfg
    assert load_config(save_config(RunConfig(), tmp_path / 'd.yaml')) == RunConfig()


def test_bad_variables_are_named_with_accepted_values(memvlm_cli):
    r = memvlm_cli('train', env={'MEMVLM_EPOCHS': 'abc', 'MEMVLM_PRECISION': 'fp8'})
    assert r.returncode == 2
    assert "MEMVLM_EPOCHS='abc' is not valid for train.epochs: expected an integer ≥ 1" in r.stderr
    assert "MEMVLM_PRECISION='fp8' is not valid for train.precision: expected fp32, bf16, fp16" in r.stderr
    assert 'Traceback' not in r.stderr


def test_bad_flag_and_yaml_key(memvlm_cli, tmp_path):
    r = memvlm_cli('train', '--batch-size', '-3')
    assert r.returncode == 2 and "--batch-size='-3' is not valid for train.batch_size: expected an integer ≥ 2" in r.stderr
    (tmp_path / 'bad.yaml').write_text('train: {epochz: 3}\n')
    r = memvlm_cli('train', '--config', 'bad.yaml')
    assert r.returncode == 2 and "unknown option 'train.epochz'" in r.stderr


def test_shards_of_the_shipped_sample_then_train_from_them(memvlm_cli, tmp_path):
    "Issue 28's acceptance, as from a fresh clone: `memvlm shards` of data/sample, then `memvlm train` on the brace pattern."
    import shutil
    shutil.copytree(ROOT / 'data', tmp_path / 'data')
    r = memvlm_cli('shards', '--dataset', 'data/sample/captions.csv', '--output', 'shards', '--shard-size', '16')
    assert r.returncode == 0, r.stderr
    assert "60 examples of captions (train 42, validation 6, test 12) in 4 shards of up to 16: shards/{000000..000003}.tar" in r.stdout
    r = memvlm_cli('train', '--dataset', 'shards/{000000..000003}.tar', '--epochs', '2', *TINY)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / 'runs' / 'memclip-tiny-shards' / 'metrics.json').read_text())
    assert [h['epoch'] for h in metrics['history']] == [1, 2] and metrics['dataset'] == 'captions'
    assert 'train streamed: ShardStream(' in r.stdout and 'test split of captions' in r.stdout
    r = memvlm_cli('shards', '--dataset', 'data/sample/captions.csv', '--output', 'shards')
    assert r.returncode == 2 and 'holds shards already' in r.stderr and 'Traceback' not in r.stderr


def test_trains_on_the_shipped_csv_sample(memvlm_cli, tmp_path):
    r = memvlm_cli('train', '--dataset', str(ROOT / 'data' / 'sample' / 'captions.csv'), '--epochs', '1',
                   '--batch-size', '16', '--output-dir', 'csv', *TINY)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / 'csv' / 'metrics.json').read_text())
    assert metrics['dataset'] == 'captions' and 'test_zero_shot_acc' in metrics


def test_unknown_dataset_and_help(memvlm_script, memvlm_cli):
    """The installed console script itself answers (its help); its errors come from the same `main` the other tests
    call in-process, so one process start (torch's import: seconds) is enough."""
    r = memvlm_script('train', '--help')
    assert r.returncode == 0 and 'MEMVLM_MEMORY_TOKENS' in r.stdout
    r = memvlm_cli('train', '--dataset', 'no-such-set')
    assert r.returncode == 2 and "unknown dataset 'no-such-set'" in r.stderr


@pytest.mark.parametrize('args', [['--help'], ['train', '--help'], ['eval', '--help']])
def test_help_answers_without_loading_torch(args):
    "`memvlm --help` parses and prints from the options alone: no torch, timm, torchvision or datasets (a second saved)."
    probe = (f'import sys\nfrom memvlm.cli import main\ntry: main({args!r})\nexcept SystemExit: pass\n'
             "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True, timeout=60)
    assert 'usage: memvlm' in out.stdout and out.stdout.splitlines()[-1] == '[]', out.stdout[-300:]
