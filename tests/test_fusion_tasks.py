"""Fusion models beyond single-label classification, through the command line: regression, multi-label and contrastive
tasks trained together, late fusion with per-modality heads, the checkpoint served by `eval` and `predict`; tasks the
data cannot teach fail before training."""
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from memvlm.cli import main
from memvlm.losses import create_loss
from memvlm.models import load_checkpoint

SAMPLE = Path(__file__).parents[1] / 'data' / 'sample'
TINY = ['--epochs', '2', '--batch-size', '8', '--vision-depth', '1', '--text-depth', '1', '--vision-width', '32',
        '--text-width', '32', '--embed-dim', '16', '--device', 'cpu', '--quiet']


@pytest.fixture(autouse=True)
def no_memvlm_env(monkeypatch):
    for k in [k for k in os.environ if k.startswith('MEMVLM_')]: monkeypatch.delenv(k)


@pytest.fixture(scope='module')
def multitask_run(tmp_path_factory):
    "seed-mnist-concat trained on the shipped CSV for its class, its value and its tags, aligned contrastively, with late fusion."
    out = tmp_path_factory.mktemp('multitask') / 'run'
    args = ['train', '--dataset', str(SAMPLE / 'captions.csv'), '--model', 'seed-mnist-concat',
            '--task', 'classification+regression+multilabel+contrastive', '--task-weights', 'contrastive:0.5',
            '--fusion', 'late', '--head-hidden', '16', '--output-dir', str(out), *TINY]
    assert main(args) == 0
    return out


def test_every_task_is_trained_and_scored(multitask_run):
    metrics = json.loads((multitask_run / 'metrics.json').read_text())
    for score in ('acc', 'r2', 'mae', 'f1'):
        assert {f'test_{score}_{m}' for m in ('both', 'image_only', 'text_only')} <= set(metrics), score
    assert 0 <= metrics['test_acc_both'] <= 1 and 0 <= metrics['test_f1_both'] <= 1 and metrics['test_mae_both'] >= 0
    history = metrics['history']
    assert all('val_acc_both' in r for r in history)  # the first task's score picks the best epoch
    steps = pd.read_csv(multitask_run / 'steps.csv')
    assert {'classification', 'regression', 'multilabel', 'contrastive'} <= set(steps.columns)  # each loss term is logged
    model = load_checkpoint(multitask_run / 'best').model
    c = model.config
    assert (c.task, c.fusion, c.head_hidden, c.task_weights) == ('classification+regression+multilabel+contrastive', 'late', 16, 'contrastive:0.5')
    values = pd.read_csv(SAMPLE / 'captions.csv')['value']
    assert c.num_classes == 10 and c.num_tags == 4 and 3 < c.value_mean < 6 and 2 < c.value_std < 4, c  # from the train split
    assert values.min() == 0 and values.max() == 9
    assert set(model.heads.heads) == {'classification', 'regression', 'multilabel'}
    assert create_loss(model).weights['contrastive'] == 0.5  # the loss reads the model config's task_weights


def test_eval_and_predict_serve_the_multitask_checkpoint(multitask_run, tmp_path, capsys):
    assert main(['eval', '--checkpoint', str(multitask_run / 'best'), '--output-dir', str(tmp_path / 'rep'), '--device', 'cpu']) == 0
    report = json.loads((tmp_path / 'rep' / 'metrics.json').read_text())
    assert {'acc_both', 'r2_text_only', 'f1_image_only'} <= set(report['metrics'])
    assert {'confusion_fusion.png', 'regression.png'} <= set(report['figures'])
    capsys.readouterr()
    image = next(SAMPLE.glob('images/seven_*.png'))
    assert main(['predict', '--checkpoint', str(multitask_run / 'best'), '--image', str(image), '--text', 'the digit seven',
                 '--device', 'cpu']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([l for l in lines if 'probability' in l and not l.startswith('tag ')]) == 3  # the top 3 classes
    assert lines[3].startswith('value: ') and 0 <= float(lines[3].split()[1]) < 20  # a number near the digits' 0-9
    tags = [l.split()[1] for l in lines if l.startswith('tag ')]
    assert tags == ['even', 'large', 'looped', 'prime']  # every tag with its probability, in the data's (sorted) order
    assert main(['predict', '--checkpoint', str(multitask_run / 'best'), '--image', str(image), '--text', 'a', 'b', '--device', 'cpu']) == 2
    assert 'reads one text beside the image' in capsys.readouterr().err


def test_tasks_the_data_cannot_teach_fail_before_training(tmp_path, capsys):
    shutil.copytree(SAMPLE, tmp_path / 'sample')  # image paths must stay inside the CSV's folder
    bare = tmp_path / 'sample' / 'bare.csv'
    pd.read_csv(SAMPLE / 'captions.csv').drop(columns=['value', 'tags']).to_csv(bare, index=False)
    cases = [(['--dataset', str(bare), '--task', 'regression'], 'has no value column'),
             (['--dataset', str(bare), '--task', 'classification+multilabel'], 'has no tags column'),
             (['--task', 'contrastive'], 'beside a predicting task'),
             (['--task', 'classification+vqa'], 'several of classification, regression, multilabel, contrastive joined by +'),
             (['--task', 'regression', '--task-weights', 'detection:2'], "names 'detection'"),
             (['--task-weights', 'regression=2'], 'comma-separated task:weight pairs'),
             (['--model', 'memclip-tiny', '--task', 'regression'], 'trains for retrieval')]
    for args, message in cases:
        full = ['train', *(['--model', 'seed-mnist-concat'] if '--model' not in args else []), *args,
                '--output-dir', str(tmp_path / 'out'), *TINY]
        assert main(full) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
    assert not (tmp_path / 'out' / 'best').exists()


def test_value_and_tags_columns_are_read_and_checked(tmp_path, caplog):
    "A CSV's value and tags columns become the regression and multi-label targets; a value that is not a number is an error naming the row."
    from memvlm.data import load_table, Columns
    shutil.copytree(SAMPLE, tmp_path, dirs_exist_ok=True)
    df = pd.read_csv(SAMPLE / 'captions.csv', dtype=str)
    df.rename(columns={'value': 'size', 'tags': 'attributes'}).assign(attributes=lambda d: d.attributes.str.replace('|', '; ')) \
      .to_csv(tmp_path / 'renamed.csv', index=False)
    data = load_table(tmp_path / 'renamed.csv', Columns(value='size', tags='attributes'))
    assert data.tagnames == ['even', 'large', 'looped', 'prime']
    row = data['train'][0]
    digit = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'].index(data.classnames[row['label']])
    assert row['value'] == digit and ('even' in [data.tagnames[t] for t in row['tags']]) == (digit % 2 == 0)
    df.loc[5, 'value'] = 'n/a'
    df.to_csv(tmp_path / 'bad.csv', index=False)
    with pytest.raises(ValueError, match=r"bad.csv row 7, column 'value': 'n/a' is not a number"):
        load_table(tmp_path / 'bad.csv', Columns(value='value'))  # named as the regression target: it must hold numbers
    with caplog.at_level('WARNING', logger='memvlm.data'):
        found = load_table(tmp_path / 'bad.csv')  # only found by its name: the data still loads, without the column, and says why
    assert 'value' not in found['train'].column_names and found.tagnames == data.tagnames
    assert "bad.csv row 7, column 'value': 'n/a' is not a number" in caplog.text and 'not used as a regression target' in caplog.text
