"""Model FLOP utilisation: achieved FLOP/s of memvlm's training step against this machine's matmul peak, measured in the same run.

FLOPs per step are counted by torch.utils.flop_counter.FlopCounterMode over one forward and backward pass (matrix products,
convolutions and attention; the optimizer's elementwise work is not counted, as in the usual MFU definition). The peak is the
best FLOP/s of large square matrix products in the step's precision, measured before and after the steps; the larger is kept.
Runs on CUDA when there is a GPU (bf16 by default there), else on the CPU (fp32: this CPU's bf16 matmuls are no faster).

Prints a table and, last, one line of JSON: {"mfu", "device", ...}; "mfu" is for the first model listed (by default the
digits job, memclip-tiny as `memvlm train` builds it).
Usage: python benchmarks/mfu.py [--device cpu|cuda] [--precision fp32|bf16] [--models memclip-tiny vit-s-32-cpu] [--repeats 5]
"""
import argparse
import json
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_utils import TOWERS, default_memory_tokens, digits_batch, interleaved_times, machine, median, memvlm_model, memvlm_step, print_table, sync

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def matmul_peak(device: torch.device, precision: str, seconds: float = 1.0) -> float:
    "Best FLOP/s of n×n matrix products on `device` in `precision` over about `seconds` (n = 8192 on a GPU, 1024 on a CPU)."
    n = 8192 if device.type == 'cuda' else 1024
    a, b = (torch.randn(n, n, device=device, dtype=DTYPES[precision]) for _ in range(2))
    for _ in range(2): a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        sync(); start = time.perf_counter()
        for _ in range(4): a @ b
        sync(); best = max(best, 4 * 2 * n ** 3 / (time.perf_counter() - start))
    return best


def build(name: str, device: torch.device):
    "A model and one real batch: 'memclip-tiny' as `memvlm train` builds it (compact vocabulary), or a size of bench_utils.TOWERS."
    from memvlm.config import RunConfig
    from memvlm.data import CaptionTokenizer, ImageTextDataset, image_transform, load_digits_captions, make_loader
    from memvlm.models import create_model
    if name in TOWERS:
        t = TOWERS[name]
        return memvlm_model(t, default_memory_tokens()), digits_batch(t['batch_size'], t['image_size'], t['context_length'])
    model = create_model(name)
    data = load_digits_captions()
    texts = [c for caps in data['train']['captions'] for c in caps]
    tok = CaptionTokenizer.build(texts, model.config.context_length, RunConfig().data.vocab)
    model = create_model(name, vocab_size=tok.vocab_size)
    ds = ImageTextDataset(data['train'], tok, image_transform(model.config.image_size, train=True))
    return model, next(iter(make_loader(ds, RunConfig().train.batch_size, train=True)))


def step_flops(model, batch: dict, precision: str, device: torch.device) -> int:
    "FLOPs of one forward and backward pass of memvlm's default step function on `batch`."
    from memvlm.engine import autocast_context
    from memvlm.losses import create_loss
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast_context(device, precision):
            loss, _ = create_loss(model)(model(batch['image'], batch['input_ids'], batch.get('attention_mask')), batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--precision', choices=list(DTYPES), default=None, help='default: bf16 on CUDA, fp32 on the CPU')
    p.add_argument('--models', nargs='+', default=None, help="'memclip-tiny', 'memclip-small', 'memclip-base' or a size of bench_utils.TOWERS")
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    precision = args.precision or ('bf16' if device.type == 'cuda' else 'fp32')
    names = args.models or (['memclip-tiny', 'vit-s-32-cpu'] + (['memclip-base'] if device.type == 'cuda' else []))
    peak = matmul_peak(device, precision)
    rows = []
    for name in names:
        torch.manual_seed(0)
        model, batch = build(name, device)
        model.to(device).train()
        flops = step_flops(model, batch, precision, device)
        seconds = median(interleaved_times({name: memvlm_step(model, batch, precision)}, repeats=args.repeats)[name])
        rows.append({'model': name, 'batch': len(batch['image']), 'gflop_per_step': flops / 1e9, 'ms_per_step': 1000 * seconds,
                     'tflops': flops / seconds / 1e12})
    peak = max(peak, matmul_peak(device, precision))  # again after the steps: load on a shared machine drifts
    for r in rows: r['mfu'] = r['tflops'] * 1e12 / peak
    print(f'\n{precision} on {machine()}; measured matmul peak {peak / 1e12:.3f} TFLOP/s')
    print_table(rows, ['model', 'batch', 'gflop_per_step', 'ms_per_step', 'tflops', 'mfu'],
                {'gflop_per_step': '{:.2f}', 'ms_per_step': '{:.1f}', 'tflops': '{:.4f}', 'mfu': '{:.1%}'})
    summary = {'mfu': round(rows[0]['mfu'], 4), 'device': machine(), 'precision': precision, 'peak_tflops': round(peak / 1e12, 4),
               'models': {r['model']: {'mfu': round(r['mfu'], 4), 'tflops': round(r['tflops'], 4), 'ms_per_step': round(r['ms_per_step'], 1)} for r in rows}}
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
