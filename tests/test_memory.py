"""The episodic memory end to end: `MemoryCLIP.memorize` on real digits, its input errors, checkpoints (old ones included),
continual writes, and the command-line walk a user takes (train on five classes, memorize five shots of five new ones,
evaluate on a third file)."""
import csv
import json

import numpy as np
import pytest
import torch

from memvlm.data import get_dataset, image_transform, load_digits_captions, write_digits_csv
from memvlm.memory import EpisodicMemory
from memvlm.models import create_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope='module')
def digits():
    "An untrained tiny MemoryCLIP with the base statistics of digits 0-4, and real images of 0-9 (train split) for shots."
    data = load_digits_captions()
    torch.manual_seed(0)
    model = create_model('memclip-tiny', vocab_size=100, vision_depth=1, text_depth=1).eval()
    transform = image_transform(32)
    images = torch.stack([transform(im) for im in data['train']['image']])
    labels = torch.tensor(data['train']['label'])
    with torch.no_grad(): embeds = model.encode_image(images)
    model.set_memory_prior(embeds[labels < 5], labels[labels < 5], data.classnames)
    return model, images, labels, data.classnames


def shots_of(images, labels, classes, k, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels.numpy() == c), k, replace=False) for c in classes])
    return images[idx], labels[idx]


def test_memorize_teaches_concepts_without_changing_weights(digits):
    model, images, labels, names = digits
    weights = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith('concept_memory')}
    shots, shot_labels = shots_of(images, labels, [5, 6, 7], 3)
    info = model.memorize(shots, [names[l] for l in shot_labels])
    assert info == {'concepts': 3, 'items': 9, 'new_concepts': ['five', 'six', 'seven']}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    with torch.no_grad(): answers = model.classify(model.encode_image(shots), ['five', 'six', 'seven'], torch.eye(3, 64))
    assert answers.labels == [names[l] for l in shot_labels]  # memorised images read back as their concepts
    assert model.memorize(shots[:3], ['five'] * 3)['items'] == 12 and model.memory_concepts()['five'] == 6  # writes add up
    model.forget()
    assert model.memory_concepts() == {}


@pytest.mark.parametrize('bad, message', [
    (lambda im: (im[:, :, :16, :16], ['five'] * 4), '(N, 3, 32, 32)'),
    (lambda im: (im, ['five'] * 3), '4 images but 3 captions'),
    (lambda im: (im, ['five', '', 'six', 'six']), 'non-empty text'),
    (lambda im: (im[:0], []), 'no images'),
    (lambda im: (im.numpy(), ['five'] * 4), 'tensor'),
])
def test_memorize_rejects_bad_input_with_clear_errors(digits, bad, message):
    model, images, labels, _ = digits
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        model.memorize(*bad(images[:4]))
    assert model.memory_concepts() == {}  # nothing half-written


def test_a_model_without_base_statistics_says_what_to_do():
    model = create_model('memclip-tiny', vocab_size=100, vision_depth=1, text_depth=1)
    with pytest.raises(RuntimeError, match='set_memory_prior'):
        model.memorize(torch.randn(2, 3, 32, 32), ['a', 'b'])


def test_continual_writes_equal_one_write(digits, tmp_path):
    model, images, labels, names = digits
    shots, shot_labels = shots_of(images, labels, range(5, 10), 5)
    query = images[:200]
    model.memorize(shots, [names[l] for l in shot_labels])
    with torch.no_grad(): at_once = model.concept_memory.read(model.encode_image(query)).scores
    model.forget()
    for c in range(5, 10): model.memorize(shots[shot_labels == c], [names[c]] * 5)
    with torch.no_grad(): one_by_one = model.concept_memory.read(model.encode_image(query)).scores
    torch.testing.assert_close(one_by_one, at_once, atol=1e-3, rtol=1e-4)
    save_checkpoint(model, tmp_path / 'taught')
    restored = load_checkpoint(tmp_path / 'taught').model
    assert restored.memory_concepts() == model.memory_concepts()
    with torch.no_grad(): torch.testing.assert_close(restored.concept_memory.read(restored.encode_image(query)).scores, at_once, atol=1e-3, rtol=1e-4)
    model.forget()


def test_episodic_memory_file_round_trip(tmp_path):
    torch.manual_seed(0)
    m = EpisodicMemory(8, 16); z = torch.randn(5, 16); m.write(z)
    path = m.save(tmp_path / 'mem.safetensors')
    restored = EpisodicMemory(8, 16).load(path)
    torch.testing.assert_close(restored.read(z), m.read(z))


def _predictions(path):
    with open(path) as f: return list(csv.DictReader(f))


def test_cli_walk_memorize_beats_the_probe_and_old_classes_hold(memvlm_cli, tmp_path):
    "Train on a CSV of 0-4, memorize five shots of each of 5-9 from a second CSV, evaluate on a third holding all ten."
    from sklearn.linear_model import LogisticRegression
    from memvlm.data import ImageTextDataset, make_loader
    from memvlm.evaluation import embed_images
    old = write_digits_csv(tmp_path / 'old', per_class=120, classes=range(5), split='train')
    shots = write_digits_csv(tmp_path / 'shots', per_class=5, classes=range(5, 10), split='train', seed=1)
    test = write_digits_csv(tmp_path / 'test', per_class=35, split='test')  # held-out digits; its own train split is the largest part
    r = memvlm_cli('train', '--dataset', str(old), '--epochs', '20', '--output-dir', 'run', '--quiet', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    r = memvlm_cli('memorize', '--checkpoint', 'run/best', '--dataset', str(shots), '--output', 'taught', '--device', 'cpu')
    assert r.returncode == 0 and '25 examples, 5 new concepts (five, six, seven, eight, nine)' in r.stdout, r.stdout + r.stderr
    for ck, out in (('run/best', 'before'), ('taught', 'after')):
        r = memvlm_cli('eval', '--checkpoint', ck, '--dataset', str(test), '--tasks', 'zero_shot', '--output-dir', out,
                       '--device', 'cpu')
        assert r.returncode == 0, r.stderr
    after = json.loads((tmp_path / 'after' / 'metrics.json').read_text())['metrics']
    before, answers = _predictions(tmp_path / 'before' / 'predictions.csv'), _predictions(tmp_path / 'after' / 'predictions.csv')
    new_names = {'five', 'six', 'seven', 'eight', 'nine'}
    assert {a['source'] for a in answers if a['label'] in new_names} >= {'memory'}  # the report says where answers came from
    # old classes hold: their accuracy drops by at most 2 of their ~120 test images
    old_rows = [(b, a) for b, a in zip(before, answers) if b['label'] not in new_names]
    old_before = sum(b['answer'] == b['label'] for b, _ in old_rows)
    old_after = sum(a['answer'] == a['label'] for _, a in old_rows)
    assert old_after >= old_before - 2, (old_before, old_after, len(old_rows))
    # a logistic-regression probe on the same 25 shots' frozen embeddings, asked the same 5-way question
    ck = load_checkpoint(tmp_path / 'taught')
    def embed(path):
        data = get_dataset(str(path))
        rows = __import__('datasets').concatenate_datasets(list(data.splits.values()))
        e, l = embed_images(ck.model, make_loader(ImageTextDataset(rows, ck.tokenizer, image_transform(32), caption='first'), 256))
        return e, [data.classnames[i] for i in l.tolist()]
    shot_e, shot_y = embed(shots)
    test_e, test_y = embed(test)  # every row, as memvlm eval scores a file
    keep = [i for i, y in enumerate(test_y) if y in new_names]
    probe = LogisticRegression(max_iter=3000).fit(shot_e.numpy(), shot_y).predict(test_e[keep].numpy())
    probe_acc = float(np.mean([p == test_y[i] for p, i in zip(probe, keep)]))
    print(f"memory {after['memorized_acc_among_memorized']:.3f} (10-way {after['memorized_acc']:.3f}), probe {probe_acc:.3f}, "
          f'old {old_before} -> {old_after} of {len(old_rows)}')
    assert after['memorized_acc_among_memorized'] > probe_acc, (after, probe_acc)
    # predict answers a memorised example from memory, and says so
    shot_png = sorted((tmp_path / 'shots' / 'images').glob('seven_*.png'))[0]
    r = memvlm_cli('predict', '--checkpoint', 'taught', '--image', str(shot_png), '--dataset', str(test), '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith('seven') and first.endswith('(memory)'), r.stdout
