"Acceptance tests of the training engine (issue 5): accumulation, exact resume, DDP equivalence, bf16 on CPU, options reachable."
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from memvlm.config import ConfigError, RunConfig, TrainConfig, apply_env, seed_everything
from memvlm.losses import cross_entropy
from memvlm.engine import find_checkpoint
from memvlm.training import Trainer, TrainingDiverged

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import pairs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Out:
    logits: torch.Tensor


class Classifier(nn.Module):
    "A model whose loss is a per-sample mean, so N micro-batches must give exactly the gradient of their union."
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    batch_inputs = ('image',)
    def forward(self, image): return Out(self.net(image))


def ce_loss(out, batch):
    "The Classifier's judge: the cross-entropy of its logits against the batch's labels."
    return cross_entropy(out.logits, batch['label']), {}


def labelled(n=32):
    return [{**p, 'label': i % 4} for i, p in enumerate(pairs(n))]


class GradRecorder:
    "Keeps a copy of the gradient of every optimiser step."
    def __init__(self): self.grads = []
    def on_fit_start(self, trainer):
        trainer.optimizer.register_step_pre_hook(lambda opt, *a: self.grads.append(
            [p.grad.clone() for g in opt.param_groups for p in g['params'] if p.grad is not None]))


def _grads(batch_size, accumulation):
    torch.manual_seed(0)
    model = Classifier()
    loader = torch.utils.data.DataLoader(labelled(32), batch_size=batch_size, shuffle=False)
    rec = GradRecorder()
    Trainer(model, loader, None, TrainConfig(epochs=1, device='cpu', accumulation_steps=accumulation, grad_clip=0.0),
            loss_fn=ce_loss, monitor='train_loss', progress=False, callbacks=[rec]).fit()
    return rec.grads


def test_accumulation_matches_one_big_batch():
    big, micro = _grads(16, 1), _grads(8, 2)  # 2 optimiser steps either way
    assert len(big) == len(micro) == 2
    for gb, gm in zip(big[0], micro[0]): torch.testing.assert_close(gm, gb, rtol=1e-5, atol=1e-7)
    assert any((g != 0).any() for g in big[0])
    # and the check can fail: one micro-batch alone is not the big batch's gradient
    alone = _grads(8, 1)
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(alone[0], big[0]))


class StopAfter:
    def __init__(self, epochs): self.epochs = epochs
    def on_epoch_end(self, trainer, record): trainer.should_stop = trainer.epoch >= self.epochs


def _clip_run(folder, resume=False, stop_after=None, **cfg):
    from ddp_worker import main as _  # noqa: F401 (same tiny model as the DDP test)
    from memvlm.models import create_model
    seed_everything(0)
    model = create_model('memclip-tiny', image_size=16, patch_size=4, vocab_size=20, context_length=8, vision_width=32, vision_depth=1,
                         vision_heads=2, text_width=32, text_depth=1, text_heads=2, embed_dim=16, memory_tokens=2)
    loader = torch.utils.data.DataLoader(pairs(32), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)
    trainer = Trainer(model, loader, None, TrainConfig(epochs=2, device='cpu', resume=resume, **cfg), monitor='train_loss',
                      output_dir=folder, progress=False, callbacks=[StopAfter(stop_after)] if stop_after else [])
    trainer.fit()
    return model, trainer


@pytest.mark.parametrize('cfg', [{}, {'schedule': 'plateau', 'accumulation_steps': 2}])
def test_resume_gives_identical_weights(tmp_path, cfg):
    straight, _ = _clip_run(tmp_path / 'a', **cfg)
    _clip_run(tmp_path / 'b', stop_after=1, **cfg)
    assert json.loads((tmp_path / 'b' / 'last' / 'trainer_state.json').read_text())['epoch'] == 1
    resumed, trainer = _clip_run(tmp_path / 'b', resume=True, **cfg)
    assert trainer.resumed and [r['epoch'] for r in trainer.history] == [1, 2]
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), f'{name} differs after resume'
    assert len((tmp_path / 'b' / 'steps.csv').read_text().splitlines()) == 1 + 8 // cfg.get('accumulation_steps', 1)  # both halves, one header


def test_resume_takes_latest_or_a_checkpoint_path(tmp_path):
    "`latest` is the output folder's `last`; a checkpoint folder, or any file in it, can also be named (e.g. a copy moved elsewhere)."
    import shutil
    straight, _ = _clip_run(tmp_path / 'a')
    _clip_run(tmp_path / 'b', stop_after=1)
    shutil.copytree(tmp_path / 'b' / 'last', tmp_path / 'saved')
    for resume, folder in (('latest', 'b'), (str(tmp_path / 'saved' / 'model.safetensors'), 'c')):
        resumed, trainer = _clip_run(tmp_path / folder, resume=resume)
        assert trainer.resumed and [r['epoch'] for r in trainer.history][-1] == 2, resume
        for (name, p), q in zip(straight.named_parameters(), resumed.parameters()): assert torch.equal(p, q), (resume, name)
    assert not _clip_run(tmp_path / 'd', resume='false')[1].resumed
    from memvlm.config import RunConfig, update_config
    assert update_config(RunConfig(), {'train': {'resume': True}}).train.resume == 'true'  # YAML's `resume: true`


def test_resume_latest_on_a_first_run_starts_afresh_and_says_so(tmp_path, capsys):
    "`latest` with no checkpoint yet: a first run (one notebook cell for the first start and every restart), said in a line."
    straight, _ = _clip_run(tmp_path / 'a')
    first, trainer = _clip_run(tmp_path / 'empty', resume=True)
    assert not trainer.resumed and [r['epoch'] for r in trainer.history] == [1, 2]
    assert f"resume=True: no checkpoint in {tmp_path / 'empty' / 'last'} yet, so training starts afresh" in capsys.readouterr().out
    for (name, p), q in zip(straight.named_parameters(), first.parameters()): assert torch.equal(p, q), name


def test_resume_from_a_missing_or_broken_checkpoint_fails(tmp_path):
    "A folder named by path must hold a checkpoint; a `last/` that exists but is incomplete is not a first run either."
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        _clip_run(tmp_path / 'empty', resume=str(tmp_path / 'nowhere'))
    (tmp_path / 'broken' / 'last').mkdir(parents=True)
    (tmp_path / 'broken' / 'last' / 'trainer_state.json').write_text('{}')  # its weights never written
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        _clip_run(tmp_path / 'broken', resume='latest')


def test_ddp_two_processes_match_one(tmp_path):
    worker = str(REPO / 'tests' / 'ddp_worker.py')
    subprocess.run([sys.executable, worker, str(tmp_path / 'one.json')], check=True, cwd=REPO, timeout=300)
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', worker, str(tmp_path / 'two.json')],
                   check=True, cwd=REPO, timeout=300)
    one, two = (json.loads((tmp_path / f).read_text()) for f in ('one.json', 'two.json'))
    assert (one['world'], two['world']) == (1, 2) and len(one['losses']) == len(two['losses']) == 8
    for a, b in zip(one['losses'], two['losses']): assert abs(a - b) < 1e-5, (one['losses'], two['losses'])
    assert abs(one['checksum'] - two['checksum']) < 1e-4


def test_bf16_autocast_on_cpu():
    seen = []
    def loss_fn(out, batch):
        seen.append((torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')))
        seen.append(out.logits.dtype)
        return ce_loss(out, batch)
    loader = torch.utils.data.DataLoader(labelled(16), batch_size=8)
    hist = Trainer(Classifier(), loader, None, TrainConfig(epochs=1, device='cpu', precision='bf16'), loss_fn=loss_fn,
                   monitor='train_loss', progress=False).fit()
    assert seen[0] == (True, torch.bfloat16) and seen[1] == torch.bfloat16
    assert math.isfinite(hist[-1]['train_loss'])


def test_nan_steps_stop_the_run_and_keep_the_checkpoint(tmp_path):
    class Poison:
        def on_epoch_end(self, trainer, record): trainer.model.poison = True
    model = Classifier()
    def loss_fn(out, batch):
        loss, _ = ce_loss(out, batch)
        return (loss * float('inf') if getattr(model, 'poison', False) else loss), {}
    loader = torch.utils.data.DataLoader(labelled(32), batch_size=8)
    t = Trainer(model, loader, None, TrainConfig(epochs=5, device='cpu', max_bad_steps=2), loss_fn=loss_fn, monitor='train_loss',
                output_dir=tmp_path, progress=False, callbacks=[Poison()])
    with pytest.raises(TrainingDiverged, match='2 optimiser steps in a row'):
        t.fit()
    last = find_checkpoint(tmp_path / 'last')
    assert last is not None and json.loads((last / 'trainer_state.json').read_text())['epoch'] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_tensorboard_logger_and_freezing(tmp_path):
    model = Classifier()
    loader = torch.utils.data.DataLoader(labelled(16), batch_size=8)
    before = model.net[1].weight.detach().clone()
    Trainer(model, loader, None, TrainConfig(epochs=1, device='cpu', logger='tensorboard', freeze='net.1'), loss_fn=ce_loss,
            monitor='train_loss', output_dir=tmp_path, progress=False).fit()
    assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
    assert torch.equal(model.net[1].weight, before) and not model.net[4].weight.equal(Classifier().net[4].weight)


def test_every_option_reachable_from_env():
    cfg = apply_env(RunConfig(), {'MEMVLM_SCHEDULE': 'linear', 'MEMVLM_ACCUMULATION_STEPS': '4', 'MEMVLM_LOGGER': 'tensorboard',
                                  'MEMVLM_DOUBLE_LOOP': 'true', 'MEMVLM_FREEZE': 'visual,memory', 'MEMVLM_MAX_BAD_STEPS': '3'})
    t = cfg.train
    assert (t.schedule, t.accumulation_steps, t.logger, t.double_loop, t.freeze, t.max_bad_steps) == ('linear', 4, 'tensorboard', True, 'visual,memory', 3)
    with pytest.raises(ConfigError, match='cosine'):
        apply_env(RunConfig(), {'MEMVLM_SCHEDULE': 'step'})
    with pytest.raises(ConfigError, match='MEMVLM_ACCUMULATION_STEPS'):
        apply_env(RunConfig(), {'MEMVLM_ACCUMULATION_STEPS': '0'})
