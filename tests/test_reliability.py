"""Reliability and security (issue 10): messy images and captions, bad options, crashes mid-run, non-finite steps, unwritable
or full disks and untrusted files never lose work. Everything goes through the path a user takes (a CSV through `get_dataset`
and the DataLoader, `memvlm train`), on tiny models; `memorize()`'s input errors are covered in test_memory.py."""
import io
import json
import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from memvlm.cli import main
from memvlm.config import ConfigError, TrainConfig
from memvlm.data import (BadImageError, CaptionTokenizer, ImageTextDataset, get_dataset, image_transform, make_loader, open_image,
                         resolve_in_root)
from memvlm.models import create_model, load_checkpoint, save_checkpoint
from memvlm.engine import find_checkpoint
from memvlm.registry import atomic_folder
from memvlm.training import Trainer, TrainingDiverged

TINY = ['--vision-depth', '1', '--text-depth', '1', '--vision-width', '32', '--text-width', '32', '--embed-dim', '16',
        '--device', 'cpu', '--quiet']
SECRET = 'wandb-secret-7f3a9c0d1e2b'  # planted as WANDB_API_KEY: must never reach a file memvlm writes


@pytest.fixture
def clean_env(monkeypatch):
    "No MEMVLM_* from the caller in this process (for `main()` run in-process)."
    for k in [k for k in os.environ if k.startswith('MEMVLM_')]: monkeypatch.delenv(k)
    return monkeypatch


# --- images and captions -------------------------------------------------------------------------------------------------
def _rgb(h=24, w=16, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def write_messy_csv(folder: Path, huge: bool = False) -> dict:
    "Every kind of image and caption memvlm should convert, skip or refuse; returns what each row should become."
    rgb = _rgb()
    pal = rgb.convert('P'); pal.info['transparency'] = 0
    good = {'rgb.png': rgb, 'grey.png': rgb.convert('L'), 'rgba.png': rgb.convert('RGBA'), 'la.png': rgb.convert('LA'),
            'palette.png': rgb.convert('P'), 'palette_alpha.png': pal, 'cmyk.jpg': rgb.convert('CMYK'),
            'deep16.png': Image.fromarray(np.random.default_rng(1).integers(0, 65535, (24, 16), dtype=np.uint16)),
            'bilevel.png': rgb.convert('1'), 'one_pixel.png': Image.new('RGB', (1, 1), (200, 10, 10)),
            'float.tif': Image.fromarray(np.random.default_rng(2).random((24, 16), dtype=np.float32), mode='F')}
    for name, im in good.items(): im.save(folder / name)
    exif = Image.Exif(); exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rgb.save(folder / 'exif_rotated.jpg', exif=exif); good['exif_rotated.jpg'] = None
    if huge:  # 10,000 × 10,000: a constant colour is ~120 kB on disk, 100 M pixels decoded (exactly max_image_pixels' default)
        Image.new('L', (10_000, 10_000), 90).save(folder / 'huge.png'); good['huge.png'] = None
    (folder / 'zero.png').write_bytes(b'')
    (folder / 'truncated.png').write_bytes((folder / 'rgb.png').read_bytes()[:120])
    (folder / 'not_an_image.jpg').write_bytes(b'this is text, not a JPEG\n' * 10)
    corrupt = bytearray((folder / 'rgb.png').read_bytes()); corrupt[60:90] = b'\0' * 30
    (folder / 'corrupt.png').write_bytes(bytes(corrupt))
    bad_images = ['zero.png', 'truncated.png', 'not_an_image.jpg', 'corrupt.png', 'missing.png']
    captions = ['a red picture 🍎🚀', 'x ' * 400 + 'longer than any context', 'ordinary caption', 'ÜBER naïve façade']
    lines = [f'{f},{captions[i % len(captions)]} {i}' for i, f in enumerate(good)]
    lines += [f'{f},caption of a bad image' for f in bad_images]
    lines += ['rgb.png,   ', 'grey.png,']  # blank and empty captions beside good ones (same files: grouped, counted each)
    body = ('filepath,caption\n' + '\n'.join(lines) + '\n').encode()
    (folder / 'messy.csv').write_bytes(body + b'rgba.png,caf\xe9 in latin-1 \xff\xfe\n')  # one caption that is not UTF-8
    return {'good': list(good), 'bad_images': bad_images, 'csv': folder / 'messy.csv'}


def test_messy_csv_through_get_dataset_and_the_loader(tmp_path):
    "Decodable images of every mode become RGB batches; undecodable ones and bad captions are skipped, counted and named."
    messy = write_messy_csv(tmp_path, huge=True)
    with pytest.raises(ValueError, match=r'skipped \d+ of \d+ examples .*more than max_skip_fraction=0.05.*undecodable image'):
        get_dataset(str(messy['csv']))
    data = get_dataset(str(messy['csv']), max_skip_fraction=0.5)
    counts = dict(data.skips.counts)
    assert counts['undecodable image'] == len(messy['bad_images']), data.skips.summary()
    assert counts['empty caption'] == 2, data.skips.summary()
    summary = data.skips.summary()
    for name in ('zero-byte', 'cannot decode'): assert name in summary, summary
    assert any('no image file' in e for e in data.skips.examples['undecodable image'])  # missing.png
    kept = sum(len(s) for s in data.splits.values())
    assert kept == len(messy['good'])  # every decodable image, whatever its mode or size
    tok = CaptionTokenizer(context_length=12)
    seen = 0
    for split in data.splits.values():
        loader = make_loader(ImageTextDataset(split, tok, image_transform(16), caption='first'), batch_size=4)
        for batch in loader:
            assert batch['image'].shape[1:] == (3, 16, 16) and torch.isfinite(batch['image']).all()
            assert batch['input_ids'].shape[1] <= 12 and (batch['attention_mask'].sum(1) >= 2).all()
            seen += len(batch['image'])
    assert seen == kept
    caps = {c for s in data.splits.values() for cs in s['captions'] for c in cs}
    assert any('🍎' in c for c in caps) and any('façade' in c for c in caps)
    assert not any('\udcff' in c or '\ufffd' in c for c in caps)  # the non-UTF-8 caption is skipped, not mangled


def test_exif_rotation_16_bit_and_one_pixel_are_converted(tmp_path):
    write_messy_csv(tmp_path)
    assert open_image(tmp_path / 'exif_rotated.jpg').size == (24, 16)  # stored 16 wide, 24 high; shown rotated
    deep = np.asarray(open_image(tmp_path / 'deep16.png'))
    assert deep.dtype == np.uint8 and deep.max() > 200  # scaled from 16 bits, not clipped to white or black
    assert open_image(tmp_path / 'one_pixel.png').getpixel((0, 0)) == (200, 10, 10)
    assert image_transform(32)(open_image(tmp_path / 'one_pixel.png')).shape == (3, 32, 32)
    rgba = Image.new('RGBA', (4, 4), (0, 0, 0, 0)); buf = io.BytesIO(); rgba.save(buf, 'PNG')
    assert open_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)  # transparency over white, not black


def test_image_size_policy_is_explicit(tmp_path):
    "max_image_pixels refuses larger images (counted skips); above Pillow's own bomb limit (2 × MAX_IMAGE_PIXELS) they are refused too."
    Image.new('L', (3000, 2000), 7).save(tmp_path / 'big.png')
    with pytest.raises(BadImageError, match='3000x2000 pixels, more than max_image_pixels=1000000'):
        open_image(tmp_path / 'big.png', max_pixels=1_000_000)
    assert open_image(tmp_path / 'big.png').size == (3000, 2000)
    bomb = 2 * Image.MAX_IMAGE_PIXELS + 1
    Image.new('1', (bomb // 1000 + 1, 1000)).save(tmp_path / 'bomb.png')  # 1-bit: small to write, refused before decoding
    with pytest.raises(BadImageError, match='DecompressionBombError|max_image_pixels'):
        open_image(tmp_path / 'bomb.png', max_pixels=10 ** 12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_bytes_decode_or_raise_bad_image(data):
    "Random bytes, truncations and byte flips of a real PNG/JPEG: an RGB image or a `BadImageError`, never another exception."
    buf = io.BytesIO(); _rgb(8, 8).save(buf, data.draw(st.sampled_from(['PNG', 'JPEG', 'GIF', 'BMP', 'TIFF'])))
    raw = bytearray(buf.getvalue())
    kind = data.draw(st.sampled_from(['random', 'cut', 'flip']))
    if kind == 'random': raw = bytearray(data.draw(st.binary(max_size=200)))
    elif kind == 'cut': raw = raw[:data.draw(st.integers(0, len(raw)))]
    else:
        for _ in range(data.draw(st.integers(1, 8))): raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try: img = open_image(bytes(raw))
    except BadImageError: return
    assert img.mode == 'RGB' and img.width * img.height >= 1


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_any_caption_tokenizes_or_is_refused(text):
    "Any unicode text (emoji, control characters, far longer than the context): fixed-length ids, or a clear error when blank."
    tok = CaptionTokenizer(context_length=10)
    if not text.strip():
        with pytest.raises(ValueError, match='empty or not text'): tok(text)
        return
    out = tok(text)
    assert out['input_ids'].shape == (1, 10) and out['attention_mask'][0, 0] == 1
    assert (out['input_ids'][0] == 49407).sum() == 1  # the end token survives truncation


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(['..', '.', 'a', 'b', '', '/', 'link', '~']), min_size=1, max_size=6))
def test_resolved_paths_never_leave_the_root(tmp_path_factory, parts):
    root = tmp_path_factory.getbasetemp() / 'root'
    (root / 'a').mkdir(parents=True, exist_ok=True)
    if not (root / 'link').exists(): (root / 'link').symlink_to(root.parent)  # a symlink out of the root is no way out
    raw = '/'.join(parts)
    try: full = resolve_in_root(root, raw)
    except ValueError as e:
        assert 'points outside the dataset folder' in str(e); return
    assert full.is_relative_to(root.resolve())


def test_json_and_coco_paths_may_not_escape(tmp_path):
    (tmp_path / 'd').mkdir(); _rgb().save(tmp_path / 'outside.png')
    (tmp_path / 'd' / 'pairs.json').write_text(json.dumps([{'filepath': '../outside.png', 'caption': 'x'}]))
    with pytest.raises(ValueError, match='points outside the dataset folder'): get_dataset(str(tmp_path / 'd' / 'pairs.json'))
    coco = {'images': [{'id': 1, 'file_name': '../../outside.png'}], 'annotations': [{'image_id': 1, 'caption': 'x'}]}
    (tmp_path / 'd' / 'captions.json').write_text(json.dumps(coco))
    with pytest.raises(ValueError, match='points outside the dataset folder'): get_dataset(str(tmp_path / 'd' / 'captions.json'))


def test_train_on_messy_csv_skips_counts_and_fails_above_the_fraction(tmp_path, clean_env, capsys):
    "`memvlm train --dataset messy.csv`: too many skips stop it before training with the summary; allowed ones are reported."
    messy = write_messy_csv(tmp_path)
    args = ['train', '--dataset', str(messy['csv']), '--epochs', '1', '--batch-size', '4', *TINY]
    assert main(args + ['--output-dir', str(tmp_path / 'strict')]) == 2
    err = capsys.readouterr().err
    assert 'more than max_skip_fraction=0.05' in err and 'undecodable image' in err and 'Traceback' not in err
    assert not (tmp_path / 'strict' / 'last').exists()
    assert main(args + ['--max-skip-fraction', '0.5', '--output-dir', str(tmp_path / 'lenient')]) == 0
    out = capsys.readouterr()
    metrics = json.loads((tmp_path / 'lenient' / 'metrics.json').read_text())
    assert metrics['history'] and np.isfinite(metrics['history'][-1]['train_loss'])
    assert 'skipped while loading messy: 8 examples' in out.out and 'undecodable image' in out.out, out.out
    assert metrics['skipped'] == {'undecodable image': 5, 'empty caption': 2, 'caption not UTF-8': 1}


# --- options -------------------------------------------------------------------------------------------------------------
def test_bad_options_give_one_error_listing_each(tmp_path, clean_env, capsys):
    (tmp_path / 'bad.yaml').write_text('train: {epochz: 3, batch_size: -4, lr: fast}\ndata: {image_size: 3}\nmodel: 7\nlogger: [csv]\n')
    assert main(['train', '--config', str(tmp_path / 'bad.yaml')]) == 2
    err = capsys.readouterr().err
    assert '(6 problems)' in err, err
    for part in ("unknown option 'train.epochz'; accepted:", "batch_size=-4 is not valid for train.batch_size: expected an integer ≥ 2",
                 "lr='fast' is not valid for train.lr: expected a number ≥ 0.0", "image_size=3 is not valid for data.image_size",
                 "model.model=7 is not valid for model.model: expected text"):
        assert part in err, (part, err)
    clean_env.setenv('MEMVLM_EPOCHS', '-1'); clean_env.setenv('MEMVLM_PRECISION', 'fp64')
    clean_env.setenv('MEMVLM_NOT_AN_OPTION', 'x'); clean_env.setenv('MEMVLM_AUGMENT', 'maybe')
    clean_env.setenv('MEMVLM_CONFIG', str(tmp_path / 'bad.yaml'))
    assert main(['train', '--batch-size', 'many']) == 2
    err = capsys.readouterr().err
    assert '(11 problems)' in err, err  # YAML, variables and flags in one error
    for part in ("--batch-size='many' is not valid for train.batch_size: expected an integer ≥ 2", "unknown option 'train.epochz'","MEMVLM_EPOCHS='-1' is not valid for train.epochs: expected an integer ≥ 1",
                 "MEMVLM_PRECISION='fp64' is not valid for train.precision: expected fp32, bf16, fp16",
                 "MEMVLM_AUGMENT='maybe' is not valid for data.augment: expected true/false",
                 'unknown variable MEMVLM_NOT_AN_OPTION; memvlm reads:'):
        assert part in err, (part, err)
    assert 'Traceback' not in err


# --- crashes, resume, non-finite steps, disks ------------------------------------------------------------------------------
def _popen_train(args, cwd, env):
    base = {k: v for k, v in os.environ.items() if not k.startswith('MEMVLM_')}
    exe = Path(sys.executable).with_name('memvlm')
    return subprocess.Popen([str(exe), *args], cwd=cwd, env={**base, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _steps_in_epoch(steps_csv: Path, epoch: int) -> int:
    if not steps_csv.is_file(): return 0
    lines = steps_csv.read_text().splitlines()
    if len(lines) < 2: return 0
    col = lines[0].split(',').index('epoch')
    return sum(1 for l in lines[1:] if l.count(',') >= col and l.split(',')[col] == str(epoch))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, clean_env, capsys):
    "SIGKILL in epoch 2 of 3 (after the epoch-1 checkpoint), `--resume latest`: the same weights as a run never interrupted."
    args = ['train', '--epochs', '3', '--batch-size', '64', *TINY]
    clean_env.setenv('WANDB_API_KEY', SECRET)
    # every run in a fresh process of its own: a process that ran other tests first may pick other kernels (1e-4 apart)
    def train_fresh(*extra):
        p = _popen_train(args + list(extra), tmp_path, {'WANDB_API_KEY': SECRET})
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    train_fresh('--output-dir', 'straight')
    proc = _popen_train(args + ['--output-dir', 'killed'], tmp_path, {'WANDB_API_KEY': SECRET})
    steps, deadline = tmp_path / 'killed' / 'steps.csv', time.time() + 300
    try:
        while _steps_in_epoch(steps, 2) < 2 and proc.poll() is None and time.time() < deadline: time.sleep(0.05)
        assert proc.poll() is None, f'the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}'
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    state = json.loads((find_checkpoint(tmp_path / 'killed' / 'last') / 'trainer_state.json').read_text())
    assert 1 <= state['epoch'] < 3, state['epoch']  # killed mid-run, after a checkpoint
    train_fresh('--output-dir', 'killed', '--resume', 'latest')
    a, b = load_file(str(tmp_path / 'straight' / 'last' / 'model.safetensors')), load_file(str(tmp_path / 'killed' / 'last' / 'model.safetensors'))
    assert a.keys() == b.keys()
    for k in a: assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), f'{k} differs by {(a[k] - b[k]).abs().max():.2e}'
    hist = json.loads((tmp_path / 'killed' / 'metrics.json').read_text())['history']
    assert [r['epoch'] for r in hist] == [1, 2, 3]
    for run in ('straight', 'killed'):  # the planted W&B key is in no file either run wrote
        for f in (tmp_path / run).rglob('*'):
            if f.is_file(): assert SECRET.encode() not in f.read_bytes(), f


def _write_versions(folder, stop):
    "Child process: rewrite checkpoint `folder` again and again, each time a consistent (tensor, JSON) pair of one version."
    from safetensors.numpy import save_file as save_numpy
    v = 0
    while not stop.is_set():
        v += 1
        def write(tmp, v=v):
            save_numpy({'w': np.full((256, 256), float(v), dtype=np.float32)}, str(tmp / 'model.safetensors'))  # no torch after fork
            (tmp / 'trainer_state.json').write_text(json.dumps({'version': v, 'pad': 'x' * 20000}))
        atomic_folder(folder, write)


def test_a_kill_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    "SIGKILL a process that writes checkpoints non-stop, at random moments: what `find_checkpoint` picks always loads whole."
    ctx, rng = multiprocessing.get_context('fork'), random.Random(0)
    folder = tmp_path / 'last'
    complete = 0  # once a checkpoint was completed, one must always be found
    for trial in range(6):
        stop = ctx.Event()
        p = ctx.Process(target=_write_versions, args=(folder, stop)); p.start()
        time.sleep(0.2 + rng.random() * 0.4)
        os.kill(p.pid, signal.SIGKILL); p.join(30)
        found = find_checkpoint(folder)
        if found is None: assert not complete and not folder.exists(); continue
        complete += 1
        version = json.loads((found / 'trainer_state.json').read_text())['version']
        assert torch.equal(load_file(str(found / 'model.safetensors'))['w'], torch.full((256, 256), float(version)))
    assert complete, 'no write finished in any trial'
    leftover = folder.with_name('last.tmp'); leftover.mkdir(exist_ok=True)
    (leftover / 'model.safetensors').write_bytes(b'half a file')
    assert find_checkpoint(folder) != leftover  # a temp folder is never taken for a checkpoint
    atomic_folder(folder, lambda tmp: (tmp / 'trainer_state.json').write_text('{}'))  # and a new write replaces it
    assert not leftover.exists() or not (leftover / 'model.safetensors').exists()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(4, 2)
    batch_inputs = ('image',)
    def forward(self, image): return self.net(image)


def _pairs(n=32):
    g = torch.Generator().manual_seed(0)
    return [{'image': torch.randn(4, generator=g), 'label': i % 2} for i in range(n)]


def test_non_finite_loss_and_gradient_steps_are_skipped_logged_and_stop_the_run(tmp_path, capsys):
    "NaN loss and NaN gradients (finite loss): the step is skipped and logged; N in a row stop the run, the last good checkpoint intact."
    bad_steps = {3, 7, 8}  # NaN losses; step 5 has a NaN gradient; never 3 bad in a row: the run finishes
    def step(logits, batch, mode={'always_after': None, 'n': 0}):  # the loss: out is the Tiny model's logits
        mode['n'] += 1
        loss = nn.functional.cross_entropy(logits, batch['label'])
        if mode['n'] in bad_steps: return loss * float('nan'), {}
        if mode['n'] == 5 or (mode['always_after'] and mode['n'] > mode['always_after']):  # finite loss, NaN gradient
            return loss + 0 * torch.sqrt(logits.sum() * 0), {}
        return loss, {}
    loader = torch.utils.data.DataLoader(_pairs(), batch_size=8)  # 4 steps per epoch
    t = Trainer(Tiny(), loader, None, TrainConfig(epochs=2, device='cpu', max_bad_steps=3), loss_fn=step, monitor='train_loss',
                output_dir=tmp_path / 'ok', progress=False)
    hist = t.fit()
    assert hist[-1]['skipped_steps'] == 4 and all(torch.isfinite(p).all() for p in t.model.parameters())
    rows = pd.read_csv(tmp_path / 'ok' / 'steps.csv')
    assert rows.loc[rows.skipped == 1, 'step'].tolist() == [3, 5, 7, 8]
    assert capsys.readouterr().out.count('non-finite loss or gradient, step skipped') == 4
    step.__defaults__[0].update(always_after=8, n=0)  # from step 9 on every step is bad
    model = Tiny()
    t = Trainer(model, loader, None, TrainConfig(epochs=3, device='cpu', max_bad_steps=3), loss_fn=step, monitor='train_loss',
                output_dir=tmp_path / 'bad', progress=False)
    with pytest.raises(TrainingDiverged, match=r'3 optimiser steps in a row.*The last good checkpoint is .*last'):
        t.fit()
    saved = load_file(str(find_checkpoint(tmp_path / 'bad' / 'last') / 'model.safetensors'))
    assert json.loads((tmp_path / 'bad' / 'last' / 'trainer_state.json').read_text())['epoch'] == 2  # steps 7, 8 bad; 9 the third
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert torch.equal(saved['net.weight'], model.net.weight.detach())  # skipped steps changed nothing since that checkpoint


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    "ENOSPC in the middle of a checkpoint write: the run stops with the error and the previous `last` still loads and resumes."
    import memvlm.engine as training
    calls, real = {'n': 0}, training.save_file
    def full_disk(tensors, path):
        calls['n'] += 1
        if calls['n'] >= 3: Path(path).write_bytes(b'\0' * 10); raise OSError(28, 'No space left on device', path)
        return real(tensors, path)
    monkeypatch.setattr(training, 'save_file', full_disk)
    loader = torch.utils.data.DataLoader(_pairs(), batch_size=8)
    step = lambda logits, batch: (nn.functional.cross_entropy(logits, batch['label']), {})
    t = Trainer(Tiny(), loader, None, TrainConfig(epochs=3, device='cpu'), loss_fn=step, monitor='train_loss',
                output_dir=tmp_path, progress=False)
    with pytest.raises(OSError, match='No space left'): t.fit()
    found = find_checkpoint(tmp_path / 'last')
    assert found == tmp_path / 'last' and json.loads((found / 'trainer_state.json').read_text())['epoch'] == 1
    monkeypatch.setattr(training, 'save_file', real)
    t = Trainer(Tiny(), loader, None, TrainConfig(epochs=3, device='cpu', resume=True), loss_fn=step, monitor='train_loss',
                output_dir=tmp_path, progress=False)
    assert [r['epoch'] for r in t.fit()] == [1, 2, 3]


def test_unwritable_or_full_output_folder_fails_before_training(tmp_path, clean_env, capsys, monkeypatch):
    "Works as root too: a folder below a regular file, or below /proc, can never be created."
    (tmp_path / 'a_file').write_text('not a folder')
    for bad in (tmp_path / 'a_file' / 'run', Path('/proc/memvlm-test/run')):
        assert main(['train', '--output-dir', str(bad), '--epochs', '1', *TINY]) == 2
        err = capsys.readouterr().err
        assert f"output folder '{bad}' is not writable" in err and 'Traceback' not in err, err
    import shutil
    import memvlm.recipes as recipes
    monkeypatch.setattr(recipes.shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000), raising=False)
    assert main(['train', '--output-dir', str(tmp_path / 'full'), '--epochs', '1', *TINY]) == 2
    err = capsys.readouterr().err
    assert 'free' in err and 'Traceback' not in err, err
    assert not (tmp_path / 'full' / 'last').exists()


# --- untrusted files -----------------------------------------------------------------------------------------------------
class Payload:
    "Unpickling this creates a file: proof that code ran."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (open, (self.marker, 'w'))


def test_pickles_with_a_payload_are_refused(tmp_path):
    marker = tmp_path / 'payload_ran'
    evil = pickle.dumps({'weight': Payload(marker)})
    from memvlm.encoders import load_weights
    (tmp_path / 'weights.pt').write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError, match='[Ww]eights only'): load_weights(nn.Linear(2, 2), tmp_path / 'weights.pt')
    torch.save({'weight': torch.zeros(2, 2), 'bias': torch.zeros(2)}, tmp_path / 'plain.pt')  # a plain state dict still loads
    load_weights(nn.Linear(2, 2), tmp_path / 'plain.pt')
    tok = CaptionTokenizer(context_length=8, token_ids=[320, 1125])
    folder = save_checkpoint(create_model('memclip-tiny', vocab_size=tok.vocab_size, vision_depth=1, text_depth=1), tmp_path / 'ck', tok)
    (folder / 'pytorch_model.bin').write_bytes(evil)  # a pickle beside the weights is never opened
    load_checkpoint(folder)
    (folder / 'model.safetensors').write_bytes(evil)  # a pickle where the weights belong is refused
    with pytest.raises(Exception) as e: load_checkpoint(folder)
    assert 'safetensors' in f'{type(e.value).__module__}{type(e.value).__name__}{e.value}'.lower() or 'header' in str(e.value).lower()
    (tmp_path / 'trainer_state.safetensors').write_bytes(evil)
    with pytest.raises(Exception): load_file(str(tmp_path / 'trainer_state.safetensors'))
    assert not marker.exists()
