"""MemoryCLIP on pretrained open_clip towers (issue 18), offline: a tiny open_clip ViT registered here, its random weights
written to a file, stands in for the hub in every test. Exactness against open_clip, gated memory tokens that leave the
pretrained embeddings untouched until they learn, the lock options, checkpoints that carry their preprocessing,
`memorize`, export back to open_clip, and the errors for a bad name, tag or weights file."""

import pytest
import torch

from memvlm.config import RunConfig, update_config
from memvlm.data import CaptionTokenizer, ImageTextDataset, load_digits_captions, make_loader
from memvlm.encoders import open_clip_towers_supported
from memvlm.models import (OPENAI_MEAN, OPENAI_STD, MemoryCLIPConfig, create_model, load_checkpoint,
                           model_transform, register_model)

pytestmark = pytest.mark.skipif(not open_clip_towers_supported(), reason='open_clip towers need open-clip-torch >= 3.1')
NAME = 'memvlm-test-vit'


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_open_clip):
    "The tiny model registered with open_clip, and a file of its random weights (in open_clip's layout)."
    path = tiny_open_clip(tmp_path_factory.mktemp('clip'), NAME)
    config = MemoryCLIPConfig(towers=f'open_clip:{NAME}', pretrained=str(path), image_size=32,
                              context_length=16, embed_dim=32, memory_tokens=4, image_mean=OPENAI_MEAN,
                              image_std=OPENAI_STD, resize='crop')
    register_model('memclip-test-vit', config)
    return path


def reference(path):
    "open_clip's own model on the same weights."
    import open_clip
    model = open_clip.create_model(NAME)
    open_clip.load_checkpoint(model, str(path))
    return model.eval()


def batch(n=4):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), CaptionTokenizer.build([], 16, 'full')(['a photo of a cat', 'two', 'x y z', 'seven'][:n])


def test_exact_against_open_clip_with_and_without_memory_tokens(weights):
    images, text = batch()
    ref = reference(weights)
    with torch.no_grad():
        want_image, want_text = ref.encode_image(images, normalize=True), ref.encode_text(text['input_ids'], normalize=True)
        for n in (0, 4):  # gated memory tokens at initialisation leave the pretrained embeddings as they were
            model = create_model('memclip-test-vit', memory_tokens=n).eval()
            assert (model.encode_image(images) - want_image).abs().max() < 1e-5, n
            assert (model.encode_text(text['input_ids']) - want_text).abs().max() < 1e-5, n
        model.towers.memory.gates.fill_(1.0)
        assert (model.encode_image(images) - want_image).abs().max() > 1e-3  # open gates: the memory is read


def test_open_clip_tokenizer_and_preprocessing_travel_with_the_checkpoint(weights, tmp_path):
    import open_clip
    texts = ['A photo of a Cat.', 'the number 7 written by hand!!']
    assert torch.equal(CaptionTokenizer.build(texts, 16, 'full')(texts)['input_ids'],
                       open_clip.get_tokenizer(NAME)(texts)[:, :16])
    from memvlm.models import save_checkpoint
    model = create_model('memclip-test-vit').eval()
    save_checkpoint(model, tmp_path / 'ck', CaptionTokenizer.build([], 16, 'full'))
    ck = load_checkpoint(tmp_path / 'ck')
    c = ck.model.config
    assert (c.image_mean, c.image_std, c.resize, c.context_length) == (OPENAI_MEAN, OPENAI_STD, 'crop', 16)
    images, text = batch()
    with torch.no_grad(): assert (ck.model.encode_image(images) - model.encode_image(images)).abs().max() < 1e-6
    assert model_transform(c).transforms[-1].mean == list(OPENAI_MEAN)
    # a memvlm checkpoint is also a pretrained source: the same weights, memory tokens included
    again = create_model('memclip-test-vit', pretrained=str(tmp_path / 'ck'))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_export_to_open_clip_round_trips(weights):
    import open_clip
    model = create_model('memclip-test-vit', memory_tokens=0).eval()
    with torch.no_grad(): model.towers.clip.visual.proj.mul_(1.5)  # as after fine-tuning
    plain = open_clip.create_model(NAME).eval()
    plain.load_state_dict(model.open_clip_state_dict(), strict=True)
    images, _ = batch()
    with torch.no_grad(): assert (plain.encode_image(images, normalize=True) - model.encode_image(images)).abs().max() < 1e-5
    with pytest.raises(ValueError, match='open_clip has no place for memory tokens'):
        create_model('memclip-test-vit').open_clip_state_dict()


def test_bad_names_tags_and_weights_files_say_what_exists(weights, tmp_path, tiny_open_clip):
    with pytest.raises(ValueError, match="open_clip has no model 'ViT-Q-99'; it has: .*ViT-B-32"):
        create_model('memclip-test-vit', towers='open_clip:ViT-Q-99')
    with pytest.raises(ValueError, match=f"pretrained='nope' is neither a weights file nor a pretrained tag of open_clip {NAME}"):
        create_model('memclip-test-vit', pretrained='nope')
    with pytest.raises(ValueError, match='the towers of open_clip .* have their own sizes'):
        create_model('memclip-test-vit', vision_depth=1)
    wide = tiny_open_clip(tmp_path, 'memvlm-test-wide', vision_width=96)
    with pytest.raises(ValueError, match=f'does not fit open_clip {NAME}: visual'):
        create_model('memclip-test-vit', pretrained=str(wide))


def run_config(tmp_path, name, **train):
    return update_config(RunConfig(), {'model': {'model': 'memclip-test-vit'},
                                       'train': {'device': 'cpu', 'epochs': 1, 'batch_size': 32, 'lr': 1e-3, **train},
                                       'output_dir': str(tmp_path / name)})


@pytest.mark.parametrize('lock', [{'lock_image': True}, {'lock_image': True, 'lock_image_unlocked_groups': 1},
                                  {'lock_text': True}, {'memory_only': True}, {'layer_decay': 0.7}])
def test_each_lock_option_trains_what_it_says(weights, tmp_path, lock):
    from memvlm.recipes import prepare_run
    from memvlm.training import Trainer
    run = prepare_run(run_config(tmp_path, 'lock', **lock))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    ds = ImageTextDataset(run.data['train'].select(range(32)), run.tokenizer, model_transform(run.model.config))
    trainer = Trainer(run.model, make_loader(ds, 16, train=True), make_loader(ds, 16), run.config.train, progress=False)
    trainer.fit()
    moved = {k for k, v in run.model.state_dict().items() if not torch.equal(v, before[k])}
    visual, text = {k for k in moved if '.visual.' in k}, {k for k in moved if '.transformer.' in k and '.visual.' not in k}
    assert 'towers.memory.gates' in moved  # the memory learns under every option
    if lock.get('memory_only'): assert moved == {'towers.memory.gates', 'towers.memory.tokens'}
    if lock.get('lock_text'): assert not text and visual
    if lock.get('lock_image'):
        unlocked = {k for k in visual if 'resblocks.1.' in k or 'ln_post' in k or k.endswith('visual.proj')}
        assert visual == unlocked if lock.get('lock_image_unlocked_groups') else not visual
        assert text
    if 'layer_decay' in lock:
        scales = sorted({g.get('lr_scale', 1.0) for g in trainer.optimizer.param_groups})
        assert scales[0] == pytest.approx(0.7 ** 3) and scales[-1] == 1.0  # embeddings of a 2-block tower: 0.7^(2+1)


def test_fine_tune_end_to_end_memory_tokens_learn_and_memorize_works(weights, tmp_path):
    from memvlm.inference import memorize_checkpoint, predict
    from memvlm.recipes import train
    from memvlm.data import write_digits_csv
    metrics = train(run_config(tmp_path, 'run', epochs=3, memory_only=True), progress=False)
    losses = [r['train_loss'] for r in metrics['history']]
    assert losses[-1] < losses[0]  # only the memory tokens and their gates train, and the loss falls
    ck = load_checkpoint(tmp_path / 'run' / 'best')
    assert ck.model.towers.memory.gates.abs().min() > 0 and ck.metadata['data']['resize'] == 'crop'
    csv = write_digits_csv(tmp_path / 'few', per_class=2, classes=[3, 5])
    taught = memorize_checkpoint(tmp_path / 'run' / 'best', str(csv), tmp_path / 'mem', device='cpu')
    assert taught['items'] == 4 and set(taught['concepts']) == {'three', 'five'}
    image = tmp_path / 'three.png'
    load_digits_captions()['test'].filter(lambda r: r['label'] == 3)[0]['image'].save(image)
    labels = predict(tmp_path / 'mem', image, device='cpu')['labels']
    assert labels and all('probability' in r for r in labels)
