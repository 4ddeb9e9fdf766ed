"""Issue 28: a run killed with SIGKILL in the middle of an epoch and resumed with `--resume latest` ends with the weights of
an uninterrupted run (to 1e-6 on CPU), as a user meets it: `memvlm train` in fresh processes, on a CSV of image files and on
webdataset shards and on a streamed hub set. Each run is a process of its own: one that ran other tests first may pick other kernels (1e-4 apart)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memvlm.data import get_dataset, write_digits_csv, write_hub_folder
from memvlm.engine import find_checkpoint

TINY = ['--vision-depth', '1', '--text-depth', '1', '--vision-width', '32', '--text-width', '32', '--embed-dim', '16',
        '--device', 'cpu', '--quiet', '--num-workers', '0']


def _popen(args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith('MEMVLM_')}
    exe = Path(sys.executable).with_name('memvlm')
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def train_fresh(args, cwd) -> str:
    "`memvlm train ARGS` in a process of its own, to its end; its output."
    p = _popen(['train', *args], cwd)
    out, err = p.communicate(timeout=900)
    assert p.returncode == 0, err.decode()[-3000:]
    return out.decode()


def _position(folder: Path):
    """(epochs done, batches into the next, its length) of the checkpoint in `folder`; None while there is none (or it is
    being swapped)."""
    try: state = json.loads((folder / 'trainer_state.json').read_text())
    except (OSError, ValueError): return None
    position = state.get('position') or {}
    return state['epoch'], position.get('batches', 0), position.get('epoch_batches', 0)


def kill_in_an_epoch(args, cwd, output: str) -> dict:
    """Start `memvlm train ARGS --output-dir OUTPUT` and SIGKILL it as soon as it has written a checkpoint in the first half
    of epoch 2 or a later one (far from the epoch's end, so that the kill lands inside the epoch)."""
    proc, last, deadline = _popen(['train', *args, '--output-dir', output], cwd), Path(cwd) / output / 'last', time.time() + 600
    try:
        while proc.poll() is None and time.time() < deadline:
            pos = _position(last)
            if pos and pos[0] >= 1 and 0 < pos[1] <= pos[2] // 2: break
            time.sleep(0.01)
        assert proc.poll() is None, f'the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}'
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    return json.loads((find_checkpoint(last) / 'trainer_state.json').read_text())


def assert_same_weights(a: Path, b: Path):
    x, y = load_file(str(a / 'last' / 'model.safetensors')), load_file(str(b / 'last' / 'model.safetensors'))
    assert x.keys() == y.keys()
    for k in x: assert torch.allclose(x[k], y[k], atol=1e-6, rtol=0), f'{k} differs by {(x[k] - y[k]).abs().max():.2e}'


def assert_same_steps(a: Path, b: Path):
    "Both runs logged the same optimiser steps with the same losses (the resumed run's redone steps replaced, not added)."
    rows = [[l.split(',') for l in (f / 'steps.csv').read_text().splitlines()] for f in (a, b)]
    col = rows[0][0].index('loss')
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
    for x, y in zip(rows[0][1:], rows[1][1:]): assert abs(float(x[col]) - float(y[col])) < 1e-6, (x, y)


def test_sigkill_in_an_epoch_of_a_csv_then_resume_matches_an_uninterrupted_run(tmp_path):
    "A CSV of PNG files, mid-epoch checkpoints every step: killed inside epoch 2, `--resume latest` goes on at the next step."
    csv = write_digits_csv(tmp_path / 'photos', per_class=20)
    args = ['--dataset', str(csv), '--epochs', '2', '--batch-size', '8', '--image-cache-mb', '0', *TINY]
    train_fresh([*args, '--output-dir', 'straight'], tmp_path)  # no mid-epoch checkpoints: they change nothing
    resumable = [*args, '--checkpoint-every-steps', '1', '--resume', 'latest']
    state = kill_in_an_epoch(resumable, tmp_path, 'killed')
    assert state['position']['batches'] > 0, state['position']  # killed inside an epoch, after a checkpoint there
    out = train_fresh([*resumable, '--output-dir', 'killed'], tmp_path)
    assert f"{state['position']['batches']} of {state['position']['epoch_batches']} batches into epoch {state['epoch'] + 1}" in out, out
    assert_same_weights(tmp_path / 'straight', tmp_path / 'killed')
    hist = json.loads((tmp_path / 'killed' / 'metrics.json').read_text())['history']
    assert [r['epoch'] for r in hist] == [1, 2]
    assert_same_steps(tmp_path / 'straight', tmp_path / 'killed')

def test_the_check_can_fail(tmp_path):
    "Two runs with other seeds end with other weights: `assert_same_weights` sees it."
    csv = write_digits_csv(tmp_path / 'photos', per_class=4)
    args = ['--dataset', str(csv), '--epochs', '1', '--batch-size', '8', *TINY]
    train_fresh([*args, '--output-dir', 'a'], tmp_path); train_fresh([*args, '--output-dir', 'b', '--seed', '1'], tmp_path)
    with pytest.raises(AssertionError, match='differs by'): assert_same_weights(tmp_path / 'a', tmp_path / 'b')


def write_shards_of_digits(folder: Path, per_class: int, shard_size: int) -> str:
    "A CSV of PNG files written as shards with `memvlm shards`, as a user does; the brace pattern of the shards."
    csv = write_digits_csv(folder / 'photos', per_class=per_class)
    p = _popen(['shards', '--dataset', str(csv), '--output', str(folder / 'shards'), '--shard-size', str(shard_size)], folder)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    return str(folder / 'shards' / json.loads((folder / 'shards' / 'manifest.json').read_text())['pattern'])


def test_sigkill_in_an_epoch_of_shards_then_resume_matches_an_uninterrupted_run(tmp_path):
    "Shards read by two loader workers, mid-epoch checkpoints every step: killed inside epoch 2, resumed, the same weights."
    pattern = write_shards_of_digits(tmp_path, per_class=20, shard_size=16)
    args = ['--dataset', pattern, '--epochs', '2', '--batch-size', '8', *TINY[:-2], '--num-workers', '2']
    train_fresh([*args, '--output-dir', 'straight'], tmp_path)
    resumable = [*args, '--checkpoint-every-steps', '1', '--resume', 'latest']
    state = kill_in_an_epoch(resumable, tmp_path, 'killed')
    assert state['position']['batches'] > 0 and state['position']['dataset']['workers'] == 2, state['position']
    shutil.copytree(find_checkpoint(tmp_path / 'killed' / 'last'), tmp_path / 'midway')
    out = train_fresh([*resumable, '--output-dir', 'killed'], tmp_path)
    assert f"{state['position']['batches']} of {state['position']['epoch_batches']} batches into epoch {state['epoch'] + 1}" in out, out
    assert_same_weights(tmp_path / 'straight', tmp_path / 'killed')
    assert_same_steps(tmp_path / 'straight', tmp_path / 'killed')
    # going on with another number of loader workers would read other batches: refused, saying why
    p = _popen(['train', *args[:-2], '--num-workers', '1', '--resume', str(tmp_path / 'midway'), '--output-dir', 'other'],
               tmp_path)
    _, err = p.communicate(timeout=600)
    assert p.returncode != 0 and b'workers 2 -> 1' in err, err[-1500:]

def test_sigkill_in_an_epoch_of_a_streamed_hub_set_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A hub set (a local folder of parquet files, as the hub holds them) streamed by two loader workers through torchdata's
    StatefulDataLoader, checkpoints every step: killed inside epoch 2, resumed, the same weights and steps after epoch 3."""
    csv = write_digits_csv(tmp_path / 'photos', per_class=20)
    hub = write_hub_folder(get_dataset(str(csv)), tmp_path / 'hub', files=4)
    args = ['--dataset', f'hf:{hub}', '--streaming', 'true', '--vocab', 'full', '--epochs', '3', '--batch-size', '8',
            *TINY[:-2], '--num-workers', '2']
    train_fresh([*args, '--output-dir', 'straight'], tmp_path)
    resumable = [*args, '--checkpoint-every-steps', '1', '--resume', 'latest']
    state = kill_in_an_epoch(resumable, tmp_path, 'killed')
    assert state['position']['batches'] > 0 and state['position']['loader'], state['position']
    out = train_fresh([*resumable, '--output-dir', 'killed'], tmp_path)
    assert f"{state['position']['batches']} of {state['position']['epoch_batches']} batches into epoch {state['epoch'] + 1}" in out, out
    assert_same_weights(tmp_path / 'straight', tmp_path / 'killed')
    assert_same_steps(tmp_path / 'straight', tmp_path / 'killed')

def test_ddp_two_gloo_processes_share_every_epoch_of_shards_out(tmp_path):
    "Two processes (torchrun, gloo) on shards: in each epoch every example goes to one process, the same number to each."
    pattern = write_shards_of_digits(tmp_path, per_class=10, shard_size=16)
    worker = str(Path(__file__).parent / 'ddp_shards_worker.py')
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', worker, pattern,
                    str(tmp_path / 'seen')], check=True, cwd=tmp_path, timeout=600)
    ranks = [json.loads((tmp_path / f'seen.{r}.json').read_text()) for r in range(2)]
    assert [r['world'] for r in ranks] == [2, 2]
    train = set(ranks[0]['train_keys'])
    for epoch in ('0', '1'):
        keys = [[k for batch in r['epochs'][epoch] for k in batch] for r in ranks]
        assert len(keys[0]) == len(keys[1]) == len(train) // 2 // 4 * 4, (len(keys[0]), len(keys[1]), len(train))  # batch 8 = 4 a process
        assert not set(keys[0]) & set(keys[1]) and all(len(set(k)) == len(k) for k in keys)  # each example to one process, once
        assert set(keys[0]) | set(keys[1]) <= train
    assert ranks[0]['epochs']['0'] != ranks[0]['epochs']['1']  # reshuffled each epoch
