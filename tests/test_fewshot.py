"""The few-shot learners and protocol of issue 27, offline: tiny dataset folders in CoOp's layout (split files), the three
tuning modes blind to the test labels (poisoned here: nothing they choose may change), Tip-Adapter and GDA against
their papers' formulas written out, the class-incremental run, the embedding cache, open_clip models (a tiny one with
random weights; a tag that cannot be fetched is a clear error) and `memvlm fewshot` on a tiny memclip checkpoint."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memvlm.fewshot import (METHODS, FewShotTask, MemoryLearner, NCMLearner, RanPACLearner, choose_setting,
                            class_splits, draw_shots, incremental_run)
from memvlm.fewshot_protocol import (PROTOCOL, Encoder, FewShotData, cached_features, fewshot, load_encoder,
                                     load_fewshot_data, run_dataset, run_incremental)
from memvlm.memory import ConceptMemory

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "These workloads are tiny: one thread for torch and BLAS each, so that a busy shared machine is not oversubscribed."
    from threadpoolctl import threadpool_limits
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1): yield
    torch.set_num_threads(n)


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def picture(label: int, k: int) -> Image.Image:
    "A 12 px image of its class's colour with a little noise: what the fake encoder can tell apart, not perfectly."
    rng = np.random.default_rng(1000 * label + k)
    base = np.array(COLOURS[label], dtype=float)[None, None] + rng.normal(0, 60, (12, 12, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def write_split_zhou(root, name='oxford_pets', classes=('abyssinian', 'great_pyrenees', 'beagle'), sizes=(8, 3, 4)):
    "A dataset of the protocol in CoOp's layout: images in its image folder and a split_zhou file naming them."
    d = PROTOCOL[name]
    folder = root / d.folder / d.images
    folder.mkdir(parents=True)
    split, n = {}, 0
    for part, size in zip(('train', 'val', 'test'), sizes):
        split[part] = []
        for label, cls in enumerate(classes):
            for _ in range(size):
                picture(label, n).save(folder / f'{cls}_{n}.png'); split[part].append([f'{cls}_{n}.png', label, cls]); n += 1
    (root / d.folder / d.split_file).write_text(json.dumps(split))
    return root


def test_split_files_of_the_protocol_are_read_with_their_class_names(tmp_path):
    data = load_fewshot_data('oxford_pets', write_split_zhou(tmp_path))
    assert data.classnames == ['abyssinian', 'great pyrenees', 'beagle']
    assert data.class_prompts[1] == ['a photo of a great pyrenees, a type of pet.']
    assert {s: len(l) for s, (_, l) in data.splits.items()} == {'train': 24, 'validation': 9, 'test': 12}
    assert data.image('test', 0).size == (12, 12)
    with pytest.raises(FileNotFoundError, match='split_zhou_DescribableTextures.json'):
        load_fewshot_data('dtd', tmp_path)


def test_fgvc_and_imagenet_layouts(tmp_path):
    fg = tmp_path / 'fgvc_aircraft'; (fg / 'images').mkdir(parents=True)
    (fg / 'variants.txt').write_text('707-320\nA300B4\n')
    for part, n in (('train', 3), ('val', 1), ('test', 2)):
        lines = []
        for v, variant in enumerate(['707-320', 'A300B4']):
            for i in range(n):
                picture(v, i).save(fg / 'images' / f'{part}{v}{i}.jpg'); lines.append(f'{part}{v}{i} {variant}')
        (fg / f'images_variant_{part}.txt').write_text('\n'.join(lines))
    data = load_fewshot_data('fgvc_aircraft', tmp_path)
    assert data.classnames == ['707-320', 'A300B4'] and data.labels('train').tolist() == [0, 0, 0, 1, 1, 1]
    im = tmp_path / 'imagenet'
    (im / 'classnames.txt').parent.mkdir(); (im / 'classnames.txt').write_text('n01 tench\nn02 goldfish\n')
    for split, n in (('train', 12), ('val', 2)):
        for c, wnid in enumerate(['n01', 'n02']):
            (im / 'images' / split / wnid).mkdir(parents=True)
            for i in range(n): picture(c, i).save(im / 'images' / split / wnid / f'{i}.JPEG')
    data = load_fewshot_data('imagenet', tmp_path)
    assert data.classnames == ['tench', 'goldfish']
    # its validation images are the test split; 10 training images a class are the validation split, out of train
    assert {s: len(l) for s, (_, l) in data.splits.items()} == {'train': 4, 'validation': 20, 'test': 4}
    train, val = set(map(str, data.splits['train'][0])), set(map(str, data.splits['validation'][0]))
    assert not train & val


def fake_encoder(dim: int = 16, memory: bool = True) -> Encoder:
    "A fixed random projection of 4x4-pooled pixels, text from hashed prompts: fast, deterministic, imperfect."
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(48, dim, generator=g)
    def transform(image):
        return torch.from_numpy(np.asarray(image.convert('RGB').resize((12, 12)), dtype=np.float32) / 255).permute(2, 0, 1)
    def encode(x): return F.adaptive_avg_pool2d(x, 4).flatten(1) @ proj
    def classifier(prompts):
        vecs = [torch.randn(dim, generator=torch.Generator().manual_seed(sum(map(ord, p[0])))) for p in prompts]
        return F.normalize(torch.stack(vecs), dim=-1)
    mem = None
    if memory:
        base = F.normalize(torch.randn(200, dim, generator=g) + 2 * torch.randn(5, dim, generator=g).repeat(40, 1), dim=-1)
        mem = ConceptMemory(dim); mem.set_prior(base, torch.arange(5).repeat(40), [f'base {i}' for i in range(5)])
    return Encoder('fake', encode, transform, classifier, 10.0, mem, 'a fixed random projection')


def fake_data(test_labels=None, val_labels=None) -> FewShotData:
    "Four classes of coloured pictures: 24 training, 6 validation and 10 test images each."
    def split(n, offset):
        labels = np.repeat(np.arange(4), n)
        return [picture(l, offset + i) for i, l in enumerate(labels)], labels
    splits = {'train': split(24, 0), 'validation': split(6, 5000), 'test': split(10, 9000)}
    if test_labels is not None: splits['test'] = (splits['test'][0], test_labels)
    if val_labels is not None: splits['validation'] = (splits['validation'][0], val_labels)
    names = ['red', 'green', 'blue', 'yellow']
    return FewShotData('colours', names, [[f'a {n} picture'] for n in names], splits)


@pytest.mark.parametrize('tuning', ['none', 'few-shot', 'full'])
def test_tuning_never_reads_the_test_labels(tuning, tmp_path):
    "Poisoned test labels change the scores, never a chosen setting; poisoned validation labels may (the check can fail)."
    encoder, clean = fake_encoder(), fake_data()
    truth = clean.labels('test')
    poisoned = fake_data(test_labels=np.random.default_rng(0).permutation((truth + 1) % 4))
    kw = dict(shots=(1, 2), seeds=(1, 2), tuning=tuning, cache_dir=tmp_path)
    a, b = run_dataset(encoder, clean, **kw), run_dataset(encoder, poisoned, **kw)
    assert a['settings'] == b['settings']
    assert a['accuracy'] != b['accuracy']  # the poison reached the scoring
    assert a['accuracy']['ncm']['2'] > 0.5 and b['accuracy']['ncm']['2'] < 0.4
    if tuning == 'full':  # validation labels do steer the settings: the same test would see a leak
        bad_val = fake_data(val_labels=np.random.default_rng(1).permutation(clean.labels('validation')))
        assert run_dataset(encoder, bad_val, **kw)['settings'] != a['settings']
    if tuning == 'none':
        assert all(s == METHODS[m].default for m, per_k in a['settings'].items() for v in per_k.values() for s in v)


def test_tip_adapter_and_gda_equal_their_papers_formulas():
    torch.manual_seed(3)
    raw = torch.randn(8, 4, 6) * 2 + 1  # 8 shots of 4 classes, 4 views each, features as an encoder gives them
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    text = F.normalize(torch.randn(4, 6), dim=-1)
    task = FewShotTask(raw, y, 4, text, scale=100.0)
    q = F.normalize(torch.randn(5, 6), dim=-1)
    clip_logits = 100.0 * q @ text.T
    # Tip-Adapter: keys are the normalised mean of a shot's views; A = exp(-beta (1 - q K^T)); logits = clip + alpha A L
    keys = F.normalize(raw.mean(1), dim=-1)
    cache = torch.exp(-5.5 * (1 - q @ keys.T)) @ F.one_hot(y, 4).float()
    torch.testing.assert_close(METHODS['tip'].logits(task, q, (1.7, 5.5)), clip_logits + 1.7 * cache)
    torch.testing.assert_close(METHODS['tip_cache'].logits(task, q, 5.5), cache)
    # GDA: every view a sample; mu per class; Sigma the unbiased covariance of the centred samples;
    # P = D pinv((N-1) Sigma + tr(Sigma) I); logits = clip + alpha (q P mu^T + log(1/C) - mu P mu^T / 2)
    v = F.normalize(raw, dim=-1).reshape(32, 6).double(); vy = y.repeat_interleave(4)
    mu = torch.stack([v[vy == c].mean(0) for c in range(4)])
    centred = v - mu[vy]
    sigma = torch.cov(centred.T)
    p = 6 * torch.linalg.pinv(31 * sigma + sigma.trace() * torch.eye(6, dtype=torch.double))
    disc = q.double() @ p @ mu.T + math.log(1 / 4) - 0.5 * ((mu @ p) * mu).sum(1)
    torch.testing.assert_close(METHODS['gda_disc'].logits(task, q, None), disc.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(METHODS['gda'].logits(task, q, 0.01), clip_logits + 0.01 * disc.float(), atol=1e-3, rtol=1e-4)


def test_choose_setting_prefers_the_default_on_ties_and_draws_are_disjoint():
    task = FewShotTask(torch.eye(4)[:, None], torch.arange(4), 4, text=torch.eye(4))
    setting, acc = choose_setting(METHODS['gda'], task, torch.eye(4), torch.arange(4))
    assert setting == METHODS['gda'].default and acc == 1.0
    labels = np.repeat(np.arange(3), 9)
    shots, more = draw_shots(labels, range(3), 4, seed=2, extra=4)
    assert len(shots) == len(more) == 12 and not set(shots) & set(more)
    assert (draw_shots(labels, range(3), 2, seed=2)[0] == shots.reshape(3, 4)[:, :2].ravel()).all()  # nested draws


def test_embedding_cache_encodes_each_image_once(tmp_path):
    encoder, data = fake_encoder(), fake_data()
    calls = []
    encode = encoder.encode
    encoder.encode = lambda x: calls.append(len(x)) or encode(x)
    first = cached_features(encoder, data, 'train', [0, 5, 9], 1, tmp_path)
    again = cached_features(encoder, data, 'train', [9, 0], 1, tmp_path)
    more = cached_features(encoder, data, 'train', [0, 11], 1, tmp_path)
    assert calls == [3, 1] and torch.equal(again, first[[2, 0]]) and torch.equal(more[0], first[0])
    views = cached_features(encoder, data, 'train', [0], 3, tmp_path)
    assert views.shape == (1, 3, 16) and not torch.equal(views[0, 0], views[0, 1])  # augmented views differ
    assert torch.equal(views, cached_features(encoder, data, 'train', [0], 3, tmp_path))


def test_incremental_protocol(tmp_path):
    encoder, data = fake_encoder(), fake_data()
    r = run_incremental(encoder, data, tasks=2, shots=(2, 4), seeds=(1,), tuning='few-shot', cache_dir=tmp_path)
    assert set(r) == {'ncm', 'ranpac', 'memory'}
    for per_k in r.values():
        for v in per_k.values(): assert 0.25 < v['last'] <= v['average_incremental'] + 1e-9 <= 1.0 + 1e-9
    # learners on synthetic features: one task at a time equals all at once where the statistics add up
    x = F.normalize(torch.randn(40, 8), dim=-1); y = torch.arange(4).repeat(10)
    one = incremental_run(NCMLearner(8), [[0, 1, 2, 3]], x, y, x, y)
    two = incremental_run(NCMLearner(8), class_splits(4, 2, seed=0), x, y, x, y)
    assert two['last'] == one['last'] and len(two['accuracy_per_task']) == 2
    a, b = RanPACLearner(8, 64), RanPACLearner(8, 64)
    a.update(x, y); b.update(x[y < 2], y[y < 2]); b.update(x[y >= 2], y[y >= 2])
    torch.testing.assert_close(a.logits(x, [0, 1, 2, 3], 0.1), b.logits(x, [0, 1, 2, 3], 0.1), atol=1e-3, rtol=1e-3)
    x16 = F.normalize(torch.randn(40, 16), dim=-1)
    m = MemoryLearner(encoder.memory, ['a', 'b', 'c', 'd']); m.update(x16[y < 2], y[y < 2])
    assert m.logits(x16, [0, 1]).shape == (40, 2) and encoder.memory.concepts == []  # a copy was written
    with pytest.raises(ValueError, match='tasks=5'): class_splits(4, 5, 0)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="tuning='test': expected one of none, few-shot, full"):
        run_dataset(fake_encoder(), fake_data(), tuning='test')
    with pytest.raises(ValueError, match='unknown methods'):
        run_dataset(fake_encoder(), fake_data(), methods=['tip', 'magic'])
    with pytest.raises(ValueError, match='concept memory'):
        run_dataset(fake_encoder(memory=False), fake_data(), shots=(1,), seeds=(1,), methods=['memory'])
    with pytest.raises(ValueError, match='too few'):
        run_dataset(fake_encoder(), fake_data(), shots=(30,), seeds=(1,), methods=['ncm'])
    with pytest.raises(ValueError, match='memvlm model'):
        load_encoder('memclip-tiny')


def test_open_clip_model_with_random_weights_and_a_tag_that_cannot_load(tmp_path, tiny_open_clip):
    pytest.importorskip('open_clip')
    weights = tiny_open_clip(tmp_path, 'memvlm-fewshot-vit', layers=1)
    pets = write_split_zhou(tmp_path / 'data')
    write_split_zhou(tmp_path / 'data', 'dtd', ('banded', 'dotted', 'woven', 'zigzagged'), (10, 2, 2))
    r = fewshot('memvlm-fewshot-vit', str(weights), datasets=['oxford_pets'], shots=(1, 2), seeds=(1,),
                tuning='none', data_dir=pets, methods=['zero_shot', 'ncm', 'tip', 'memory'], memory_base='dtd',
                cache_dir=tmp_path / 'cache', log=None)
    assert set(r['datasets']['oxford_pets']['accuracy']) == {'zero_shot', 'ncm', 'tip', 'memory'}
    assert r['model'].startswith('open_clip memvlm-fewshot-vit')
    with pytest.raises(RuntimeError, match='open_clip could not load memvlm-fewshot-vit .*local weights file'):
        fewshot('memvlm-fewshot-vit', str(tmp_path / 'no-such-weights.pt'), datasets=['oxford_pets'], data_dir=pets)
    with pytest.raises(ValueError, match='no base statistics for the concept memory'):
        fewshot('memvlm-fewshot-vit', str(weights), datasets=['oxford_pets'], data_dir=pets,
                methods=['memory'], cache_dir=tmp_path / 'cache')


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    "An untrained one-layer memclip-tiny with its tokenizer and the memory's base statistics of digits 0-4."
    from memvlm.data import CaptionTokenizer, image_transform, load_digits_captions
    from memvlm.models import create_model, save_checkpoint
    data = load_digits_captions()
    tok = CaptionTokenizer.build([p for ps in data.class_prompts for p in ps], 16)
    torch.manual_seed(0)
    model = create_model('memclip-tiny', vocab_size=tok.vocab_size, vision_depth=1, text_depth=1).eval()
    rows = data['train'].select(range(300))
    with torch.no_grad(): emb = model.encode_image(torch.stack([image_transform(32)(im) for im in rows['image']]))
    labels = torch.tensor(rows['label'])
    model.set_memory_prior(emb[labels < 5], labels[labels < 5], data.classnames)
    return save_checkpoint(model, tmp_path_factory.mktemp('ck') / 'tiny', tok)


def test_cli_fewshot_prints_the_table_and_a_json_line(memvlm_cli, tiny_checkpoint, tmp_path):
    r = memvlm_cli('fewshot', '--model', 'memclip-tiny', '--checkpoint', str(tiny_checkpoint), '--dataset',
                   'digits-captions', '--shots', '1', '2', '4', '8', '16', '--tuning', 'few-shot', '--cache-dir',
                   str(tmp_path / 'cache'), '--json-out', 'fewshot.json', '--plot-out', 'fewshot.png', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert 'digits-captions: test accuracy (%)' in r.stdout and 'memory' in r.stdout
    line = json.loads(r.stdout.strip().splitlines()[-1])
    assert line['tuning'] == 'few-shot' and set(line['accuracy']) == set(METHODS)
    assert all(set(per_k) == {'1', '2', '4', '8', '16'} for per_k in line['accuracy'].values())
    assert all(0 <= v <= 1 for per_k in line['accuracy'].values() for v in per_k.values())
    saved = json.loads((tmp_path / 'fewshot.json').read_text())
    assert saved['mean'] == line['accuracy'] and (tmp_path / 'fewshot.png').stat().st_size > 0
    r = memvlm_cli('fewshot', '--checkpoint', str(tiny_checkpoint), '--tuning', 'test')
    assert r.returncode == 2 and "invalid choice: 'test'" in r.stderr
    r = memvlm_cli('fewshot', '--checkpoint', str(tiny_checkpoint), '--views', '0')
    assert r.returncode == 2 and 'views=0' in r.stderr


def test_augmented_views_reach_every_learner(tmp_path):
    "With 3 views a shot, GDA's discriminant has scatter at one shot (with one view it has none: a constant)."
    encoder, data = fake_encoder(), fake_data()
    kw = dict(shots=(1,), seeds=(1,), tuning='none', methods=['gda_disc', 'tip_cache', 'memory', 'probe'], cache_dir=tmp_path)
    one, three = run_dataset(encoder, data, views=1, **kw), run_dataset(encoder, data, views=3, **kw)
    assert one['accuracy']['gda_disc']['1'] == 0.25  # a constant discriminant answers the first of four classes
    assert three['accuracy']['gda_disc']['1'] > 0.4
    assert (tmp_path / 'fake' / 'colours' / 'views3').is_dir()
