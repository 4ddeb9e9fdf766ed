"""End-to-end checks of `memvlm eval`, `predict`, `memorize` and `forget` on a small random-init checkpoint."""
import json

import pytest
import torch

from memvlm.data import CaptionTokenizer, load_digits_captions, write_digits_csv
from memvlm.cli import main
from memvlm.recipes import describe_run
from memvlm.config import RunConfig
from memvlm.models import create_model, load_checkpoint, save_checkpoint

TINY = dict(vision_depth=1, text_depth=1, vision_width=64, text_width=64, embed_dim=32)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A run folder as `memvlm train` leaves it: best/ (random weights, digits tokenizer) and history.csv, plus a test image and a CSV."
    root = tmp_path_factory.mktemp('run')
    digits = load_digits_captions()
    tok = CaptionTokenizer.build([c for caps in digits['train']['captions'] for c in caps])
    described = describe_run(RunConfig().data, digits)  # what memvlm train records: the data options and class names
    save_checkpoint(create_model('memclip-tiny', vocab_size=tok.vocab_size, **TINY), root / 'best', tok, {'epoch': 1, **described})
    save_checkpoint(create_model('memclip-tiny', vocab_size=tok.vocab_size, **TINY), root / 'undescribed', tok, {'epoch': 1})
    model = create_model('memclip-tiny', vocab_size=tok.vocab_size, **TINY)
    model.set_memory_prior(torch.nn.functional.normalize(torch.randn(200, 32), dim=-1), torch.arange(10).repeat(20), digits.classnames)
    save_checkpoint(model, root / 'episodic', tok, described)  # with base statistics, as memvlm train leaves its checkpoints
    (root / 'history.csv').write_text('epoch,train_loss,val_loss,val_zero_shot_acc\n1,2.3,2.2,0.1\n2,1.9,2.0,0.3\n')
    digits['test'][0]['image'].save(root / 'digit.png')
    write_digits_csv(root / 'few', per_class=2)
    return root


def test_eval_report_files_and_keys(memvlm_cli, run_dir, tmp_path):
    r = memvlm_cli('eval', '--checkpoint', str(run_dir / 'best'), '--output-dir', 'rep', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert 'zero_shot_acc' in r.stdout and 'report.md' in r.stdout
    rep = tmp_path / 'rep'
    saved = json.loads((rep / 'metrics.json').read_text())
    assert {'zero_shot_acc', 'linear_probe_acc', 'i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10'} == set(saved['metrics'])
    assert all(0 <= v <= 1 for v in saved['metrics'].values())
    assert saved['dataset'] == 'digits-captions' and saved['split'] == 'test'
    for name in ('tsne.png', 'confusion.png', 'retrieval.png', 'curves.png'):  # curves from the run's history.csv
        assert (rep / name).stat().st_size > 2000, name
        assert f']({name})' in (rep / 'report.md').read_text()


def test_predict_labels_and_texts(memvlm_cli, run_dir, capsys):
    r = memvlm_cli('predict', '--checkpoint', str(run_dir / 'best'), '--image', str(run_dir / 'digit.png'), '--device', 'cpu',
                   '--text', 'the digit zero', 'the digit one', '--text', 'a scanned handwritten two')
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    assert [row.split(None, 2)[2] for row in rows] == ['the digit zero', 'the digit one', 'a scanned handwritten two']
    assert abs(sum(float(row.split()[0]) for row in rows) - 1) < 0.01
    # zero-shot labels, in process (the console script is covered above)
    assert main(['predict', '--checkpoint', str(run_dir / 'best'), '--image', str(run_dir / 'digit.png'), '--device', 'cpu', '--top', '2']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all('probability' in l for l in lines)
    assert lines[0].split()[0] in ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


def test_memorize_and_forget_write_checkpoints(memvlm_cli, run_dir, tmp_path):
    r = memvlm_cli('memorize', '--checkpoint', str(run_dir / 'episodic'), '--dataset', str(run_dir / 'few' / 'captions.csv'),
                   '--output', 'mem', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert '20 examples, 10 new concepts' in r.stdout
    ck = load_checkpoint(tmp_path / 'mem')
    assert ck.model.memory_concepts() == {name: 2 for name in load_digits_captions().classnames}
    assert ck.metadata['memorized'] == [{'dataset': 'captions', 'items': 20}]
    r = memvlm_cli('forget', '--checkpoint', 'mem', '--concept', 'three', '--concept', 'five')
    assert r.returncode == 0 and 'holds 8 concepts' in r.stdout, r.stderr
    assert set(load_checkpoint(tmp_path / 'mem').model.memory_concepts()) == set(ck.model.memory_concepts()) - {'three', 'five'}
    r = memvlm_cli('forget', '--checkpoint', 'mem', '--all', '--output', 'empty')
    assert r.returncode == 0 and load_checkpoint(tmp_path / 'empty').model.memory_concepts() == {}
    assert len(load_checkpoint(tmp_path / 'mem').model.memory_concepts()) == 8  # --output leaves the checkpoint as it was


def test_bad_arguments_exit_2_with_a_message(memvlm_cli, run_dir, capsys):
    r = memvlm_cli('eval', '--checkpoint', 'no/such/ckpt')
    assert r.returncode == 2 and 'memvlm eval: error: no/such/ckpt is not a memvlm checkpoint' in r.stderr and 'Traceback' not in r.stderr
    cases = [(['eval', '--checkpoint', str(run_dir / 'best'), '--tasks', 'bleu,retreival'], 'unknown evaluation tasks'),
             (['eval', '--checkpoint', str(run_dir / 'best'), '--tasks', 'ssim'], 'the model has no reconstruct()'),
             (['eval', '--checkpoint', str(run_dir / 'best'), '--split', 'dev'], "no split 'dev'"),
             (['predict', '--checkpoint', str(run_dir / 'best'), '--image', str(run_dir / 'history.csv')], 'is not an image'),
             (['predict', '--checkpoint', str(run_dir / 'best'), '--image', 'no/such.png'], "no image file at 'no/such.png'"),
             (['memorize', '--checkpoint', str(run_dir / 'best'), '--dataset', str(run_dir / 'few' / 'captions.csv'), '--output', 'x'],
              'no base statistics'),
             (['forget', '--checkpoint', str(run_dir / 'episodic'), '--concept', 'zebra'], "no concept 'zebra'"),
             (['eval', '--checkpoint', str(run_dir / 'undescribed')], 'name the dataset with --dataset')]  # never a default dataset
    for args, message in cases:
        assert main(args + ['--device', 'cpu']) == 2, args
        err = capsys.readouterr().err
        assert f'memvlm {args[0]}: error:' in err and message in err, (args, err)
    with pytest.raises(SystemExit) as e: main(['predict', '--checkpoint', str(run_dir / 'best')])
    assert e.value.code == 2 and '--image' in capsys.readouterr().err  # argparse: a required argument is missing


def test_evaluate_scores_the_real_fusion_model_with_a_modality_missing(tmp_path):
    from memvlm.evaluation import evaluate
    digits = load_digits_captions()
    tok = CaptionTokenizer.build([c for caps in digits['train']['captions'] for c in caps])
    model = create_model('seed-mnist-concat', vocab_size=tok.vocab_size)
    metrics = evaluate(model, digits, tokenizer=tok, report_dir=tmp_path / 'rep')
    assert set(metrics) == {'acc_both', 'acc_image_only', 'acc_text_only'} and all(0 <= v <= 1 for v in metrics.values())
    assert (tmp_path / 'rep' / 'confusion_fusion.png').is_file()
    assert json.loads((tmp_path / 'rep' / 'metrics.json').read_text())['metrics'] == metrics


def test_predict_prints_a_caption_from_a_vae_checkpoint(run_dir, tmp_path, capsys):
    "A model with a caption decoder (vae-tiny) is loaded by the CLI and `predict` prints the caption it generates."
    tok = load_checkpoint(run_dir / 'best').tokenizer
    torch.manual_seed(0)
    save_checkpoint(create_model('vae-tiny', vocab_size=tok.vocab_size), tmp_path / 'vae', tok)
    args = ['predict', '--checkpoint', str(tmp_path / 'vae'), '--image', str(run_dir / 'digit.png'), '--device', 'cpu']
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith('caption:'), out  # an untrained decoder may end the caption at once
    words = set(' '.join(c for caps in load_digits_captions()['train']['captions'] for c in caps).split())
    assert set(out[0][len('caption:'):].split()) <= words  # decoded from the tokenizer's compact vocabulary
    assert main(args + ['--text', 'the digit zero']) == 2
    assert 'it captions the image: leave out --text' in capsys.readouterr().err


def test_eval_and_predict_make_images_square_as_the_run_did(tmp_path, monkeypatch):
    "A run trained with `--resize pad` on wide images is evaluated and queried with padded images too, not squashed ones."
    import os
    from PIL import Image
    from memvlm.inference import predict
    from memvlm.data import image_transform
    from memvlm.evaluation import embed_texts
    for k in [k for k in os.environ if k.startswith('MEMVLM_')]: monkeypatch.delenv(k)
    csv = write_digits_csv(tmp_path / 'wide', per_class=3)
    for png in (tmp_path / 'wide' / 'images').glob('*.png'):
        Image.open(png).resize((64, 20)).save(png)  # wide images: squash and pad differ
    out = tmp_path / 'run'
    assert main(['train', '--dataset', str(csv), '--resize', 'pad', '--epochs', '2', '--batch-size', '8', '--vision-depth', '1',
                 '--text-depth', '1', '--device', 'cpu', '--quiet', '--output-dir', str(out)]) == 0
    trained = json.loads((out / 'metrics.json').read_text())
    assert main(['eval', '--checkpoint', str(out / 'best'), '--tasks', 'zero_shot,retrieval', '--output-dir', str(tmp_path / 'rep'),
                 '--device', 'cpu']) == 0
    evaluated = json.loads((tmp_path / 'rep' / 'metrics.json').read_text())['metrics']
    assert evaluated == pytest.approx({k[5:]: v for k, v in trained.items() if k.startswith('test_')})  # the run's own test scores
    ck = load_checkpoint(out / 'best')
    image, text = next((tmp_path / 'wide' / 'images').glob('seven_*.png')), 'the digit seven'
    similarity = predict(out / 'best', image, [text], device='cpu')['texts'][0]['similarity']
    def expected(resize):
        x = image_transform(ck.model.config.image_size, resize=resize)(Image.open(image))[None]
        with torch.no_grad(): return (ck.model.encode_image(x) @ embed_texts(ck.model, ck.tokenizer, [text]).T).item()
    assert similarity == pytest.approx(expected('pad'), abs=1e-5) and similarity != pytest.approx(expected('squash'), abs=1e-5)


def test_checkpoints_describe_themselves(memvlm_cli, tmp_path):
    "A run on a CSV with its own column names evaluates without naming them again; the checkpoint, copied elsewhere with its run"
    " folder deleted, gives the same metrics and predictions (it records its data options, class names and resize policy)."
    import pandas as pd
    import shutil
    csv = write_digits_csv(tmp_path / 'mine', per_class=10)
    pd.read_csv(csv).rename(columns={'filepath': 'path', 'caption': 'desc', 'label': 'digit'}).to_csv(tmp_path / 'mine' / 'mine.csv', index=False)
    r = memvlm_cli('train', '--dataset', 'mine/mine.csv', '--image-key', 'path', '--caption-key', 'desc', '--label-key', 'digit',
                   '--resize', 'pad', '--epochs', '1', '--vision-depth', '1', '--text-depth', '1', '--output-dir', 'run', '--quiet', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    meta = load_checkpoint(tmp_path / 'run' / 'best').metadata
    assert meta['data']['image_key'] == 'path' and meta['data']['resize'] == 'pad' and len(meta['classes']) == 10
    assert meta['data']['dataset'] == str((tmp_path / 'mine' / 'mine.csv').resolve())  # absolute: the checkpoint can move
    image = str(tmp_path / 'mine' / pd.read_csv(csv)['filepath'][0])
    def eval_and_predict(ck, out):
        r = memvlm_cli('eval', '--checkpoint', ck, '--tasks', 'zero_shot,retrieval', '--output-dir', out, '--device', 'cpu')
        assert r.returncode == 0, r.stderr
        p = memvlm_cli('predict', '--checkpoint', ck, '--image', image, '--device', 'cpu')
        assert p.returncode == 0, p.stderr
        return json.loads((tmp_path / out / 'metrics.json').read_text())['metrics'], p.stdout
    before = eval_and_predict('run/best/model.safetensors', 'rep1')  # --checkpoint takes the folder or any file in it
    shutil.copytree(tmp_path / 'run' / 'best', tmp_path / 'elsewhere' / 'ck')
    shutil.rmtree(tmp_path / 'run')
    after = eval_and_predict('elsewhere/ck', 'rep2')
    assert after == before and 'zero_shot_acc' in after[0] and len(after[1].splitlines()) == 3
