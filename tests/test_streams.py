"""Issue 28, item 2: a streamed hub set (a local folder of parquet files, read by `datasets` as the hub's are) trains on all
of it, refuses what a stream cannot give, and can be written whole as shards."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memvlm.config import RunConfig, update_config
from memvlm.data import (STREAM_HEAD, HubStream, SkipLog, StreamDataset, get_dataset, load_digits_captions, load_shards,
                         write_hub_folder)
from memvlm.recipes import _loaders, prepare_run

TINY = {'epochs': 1, 'vision_depth': 1, 'text_depth': 1, 'vision_width': 32, 'text_width': 32, 'embed_dim': 16,
        'device': 'cpu', 'batch_size': 128}


@pytest.fixture(scope='module')
def hub(tmp_path_factory) -> Path:
    "The bundled digits as a hub folder: more training examples (1,257) than a stream's first reading (1,024)."
    return write_hub_folder(load_digits_captions(), tmp_path_factory.mktemp('hub') / 'digits', files=4)


def streamed_run(hub, tmp_path, **options):
    cfg = update_config(RunConfig(), {**TINY, 'dataset': f'hf:{hub}', 'streaming': True, 'output_dir': str(tmp_path),
                                      **options})
    return prepare_run(cfg)


def test_a_streamed_run_trains_on_every_training_example(hub, tmp_path):
    run = streamed_run(hub, tmp_path, vocab='full')
    assert isinstance(run.data.stream, HubStream) and len(run.data['train']) == STREAM_HEAD < run.data.stream.total
    loader = _loaders(run).train
    assert isinstance(loader.dataset, StreamDataset) and type(loader).__name__ == 'StatefulDataLoader'
    loader.dataset.set_epoch(0)
    keys = [k for batch in loader for k in batch['key']]
    assert len(keys) == len(set(keys)) == run.data.stream.total == 1257


def test_a_compact_vocabulary_of_a_stream_is_refused(hub, tmp_path):
    "Its captions are not known before training: a compact vocabulary would be built from the first ones only."
    with pytest.raises(ValueError, match='MEMVLM_VOCAB=full'): streamed_run(hub, tmp_path, vocab='compact')


def test_without_torchdata_the_error_says_what_to_install(hub, tmp_path, monkeypatch):
    run = streamed_run(hub, tmp_path, vocab='full')
    monkeypatch.setitem(sys.modules, 'torchdata.stateful_dataloader', None)  # as if torchdata were not installed
    with pytest.raises(ImportError, match='pip install torchdata'): _loaders(run)


def test_a_stream_written_as_shards_holds_every_example(hub, tmp_path):
    "`memvlm shards --streaming` reads the training examples from the stream: all of them, not the first reading's."
    env = {k: v for k, v in os.environ.items() if not k.startswith('MEMVLM_')}
    exe = Path(sys.executable).with_name('memvlm')
    out = subprocess.run([str(exe), 'shards', '--dataset', f'hf:{hub}', '--streaming', '--output', 'shards',
                          '--shard-size', '500'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((tmp_path / 'shards' / 'manifest.json').read_text())
    digits = load_digits_captions()
    assert manifest['splits'] == {s: len(digits[s]) for s in ('train', 'validation', 'test')}, manifest['splits']
    shards = load_shards(tmp_path / 'shards')
    assert shards.stream.total == len(digits['train']) and shards.classnames == digits.classnames


def test_a_hub_folder_holds_its_images(tmp_path):
    "`write_hub_folder` puts the images' bytes in its files: the folder streams after the photos it came from are gone."
    import shutil
    from memvlm.data import write_digits_csv
    csv = write_digits_csv(tmp_path / 'photos', per_class=6)
    hub = write_hub_folder(get_dataset(str(csv)), tmp_path / 'hub', files=2)
    shutil.rmtree(tmp_path / 'photos')
    data = get_dataset(f'hf:{hub}', streaming=True)
    assert len(list(data.stream.examples(SkipLog()))) == data.stream.total == len(data['train'])
