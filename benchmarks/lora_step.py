"""Trainable parameters and seconds per optimiser step of fine-tuning open_clip's ViT-B/32 in a MemoryCLIP: full
fine-tuning, LiT (the image tower locked), and LoRA rank 8 through peft (`memvlm.lora`) in both towers and beside a
locked image tower.

Every system is the same model (`memclip-vit-b-32` with random weights, no download, 0 memory tokens unless
`--memory-tokens`) prepared by the Trainer's own `prepare_model` from the run options each stands for, and steps as the
Trainer does (forward, the CLIP loss, backward, clipping, fused AdamW over the trainable parameters), on one real
digits-captions batch at 224 px, fp32 on the CPU (or whatever `--device` says). The systems run interleaved in one
process (full, LiT, LoRA, LoRA + LiT, full, ...) after a warm-up step each, and medians are compared; on a shared machine
the absolute times drift with the others' load, the ratios less.

Prints a table and, last, one line of JSON: {"systems": {name: {"options", "trainable", "trainable_fraction",
"optimizer_state_mb", "step_seconds", "speedup_vs_full"}}, "batch_size", "image_size", "machine", ...};
`--json-out PATH` also writes it there (the docs read nbs/images/lora_step.json).
Usage: python benchmarks/lora_step.py [--batch-size 16] [--repeats 3] [--rank 8] [--targets attn] [--json-out PATH]
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from bench_utils import digits_batch, interleaved_times, machine, median, memvlm_step, print_table


def systems(rank: int, targets: str) -> dict:
    "The run options of each system compared."
    lora = {'lora_rank': rank, 'lora_targets': targets}
    return {'full fine-tune': {}, 'LiT (lock_image)': {'lock_image': True}, f'LoRA r{rank}': lora,
            f'LoRA r{rank} + lock_image': {**lora, 'lock_image': True}}


def prepared(options: dict, memory_tokens: int, device: torch.device):
    "memclip-vit-b-32 (random weights, seed 0) as the Trainer prepares it for these run options."
    from memvlm.config import TrainConfig
    from memvlm.models import create_model
    from memvlm.training import prepare_model
    torch.manual_seed(0)
    model = create_model('memclip-vit-b-32', pretrained='', memory_tokens=memory_tokens)
    return prepare_model(model, TrainConfig(device=str(device), **options), device)[0].train()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--repeats', type=int, default=3, help='timed steps per system, after one warm-up step each')
    p.add_argument('--rank', type=int, default=8)
    p.add_argument('--targets', default='attn', help='lora_targets: attn, mlp or attn,mlp')
    p.add_argument('--memory-tokens', type=int, default=0)
    p.add_argument('--device', default='cpu')
    p.add_argument('--json-out', type=Path, help='also write the JSON here (e.g. nbs/images/lora_step.json)')
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights loaded": meant
    device, start = torch.device(args.device), time.time()
    batch = digits_batch(args.batch_size, 224, 77)
    options = systems(args.rank, args.targets)
    models = {name: prepared(o, args.memory_tokens, device) for name, o in options.items()}
    steps = {name: memvlm_step(m, batch) for name, m in models.items()}
    times = interleaved_times(steps, repeats=args.repeats, warmup=1)
    full = median(times['full fine-tune'])
    result = {}
    for name, model in models.items():
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result[name] = {'options': options[name], 'trainable': trainable, 'total': total,
                        'trainable_fraction': trainable / total, 'optimizer_state_mb': 8 * trainable / 1e6,
                        'step_seconds': median(times[name]), 'speedup_vs_full': full / median(times[name])}
    rows = [{'system': n, **r} for n, r in result.items()]
    print(f'memclip-vit-b-32 (random weights), batch {args.batch_size} at 224 px, fp32, {machine()}, median of '
          f'{args.repeats} interleaved steps each')
    print_table(rows, ['system', 'trainable', 'trainable_fraction', 'optimizer_state_mb', 'step_seconds', 'speedup_vs_full'],
                {'trainable': '{:,}', 'trainable_fraction': '{:.2%}', 'optimizer_state_mb': '{:.1f}',
                 'step_seconds': '{:.2f}', 'speedup_vs_full': '{:.2f}x'})
    out = {'systems': result, 'model': 'memclip-vit-b-32', 'memory_tokens': args.memory_tokens,
           'batch_size': args.batch_size, 'image_size': 224, 'precision': 'fp32', 'repeats': args.repeats,
           'machine': machine(), 'seconds': time.time() - start,
           'command': 'python benchmarks/lora_step.py ' + ' '.join(argv if argv is not None else sys.argv[1:])}
    if args.json_out: args.json_out.write_text(json.dumps(out, indent=1) + '\n')
    print(json.dumps(out))
    return out


if __name__ == '__main__':
    main()
