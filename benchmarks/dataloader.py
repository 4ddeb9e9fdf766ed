"""Batches per second the data pipeline delivers against batches per second memvlm's training step consumes.

Two datasets, each through the loader `memvlm train` builds (`make_loader` over an `ImageTextDataset` with the training
transform, augmentation as configured, `DataConfig.num_workers` workers unless --workers says otherwise): the bundled
digits-captions (images decoded from the Arrow table) and a CSV image folder (PNG files written by `write_digits_csv`,
decoded from disk on every read). The step is the digits job's: memclip-tiny with the compact vocabulary, the default batch
size and precision, the Trainer's step function and optimizer, on the loader's own batches. Loader and step are timed
alternately in one process (a training epoch of the loader from a fresh iterator, as the Trainer runs it, then a step, ...)
and medians compared, so load drifts hit both.

Prints a table and, last, one line of JSON: {"loader_over_step", ...}: the smaller of the two datasets' ratios with the
default number of workers.
Usage: python benchmarks/dataloader.py [--workers 0 2] [--repeats 5]
"""
import argparse
import json
import sys
import tempfile

import torch

from bench_utils import interleaved_times, machine, median, memvlm_step, print_table


def loaders(folder: str, num_workers: int):
    "The training loaders of digits-captions and of a CSV image folder, with the default run's tokenizer and transform."
    from memvlm.config import RunConfig
    from memvlm.data import (CaptionTokenizer, ImageTextDataset, image_transform, load_csv_captions, load_digits_captions,
                             make_loader, write_digits_csv)
    cfg = RunConfig()
    out = {}
    for name, data in (('digits-captions', load_digits_captions(seed=cfg.train.seed)),
                       ('csv-folder', load_csv_captions(write_digits_csv(folder, per_class=100), seed=cfg.train.seed))):
        texts = [c for caps in data['train']['captions'] for c in caps]
        tok = CaptionTokenizer.build(texts, 16, cfg.data.vocab)
        ds = ImageTextDataset(data['train'], tok, image_transform(32, train=True, augment=cfg.data.augment), seed=cfg.train.seed,
                              cache_mb=cfg.data.image_cache_mb)
        out[name] = (make_loader(ds, cfg.train.batch_size, train=True, num_workers=num_workers, seed=cfg.train.seed), tok)
    return out


def bench(name: str, loader, tok, repeats: int) -> dict:
    from memvlm.config import RunConfig
    from memvlm.models import create_model
    cfg = RunConfig()
    torch.manual_seed(0)
    model = create_model(cfg.model.model, vocab_size=tok.vocab_size).train()
    step = memvlm_step(model, next(iter(loader)), cfg.train.precision, cfg.train.lr)
    epochs = iter(range(10 ** 6))
    def epoch():  # one epoch from a fresh iterator, as the Trainer runs it: worker start-up (if any) included
        loader.dataset.set_epoch(next(epochs))
        for _ in loader: pass
    times = interleaved_times({'loader': epoch, 'step': step}, repeats=repeats, warmup=1)
    loader_bps, step_bps = len(loader) / median(times['loader']), 1 / median(times['step'])
    return {'dataset': name, 'workers': loader.num_workers, 'batch': loader.batch_size, 'batches_per_epoch': len(loader), 'loader_batches_per_s': loader_bps,
            'step_batches_per_s': step_bps, 'loader_over_step': loader_bps / step_bps}


def main():
    from memvlm.config import RunConfig
    default_workers = RunConfig().data.num_workers
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--workers', type=int, nargs='+', default=sorted({default_workers, 2}), help='loader worker counts to measure')
    p.add_argument('--repeats', type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for workers in args.workers:
            for name, (loader, tok) in loaders(folder, workers).items():
                rows.append(bench(name, loader, tok, args.repeats))
    print(f'\nmemclip-tiny step vs its loader, medians of {args.repeats} interleaved repeats, {machine()}')
    print_table(rows, ['dataset', 'workers', 'batch', 'batches_per_epoch', 'loader_batches_per_s', 'step_batches_per_s', 'loader_over_step'],
                {'loader_batches_per_s': '{:.1f}', 'step_batches_per_s': '{:.1f}', 'loader_over_step': '{:.1f}x'})
    default = [r for r in rows if r['workers'] == default_workers] or rows
    summary = {'loader_over_step': round(min(r['loader_over_step'] for r in default), 2), 'workers': default[0]['workers'],
               'by_run': {f"{r['dataset']}/workers={r['workers']}": round(r['loader_over_step'], 2) for r in rows}}
    print(f"\nthe pipeline delivers {summary['loader_over_step']:.1f}x the batches the step consumes with {summary['workers']} workers (target >= 5x)")
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
