"""LoRA in MemoryCLIP's open_clip towers through peft (issue 27 item 3), offline on a tiny open_clip ViT registered here:
only the adapters (and the memory tokens and the temperature) move, the locks and memory tokens combine with it,
checkpoints round-trip, the merged export loads into open_clip strictly with the same outputs, bad options and a missing
peft say what to do, and `memvlm train --lora-rank 8` trains, merges and exports."""
import copy
import json

import pytest
import torch

from memvlm.config import ConfigError, RunConfig, TrainConfig, apply_env, update_config
from memvlm.data import CaptionTokenizer
from memvlm.encoders import open_clip_towers_supported
from memvlm.models import (OPENAI_MEAN, OPENAI_STD, MemoryCLIPConfig, create_model, load_checkpoint, register_model,
                           save_checkpoint)

pytestmark = pytest.mark.skipif(not open_clip_towers_supported(), reason='open_clip towers need open-clip-torch >= 3.1')
NAME, MODEL = 'memvlm-lora-test-vit', 'memclip-lora-test-vit'


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_open_clip):
    "The tiny model registered with open_clip (towers of different widths), and a file of its random weights."
    path = tiny_open_clip(tmp_path_factory.mktemp('lora'), NAME, text_width=48)
    register_model(MODEL, MemoryCLIPConfig(towers=f'open_clip:{NAME}', pretrained=str(path), image_size=32,
                                           context_length=16, embed_dim=32, memory_tokens=4, image_mean=OPENAI_MEAN,
                                           image_std=OPENAI_STD, resize='crop'))
    return path


def batch(n=8):
    torch.manual_seed(1)
    return torch.randn(n, 3, 32, 32), CaptionTokenizer.build([], 16, 'full')([f'a photo of {i} cats' for i in range(n)])['input_ids']


def trained(model, config: TrainConfig, steps=3):
    "`model` prepared as the Trainer prepares it, after `steps` AdamW steps on one batch; the names of what moved."
    from memvlm.losses import create_loss
    from memvlm.training import make_optimizer, param_groups, prepare_model
    model, _ = prepare_model(model, config, 'cpu')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, loss_fn = make_optimizer(param_groups(model, 0.05), 1e-2, torch.device('cpu')), create_loss(model)
    images, ids = batch()
    model.train()
    for _ in range(steps):
        loss, _ = loss_fn(model(images, ids), {'image': images, 'input_ids': ids})
        optimizer.zero_grad(); loss.backward(); optimizer.step()
    return model.eval(), {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def embeddings(model):
    images, ids = batch()
    with torch.no_grad(): return model.encode_image(images), model.encode_text(ids)


MEMORY = {'towers.memory.tokens', 'towers.memory.gates', 'logit_scale', 'towers.clip.logit_scale'}


@pytest.mark.parametrize('targets', ['attn', 'mlp', 'attn,mlp'])
def test_only_adapters_memory_tokens_and_temperature_move(weights, targets):
    from memvlm.lora import lora_parameter_count
    model = create_model(MODEL)
    start = embeddings(model.eval())
    model.add_lora(8, targets=targets)
    for a, b in zip(embeddings(model), start): assert torch.equal(a, b)  # B starts at zero: the pretrained model, exactly
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if '.lora_A.' in n or '.lora_B.' in n}
    assert set(trainable) - adapters == {'logit_scale', 'towers.memory.tokens', 'towers.memory.gates'}
    assert sum(trainable[n] for n in adapters) == lora_parameter_count(8, targets, [(64, 2), (48, 2)])
    model, moved = trained(model, TrainConfig(lora_rank=8, lora_targets=targets))
    assert moved - MEMORY == {k for k in model.state_dict() if '.lora_A.' in k or '.lora_B.' in k}  # every adapter
    assert MEMORY <= moved
    layers = {'attn': 'attn.lora_', 'mlp': 'mlp.c_fc.lora_'}
    for t in ('attn', 'mlp'):
        for tower in ('visual.transformer', 'clip.transformer'):
            assert any(f'{tower}.resblocks.1.{layers[t]}' in k for k in moved) == (t in targets), (t, tower)


def test_lora_beside_lock_image_and_memory_tokens(weights):
    model, moved = trained(create_model(MODEL), TrainConfig(lora_rank=4, lock_image=True))
    assert model.lora['towers'] == ['text']
    assert not any('.visual.' in k for k in moved) and MEMORY <= moved  # the locked tower: no adapters, unchanged
    assert any('clip.transformer.resblocks.0.attn.lora_B' in k for k in moved)
    model, moved = trained(create_model(MODEL), TrainConfig(lora_rank=4, lock_image=True, lock_image_unlocked_groups=2))
    visual = {k for k in moved if '.visual.' in k}  # open_clip's last two groups: the projection, the last block
    assert {'towers.clip.visual.proj', 'towers.clip.visual.transformer.resblocks.1.attn.in_proj_weight'} <= visual
    assert not any('resblocks.0.' in k or 'lora' in k for k in visual)


def test_memory_tokens_read_through_the_adapted_attention(weights):
    "The memory's own path (`attention_projections`) gives what the merged weights give, so the adapters reach it."
    model, _ = trained(create_model(MODEL), TrainConfig(lora_rank=8))
    with torch.no_grad(): model.towers.memory.gates.fill_(1.0)  # the memory is read for sure
    lora_image, _ = embeddings(model)
    merged_image, _ = embeddings(copy.deepcopy(model).merge_lora())
    assert (merged_image - lora_image).abs().max() < 1e-5
    with torch.no_grad():  # and the adapters matter there: without them the memory path gives something else
        for tuner in model._lora_tuners: tuner.disable_adapter_layers()
        assert (model.encode_image(batch()[0]) - lora_image).abs().max() > 1e-3


def test_checkpoints_keep_the_adapters_and_load_back(weights, tmp_path):
    model, _ = trained(create_model(MODEL), TrainConfig(lora_rank=8, lora_targets='attn,mlp'))
    save_checkpoint(model, tmp_path / 'ck', CaptionTokenizer.build([], 16, 'full'))
    info = json.loads((tmp_path / 'ck' / 'config.json').read_text())
    assert info['lora'] == {'rank': 8, 'alpha': 8.0, 'targets': ['attn', 'mlp'], 'towers': ['image', 'text']}
    loaded = load_checkpoint(tmp_path / 'ck').model
    assert loaded.lora == model.lora
    for a, b in zip(embeddings(loaded), embeddings(model)): assert torch.equal(a, b)
    # a LoRA checkpoint as the pretrained weights of a new run: its merged weights, no adapters
    again = create_model(MODEL, pretrained=str(tmp_path / 'ck')).eval()
    assert again.lora is None
    for a, b in zip(embeddings(again), embeddings(model)): assert (a - b).abs().max() < 1e-5


def test_merged_export_loads_into_open_clip_strictly_with_equal_outputs(weights):
    import open_clip
    model, moved = trained(create_model(MODEL, memory_tokens=0), TrainConfig(lora_rank=8, lora_targets='attn,mlp'))
    image, text = embeddings(model)
    plain = open_clip.create_model(NAME).eval()
    plain.load_state_dict(model.open_clip_state_dict(), strict=True)
    images, ids = batch()
    with torch.no_grad():
        assert (plain.encode_image(images, normalize=True) - image).abs().max() < 1e-5
        assert (plain.encode_text(ids, normalize=True) - text).abs().max() < 1e-5
    original = open_clip.create_model(NAME)
    open_clip.load_checkpoint(original, str(weights))
    with torch.no_grad():  # the export carries what was learnt: it is not the pretrained model
        assert (original.eval().encode_image(images, normalize=True) - image).abs().max() > 1e-4
    assert model.lora is not None  # exporting leaves the model's adapters in place
    model.merge_lora()
    assert model.lora is None and not any('lora' in k for k in model.state_dict())
    for a, b in zip(embeddings(model), (image, text)): assert (a - b).abs().max() < 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(weights):
    from memvlm.losses import create_loss
    grads = []
    for checkpointing in (False, True):
        model = create_model(MODEL).add_lora(4, targets='attn,mlp')
        for p in model.parameters():
            if p.requires_grad: torch.manual_seed(p.numel()); p.data.normal_(0, 0.02)  # B != 0: the adapters count
        model.set_grad_checkpointing(checkpointing)
        model.train()
        images, ids = batch()
        loss, _ = create_loss(model)(model(images, ids), {'image': images, 'input_ids': ids})
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all((grads[0][n] - grads[1][n]).abs().max() < 1e-5 for n in grads[0])


def test_options_and_errors_name_what_to_change(weights):
    from memvlm.training import prepare_model
    cfg = apply_env(RunConfig(), {'MEMVLM_LORA_RANK': '8', 'MEMVLM_LORA_TARGETS': 'attn,mlp', 'MEMVLM_LORA_ALPHA': '16'})
    assert (cfg.train.lora_rank, cfg.train.lora_targets, cfg.train.lora_alpha) == (8, 'attn,mlp', 16.0)
    with pytest.raises(ConfigError, match=r"MEMVLM_LORA_TARGETS='qkv' is not valid for train.lora_targets: expected attn, mlp, or attn,mlp"):
        apply_env(RunConfig(), {'MEMVLM_LORA_TARGETS': 'qkv'})
    with pytest.raises(ConfigError, match=r'lora_rank=-1.*expected an integer ≥ 0'):
        update_config(RunConfig(), {'lora_rank': -1})
    with pytest.raises(ValueError, match="lora_rank=8: LoRA adapts the open_clip towers of a MemoryCLIP.*MemoryCLIP has none"):
        prepare_model(create_model('memclip-tiny'), TrainConfig(lora_rank=8), 'cpu')
    with pytest.raises(ValueError, match='lora_rank=8 and memory_only=True'):
        prepare_model(create_model(MODEL), TrainConfig(lora_rank=8, memory_only=True), 'cpu')
    with pytest.raises(ValueError, match='lora_rank=8 with lock_image and lock_text: .* none is left'):
        prepare_model(create_model(MODEL), TrainConfig(lora_rank=8, lock_image=True, lock_text=True), 'cpu')
    with pytest.raises(ValueError, match='lora_rank=48: the text tower is 48 wide; LoRA needs a rank below the width'):
        create_model(MODEL).add_lora(48)
    with pytest.raises(ValueError, match=r'lora_alpha=0.0: expected a number > 0'):
        prepare_model(create_model(MODEL), TrainConfig(lora_rank=8, lora_alpha=0.0), 'cpu')
    with pytest.raises(ValueError, match='already has LoRA adapters'):
        create_model(MODEL).add_lora(4).add_lora(4)
    with pytest.raises(ValueError, match='no LoRA adapters to merge'):
        create_model(MODEL).merge_lora()
    model = create_model(MODEL).add_lora(4)  # a checkpoint's adapters: the same options keep them, others are an error
    prepare_model(model, TrainConfig(lora_rank=4), 'cpu')
    with pytest.raises(ValueError, match='has LoRA adapters .* already, and the options ask for'):
        prepare_model(model, TrainConfig(lora_rank=8), 'cpu')


def test_missing_or_old_peft_says_what_to_install(weights, monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, 'peft', None)  # as if it were not installed
    with pytest.raises(ImportError, match=r'needs peft .*pip install peft \(or pip install "memvlm\[lora\]"\)'):
        create_model(MODEL).add_lora(8)
    old = types.SimpleNamespace(__version__='0.13.2', LoraConfig=type('LoraConfig', (), {'__dataclass_fields__': {'r': None}}))
    monkeypatch.setitem(sys.modules, 'peft', old)
    with pytest.raises(ImportError, match='needs peft >= 0.17.*this is peft 0.13.2: pip install -U peft'):
        create_model(MODEL).add_lora(8)


def test_memvlm_train_with_lora_rank_8_trains_merges_and_exports(weights, tmp_path, memvlm_cli):
    import open_clip
    r = memvlm_cli('train', '--model', MODEL, '--memory-tokens', '0', '--lora-rank', '8', '--epochs', '1',
                   '--batch-size', '32', '--lr', '1e-2', '--device', 'cpu', '--output-dir', str(tmp_path / 'run'), '--quiet')
    assert r.returncode == 0, r.stderr
    assert 'LoRA rank 8 in attn' in r.stdout
    metrics = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert metrics['trainable_parameters'] == 8 * 4 * (64 * 2 + 48 * 2) + 1  # the adapters and the temperature
    best = load_checkpoint(tmp_path / 'run' / 'best').model
    assert best.lora['rank'] == 8 and best.concept_memory.has_prior  # memorize-ready, as every train checkpoint
    adapters = [v for k, v in best.state_dict().items() if '.lora_B.' in k]
    assert adapters and all(v.abs().max() > 0 for v in adapters)  # every adapter learnt something
    plain = open_clip.create_model(NAME).eval()
    plain.load_state_dict(best.open_clip_state_dict(), strict=True)
    images, ids = batch()
    with torch.no_grad():
        assert (plain.encode_image(images, normalize=True) - best.encode_image(images)).abs().max() < 1e-5
        assert (plain.encode_text(ids, normalize=True) - best.encode_text(ids)).abs().max() < 1e-5
    image = tmp_path / 'x.png'
    from memvlm.data import load_digits_captions
    load_digits_captions()['test'][0]['image'].save(image)
    assert memvlm_cli('predict', '--checkpoint', str(tmp_path / 'run' / 'best'), '--image', str(image),
                      '--device', 'cpu').returncode == 0  # the checkpoint just works


class StopAfterOneEpoch:
    "A run cut short after its first epoch, as a lost machine cuts it (its checkpoints are written)."
    def on_epoch_end(self, trainer, record): trainer.should_stop = True


def test_a_lora_run_resumes_exactly(weights, tmp_path):
    "Two epochs in one go, and the same run stopped after one then resumed from `last/`: the same adapters at the end."
    from memvlm.data import ImageTextDataset, load_digits_captions, make_loader
    from memvlm.models import model_transform
    from memvlm.training import Trainer
    tok = CaptionTokenizer.build([], 16, 'full')
    def fit(out, resume='false', callbacks=()):
        torch.manual_seed(0)
        model = create_model(MODEL)
        ds = ImageTextDataset(load_digits_captions()['train'].select(range(32)), tok, model_transform(model.config), seed=0)
        config = TrainConfig(device='cpu', epochs=2, batch_size=16, lr=1e-2, lora_rank=4, resume=resume)
        Trainer(model, make_loader(ds, 16, train=True, seed=0), None, config, monitor='train_loss', output_dir=out,
                progress=False, callbacks=callbacks).fit()
        return {k: v for k, v in model.state_dict().items() if '.lora_' in k or k.startswith('towers.memory.')}
    straight = fit(tmp_path / 'a')
    fit(tmp_path / 'b', callbacks=[StopAfterOneEpoch()])
    resumed = fit(tmp_path / 'b', resume='latest')
    assert straight.keys() == resumed.keys() and len(straight) == 2 * 2 * 2 + 2  # A, B per block per tower; the memory
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert load_checkpoint(tmp_path / 'b' / 'last').model.lora['rank'] == 4
