"""Memory tokens measured: MemoryCLIP with 0, 4, 16 and 64 memory tokens at equal steps, and gated tokens on a
pretrained open_clip tower.

Seed 002 (Memory-VLM) says memory tokens store contextual information in the weights. This benchmark asks what they buy.

1. memvlm's own towers (memclip-tiny; memclip-small with `--models`). For each dataset (digits-captions,
   shapes-captions), each count of memory tokens (`--tokens`) and each seed (`--seeds`):
   - `memvlm train`'s recipe (`memvlm.recipes.train`: AdamW at lr 1e-3, warmup + cosine, batch 128, affine
     augmentation, the best epoch by validation zero-shot accuracy) for `--epochs` epochs: the same steps and batch
     for every token count, only `memory_tokens` changes. Reported on the test split: zero-shot accuracy, retrieval
     R@1 (image to text and text to image).
   - few-shot by memory at 5 shots: the same model built again and trained as `fewshot_memory.py` trains it, on the
     classes 0-4 only (same epochs, lr and batch; the last epoch), its memory prior from the 0-4 training images; then
     5 training images of each of 5-9 are memorised (`memorize()`, no gradient) and the test images of 5-9 are
     classified 5-way (`classify`); `--draws` shot draws per seed. A second training is the honest way: a model that
     trained on 5-9 has nothing left to learn from five shots of them.
   - attention, as register-token studies (Darcet et al., 2024) look at it: forward pre-hooks on the vision tower's
     blocks recompute each block's attention from its own q and k (nothing in the library changes) on 256 test
     images; reported, averaged over blocks, heads, patch queries and images: the share of patch tokens' attention
     that goes to the memory tokens, the share that goes to the k = max(1, patches // 16) patch tokens of highest
     norm (the 'outliers'; uniform attention would give them k / tokens), the same share in the last block, and the
     ratio of the largest to the median patch-token norm at the last block's input.
   - step time: one training step (the Trainer's step function and fused AdamW, fp32, batch 128 of digits-captions
     with the compact vocabulary `memvlm train` builds) of each token count, timed interleaved in one process;
     median of `--step-repeats` steps and the ratio to 0 tokens.
2. The pretrained road, offline. There is no network here for OpenAI's weights, so the 'pretrained' CLIP is a tiny
   open_clip model (ViT 4 x 128 on 32 px with 4 px patches, 64 patches; text 2 x 128; open_clip's config registered
   here, random initial weights, open_clip's full vocabulary) that `memvlm train` first trains on digits-captions
   (`--pretrain-epochs`, lr 1e-3, 0 memory tokens, seed 0), standing in for web-scale pretraining on other data. Its
   weights, exported as an open_clip state dict, are then fine-tuned on shapes-captions with 0 and with 16 gated
   memory tokens (open_clip towers' `GatedMemory`: exact at initialisation), `--finetune-epochs` epochs, each of
   `--seeds`, at each of `--finetune-lr`: 1e-4 (ten times below the from-scratch rate, as fine-tuning goes; the
   gates and tokens learn at the same rate as the towers, as `memvlm train` sets them) and 1e-3 (`memvlm train`'s
   default, where the gates can open). Reported: test zero-shot accuracy and R@1, the gates' mean |tanh g| after
   fine-tuning (0: the tokens are not read) and the outlier attention share (recomputed from hooks on each block's
   ln_1; the gated memory is read outside the softmax, so it has no attention share). This is a small stand-in for
   fine-tuning a real pretrained CLIP, not a measurement of one.

memclip-tiny runs 10 epochs here (a quarter of `memvlm train`'s 40; 3 shot draws per seed) so that the 24 runs
and their 24 base-class models stay near 20 minutes on two quiet cores; memclip-small (64 px, 6 x 256 vision tower) was not run for the published figures: its training step
counts 20x memclip-tiny's FLOPs (281 against 14 GFLOP at batch 128, torch's FlopCounterMode); `--models
memclip-small` runs it. Figures are mean ± sd over seeds. Step times come from a shared
machine: the load average at timing is printed and saved; compare the ratios, not the milliseconds (`--steps-only`
times the step alone, for a quiet moment).

Prints markdown tables and, last, one line of JSON (means per model, dataset and token count; step-time ratios; the
pretrained road). `--json-out` writes every per-seed figure.
Usage: python benchmarks/memory_tokens.py [--models memclip-tiny] [--datasets digits-captions shapes-captions]
       [--tokens 0 4 16 64] [--seeds 0 1 2] [--epochs 10] [--json-out FILE] [--no-pretrained]
       [--no-own-towers] [--steps-only] [--quick]
"""
import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_utils import digits_batch, interleaved_times, machine, median, memvlm_step, train_base_classes
from fewshot_memory import NEW, embed_split
from train_step_vs_openclip import compact_vocab

TINY_OPEN_CLIP = 'memvlm-bench-tiny-vit'  # the open_clip config of the pretrained road, registered at run time
TINY_OPEN_CLIP_CFG = {'embed_dim': 64,
                      'vision_cfg': {'image_size': 32, 'layers': 4, 'width': 128, 'patch_size': 4, 'head_width': 32},
                      'text_cfg': {'context_length': 16, 'vocab_size': 49408, 'width': 128, 'heads': 4, 'layers': 2}}
TINY_MEMCLIP = 'memclip-bench-open-clip'  # memvlm's MemoryCLIP on those towers
ATTENTION_IMAGES = 256


# --- training ------------------------------------------------------------------------------------------------------

def run_config(model: str, dataset: str, tokens: int, seed: int, epochs: int, out: str, **extra):
    "The `memvlm train` configuration of one run: its defaults, with these values."
    from memvlm.config import RunConfig, update_config
    values = {'model.model': model, 'memory_tokens': tokens, 'dataset': dataset, 'epochs': epochs, 'seed': seed,
              'output_dir': out, 'device': 'cpu', **extra}
    return update_config(RunConfig(), values)


def train_run(model: str, dataset: str, tokens: int, seed: int, epochs: int, out: str, **extra) -> dict:
    "`memvlm train` (the Python API), silent; its test metrics and the best checkpoint's folder."
    from memvlm.recipes import train
    start = time.time()
    m = train(run_config(model, dataset, tokens, seed, epochs, out, **extra), progress=False)
    return {'zero_shot_acc': m['test_zero_shot_acc'], 'i2t_r1': m['test_i2t_r1'], 't2i_r1': m['test_t2i_r1'],
            'best_epoch': m['best_epoch'], 'seconds': time.time() - start, 'best': Path(out) / 'best'}


# --- few-shot by memory --------------------------------------------------------------------------------------------

def fewshot_by_memory(model_name: str, data, tokens: int, epochs: int, seed: int, shots: int, draws: int) -> dict:
    """5-way accuracy on the test images of 5-9 after memorising `shots` images of each (mean over `draws` draws), of a
    model trained on 0-4; also nearest class mean on the same embeddings (what the features alone give)."""
    from memvlm.data import CaptionTokenizer
    from memvlm.evaluation import zero_shot_classifier
    from memvlm.fewshot import draw_shots
    from memvlm.models import model_config, model_transform
    names = list(data.classnames)
    context = model_config(model_name).context_length
    tok = CaptionTokenizer.build([p for prompts in data.class_prompts for p in prompts], context)
    with torch.enable_grad(): model = train_base_classes(model_name, data, tok, epochs, seed, memory_tokens=tokens)
    transform = model_transform(model.config)
    train_images, train_emb, train_labels = embed_split(model, data['train'], transform)
    _, val_emb, val_labels = embed_split(model, data['validation'], transform)
    _, test_emb, test_labels = embed_split(model, data['test'], transform)
    base, val_base = train_labels < 5, val_labels < 5
    model.set_memory_prior(train_emb[base], train_labels[base], names, val_emb[val_base], val_labels[val_base])
    classifier = zero_shot_classifier(model, tok, data.class_prompts)
    new = test_labels >= 5
    xq, yq = test_emb[new], test_labels[new] - 5
    memory, ncm = [], []
    for draw in range(draws):
        idx = draw_shots(train_labels.numpy(), NEW, shots, 1000 * seed + draw)[0]
        model.forget()
        model.memorize(train_images[idx], [names[int(c)] for c in train_labels[idx]])
        answer = model.classify(xq, [names[c] for c in NEW], classifier[NEW]).index
        memory.append((answer == yq).float().mean().item())
        shots_emb, shots_labels = train_emb[idx], train_labels[idx]
        means = torch.nn.functional.normalize(torch.stack([shots_emb[shots_labels == c].mean(0) for c in NEW]), dim=-1)
        ncm.append(((xq @ means.T).argmax(1) == yq).float().mean().item())
    model.forget()
    return {'fewshot_acc': float(np.mean(memory)), 'fewshot_ncm': float(np.mean(ncm))}


# --- attention -----------------------------------------------------------------------------------------------------

def attention_from(x: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, bias, heads: int) -> torch.Tensor:
    "(B, heads, L, L) softmax attention of a block recomputed from its normed input `h` and its q, k projection."
    B, L, D = h.shape
    qk = torch.nn.functional.linear(h, weight[:2 * D], None if bias is None else bias[:2 * D])
    q, k = qk.view(B, L, 2, heads, D // heads).permute(2, 0, 3, 1, 4)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)


def attention_figures(attn: torch.Tensor, x: torch.Tensor, patches: slice, memory: slice) -> dict:
    "One block: the share of patch queries' attention on memory keys and on the top-k highest-norm patch keys."
    a = attn[:, :, patches]  # (B, H, N, L): patch queries
    norms = x[:, patches].norm(dim=-1)  # (B, N)
    n = norms.shape[1]
    k = max(1, n // 16)
    top = norms.topk(k, dim=1).indices + patches.start  # key positions of the outliers
    on_top = a.gather(-1, top[:, None, None, :].expand(-1, a.shape[1], a.shape[2], -1)).sum(-1)
    return {'memory_share': a[..., memory].sum(-1).mean().item(), 'outlier_share': on_top.mean().item(),
            'uniform_share': k / attn.shape[-1],
            'norm_ratio': (norms.max(1).values / norms.median(1).values).mean().item()}


def summarise_blocks(blocks: list[dict]) -> dict:
    "Mean over blocks, and the last block's outlier share and norm ratio."
    out = {key: float(np.mean([b[key] for b in blocks])) for key in ('memory_share', 'outlier_share', 'uniform_share')}
    out.update(outlier_share_last=blocks[-1]['outlier_share'], norm_ratio_last=blocks[-1]['norm_ratio'])
    return out


@torch.no_grad()
def own_tower_attention(model, images: torch.Tensor) -> dict:
    "Attention figures of a MemoryCLIP on memvlm's own towers (memory tokens first in the sequence, then patches)."
    n_mem = model.config.memory_tokens
    blocks, handles = [], []
    def hook(blk, args):
        x = args[0]
        attn = attention_from(x, blk.norm1(x), blk.attn.qkv.weight, blk.attn.qkv.bias, blk.attn.num_heads)
        blocks.append(attention_figures(attn, x, slice(n_mem, x.shape[1]), slice(0, n_mem)))
    for blk in model.visual.transformer.blocks: handles.append(blk.register_forward_pre_hook(hook))
    try: model.encode_image(images)
    finally:
        for h in handles: h.remove()
    return summarise_blocks(blocks)


@torch.no_grad()
def open_clip_attention(model, images: torch.Tensor) -> dict:
    """Attention figures of a MemoryCLIP on open_clip towers (class token, then patches; gated memory read apart), from
    hooks on each block's ln_1 (called on the image tokens both with and without gated memory), and the gates."""
    blocks, handles = [], []
    visual = model.towers.clip.visual
    batch_first = getattr(visual.transformer, 'batch_first', True)
    def make_hook(blk):
        def hook(ln, args, out):
            x = args[0]
            if x.ndim != 3: return  # the gated memory's own tokens
            if not batch_first: x, out = x.transpose(0, 1), out.transpose(0, 1)
            attn = attention_from(x, out, blk.attn.in_proj_weight, blk.attn.in_proj_bias, blk.attn.num_heads)
            blocks.append(attention_figures(attn, x, slice(1, x.shape[1]), slice(0, 0)))
        return hook
    for blk in visual.transformer.resblocks: handles.append(blk.ln_1.register_forward_hook(make_hook(blk)))
    try: model.encode_image(images)
    finally:
        for h in handles: h.remove()
    out = summarise_blocks(blocks)
    memory = model.towers.memory
    out['gate'] = 0.0 if memory is None else torch.tanh(memory.gates).abs().mean().item()
    return out


def test_images(model, dataset: str, n: int = ATTENTION_IMAGES) -> torch.Tensor:
    "The first `n` test images of `dataset`, preprocessed as the model's evaluation does."
    from memvlm.data import get_dataset
    from memvlm.models import model_transform
    rows = get_dataset(dataset, seed=0)['test']
    transform = model_transform(model.config)
    return torch.stack([transform(im) for im in rows.select(range(min(n, len(rows))))['image']])


def checkpoint_attention(best: Path, dataset: str) -> dict:
    "Attention figures of the best checkpoint of a run."
    from memvlm.models import load_checkpoint
    model = load_checkpoint(best).model.eval()
    images = test_images(model, dataset)
    return open_clip_attention(model, images) if model.towers is not None else own_tower_attention(model, images)


# --- step time -----------------------------------------------------------------------------------------------------

def step_times(model_name: str, token_counts: list[int], repeats: int) -> dict:
    "Median ms of a training step of `model_name` with each count of memory tokens, timed interleaved; ratio to 0."
    from memvlm.models import create_model, model_config
    cfg = model_config(model_name)
    torch.manual_seed(0)
    batch, vocab = compact_vocab(digits_batch(128, cfg.image_size, cfg.context_length), cfg.context_length)
    models = {n: create_model(model_name, memory_tokens=n, vocab_size=vocab).train() for n in token_counts}
    load = os.getloadavg()[0]
    with torch.enable_grad():
        times = interleaved_times({n: memvlm_step(m, batch) for n, m in models.items()}, repeats=repeats)
    ms = {n: 1000 * median(t) for n, t in times.items()}
    ref = ms.get(0, ms[token_counts[0]])
    return {str(n): {'ms': ms[n], 'ratio': ms[n] / ref} for n in token_counts} | {'load_before': load,
                                                                                 'load_after': os.getloadavg()[0]}


# --- the two studies -----------------------------------------------------------------------------------------------

def own_towers_study(model_name: str, dataset: str, args) -> dict:
    "Every token count and seed of `model_name` on `dataset`: per-seed figures."
    from memvlm.data import get_dataset
    data = get_dataset(dataset, seed=0)
    results = {}
    for n in args.tokens:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as out:
                r = train_run(model_name, dataset, n, seed, args.epochs, out)
                r['attention'] = checkpoint_attention(r.pop('best'), dataset)
            r.update(fewshot_by_memory(model_name, data, n, args.epochs, seed, args.shots, args.draws))
            runs.append(r)
            print(f"{model_name} {dataset} tokens {n:2d} seed {seed}: zero-shot {r['zero_shot_acc']:.4f}, "
                  f"R@1 {r['i2t_r1']:.4f}/{r['t2i_r1']:.4f}, {args.shots}-shot memory {r['fewshot_acc']:.4f}, "
                  f"attention on memory {r['attention']['memory_share']:.3f}, on outliers "
                  f"{r['attention']['outlier_share']:.3f} ({r['seconds']:.0f} s)", flush=True)
        results[str(n)] = runs
    return results


def register_tiny_open_clip(folder: Path, pretrained: str = '') -> str:
    "Register the tiny open_clip config with open_clip, and memvlm's MemoryCLIP on its towers; returns the model name."
    import open_clip
    from memvlm.models import MemoryCLIPConfig, register_model
    path = folder / f'{TINY_OPEN_CLIP}.json'
    path.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(str(path))
    register_model(TINY_MEMCLIP, MemoryCLIPConfig(towers=f'open_clip:{TINY_OPEN_CLIP}', pretrained=pretrained,
                                                  image_size=32, context_length=16, embed_dim=64, memory_tokens=0))
    return TINY_MEMCLIP


def pretrained_study(args) -> dict:
    """Pretrain the tiny open_clip CLIP on digits-captions, then fine-tune it on shapes-captions with 0 and
    `args.gated_tokens` gated memory tokens, each of `args.seeds`."""
    from memvlm.data import get_dataset
    from memvlm.evaluation import evaluate_clip
    from memvlm.models import load_checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = register_tiny_open_clip(tmp)
        start = time.time()
        pre = train_run(name, 'digits-captions', 0, 0, args.pretrain_epochs, str(tmp / 'pretrain'))
        ck = load_checkpoint(pre['best'])
        weights = tmp / 'pretrained.pt'
        torch.save(ck.model.open_clip_state_dict(), weights)
        before = evaluate_clip(ck.model.eval(), get_dataset('shapes-captions', seed=0), 'test', ck.tokenizer)
        print(f"pretrained on digits-captions in {time.time() - start:.0f} s: digits zero-shot "
              f"{pre['zero_shot_acc']:.4f}; shapes zero-shot before fine-tuning {before['zero_shot_acc']:.4f}",
              flush=True)
        arms = {}
        for lr in args.finetune_lr:
            for n in (0, args.gated_tokens):
                runs = []
                for seed in args.seeds:
                    out = tmp / f'finetune-{lr}-{n}-{seed}'
                    r = train_run(name, 'shapes-captions', n, seed, args.finetune_epochs, str(out),
                                  pretrained=str(weights), lr=lr)
                    r['attention'] = checkpoint_attention(r.pop('best'), 'shapes-captions')
                    runs.append(r)
                    print(f"pretrained tower, lr {lr:g}, {n:2d} gated tokens, seed {seed}: zero-shot "
                          f"{r['zero_shot_acc']:.4f}, R@1 {r['i2t_r1']:.4f}/{r['t2i_r1']:.4f}, gate |tanh g| "
                          f"{r['attention']['gate']:.4f} ({r['seconds']:.0f} s)", flush=True)
                arms[f'{lr:g}/{n}'] = runs
    return {'pretrain_digits_zero_shot_acc': pre['zero_shot_acc'], 'shapes_zero_shot_before': before['zero_shot_acc'],
            'shapes_i2t_r1_before': before['i2t_r1'], 'arms': arms}


# --- reporting -----------------------------------------------------------------------------------------------------

def mean_sd(values: list) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def cell(runs: list[dict], key: str, sub: str = '') -> tuple[float, float]:
    return mean_sd([r[sub][key] if sub else r[key] for r in runs])


def fmt(ms: tuple[float, float], digits: int = 3) -> str:
    return f'{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}'


def print_own_table(results: dict, steps: dict, shots: int):
    print(f'\n| model | dataset | memory tokens | zero-shot acc | i2t R@1 | t2i R@1 | {shots}-shot memory acc '
          '| step ms (× 0 tokens) | attn on memory | attn on outliers (uniform) | last-block max/median norm |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    for model, by_data in results.items():
        for dataset, by_tokens in by_data.items():
            for n, runs in by_tokens.items():
                s = steps[model][n]
                uniform = cell(runs, 'uniform_share', 'attention')[0]
                print(f"| {model} | {dataset} | {n} | {fmt(cell(runs, 'zero_shot_acc'))} "
                      f"| {fmt(cell(runs, 'i2t_r1'))} | {fmt(cell(runs, 't2i_r1'))} | {fmt(cell(runs, 'fewshot_acc'))} "
                      f"| {s['ms']:.0f} ({s['ratio']:.2f}×) "
                      f"| {fmt(cell(runs, 'memory_share', 'attention'))} "
                      f"| {fmt(cell(runs, 'outlier_share', 'attention'))} ({uniform:.3f}) "
                      f"| {fmt(cell(runs, 'norm_ratio_last', 'attention'), 2)} |")


def print_pretrained_table(p: dict):
    print(f"\npretrained road: tiny open_clip CLIP pretrained on digits-captions (digits zero-shot "
          f"{p['pretrain_digits_zero_shot_acc']:.3f}; shapes zero-shot before fine-tuning "
          f"{p['shapes_zero_shot_before']:.3f}), fine-tuned on shapes-captions")
    print('| fine-tune lr | gated memory tokens | zero-shot acc | i2t R@1 | t2i R@1 | gate mean abs tanh(g) '
          '| attn on outliers (uniform) | last-block max/median norm |')
    print('|---|---|---|---|---|---|---|---|')
    for arm, runs in p['arms'].items():
        lr, n = arm.split('/')
        uniform = cell(runs, 'uniform_share', 'attention')[0]
        print(f"| {lr} | {n} | {fmt(cell(runs, 'zero_shot_acc'))} | {fmt(cell(runs, 'i2t_r1'))} "
              f"| {fmt(cell(runs, 't2i_r1'))} "
              f"| {fmt(cell(runs, 'gate', 'attention'), 4)} | {fmt(cell(runs, 'outlier_share', 'attention'))} "
              f"({uniform:.3f}) | {fmt(cell(runs, 'norm_ratio_last', 'attention'), 2)} |")


def headline(results: dict, steps: dict, pretrained) -> dict:
    "The last line's figures: means (and sd) per model, dataset and token count; the pretrained road's arms."
    keys = ('zero_shot_acc', 'i2t_r1', 'fewshot_acc')
    out = {'own_towers': {model: {dataset: {n: {**{k: round(cell(runs, k)[0], 4) for k in keys},
                                                **{k + '_sd': round(cell(runs, k)[1], 4) for k in keys},
                                                'outlier_share': round(cell(runs, 'outlier_share', 'attention')[0], 4),
                                                'memory_share': round(cell(runs, 'memory_share', 'attention')[0], 4)}
                                            for n, runs in by_tokens.items()}
                                  for dataset, by_tokens in by_data.items()} for model, by_data in results.items()},
           'step_ratio': {model: {n: round(v['ratio'], 3) for n, v in s.items() if isinstance(v, dict)}
                          for model, s in steps.items()}}
    if pretrained:
        out['pretrained'] = {arm: {'zero_shot_acc': round(cell(runs, 'zero_shot_acc')[0], 4),
                                 'zero_shot_acc_sd': round(cell(runs, 'zero_shot_acc')[1], 4),
                                 'i2t_r1': round(cell(runs, 'i2t_r1')[0], 4),
                                 'gate': round(cell(runs, 'gate', 'attention')[0], 4)}
                             for arm, runs in pretrained['arms'].items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['memclip-tiny'], choices=['memclip-tiny', 'memclip-small'])
    p.add_argument('--datasets', nargs='+', default=['digits-captions', 'shapes-captions'])
    p.add_argument('--tokens', type=int, nargs='+', default=[0, 4, 16, 64])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--epochs', type=int, default=10, help="epochs of every run (memvlm train's default is 40)")
    p.add_argument('--shots', type=int, default=5)
    p.add_argument('--draws', type=int, default=3, help='shot draws per seed for few-shot by memory')
    p.add_argument('--step-repeats', type=int, default=9, help='timed steps per token count (median reported)')
    p.add_argument('--no-pretrained', action='store_true', help='skip the pretrained road')
    p.add_argument('--no-own-towers', action='store_true', help="skip memvlm's own towers (only the pretrained road)")
    p.add_argument('--steps-only', action='store_true', help='only time the training step of each token count')
    p.add_argument('--gated-tokens', type=int, default=16)
    p.add_argument('--pretrain-epochs', type=int, default=20)
    p.add_argument('--finetune-epochs', type=int, default=10)
    p.add_argument('--finetune-lr', type=float, nargs='+', default=[1e-4, 1e-3],
                   help='fine-tuning learning rates, each run with and without gated tokens')
    p.add_argument('--json-out', default='', help='also write every per-seed figure to this JSON file')
    p.add_argument('--quick', action='store_true', help='a smoke run of a few minutes: one seed, few epochs')
    args = p.parse_args()
    if args.quick:
        args.datasets, args.tokens, args.seeds, args.epochs, args.draws = args.datasets[:1], [0, 4], [0], 1, 1
        args.step_repeats, args.pretrain_epochs, args.finetune_epochs = 2, 1, 1
        args.finetune_lr = args.finetune_lr[:1]
    torch.set_num_threads(min(torch.get_num_threads(), 2))  # the figures are for a 2-core machine
    torch.set_grad_enabled(False)  # training switches gradients on where it needs them
    start, load = time.time(), os.getloadavg()

    models = [] if args.no_own_towers else args.models
    steps = {m: step_times(m, args.tokens, args.step_repeats) for m in models}
    if args.steps_only:
        print(f'{machine()}; load average ' + ', '.join(f"{m} {s['load_before']:.1f}-{s['load_after']:.1f}" for m, s in steps.items()))
        for m, s in steps.items():
            print(f'{m}: ' + ', '.join(f"{n} tokens {v['ms']:.0f} ms ({v['ratio']:.2f}x)" for n, v in s.items() if isinstance(v, dict)))
        if args.json_out: Path(args.json_out).write_text(json.dumps({'machine': machine(), 'step_times': steps}, indent=1))
        print(json.dumps({'step_ratio': {m: {n: round(v['ratio'], 3) for n, v in s.items() if isinstance(v, dict)}
                                         for m, s in steps.items()}}))
        return
    results = {m: {d: own_towers_study(m, d, args) for d in args.datasets} for m in models}
    pretrained = None if args.no_pretrained else pretrained_study(args)

    print(f'\n{args.epochs} epochs per run, seeds {args.seeds}, {args.shots}-shot memory over {args.draws} draws per '
          f'seed; step time: median of {args.step_repeats} interleaved steps, {machine()}, load average '
          + ', '.join(f"{m} {s['load_before']:.1f}-{s['load_after']:.1f}" for m, s in steps.items()))
    print_own_table(results, steps, args.shots)
    if pretrained: print_pretrained_table(pretrained)
    seconds = time.time() - start
    print(f'\nwall time {seconds:.0f} s; load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}')
    settings = {k: v for k, v in vars(args).items() if k not in ('json_out',)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({'settings': settings, 'machine': machine(), 'seconds': seconds,
                                                   'step_times': steps, 'own_towers': results,
                                                   'pretrained': pretrained}, indent=1))
    print(json.dumps({**headline(results, steps, pretrained), 'epochs': args.epochs, 'seeds': args.seeds,
                      'seconds': round(seconds)}))


if __name__ == '__main__':
    main()
