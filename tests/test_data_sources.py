"""Every data source `memvlm.data.get_dataset` reads, on small data each test writes itself, and `memvlm train --dataset`
end to end on the local formats. The hub is never reached: `memvlm.sources._hub_load` is replaced by a local copy."""
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import memvlm.data as D
import memvlm.sources as S
from memvlm.config import DataConfig
from memvlm.data import (Columns, CaptionTokenizer, ImageTextDataset, ModalityDropout, collate, get_dataset,
                         image_transform, write_digits_csv)

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--epochs', '1', '--batch-size', '8', '--vision-depth', '1', '--text-depth', '1', '--vision-width', '32',
        '--text-width', '32', '--embed-dim', '16', '--quiet']


def n_examples(data): return sum(len(s) for s in data.splits.values())


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    "Each local format, written from the same 40 digit PNGs (4 per class)."
    root = tmp_path_factory.mktemp('sources')
    csv = write_digits_csv(root / 'csv', per_class=4)
    df = pd.read_csv(csv)
    pngs = [root / 'csv' / f for f in df.filepath]
    shutil.copytree(root / 'csv', root / 'kaggle' / 'input' / 'digit-captions')
    df.to_csv(root / 'csv.tsv', sep='\t', index=False)  # paths are relative to the file: csv.tsv sits beside csv/
    (root / 'csv.tsv').write_text((root / 'csv.tsv').read_text().replace('images/', 'csv/images/'))
    df.rename(columns={'filepath': 'img', 'caption': 'text'}).to_json(root / 'pairs.jsonl', orient='records', lines=True)
    (root / 'pairs.jsonl').write_text((root / 'pairs.jsonl').read_text().replace('images\\/', 'csv\\/images\\/'))
    df.assign(filepath='csv/' + df.filepath).to_json(root / 'pairs.json', orient='records')
    table = pd.DataFrame({'png': [p.read_bytes() for p in pngs], 'caption': df.caption, 'label': df.label})
    table.to_parquet(root / 'pairs.parquet')
    datasets.Dataset.from_pandas(table).save_to_disk(root / 'arrow')
    arrow = next((root / 'arrow').glob('*.arrow')); shutil.copy(arrow, root / 'pairs.arrow')
    for p, label in zip(pngs, df.label):
        (root / 'folder' / label).mkdir(parents=True, exist_ok=True); shutil.copy(p, root / 'folder' / label / p.name)
    (root / 'coco' / 'annotations').mkdir(parents=True); shutil.copytree(root / 'csv' / 'images', root / 'coco' / 'val2017')
    coco = {'images': [{'id': i, 'file_name': p.name} for i, p in enumerate(pngs)],
            'annotations': [{'id': i, 'image_id': i, 'caption': c} for i, c in enumerate(df.caption)]}
    (root / 'coco' / 'annotations' / 'captions_val2017.json').write_text(json.dumps(coco))
    feats = datasets.Features({'image': datasets.Image(), 'text': datasets.Value('string'),
                               'label': datasets.ClassLabel(names=sorted(set(df.label)))})
    hf = datasets.Dataset.from_dict({'image': [Image.open(p) for p in pngs], 'text': list(df.caption), 'label': list(df.label)},
                                    features=feats)
    hf.train_test_split(0.25, seed=0).save_to_disk(root / 'saved')
    return root


@pytest.mark.parametrize('source', ['csv/captions.csv', 'csv.tsv', 'pairs.jsonl', 'pairs.json', 'pairs.parquet',
                                    'pairs.arrow', 'folder', 'coco', 'coco/annotations/captions_val2017.json', 'saved'])
def test_each_local_format_loads_all_examples(sources, source):
    data = get_dataset(source, data_dir=sources)
    assert n_examples(data) == 40
    row = data['train'][0]
    assert row['image'].size == (32, 32) and row['captions'][0].strip()
    if source not in ('coco', 'coco/annotations/captions_val2017.json'): assert len(data.classnames) == 10


def test_shipped_sample_and_kaggle_input(sources):
    assert n_examples(get_dataset(str(ROOT / 'data' / 'sample' / 'captions.csv'))) == 60
    data = get_dataset('someone/digit-captions', kaggle_root=sources / 'kaggle' / 'input')
    assert n_examples(data) == 40 and data.name == 'captions'
    with pytest.raises(ValueError, match="unknown dataset 'no-such-set'.*no Kaggle input"):
        get_dataset('no-such-set', kaggle_root=sources / 'kaggle' / 'input')


def test_wrong_column_lists_the_columns(sources):
    with pytest.raises(KeyError, match=r"no caption column 'title'; the columns are \['filepath', 'caption', 'label', 'value', 'tags'\]"):
        get_dataset(str(sources / 'csv' / 'captions.csv'), columns=Columns(caption='title'))
    with pytest.raises(KeyError, match=r"the columns are \['image', 'text', 'label'\]"):
        get_dataset(str(sources / 'saved'), columns=Columns(label='class'))


def test_paths_may_not_escape_the_dataset_root(tmp_path):
    (tmp_path / 'data').mkdir()
    for bad in ('../../etc/passwd', '/etc/passwd', '../outside.png'):
        (tmp_path / 'data' / 'x.csv').write_text(f'filepath,caption\n{bad},a caption\n')
        with pytest.raises(ValueError, match='points outside the dataset folder'): get_dataset(str(tmp_path / 'data' / 'x.csv'))


def test_bad_images_and_captions_are_converted_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 16, 3), dtype=np.uint8))
    variants = {'grey.png': rgb.convert('L'), 'rgba.png': rgb.convert('RGBA'), 'palette.png': rgb.convert('P'),
                'cmyk.jpg': rgb.convert('CMYK'), 'deep.png': Image.fromarray(rng.integers(0, 65535, (24, 16), dtype=np.uint16))}
    for name, im in variants.items(): im.save(tmp_path / name)
    exif = Image.Exif(); exif[0x0112] = 6
    rgb.save(tmp_path / 'rotated.jpg', exif=exif)
    good = list(variants) + ['rotated.jpg']
    (tmp_path / 'zero.png').write_bytes(b'')
    (tmp_path / 'cut.png').write_bytes((tmp_path / 'grey.png').read_bytes()[:100])
    rows = [(f, f'picture {i}') for i, f in enumerate(good * 5)] + [('zero.png', 'zero bytes'), ('cut.png', 'truncated'),
                                                                   ('grey.png', '   ')]
    pd.DataFrame(rows, columns=['filepath', 'caption']).to_csv(tmp_path / 'mixed.csv', index=False)
    with pytest.raises(ValueError, match=r'skipped 3 of 8 examples.*max_skip_fraction=0.05'):
        get_dataset(str(tmp_path / 'mixed.csv'))  # 8 distinct files; the captions of grey.png are grouped
    data = get_dataset(str(tmp_path / 'mixed.csv'), max_skip_fraction=0.5)
    assert dict(data.skips.counts) == {'undecodable image': 2, 'empty caption': 1}  # the blank caption of grey.png too
    assert 'mixed.csv row' in data.skips.summary()
    for split in data.splits.values():
        for row in split:
            img = D.to_rgb(row['image'])
            assert img.mode == 'RGB' and img.size in ((16, 24), (24, 16))
    rot = next(r for s in data.splits.values() for r in s if r['captions'][0] in
               {f'picture {i}' for i in range(5, 30, 6)})
    assert D.to_rgb(rot['image']).size == (24, 16)  # rotated by its EXIF tag
    (tmp_path / 'empty.csv').write_text('filepath,caption\n' + ''.join(f'grey.png,\n' for _ in range(3)) + 'rgba.png,ok\n')
    with pytest.raises(ValueError, match=r'empty caption'): get_dataset(str(tmp_path / 'empty.csv'))


def local_hub(saved):
    def load(name, config=None, split=None, streaming=False, cache_dir=None):
        dd = datasets.load_from_disk(str(saved))
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in dd.items()}) if streaming else dd
    return load


def test_hub_presets_through_a_local_copy(sources, monkeypatch):
    asked = []
    def hub(name, config=None, split=None, streaming=False, cache_dir=None):
        asked.append(name); return local_hub(sources / 'saved')(name, config, split, streaming, cache_dir)
    monkeypatch.setattr(S, '_hub_load', hub)
    for preset in ('mnist-captions', 'animal-faces-captions', 'hf:someone/captions'):
        assert n_examples(get_dataset(preset)) == 40
    assert asked == ['kishore-s-15/mnist-qwen2.5-2B-captions', 'kishore-s-15/animal-faces-captioned', 'someone/captions']
    streamed = get_dataset('mnist-captions', streaming=True, max_samples=10)  # its own test split; validation held out
    assert (streamed.stream.total, len(streamed['validation']), len(streamed['train'])) == (9, 1, 9)
    with pytest.raises(ValueError, match=r'set max_samples \(MEMVLM_MAX_SAMPLES\)'):
        get_dataset('mnist-captions', streaming=True)  # a copy whose card gives no size
    pngs = sorted((sources / 'csv' / 'images').glob('*.png'))[:8]  # Localized Narratives' schema: image, a long caption, extras
    narratives = datasets.Dataset.from_dict({'image': [Image.open(p) for p in pngs], 'image_id': [p.stem for p in pngs],
                                             'caption': [f'In this picture we can see the digit {p.stem}.' for p in pngs],
                                             'voice_recording': [f'{p.stem}.ogg' for p in pngs]}).cast_column('image', datasets.Image())
    monkeypatch.setattr(S, '_hub_load', lambda *a, **k: narratives)
    ln = get_dataset('localized-narratives')
    assert n_examples(ln) == 8 and ln['train'][0]['captions'][0].startswith('In this picture we can see the digit')


def test_url_presets_download_boundedly_and_resume(sources, tmp_path, monkeypatch):
    pngs = sorted((sources / 'csv' / 'images').glob('*.png'))[:20]
    urls = [p.as_uri() for p in pngs[:18]] + [(tmp_path / 'gone-1.png').as_uri(), (tmp_path / 'gone-2.png').as_uri()]
    table = datasets.Dataset.from_dict({'image_url': urls, 'caption': [f'photo {i}' for i in range(20)]})
    monkeypatch.setattr(S, '_hub_load', lambda *a, **k: table)
    cache = tmp_path / 'cache'
    data = get_dataset('conceptual-captions', cache_dir=cache, max_skip_fraction=0.2)
    assert n_examples(data) == 18 and data.skips.counts['undecodable image'] == 2
    assert len(list(cache.glob('*.png'))) == 18 and not list(cache.glob('*.part'))
    copy = tmp_path / 'copy.png'; shutil.copy(pngs[0], copy)
    first = D.download_images([copy.as_uri()], cache); copy.unlink()
    assert D.download_images([copy.as_uri()], cache) == first  # cached: a rerun resumes without fetching again
    karpathy = datasets.Dataset.from_dict({'url': urls[:18], 'sentences': [[{'raw': f'a digit {i}'}, {'raw': 'another'}] for i in range(18)],
                                           'split': ['train'] * 12 + ['val'] * 3 + ['test'] * 3})
    monkeypatch.setattr(S, '_hub_load', lambda *a, **k: karpathy)
    coco = get_dataset('coco-captions', cache_dir=cache)
    assert {k: len(v) for k, v in coco.splits.items()} == {'train': 12, 'validation': 3, 'test': 3}
    assert coco['train'][0]['captions'] == ['a digit 0', 'another']


def test_text_corpus_vqa_and_task_datasets(sources, monkeypatch):
    monkeypatch.setattr(S, '_hub_load', lambda *a, **k: datasets.Dataset.from_dict({'text': [f'line {i} of a story' for i in range(20)]}))
    corpus = get_dataset('babylm')
    assert corpus['train'].column_names == ['captions']
    pngs = sorted((sources / 'csv' / 'images').glob('*.png'))
    vqa_table = datasets.Dataset.from_dict({'image': [Image.open(p) for p in pngs], 'question': ['which digit?'] * len(pngs),
                                            'multiple_choice_answer': [p.name.split('_')[0] for p in pngs]})
    monkeypatch.setattr(S, '_hub_load', lambda *a, **k: vqa_table.cast_column('image', datasets.Image()))
    vqa = get_dataset('vqa')
    tok = CaptionTokenizer.build(['which digit?', 'a handwritten digit'] + [f'line {i} of a story' for i in range(20)])
    train = ImageTextDataset(vqa['train'], tok, image_transform(16), task='vqa')
    batch = collate([train[i] for i in range(4)])
    assert batch['image'].shape == (4, 3, 16, 16) and [train.answers[l] for l in batch['label']] == batch['answer']
    text = collate([ImageTextDataset(corpus['train'], tok, None)[i] for i in range(3)])
    assert 'image' not in text and text['input_ids'].shape[0] == 3
    data = get_dataset('folder', data_dir=sources)
    cap = ImageTextDataset(data['train'], tok, image_transform(16), task='captioning')[0]
    n = int(cap['attention_mask'].sum())
    assert torch.equal(cap['target_ids'][:n - 1], cap['input_ids'][1:n]) and (cap['target_ids'][n - 1:] == -100).all()
    cls = collate([ImageTextDataset(data['train'], tok, image_transform(16), task='classification')[i] for i in range(4)])
    assert cls['label'].shape == (4,)
    drop = ImageTextDataset(data['train'], tok, image_transform(16), modality_dropout=ModalityDropout(1.0))
    s = drop[0]
    assert not s['has_image'] and s['has_text'] and s['image'].abs().sum() == 0  # never both dropped


def test_config_options_reach_the_loader(sources):
    cfg = DataConfig(dataset=str(sources / 'pairs.jsonl'), image_key='img', caption_key='text', max_skip_fraction=0.0)
    assert n_examples(D.dataset_from_config(cfg)) == 40
    with pytest.raises(KeyError, match="no image column 'picture'"):
        D.dataset_from_config(DataConfig(dataset=str(sources / 'pairs.jsonl'), image_key='picture'))


def test_train_on_the_csv_format_end_to_end(memvlm_cli, tmp_path, sources):
    r = memvlm_cli('train', '--dataset', str(sources / 'csv' / 'captions.csv'), '--output-dir', 'out', *TINY)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert metrics['dataset'] == 'captions' and 'test_zero_shot_acc' in metrics and metrics['history']
    (tmp_path / 'escape.csv').write_text('filepath,caption\n../../etc/passwd,a caption\n')
    r = memvlm_cli('train', '--dataset', str(tmp_path / 'escape.csv'), *TINY)
    assert r.returncode == 2 and 'points outside the dataset folder' in r.stderr


@pytest.mark.parametrize('source', ['csv.tsv', 'pairs.json', 'pairs.jsonl', 'pairs.parquet', 'pairs.arrow', 'folder', 'coco',
                                    'coco/annotations/captions_val2017.json', 'saved'])
def test_train_on_each_local_format(tmp_path, sources, source, monkeypatch, capsys):
    "`memvlm train` in this process (the console script's own start-up is tested once, above)."
    from memvlm.cli import main
    for k in [k for k in __import__('os').environ if k.startswith('MEMVLM_')]: monkeypatch.delenv(k)
    assert main(['train', '--dataset', str(sources / source), '--output-dir', str(tmp_path / 'out'), *TINY]) == 0
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert 'test_i2t_r1' in metrics and metrics['history']
    if source in ('saved', 'pairs.parquet'):  # tables: a wrong column name is an error listing the columns
        args = ['--dataset', str(sources / source), '--caption-key', 'no_such_column', '--output-dir', str(tmp_path / 'bad')]
        assert main(['train', *args, *TINY]) == 2
        assert "no caption column 'no_such_column'; the columns are" in capsys.readouterr().err


def test_task_option_trains_vqa_and_refuses_pairings_that_cannot_train(tmp_path, sources, monkeypatch, capsys):
    "`--task vqa` trains a fusion model over the answers of a question/answer CSV; a task the model cannot learn is exit 2."
    from memvlm.cli import main
    for k in [k for k in __import__('os').environ if k.startswith('MEMVLM_')]: monkeypatch.delenv(k)
    df = pd.read_csv(sources / 'csv' / 'captions.csv')
    df.assign(question='which digit is this?', answer=df.label.astype(str)).drop(columns=['caption', 'label']) \
      .to_csv(sources / 'csv' / 'vqa.csv', index=False)
    vqa = ['--dataset', str(sources / 'csv' / 'vqa.csv'), '--task', 'vqa']
    assert main(['train', *vqa, '--model', 'seed-mnist-concat', '--output-dir', str(tmp_path / 'vqa'), *TINY]) == 0
    metrics = json.loads((tmp_path / 'vqa' / 'metrics.json').read_text())
    assert {'test_acc_both', 'test_acc_image_only', 'test_acc_text_only'} <= set(metrics)
    from memvlm.models import load_checkpoint
    assert load_checkpoint(tmp_path / 'vqa' / 'best').model.config.num_classes == df.label.nunique()  # one class per answer
    for args, message in [(vqa, 'trains for retrieval'),  # memclip-tiny is contrastive
                          (['--dataset', str(sources / 'csv' / 'captions.csv'), '--task', 'vqa', '--model', 'seed-mnist-concat'],
                           'needs questions and answers'),
                          (['--task', 'captioning', '--model', 'seed-mnist-concat'], 'the captioning model (MultimodalVAE'),
                          (['--model', 'vae-tiny'], 'vae-tiny (MultimodalVAEConfig) trains from Python')]:
        assert main(['train', *args, '--output-dir', str(tmp_path / 'bad'), *TINY]) == 2, args
        assert message in capsys.readouterr().err
