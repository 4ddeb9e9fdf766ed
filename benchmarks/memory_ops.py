"""Episodic memory write and read of 100, 1,000 and 10,000 items: memvlm's `EpisodicMemory` against a naive implementation.

The sizes are those `MemoryCLIP.memorize` uses with memclip-tiny (32 slots of [image; text] codes, 2 x 64 dims).
The naive memory does the same least-squares algebra one item at a time, recomputing the exact (SVD) pseudo-inverse of the
memory for every item: write M ← M + pinv(w)(z − w M) with w = z pinv(M), read w M with w = z pinv(M). memvlm writes an
episode in one batched solve and reads a batch of queries with one pseudo-inverse. Both start from the same prior; queries
for reads are a separate set from the written items. Both run interleaved in one process; medians of several repeats
(at 10,000 items the naive memory is timed once, on the first 1,000 items, and scaled by 10: its cost per item is constant). The last columns are each memory's mean relative
error reading back what it was written (the batched solve is least squares over the whole episode, the naive one is
sequential, so the two differ; they agree when items ≤ slots).

Prints a table and, last, one line of JSON: {"write_1000_ms", "speedup_vs_naive", ...} ("speedup_vs_naive": writing 1,000).
Usage: python benchmarks/memory_ops.py [--slots 32] [--dim 128] [--sizes 100 1000 10000] [--repeats 5] [--device cpu]
"""
import argparse
import json
import sys

import torch

from bench_utils import interleaved_times, machine, median, print_table


class NaiveMemory:
    "The same memory written and read one item at a time, with the exact pseudo-inverse recomputed for each item."
    def __init__(self, prior: torch.Tensor): self.prior, self.memory = prior, prior.clone()
    def forget(self): self.memory = self.prior.clone()

    def write(self, z: torch.Tensor):
        m = self.memory
        for item in z.split(1):
            w = item @ torch.linalg.pinv(m)
            m = m + torch.linalg.pinv(w) @ (item - w @ m)
        self.memory = m

    def read(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([(item @ torch.linalg.pinv(self.memory)) @ self.memory for item in z.split(1)])


def episodic_memory(slots: int, dim: int, device: torch.device):
    try: from memvlm.memory import EpisodicMemory
    except ImportError as e:
        raise SystemExit(f'memvlm.memory has no EpisodicMemory yet ({e}); this benchmark needs the episodic memory of 05_memory') from e
    return EpisodicMemory(slots, dim).to(device)


def readback_error(mem, z: torch.Tensor) -> float:
    "Mean relative error of reading back the written items `z`."
    with torch.no_grad(): out = mem.read(z)
    return ((out - z).norm(dim=-1) / z.norm(dim=-1)).mean().item()


def bench(n: int, slots: int, dim: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(n)
    fast = episodic_memory(slots, dim, device)
    naive = NaiveMemory(fast.current().detach().clone())
    items, queries = torch.randn(n, dim, device=device), torch.randn(n, dim, device=device)
    naive_repeats = 1 if n >= 10_000 else repeats

    # at 10,000 items the naive memory would take minutes: it is timed on the first 1,000 (its cost per item is constant) and scaled
    naive_items, scale = (items[:1000], n / 1000) if n > 1000 else (items, 1.0)
    def write(mem, z): return lambda: (mem.forget(), mem.write(z))
    times = interleaved_times({'memvlm': write(fast, items), 'naive': write(naive, naive_items)}, repeats=naive_repeats, warmup=1)
    times['naive'] = [t * scale for t in times['naive']]
    if naive_repeats < repeats: times['memvlm'] += interleaved_times({'memvlm': write(fast, items)}, repeats=repeats - naive_repeats, warmup=0)['memvlm']
    fast.forget(); fast.write(items); naive.forget(); naive.write(items)  # both hold the episode for the reads
    with torch.no_grad():
        reads = interleaved_times({'memvlm': lambda: fast.read(queries), 'naive': lambda: naive.read(queries[:1000])}, repeats=naive_repeats, warmup=1)
        reads['naive'] = [t * scale for t in reads['naive']]
        if naive_repeats < repeats: reads['memvlm'] += interleaved_times({'memvlm': lambda: fast.read(queries)}, repeats=repeats - naive_repeats, warmup=0)['memvlm']
        read_diff = (fast.read(queries[:100]) - naive.read(queries[:100])).abs().max().item()
    w, r = {k: median(v) for k, v in times.items()}, {k: median(v) for k, v in reads.items()}
    return {'items': n, 'write_ms': 1000 * w['memvlm'], 'naive_write_ms': 1000 * w['naive'], 'write_items_per_s': n / w['memvlm'],
            'write_speedup': w['naive'] / w['memvlm'], 'read_ms': 1000 * r['memvlm'], 'naive_read_ms': 1000 * r['naive'],
            'read_items_per_s': n / r['memvlm'], 'read_speedup': r['naive'] / r['memvlm'], 'readback_err': readback_error(fast, items),
            'naive_readback_err': readback_error(naive, items), 'read_max_diff': read_diff}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--slots', type=int, default=32, help='memory slots K (must be < dim)')
    p.add_argument('--dim', type=int, default=128, help='code width C (MemoryCLIP.memorize writes [image; text] codes: 2 x 64 dims in memclip-tiny)')
    p.add_argument('--sizes', type=int, nargs='+', default=[100, 1000, 10000])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    device = torch.device(args.device)
    rows = [bench(n, args.slots, args.dim, args.repeats, device) for n in args.sizes]
    print(f'\nEpisodicMemory({args.slots} slots, {args.dim} dims) on {machine()}; medians of {args.repeats} repeats (naive at 10,000: 1,000 timed once, x10)')
    print_table(rows, ['items', 'write_ms', 'naive_write_ms', 'write_items_per_s', 'write_speedup', 'read_ms', 'naive_read_ms',
                       'read_items_per_s', 'read_speedup', 'readback_err', 'naive_readback_err'],
                {'write_ms': '{:.2f}', 'naive_write_ms': '{:.1f}', 'write_items_per_s': '{:,.0f}', 'write_speedup': '{:.0f}x',
                 'read_ms': '{:.2f}', 'naive_read_ms': '{:.1f}', 'read_items_per_s': '{:,.0f}', 'read_speedup': '{:.0f}x',
                 'readback_err': '{:.3f}', 'naive_readback_err': '{:.3f}'})
    at = {r['items']: r for r in rows}
    ref = at.get(1000, rows[0])
    summary = {'write_1000_ms': round(ref['write_ms'], 3), 'speedup_vs_naive': round(ref['write_speedup'], 1),
               'read_1000_ms': round(ref['read_ms'], 3), 'read_speedup_vs_naive': round(ref['read_speedup'], 1), 'items': ref['items'],
               'slots': args.slots, 'dim': args.dim, 'device': str(device),
               'by_items': {r['items']: {'write_ms': round(r['write_ms'], 3), 'read_ms': round(r['read_ms'], 3),
                                         'write_speedup': round(r['write_speedup'], 1), 'read_speedup': round(r['read_speedup'], 1)} for r in rows}}
    print(f"\nwriting {ref['items']} items takes {ref['write_ms']:.2f} ms, {ref['write_speedup']:.0f}x faster than the naive memory "
          f"(targets: <= 20 ms and >= 5x)")
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
