"""Seconds per optimiser step of memvlm's `MemoryCLIP` against open_clip's `CLIP` + `ClipLoss` on identical towers.

For each tower size in bench_utils.TOWERS (open_clip's ViT-S-32 cut to 4 layers per tower, the digits size, and with
`--sizes vit-b-32` a fine-tune step of the whole pretrained-CLIP ViT-B/32 with 0 and 64 gated memory tokens) both systems
get the same real digits-captions batch, the same precision, AdamW with the same hyperparameters, and gradient clipping;
each steps as its own training loop does (memvlm: the Trainer's step function and optimizer; open_clip: open_clip_train's
AdamW and ClipLoss on token ids padded to the full context, as its text tower needs). Three systems run interleaved in one
process: memvlm with 0 memory tokens, memvlm with its default memory tokens, open_clip. Ratio = open_clip time / memvlm time.

Prints a table and, last, one line of JSON: {"speedup_vs_openclip", "speedup_with_memory_tokens", ...}: the worst of the
tower sizes run (per-size figures under "sizes").
Usage: python benchmarks/train_step_vs_openclip.py [--sizes vit-s-32-cpu digits] [--repeats 7] [--precision fp32|bf16]
       [--compile] [--profile]
"""
import argparse
import json
import sys

import torch

from bench_utils import (TOWERS, default_memory_tokens, digits_batch, interleaved_times, machine, median, memvlm_model,
                         memvlm_step, open_clip_model, open_clip_step, optimizer_name, pretrained_pair, print_table)


def profile_steps(steps: dict, rows: int = 12):
    "Where each system's step spends its time (torch.profiler, operators by self time)."
    from torch.profiler import ProfilerActivity, profile
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])) as prof:
            for _ in range(3): step()
        print(f'\n--- profile: {name} (3 steps) ---')
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows))


COMPACT = 'memvlm compact vocab'


def compact_vocab(batch: dict, context_length: int) -> tuple[dict, int]:
    "`batch` re-tokenized with the compact vocabulary `memvlm train` builds for digits-captions, and that vocabulary's size."
    from memvlm.data import CaptionTokenizer, load_digits_captions
    texts = [c for caps in load_digits_captions()['train']['captions'] for c in caps]
    tok = CaptionTokenizer.build(texts, context_length, 'compact')
    enc = tok(batch['caption'])
    length = int(enc['attention_mask'].sum(1).max())
    return {**batch, 'input_ids': enc['input_ids'][:, :length], 'attention_mask': enc['attention_mask'][:, :length]}, tok.vocab_size


def bench_size(size: str, repeats: int, precision: str, device: torch.device, compile: bool, profile: bool, fused=None,
               compact: bool = True) -> dict:
    towers = TOWERS[size]
    torch.manual_seed(0)
    batch = digits_batch(towers['batch_size'], towers['image_size'], towers['context_length'])
    if 'open_clip' in towers:  # fine-tuning a pretrained CLIP: memvlm on open_clip's towers, with 0 and 64 memory tokens
        memvlm, reference = pretrained_pair(towers, 0)
        models = {'memvlm': memvlm, 'memvlm +64 mem': pretrained_pair(towers, 64)[0], 'open_clip': reference}
        compact = False  # open_clip's text tower reads open_clip's own token ids
    else:
        models = {'memvlm': memvlm_model(towers, 0), f'memvlm +{default_memory_tokens()} mem':
                  memvlm_model(towers, default_memory_tokens()), 'open_clip': open_clip_model(towers)}
    if compact:  # memvlm as `memvlm train` builds it: the same towers over a vocabulary of the captions' tokens only
        compact_batch, vocab = compact_vocab(batch, towers['context_length'])
        models[COMPACT] = memvlm_model(towers, default_memory_tokens(), vocab)
    for m in models.values(): m.to(device).train()
    if compile:
        for m in models.values(): m.compile()  # in place: the module keeps its class and forward signature
    steps = {name: (open_clip_step(m, batch, towers['context_length'], precision) if name == 'open_clip' else
                    memvlm_step(m, compact_batch if name == COMPACT else batch, precision, fused=fused)) for name, m in models.items()}
    if profile: profile_steps(steps)
    times = interleaved_times(steps, repeats=repeats)
    ref = median(times['open_clip'])
    rows = [{'towers': size, 'system': name, 'batch': towers['batch_size'], 'text_len': batch['input_ids'].shape[1] if name != 'open_clip' else towers['context_length'],
             'vocab': models[name].config.vocab_size if name != 'open_clip' else models[name].vocab_size,
             'params_M': sum(p.numel() for p in models[name].parameters()) / 1e6, 'optimizer': optimizer_name(steps[name].optimizer), 'ms_median': 1000 * median(t),
             'ms_min': 1000 * min(t), 'speedup': ref / median(t)} for name, t in times.items()]
    return {'rows': rows, 'speedup_vs_openclip': rows[0]['speedup'], 'speedup_with_memory_tokens': rows[1]['speedup'],
            'speedup_compact_vocab': rows[3]['speedup'] if compact else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', nargs='+', default=['vit-s-32-cpu', 'digits'], choices=list(TOWERS),
                   help='tower sizes (vit-b-32: a fine-tune of the whole ViT-B/32 CLIP, minutes on a CPU)')
    p.add_argument('--repeats', type=int, default=7, help='timed steps per system (median reported)')
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'], help='the same for both systems')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--compile', action='store_true', help='torch.compile every model first (slow to compile on a CPU)')
    p.add_argument('--profile', action='store_true', help='print torch.profiler tables of each step first')
    p.add_argument('--fused', choices=['trainer', 'on', 'off'], default='trainer',
                   help="memvlm's AdamW kernel: as its Trainer builds it (default), or forced fused / torch's default")
    args = p.parse_args()
    device = torch.device(args.device)
    fused = {'trainer': None, 'on': True, 'off': False}[args.fused]
    results = {s: bench_size(s, args.repeats, args.precision, device, args.compile, args.profile, fused) for s in args.sizes}
    print(f'\nmedian of {args.repeats} interleaved steps, {args.precision}, {machine()}')
    print_table([r for res in results.values() for r in res['rows']],
                ['towers', 'system', 'batch', 'text_len', 'vocab', 'params_M', 'optimizer', 'ms_median', 'ms_min', 'speedup'],
                {'params_M': '{:.2f}', 'ms_median': '{:.1f}', 'ms_min': '{:.1f}', 'speedup': '{:.2f}x'})
    worst = lambda key: min(r[key] for r in results.values())  # the headline holds for every size, not just the best
    summary = {'speedup_vs_openclip': round(worst('speedup_vs_openclip'), 3), 'speedup_with_memory_tokens': round(worst('speedup_with_memory_tokens'), 3),
               'precision': args.precision, 'device': str(device), 'repeats': args.repeats,
               'sizes': {s: {'speedup_vs_openclip': round(r['speedup_vs_openclip'], 3), 'speedup_with_memory_tokens': round(r['speedup_with_memory_tokens'], 3),
                             'speedup_compact_vocab': r['speedup_compact_vocab'] and round(r['speedup_compact_vocab'], 3),
                             'memory_token_cost': round(r['rows'][1]['ms_median'] / r['rows'][0]['ms_median'] - 1, 3),
                             'memvlm_ms': round(r['rows'][0]['ms_median'], 1), 'open_clip_ms': round(r['rows'][2]['ms_median'], 1)} for s, r in results.items()}}
    print(f"\nmemvlm is at least {summary['speedup_vs_openclip']:.2f}x open_clip's speed per step on every tower size "
          f"({summary['speedup_with_memory_tokens']:.2f}x with memory tokens); target >= 1.2x, and >= 1.0x with memory tokens")
    if 'vit-b-32' in summary['sizes']:
        v = summary['sizes']['vit-b-32']
        print(f"ViT-B/32 fine-tune: {v['speedup_vs_openclip']:.2f}x open_clip's step (target >= 1.1x); 64 memory tokens "
              f"cost {100 * v['memory_token_cost']:.1f}% over none (target <= 15%)")
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
