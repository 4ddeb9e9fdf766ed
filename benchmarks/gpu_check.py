"""The GPU check: what memvlm makes of one CUDA GPU, in one run of a few minutes, as one JSON line.

1. MFU (model FLOP utilisation, bf16, fused SDPA) of memclip-base and of a ViT-B/16 CLIP (memclip-vit-b-16, random
   weights, no memory tokens) at `--batch` images: FLOPs of a forward and backward step counted by FlopCounterMode,
   over the bf16 matmul peak measured in the same run (mfu.py's method).
2. Steps per second of that ViT-B/16 fine-tune step (memvlm's Trainer step: fused AdamW, clipping) against open_clip's
   own model and loss on the same weights, interleaved.
3. Images per second of memvlm's photo pipeline (JPEGs of mixed sizes to 224 px, `--workers` loader workers, uint8
   batches pinned and copied without blocking, then `BatchAugment` on the GPU) against the images per second the
   ViT-B/16 step consumes; from a CSV of files, and from the same photos written as webdataset shards (`ShardDataset`,
   as `memvlm train --dataset 'shards/{...}.tar'` streams them).

The target on an H100/H200-class GPU is MFU >= 45% for ViT-B/16 at batch 256. Run by benchmarks/gpu.sh.
Usage: python benchmarks/gpu_check.py [--batch 256] [--repeats 10] [--workers 8] [--photos 2048] [--device cuda]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_utils import (interleaved_times, machine, median, memvlm_step, open_clip_step, pretrained_pair, print_table,
                         sync)
from dataloader import write_photos
from mfu import matmul_peak, step_flops


def photo_batch(batch: int, device, context_length: int = 77) -> dict:
    "A batch of random 224 px images and short captions in open_clip's token ids."
    from memvlm.data import CaptionTokenizer
    ids = CaptionTokenizer.build([], context_length, 'full')([f'a photo of thing {i}' for i in range(batch)])
    return {'image': torch.randn(batch, 3, 224, 224, device=device), 'input_ids': ids['input_ids'].to(device),
            'attention_mask': ids['attention_mask'].to(device)}


def mfu_rows(batch: int, repeats: int, device, peak: float) -> tuple[list, dict]:
    "MFU of memclip-base and of the ViT-B/16 CLIP; also the ViT-B/16 pair (memvlm, open_clip) and its batch for later."
    from memvlm.models import create_model
    rows = []
    base = create_model('memclip-base', vocab_size=49408).to(device).train()
    b16, reference = pretrained_pair({'open_clip': 'ViT-B-16'}, 0)
    b16, reference = b16.to(device).train(), reference.to(device).train()
    for name, model in (('memclip-base', base), ('memclip-vit-b-16', b16)):
        b = photo_batch(batch, device, model.config.context_length)  # the last: ViT-B/16's, open_clip's 77 tokens
        flops = step_flops(model, b, 'bf16', device)
        seconds = median(interleaved_times({name: memvlm_step(model, b, 'bf16')}, repeats=repeats)[name])
        rows.append({'model': name, 'batch': batch, 'ms_per_step': 1000 * seconds, 'tflops': flops / seconds / 1e12,
                     'mfu': flops / seconds / peak})
    return rows, {'memvlm': b16, 'open_clip': reference, 'batch': b}


def loader_images_per_s(workers: int, photos: int, batch: int, device, shards: bool = False) -> float:
    """memvlm's training pipeline on JPEG photos at 224 px, through to augmented batches on `device`: from a CSV of
    files, or (`shards`) from the same photos as webdataset shards (eight, so that each worker reads its own)."""
    from memvlm.data import BatchAugment, CaptionTokenizer, ImageTextDataset, image_transform, load_csv_captions, make_loader
    from memvlm.models import OPENAI_MEAN, OPENAI_STD
    from dataloader import shard_loader
    with tempfile.TemporaryDirectory() as folder:
        rows = load_csv_captions(write_photos(folder, photos))['train']
        tok = CaptionTokenizer.build([c for caps in rows['captions'] for c in caps], 77, 'full')
        ds = ImageTextDataset(rows, tok, image_transform(224, resize='crop', uint8=True))
        loader = shard_loader(rows, tok, workers, batch, Path(folder) / 'shards') if shards else \
            make_loader(ds, batch, train=True, num_workers=workers)
        augment, seen = BatchAugment(OPENAI_MEAN, OPENAI_STD).to(device), 0
        for epoch in range(2):  # the first epoch warms the workers and the page cache; the second is timed
            start = time.perf_counter()
            for b in loader:
                augment(b['image'].to(device, non_blocking=True)); seen += len(b['image']) * epoch
            sync()
        return seen / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--batch', type=int, default=256)
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--workers', type=int, default=8)
    p.add_argument('--photos', type=int, default=2048)
    p.add_argument('--device', default='cuda')
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print(json.dumps({'gpu': None, 'error': 'no CUDA device: the GPU check needs one (--device cpu tries the code)'}))
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device, 'bf16')
    rows, pair = mfu_rows(args.batch, args.repeats, device, peak)
    steps = {'memvlm': memvlm_step(pair['memvlm'], pair['batch'], 'bf16'),
             'open_clip': open_clip_step(pair['open_clip'], pair['batch'], 77, 'bf16')}
    times = interleaved_times(steps, repeats=args.repeats)
    step_s = {k: median(v) for k, v in times.items()}
    loader = loader_images_per_s(args.workers, args.photos, args.batch, device)
    shard_loader = loader_images_per_s(args.workers, args.photos, args.batch, device, shards=True)
    consumed = args.batch / step_s['memvlm']
    print(f'\nbf16 on {machine()}; matmul peak {peak / 1e12:.1f} TFLOP/s')
    print_table(rows, ['model', 'batch', 'ms_per_step', 'tflops', 'mfu'],
                {'ms_per_step': '{:.1f}', 'tflops': '{:.1f}', 'mfu': '{:.1%}'})
    summary = {'device': machine(), 'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
               'peak_tflops_bf16': round(peak / 1e12, 1), 'batch': args.batch,
               'mfu_memclip_base': round(rows[0]['mfu'], 4), 'mfu_vit_b16': round(rows[1]['mfu'], 4),
               'steps_per_s_memvlm': round(1 / step_s['memvlm'], 2), 'steps_per_s_open_clip': round(1 / step_s['open_clip'], 2),
               'speedup_vs_open_clip': round(step_s['open_clip'] / step_s['memvlm'], 3),
               'loader_images_per_s': round(loader, 1), 'step_images_per_s': round(consumed, 1),
               'loader_over_step': round(loader / consumed, 2), 'workers': args.workers,
               'shard_loader_images_per_s': round(shard_loader, 1), 'shard_loader_over_step': round(shard_loader / consumed, 2)}
    print(f"ViT-B/16 MFU {summary['mfu_vit_b16']:.1%} (target >= 45% on H100/H200), {summary['speedup_vs_open_clip']:.2f}x "
          f"open_clip's step; loader {summary['loader_over_step']:.2f}x what the step consumes "
          f"({summary['shard_loader_over_step']:.2f}x from shards)")
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
