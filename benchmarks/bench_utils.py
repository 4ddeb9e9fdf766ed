"""Helpers the benchmarks share: identical tower sizes for memvlm and open_clip, a real digits-captions batch, memvlm's and
open_clip's training steps as their own training loops run them, interleaved timing (medians), and a plain-text table.

Timing on a shared machine drifts with the others' load, so every comparison here runs the systems alternately in one
process (A, B, A, B, ...) and reports medians and ratios; absolute times are only indicative.
"""
import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# Tower sizes both systems are built with. 'digits' is train_digits.py's open_clip reference (ViT 4x128 on 32 px with 4 px
# patches, text 2x128, context 16); 'vit-s-32-cpu' is open_clip's ViT-S-32 (width 384, 6 heads, 49 patches, text 384 wide
# with context 77) with its depth cut from 12 to 4 layers per tower so that a step takes seconds, not minutes, on 2 cores.
TOWERS = {
    'vit-s-32-cpu': dict(image_size=56, patch_size=8, vision_width=384, vision_depth=4, vision_heads=6,
                         context_length=77, text_width=384, text_depth=4, text_heads=6, embed_dim=384, batch_size=32),
    'digits': dict(image_size=32, patch_size=4, vision_width=128, vision_depth=4, vision_heads=4,
                   context_length=16, text_width=128, text_depth=2, text_heads=4, embed_dim=64, batch_size=128),
    # a fine-tune of the whole pretrained CLIP ViT-B/32 (151M parameters; random weights, the same in both systems)
    'vit-b-32': dict(open_clip='ViT-B-32', image_size=224, context_length=77, batch_size=8),
}
VOCAB_SIZE = 49408  # open_clip's BPE vocabulary, used by both systems so the token embeddings match


def full_context(ids: torch.Tensor, context_length: int) -> torch.Tensor:
    "Pad token ids to `context_length` columns: memvlm's batches cut padding columns; open_clip's text tower wants all of them."
    return F.pad(ids, (0, context_length - ids.shape[1]))


def default_memory_tokens() -> int:
    "How many memory tokens a `MemoryCLIPConfig` has unless told otherwise."
    from memvlm.models import MemoryCLIPConfig
    return next(f.default for f in dataclasses.fields(MemoryCLIPConfig) if f.name == 'memory_tokens')


def memvlm_model(towers: dict, memory_tokens: int = 0, vocab_size: int = VOCAB_SIZE):
    "memvlm's `MemoryCLIP` with the `towers` sizes (ViT patch stem, like open_clip's)."
    from memvlm.models import MemoryCLIP, MemoryCLIPConfig
    dims = {k: v for k, v in towers.items() if k != 'batch_size'}
    return MemoryCLIP(MemoryCLIPConfig(stem='patch', memory_tokens=memory_tokens, vocab_size=vocab_size, **dims))


def pretrained_pair(towers: dict, memory_tokens: int = 0):
    "memvlm's MemoryCLIP on open_clip's towers `towers['open_clip']`, and open_clip's own model with the same weights."
    import open_clip
    from memvlm.models import create_model
    name = towers['open_clip']
    model = create_model(f'memclip-{name.lower()}', pretrained='', memory_tokens=memory_tokens)
    reference = open_clip.create_model(name)
    reference.load_state_dict(model.towers.clip.state_dict())
    return model, reference


def open_clip_model(towers: dict, vocab_size: int = VOCAB_SIZE):
    "open_clip's own `CLIP` with the `towers` sizes (its defaults otherwise: class token, causal text, argmax pooling)."
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    t = towers
    return CLIP(embed_dim=t['embed_dim'],
                vision_cfg=CLIPVisionCfg(layers=t['vision_depth'], width=t['vision_width'], head_width=t['vision_width'] // t['vision_heads'],
                                         patch_size=t['patch_size'], image_size=t['image_size']),
                text_cfg=CLIPTextCfg(context_length=t['context_length'], vocab_size=vocab_size, width=t['text_width'],
                                     heads=t['text_heads'], layers=t['text_depth']))


def digits_batch(batch_size: int, image_size: int, context_length: int, seed: int = 0, augment: bool = False) -> dict:
    "One training batch of real digits-captions through memvlm's pipeline (full open_clip vocabulary, padding columns cut)."
    from memvlm.data import CaptionTokenizer, ImageTextDataset, image_transform, load_digits_captions, make_loader
    data = load_digits_captions(seed=seed)
    ds = ImageTextDataset(data['train'], CaptionTokenizer(context_length), image_transform(image_size, train=True, augment=augment), seed=seed)
    return next(iter(make_loader(ds, batch_size, train=True, seed=seed)))


def memvlm_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.05, fused: Optional[bool] = None):
    """The optimizer memvlm's `Trainer` builds (`make_optimizer` over `param_groups`), so the benchmark times exactly what
    it trains with; `fused` forces the kernel (True: fused, False: torch's default) to show what the choice is worth."""
    from memvlm import training
    device = next(model.parameters()).device
    groups = training.param_groups(model, weight_decay)
    if fused is None and hasattr(training, 'make_optimizer'): return training.make_optimizer(groups, lr, device)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=fused or None)


def optimizer_name(opt: torch.optim.Optimizer) -> str:
    "'AdamW fused', 'AdamW foreach' or 'AdamW' (torch's per-tensor loop), as the optimizer will run."
    d = opt.defaults
    kind = 'fused' if d.get('fused') else 'foreach' if d.get('foreach') or (d.get('foreach') is None and next(iter(opt.param_groups[0]['params'])).is_cuda) else ''
    return f'{type(opt).__name__} {kind}'.strip()


def open_clip_optimizer(model: torch.nn.Module, lr: float = 1e-3, weight_decay: float = 0.05):
    "The optimizer `open_clip_train` builds: AdamW, no decay on gains, biases and the logit scale, torch's default kernels."
    exclude = lambda n, p: p.ndim < 2 or 'bn' in n or 'ln' in n or 'bias' in n or 'logit_scale' in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW([{'params': [p for n, p in named if exclude(n, p)], 'weight_decay': 0.},
                              {'params': [p for n, p in named if not exclude(n, p)], 'weight_decay': weight_decay}],
                             lr=lr, betas=(0.9, 0.98), eps=1e-6)


def memvlm_step(model, batch: dict, precision: str = 'fp32', lr: float = 1e-3, fused: Optional[bool] = None) -> Callable[[], float]:
    "One optimiser step as memvlm's Trainer takes it: autocast, the default step function, backward, clip, AdamW."
    from memvlm.engine import autocast_context
    from memvlm.losses import create_loss
    device = next(model.parameters()).device
    opt, loss_fn = memvlm_optimizer(model, lr, fused=fused), create_loss(model)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    def step() -> float:
        with autocast_context(device, precision):
            loss, _ = loss_fn(model(batch['image'], batch['input_ids'], batch.get('attention_mask')), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    step.optimizer = opt
    return step


def open_clip_step(model, batch: dict, context_length: int, precision: str = 'fp32', lr: float = 1e-3) -> Callable[[], float]:
    "One optimiser step as open_clip_train takes it: autocast, `ClipLoss`, backward, clip, AdamW."
    from open_clip.loss import ClipLoss
    from memvlm.engine import autocast_context
    device = next(model.parameters()).device
    opt, loss_fn = open_clip_optimizer(model, lr), ClipLoss()
    images, ids = batch['image'].to(device), full_context(batch['input_ids'], context_length).to(device)
    def step() -> float:
        with autocast_context(device, precision):
            loss = loss_fn(*model(images, ids))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()
    step.optimizer = opt
    return step


def sync(device: Optional[torch.device] = None):
    "Wait for queued GPU work so that wall time measures it."
    if torch.cuda.is_available(): torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable], repeats: int = 7, warmup: int = 2) -> dict[str, list[float]]:
    "Seconds per call of each of `fns`, called in turn (A, B, C, A, B, C, ...) so that load drifts hit all alike."
    for _ in range(warmup):
        for fn in fns.values(): fn(); sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(); start = time.perf_counter(); fn(); sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(xs) -> float: return statistics.median(xs)


def train_base_classes(model_name: str, data, tokenizer, epochs: int, seed: int, **options):
    """`model_name` (with `options`, e.g. memory_tokens) trained on the classes 0-4 of `data`, augmented, 128 a batch, on
    the CPU: the base model of the few-shot and memory-token benchmarks."""
    import numpy as np
    from memvlm.config import TrainConfig, seed_everything
    from memvlm.data import ImageTextDataset, make_loader
    from memvlm.models import create_model, model_transform
    from memvlm.training import Trainer
    seed_everything(seed)
    rows = data['train'].select(np.flatnonzero(np.array(data['train']['label']) < 5))
    model = create_model(model_name, vocab_size=tokenizer.vocab_size, **options)
    transform = model_transform(model.config, train=True, augment=True)
    loader = make_loader(ImageTextDataset(rows, tokenizer, transform, seed=seed), 128, train=True, seed=seed)
    Trainer(model, loader, config=TrainConfig(epochs=epochs, device='cpu', seed=seed), monitor='train_loss',
            progress=False).fit()
    return model.eval()


def print_table(rows: list[dict], columns: list[str], formats: Optional[dict] = None):
    "Rows of dicts as an aligned plain-text table."
    formats = formats or {}
    cells = [[formats.get(c, '{}').format(r[c]) if r.get(c) is not None else '-' for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print('  '.join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for row in cells: print('  '.join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))


def machine() -> str:
    "What the figures were measured on."
    if torch.cuda.is_available(): return f'cuda: {torch.cuda.get_device_name()}'
    import os, platform
    return f'cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}'
