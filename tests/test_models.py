"""End to end checks of the model zoo: every registered architecture builds from its name, trains a step on real
digits-captions, survives a checkpoint round trip; config/YAML choices reach the model; bad choices fail clearly."""
import dataclasses

import pytest
import torch

from memvlm.encoders import open_clip_towers_supported
from memvlm.config import ConfigError, RunConfig, update_config
from memvlm.data import CaptionTokenizer, ImageTextDataset, image_transform, load_digits_captions, make_loader
from memvlm.larimar import LarimarCaptioner
from memvlm.losses import create_loss
from memvlm.training import model_inputs
from memvlm.models import (FusionModel, count_parameters, create_model, list_models, load_checkpoint,
                           save_checkpoint)


@pytest.fixture(scope='module')
def digits():
    data = load_digits_captions()
    tok = CaptionTokenizer.build([c for caps in data['train']['captions'] for c in caps], 16)
    return data, tok


def _batch(digits, size, n=4):
    data, tok = digits
    return next(iter(make_loader(ImageTextDataset(data['train'], tok, image_transform(size)), n)))


# memclip-base (70M parameters), the pretrained CLIPs (ViT-B) and seed 000's captioner (251M) are slow on a CPU:
# 07_models runs them once, tests/test_pretrained_clip.py covers the pretrained path on a tiny open_clip model, and
# 06c_larimar trains a tiny captioner of seed 000's classes
SMALL = [n for n in list_models() if n != 'memclip-base' and not n.startswith(('memclip-vit', 'larimar-dinov2'))]


@pytest.mark.parametrize('name', SMALL)
def test_every_registered_model_trains_a_step_and_round_trips(name, digits, tmp_path):
    torch.manual_seed(0)
    tok = digits[1]
    model = create_model(name, vocab_size=tok.vocab_size)
    b = _batch(digits, model.config.image_size)
    if isinstance(model, LarimarCaptioner): b['label'] = torch.arange(len(b['image'])) % 2  # episodes rename a class
    # the model predicts, its family's loss judges: what the Trainer does
    loss, _ = create_loss(model)(model(**model_inputs(model, b)), b)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward(); opt.step()
    assert torch.isfinite(loss)
    save_checkpoint(model, tmp_path / name, tok)
    back = load_checkpoint(tmp_path / name)
    assert type(back.model) is type(model) and back.model.config == model.config
    model.eval()
    for (k, a), (_, c) in zip(model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, c), k


def test_list_models_counts_parameters():
    rows = {name: n for name, _, n in list_models(with_params=True)}
    assert set(rows) == set(list_models())
    assert rows['seed-mnist-concat'] == sum(p.numel() for p in create_model('seed-mnist-concat').parameters())
    assert rows['memclip-base'] > rows['memclip-small'] > rows['memclip-tiny']


def test_counting_parameters_never_loads_published_weights(monkeypatch):
    """Where the meta device cannot build a model (timm < 1.0.21 reads tensor values while building), the count builds
    it on the CPU with random weights: seed 000's model (DINOv2, DistilBERT, DistilGPT-2, published weights) is counted
    without a download."""
    from memvlm import registry
    expected = count_parameters('larimar-dinov2-distilgpt2')
    build, built = registry.architecture_of, []
    def as_old_timm(config):
        def make(c):
            if torch.empty(0).device.type == 'meta': raise NotImplementedError('a tensor value read on meta')
            built.append(c); return build(c)(c)
        return make
    monkeypatch.setattr(registry, 'architecture_of', as_old_timm)
    assert count_parameters('larimar-dinov2-distilgpt2') == expected and [c.pretrained for c in built] == ['']


def test_yaml_choices_reach_the_fusion_model():
    from memvlm.models import model_config
    cfg = update_config(RunConfig(), {'model': {'model': 'seed-multimodal-transformer', 'attention': 'linear', 'ffn': 'glu',
                                                'norm': 'scalenorm', 'position': 'sinusoidal', 'fusion': 'gated',
                                                'text': 'lstm', 'vision': 'cnn'}})
    m = cfg.model
    arch = model_config(m.model, attention=m.attention, ffn=m.ffn, norm=m.norm, position=m.position, fusion=m.fusion,
                        text=m.text, vision=m.vision)
    model = create_model(arch)
    assert type(model.fusion).__name__ == 'GatedFusion' and type(model.text).__name__ == 'LSTMEncoder'
    assert type(model.visual).__name__ == 'CNNEncoder'
    out = model(torch.randn(2, 3, 32, 32), torch.randint(2, 100, (2, 8)))
    assert out.logits.shape == (2, 10)


def test_bad_choices_fail_with_what_is_accepted():
    with pytest.raises(ConfigError, match='fusion'):
        update_config(RunConfig(), {'model': {'fusion': 'sum'}})
    with pytest.raises(ValueError, match="unknown model options \\['fusion'\\] for MemoryCLIPConfig"):
        create_model('memclip-tiny', fusion='concat')
    with pytest.raises(ValueError, match="vision='resnet'"):
        create_model('seed-mnist-concat', vision='resnet')


def test_model_options_are_architecture_fields():
    "Each model option of the run configuration is a field of an architecture's config under the same name: no renaming."
    from memvlm.config import ModelConfig
    from memvlm.models import FusionModelConfig, MemoryCLIPConfig
    arch_fields = {f.name for cls in (MemoryCLIPConfig, FusionModelConfig) for f in dataclasses.fields(cls)}
    options = {f.name for f in dataclasses.fields(ModelConfig)} - {'model'}
    assert options <= arch_fields, f'options that no architecture has: {sorted(options - arch_fields)}'


def test_an_option_the_architecture_lacks_lists_the_accepted_ones(tmp_path):
    from memvlm.recipes import prepare_run
    cfg = update_config(RunConfig(), {'model': {'model': 'memclip-tiny', 'fusion': 'gated'},
                                      'train': {'device': 'cpu'}, 'output_dir': str(tmp_path / 'out')})
    with pytest.raises(ValueError, match=r"unknown model options \['fusion'\] for MemoryCLIPConfig; accepted: .*memory_tokens"):
        prepare_run(cfg)


def test_prepare_run_builds_a_fusion_classifier(tmp_path):
    from memvlm.recipes import prepare_run
    cfg = update_config(RunConfig(), {'model': {'model': 'seed-mnist-concat', 'fusion': 'late'},
                                      'train': {'device': 'cpu'}, 'output_dir': str(tmp_path / 'out')})
    run = prepare_run(cfg)
    assert isinstance(run.model, FusionModel) and run.model.config.num_classes == 10
    assert run.model.config.fusion == 'late' and run.model.config.vocab_size == run.tokenizer.vocab_size


@pytest.mark.skipif(not open_clip_towers_supported(), reason='open_clip towers need open-clip-torch >= 3.1')
def test_every_zoo_choice_reaches_the_model_through_prepare_run(tmp_path, digits, tiny_open_clip):
    "A YAML-shaped config picks an open_clip text tower, sparse attention with its window and global tokens, a fusion and its heads."
    from memvlm.recipes import prepare_run
    from memvlm.encoders import OpenCLIPTextEncoder
    tiny_open_clip(tmp_path, 'memvlm-test-clip', layers=1, text_heads=4)
    cfg = update_config(RunConfig(), {
        'model': {'model': 'seed-multimodal-transformer', 'text': 'open_clip:memvlm-test-clip', 'vision': 'vit',
                  'attention': 'sparse', 'window': 1, 'global_tokens': 2, 'fusion': 'bicross', 'fusion_heads': 2},
        'train': {'device': 'cpu', 'freeze': 'text:1'}, 'output_dir': str(tmp_path / 'out')})
    run = prepare_run(cfg)
    model = run.model
    assert isinstance(model.text, OpenCLIPTextEncoder) and run.tokenizer.vocab_size == 49408  # open_clip's own token ids
    attn = model.visual.transformer.blocks[0].attn
    assert (type(attn).__name__, attn.window, attn.global_tokens) == ('SparseAttention', 1, 2)
    assert type(model.fusion).__name__ == 'BiCrossAttentionFusion' and model.fusion.t2i.num_heads == 2
    data, _ = digits
    batch = run.tokenizer(data['train']['captions'][0][:1] * 2)
    batch = {**batch, 'image': torch.randn(2, 3, 32, 32), 'label': torch.tensor([1, 2])}
    create_loss(model)(model(**model_inputs(model, batch)), batch)[0].backward()
    assert model.text.text.token_embedding.weight.grad is not None
    from memvlm.training import freeze_parameters
    locked = freeze_parameters(model, cfg.train.freeze)  # as the Trainer does with train.freeze
    assert locked and all(n.startswith('text.') for n in locked) and any('resblocks.0.' in n for n in locked)
