"""The Larimar captioner as a user meets it: `memvlm train --model larimar-tiny`, then `memorize`, `predict`, `forget` and
`eval` on its checkpoint; old checkpoints of the renamed memories; the memories' one protocol."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from memvlm.larimar import LarimarCaptioner
from memvlm.memory import ConceptMemory, EpisodicMemory, Memory
from memvlm.models import create_model, load_checkpoint, save_checkpoint
from memvlm.inference import unknown_words

SAMPLE = Path(__file__).resolve().parent.parent / 'data' / 'sample'
EDITS = ['a handwritten digit nine', 'the digit two', 'a scanned handwritten five', 'the digit seven',
         'a handwritten digit one', 'the digit six']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A larimar-tiny run of `memvlm train` on the bundled sample CSV (one short epoch), and an edits CSV of six images."
    from memvlm.cli import main
    root = tmp_path_factory.mktemp('larimar')
    shutil.copytree(SAMPLE / 'images', root / 'images')
    rows = list(csv.DictReader(open(SAMPLE / 'captions.csv')))
    shutil.copy(SAMPLE / 'captions.csv', root / 'captions.csv')
    with open(root / 'edits.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['filepath', 'caption']); w.writeheader()
        for row, caption in zip(rows, EDITS): w.writerow({'filepath': row['filepath'], 'caption': caption})
    code = main(['train', '--model', 'larimar-tiny', '--dataset', str(root / 'captions.csv'), '--epochs', '1',
                 '--batch-size', '16', '--vision-depth', '1', '--quiet', '--device', 'cpu',
                 '--output-dir', str(root / 'run')])
    assert code == 0
    return root, rows


@pytest.fixture(scope='module')
def taught(trained):
    "The trained captioner with the six edits memorised (`memvlm memorize`), and what the command printed."
    import contextlib
    import io
    from memvlm.cli import main
    root, _ = trained
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(['memorize', '--checkpoint', str(root / 'run' / 'best'), '--dataset', str(root / 'edits.csv'),
                     '--output', str(root / 'taught'), '--device', 'cpu'])
    assert code == 0
    return root / 'taught', printed.getvalue()


def test_train_saves_a_captioner_with_its_scope(trained):
    root, _ = trained
    metrics = json.loads((root / 'run' / 'metrics.json').read_text())
    assert {'test_bleu', 'test_bleu_without_memory'} <= set(metrics)
    model = load_checkpoint(root / 'run' / 'best').model
    assert isinstance(model, LarimarCaptioner) and model.is_empty
    assert len(model.anchors) == 10 and 0 < float(model.same_image_cosine) <= 1  # calibrated on the run's images


def test_memorize_predict_forget(memvlm_cli, trained, taught):
    root, rows = trained
    assert '6 images with their captions' in taught[1]
    image = str(root / rows[1]['filepath'])
    said = memvlm_cli('predict', '--checkpoint', str(root / 'taught'), '--image', image, '--device', 'cpu')
    assert said.returncode == 0, said.stderr
    assert "memory: the same image, memorised as 'the digit two'" in said.stdout  # the memory recalls its caption
    # forgetting one caption leaves the others; forgetting all restores the model's own caption
    one = memvlm_cli('forget', '--checkpoint', str(root / 'taught'), '--caption', 'the digit two', '--output',
                     str(root / 'forgot1'), '--device', 'cpu')
    assert one.returncode == 0 and 'holds 5' in one.stdout, one.stderr
    after = memvlm_cli('predict', '--checkpoint', str(root / 'forgot1'), '--image', image, '--device', 'cpu')
    assert after.returncode == 0 and "'the digit two'" not in after.stdout  # (a weak model may recall another item)
    kept = memvlm_cli('predict', '--checkpoint', str(root / 'forgot1'), '--image', str(root / rows[0]['filepath']), '--device', 'cpu')
    assert "memorised as 'a handwritten digit nine'" in kept.stdout
    assert memvlm_cli('forget', '--checkpoint', str(root / 'taught'), '--all', '--output', str(root / 'forgot'), '--device', 'cpu').returncode == 0
    before = memvlm_cli('predict', '--checkpoint', str(root / 'run' / 'best'), '--image', image, '--device', 'cpu')
    again = memvlm_cli('predict', '--checkpoint', str(root / 'forgot'), '--image', image, '--device', 'cpu')
    assert again.stdout.splitlines()[0] == before.stdout.splitlines()[0]  # the same caption as never taught
    missing = memvlm_cli('forget', '--checkpoint', str(root / 'taught'), '--caption', 'no such caption', '--device', 'cpu')
    assert missing.returncode == 2 and 'no memorised caption' in missing.stderr


def test_eval_reports_bleu_with_and_without_memory(memvlm_cli, taught, tmp_path):
    r = memvlm_cli('eval', '--checkpoint', str(taught[0]), '--tasks', 'bleu', '--output-dir', 'rep', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / 'rep' / 'metrics.json').read_text())['metrics']
    assert set(saved) == {'bleu', 'bleu_without_memory'} and all(0 <= v <= 100 for v in saved.values())


def test_memorize_names_words_outside_the_vocabulary(memvlm_cli, trained):
    root, rows = trained
    with open(root / 'unknown.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['filepath', 'caption']); w.writeheader()
        for row in rows[:5]: w.writerow({'filepath': row['filepath'], 'caption': 'a handwritten axolotl'})
    r = memvlm_cli('memorize', '--checkpoint', str(root / 'run' / 'best'), '--dataset', str(root / 'unknown.csv'),
                   '--output', str(root / 'never'), '--device', 'cpu')
    assert r.returncode == 2 and 'axolotl' in r.stderr and not (root / 'never').exists()
    tok = load_checkpoint(root / 'run' / 'best').tokenizer
    assert unknown_words(tok, ['the digit two']) == [] and unknown_words(tok, ['a quokka']) == ['quokka']


def test_old_checkpoints_of_the_renamed_memories_load(tmp_path):
    "Checkpoints saved when both memories were called `episodic` load into `concept_memory` and `episodic_memory`."
    from safetensors.torch import load_file, save_file
    for name, new in (('memclip-tiny', 'concept_memory.'), ('vae-tiny', 'episodic_memory.')):
        torch.manual_seed(0)
        model = create_model(name, vocab_size=40)
        save_checkpoint(model, tmp_path / name)
        state = load_file(str(tmp_path / name / 'model.safetensors'))
        renamed = {('episodic.' + k[len(new):] if k.startswith(new) else k): v for k, v in state.items()}
        assert any(k.startswith('episodic.') for k in renamed)
        save_file(renamed, str(tmp_path / name / 'model.safetensors'))  # as an older memvlm wrote it
        restored = load_checkpoint(tmp_path / name).model
        for k, v in model.state_dict().items(): torch.testing.assert_close(restored.state_dict()[k], v)


def test_every_memory_speaks_the_one_protocol():
    torch.manual_seed(0)
    captioner = create_model('larimar-tiny', vocab_size=40, vision_depth=1)
    for memory in (EpisodicMemory(8, 16), ConceptMemory(16), captioner.episodic_memory):
        assert isinstance(memory, Memory), type(memory).__name__
        assert {'items'} <= set(memory.describe())
    assert captioner.describe()['items'] == 0
