"""Batches per second the data pipeline delivers against batches per second memvlm's training step consumes.

Two datasets, each through the loader `memvlm train` builds (`make_loader` over an `ImageTextDataset` with the training
transform, augmentation as configured, `DataConfig.num_workers` workers unless --workers says otherwise): the bundled
digits-captions (images decoded from the Arrow table) and a CSV image folder (PNG files written by `write_digits_csv`,
decoded from disk on every read). The step is the digits job's: memclip-tiny with the compact vocabulary, the default batch
size and precision, the Trainer's step function and optimizer, on the loader's own batches. Loader and step are timed
alternately in one process (a training epoch of the loader as the Trainer runs it, then a step, ...) and medians
compared, so load drifts hit both.

Photos: JPEGs of mixed sizes (640x480 to 1280x960, landscape and portrait) read at 224 px, memvlm's training pipeline
(JPEG draft decoding at reduced scale, one resize of the centred square to uint8) against open_clip's own
(open_clip_train's `CsvDataset`, reproduced below because its module needs webdataset, with open_clip's training
`image_transform` and tokenizer), both decoding every image every epoch (memvlm's image cache off); then memvlm with its
cache on (`image_cache_mb`: decoded once), and memvlm reading the same photos from webdataset tar shards (`write_shards`,
as `memvlm shards` writes them; eight shards, so that each worker reads shards of its own as in a set of thousands of
shards of 1,000; streamed by `ShardDataset` through its shuffle buffer, each image decoded every epoch). With a GPU, `memvlm train` augments and normalises each batch there
(`BatchAugment`), so the loader's CPU work is its whole share; the row 'augmenting on the CPU' adds `BatchAugment` in
the main process, as a run without a GPU does. Images per second.

Prints tables and, last, one line of JSON: {"loader_over_step", "photos_over_open_clip", ...}: the smaller of the two
digits datasets' ratios with the default number of workers, and memvlm's photo images/s over open_clip's (the smaller
over the worker counts, cache off, augmentation on the GPU; `photos_over_open_clip_cpu_augment`: augmenting on the CPU);
`shards_over_csv`: images/s reading the photos from shards over reading them from the CSV of files (the smaller over the
worker counts; target >= 1); `stream_over_csv`: the same for the photos streamed as a hub set (`write_hub_folder`, eight
parquet files, read by `datasets` streaming and `StreamDataset`).
Usage: python benchmarks/dataloader.py [--workers 0 2] [--repeats 5] [--photos 256]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bench_utils import interleaved_times, machine, median, memvlm_step, print_table

PHOTO_SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (480, 640), (768, 1024)]


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
        # as memvlm train loads them: uint8 images, decoded and resized once (the cache), augmented per batch
        ds = ImageTextDataset(data['train'], tok, image_transform(32, uint8=True), seed=cfg.train.seed,
                              cache_mb=cfg.data.image_cache_mb)
        out[name] = (make_loader(ds, cfg.train.batch_size, train=True, num_workers=num_workers, seed=cfg.train.seed), tok)
    return out


def write_photos(folder: str, n: int) -> str:
    "`n` JPEGs of mixed sizes (smooth colour fields with noise, so that they compress like photos) and a captions CSV."
    import numpy as np
    from PIL import Image
    rng, rows = np.random.default_rng(0), []
    for i in range(n):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        y, x = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack([np.sin(6 * x + i), np.cos(5 * y - i), np.sin(4 * (x + y))], -1) * 90 + 128
        pixels = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(f'{folder}/photo{i}.jpg', quality=90)
        rows.append(f'photo{i}.jpg,a photo number {i}')
    with open(f'{folder}/photos.csv', 'w') as f: f.write('filepath,caption\n' + '\n'.join(rows) + '\n')
    return f'{folder}/photos.csv'


class OpenClipCsvDataset(torch.utils.data.Dataset):
    "open_clip_train.data.CsvDataset as open_clip has it (a pandas CSV, PIL open, its transforms and tokenizer per item)."
    def __init__(self, input_filename, transforms, img_key='filepath', caption_key='caption', sep=',', tokenizer=None):
        import os
        import pandas as pd
        df = pd.read_csv(input_filename, sep=sep)
        root = os.path.dirname(input_filename)
        self.images, self.captions = [os.path.join(root, p) for p in df[img_key].tolist()], df[caption_key].tolist()
        self.transforms, self.tokenize = transforms, tokenizer
    def __len__(self): return len(self.captions)
    def __getitem__(self, idx):
        from PIL import Image
        return self.transforms(Image.open(str(self.images[idx]))), self.tokenize([str(self.captions[idx])])[0]


def shard_loader(rows, tok, workers: int, batch: int, folder: Path):
    """The same photos written as eight shards in `folder` (`write_shards`, once) and streamed back as `memvlm train`
    reads them."""
    import datasets
    from memvlm.data import (ImageTextData, ImageTextDataset, ShardDataset, image_transform, load_shards, make_loader,
                             write_shards)
    if not (folder / 'manifest.json').is_file():  # every photo a training example (two more stand for the held-out splits)
        splits = {'train': rows, 'validation': rows.select([0]), 'test': rows.select([1])}
        write_shards(ImageTextData(datasets.DatasetDict(splits), 'photos'), folder, shard_size=max(1, len(rows) // 8))
    data = load_shards(folder)
    samples = ImageTextDataset(data['train'], tok, image_transform(224, resize='crop', uint8=True), cache_mb=0)
    return make_loader(ShardDataset(data.stream, samples, batch, num_workers=workers), batch, train=True, num_workers=workers)


def stream_loader(rows, tok, workers: int, batch: int, folder: Path):
    """The same photos written as a hub set is stored (`write_hub_folder`: eight parquet files, once) and streamed back as
    `memvlm train --dataset hf:... --streaming true` reads them (`StreamDataset`, through torchdata's StatefulDataLoader)."""
    import datasets
    from memvlm.data import (ImageTextData, ImageTextDataset, StreamDataset, get_dataset, image_transform, make_loader,
                             write_hub_folder)
    if not (folder / 'README.md').is_file():  # every photo a training example; its own validation and test splits
        splits = {'train': rows, 'validation': rows.select([0]), 'test': rows.select([1])}
        write_hub_folder(ImageTextData(datasets.DatasetDict(splits), 'photos'), folder, files=8)
    data = get_dataset(f'hf:{folder}', streaming=True)
    samples = ImageTextDataset(data['train'], tok, image_transform(224, resize='crop', uint8=True), cache_mb=0)
    return make_loader(StreamDataset(data.stream, samples, batch, num_workers=workers), batch, train=True, num_workers=workers)


def photo_bench(csv: str, workers: int, repeats: int, batch: int = 64) -> list[dict]:
    "Images per second of memvlm's training pipeline (cache off, then on) and of open_clip's, on the same JPEGs at 224 px."
    import open_clip
    from memvlm.data import BatchAugment, CaptionTokenizer, ImageTextDataset, image_transform, load_csv_captions, make_loader
    from memvlm.models import OPENAI_MEAN, OPENAI_STD
    import datasets
    data = load_csv_captions(csv)
    rows = datasets.concatenate_datasets(list(data.splits.values()))  # every photo, as open_clip's CsvDataset reads
    tok = CaptionTokenizer.build([c for caps in rows['captions'] for c in caps], 77, 'full')
    augment = BatchAugment(OPENAI_MEAN, OPENAI_STD)
    def memvlm_loader(cache_mb):
        ds = ImageTextDataset(rows, tok, image_transform(224, resize='crop', uint8=True), cache_mb=cache_mb)
        return make_loader(ds, batch, train=True, num_workers=workers)
    theirs = OpenClipCsvDataset(csv, open_clip.image_transform(224, is_train=True), tokenizer=open_clip.get_tokenizer('ViT-B-32'))
    loaders = {'memvlm': memvlm_loader(0), 'memvlm, augmenting on the CPU': memvlm_loader(0),
               'memvlm, image cache': memvlm_loader(1024), 'memvlm, shards': shard_loader(rows, tok, workers, batch, Path(csv).parent / 'shards'),
               'memvlm, streamed hub set': stream_loader(rows, tok, workers, batch, Path(csv).parent / 'hub'),
               # persistent workers, like memvlm's, so neither pays a start-up per epoch
               'open_clip': torch.utils.data.DataLoader(theirs, batch_size=batch, shuffle=True, num_workers=workers,
                                                        drop_last=True, persistent_workers=workers > 0)}
    def epoch(name):
        def run():
            for b in loaders[name]:
                if name.endswith('on the CPU'): augment(b['image'])  # a run without a GPU; with one, the GPU does this
        return run
    times = interleaved_times({name: epoch(name) for name in loaders}, repeats=repeats, warmup=1)
    n = {name: len(loader) * batch if loader.drop_last else len(loader.dataset) for name, loader in loaders.items()}
    ref = n['open_clip'] / median(times['open_clip'])
    return [{'pipeline': name, 'workers': workers, 'images': n[name], 'images_per_s': n[name] / median(t),
             'over_open_clip': n[name] / median(t) / ref} for name, t in times.items()]


def bench(name: str, loader, tok, repeats: int) -> dict:
    from memvlm.config import RunConfig
    from memvlm.models import create_model
    cfg = RunConfig()
    torch.manual_seed(0)
    from memvlm.data import BatchAugment
    model = create_model(cfg.model.model, vocab_size=tok.vocab_size).train()
    augment = BatchAugment(augment=cfg.data.augment)  # the Trainer's batch transform (on the GPU there; here the CPU)
    first = next(iter(loader))
    step = memvlm_step(model, {**first, 'image': augment(first['image'])}, cfg.train.precision, cfg.train.lr)
    epochs = iter(range(10 ** 6))
    def epoch():  # one epoch, as the Trainer runs it (persistent workers start once, in the warm-up)
        loader.dataset.set_epoch(next(epochs))
        for b in loader: augment(b['image'])
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
    p.add_argument('--photos', type=int, default=512, help='JPEGs in the photo case (0: skip it)')
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
    if args.photos:
        with tempfile.TemporaryDirectory() as folder:
            csv = write_photos(folder, args.photos)
            photo_rows = [r for w in args.workers for r in photo_bench(csv, w, args.repeats)]
        print(f'\nphotos ({args.photos} JPEGs, 640-1280 px) to 224 px, images per second, medians of {args.repeats} epochs')
        print_table(photo_rows, ['pipeline', 'workers', 'images', 'images_per_s', 'over_open_clip'],
                    {'images_per_s': '{:.1f}', 'over_open_clip': '{:.2f}x'})
        plain = [r for r in photo_rows if r['pipeline'] == 'memvlm']
        summary['photos_over_open_clip'] = round(min(r['over_open_clip'] for r in plain), 2)
        summary['photos_over_open_clip_cpu_augment'] = round(min(
            r['over_open_clip'] for r in photo_rows if r['pipeline'].endswith('on the CPU')), 2)
        summary['photos'] = {f"{r['pipeline']}/workers={r['workers']}": round(r['images_per_s'], 1) for r in photo_rows}
        print(f"memvlm reads photos at {summary['photos_over_open_clip']:.2f}x open_clip's images/s, decoding every time "
              f"(target >= 2x); {summary['photos_over_open_clip_cpu_augment']:.2f}x when it augments on the CPU too")
        by = lambda name: {r['workers']: r['images_per_s'] for r in photo_rows if r['pipeline'] == name}
        summary['shards_over_csv'] = round(min(by('memvlm, shards')[w] / by('memvlm')[w] for w in args.workers), 2)
        print(f"from shards: {summary['shards_over_csv']:.2f}x the images/s of the same photos read from a CSV of files "
              '(target >= 1x)')
        summary['stream_over_csv'] = round(min(by('memvlm, streamed hub set')[w] / by('memvlm')[w] for w in args.workers), 2)
        print(f"streamed as a hub set: {summary['stream_over_csv']:.2f}x the images/s of the CSV of files")
    print(json.dumps(summary))


if __name__ == '__main__':
    sys.exit(main())
