"""End to end: MemoryCLIP.memorize() with real captions and tokenizer, its input errors, and the episodic memory
surviving a checkpoint round trip (issue 6)."""
import pytest
import torch

from memvlm.data import CaptionTokenizer, digit_captions, image_transform, load_digits_captions
from memvlm.memory import EpisodicMemory
from memvlm.models import create_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope='module')
def shots():
    "Six real digit images of 5-7 with one caption each, and a tokenizer over those captions."
    rows = load_digits_captions()['train']
    picked = [i for c in (5, 6, 7) for i in [j for j, l in enumerate(rows['label']) if l == c][:2]]
    rows = rows.select(picked)
    captions = [digit_captions(l)[0] for l in rows['label']]
    tok = CaptionTokenizer.build([c for l in range(10) for c in digit_captions(l)], 16)
    images = torch.stack([image_transform(32)(im) for im in rows['image']])
    return images, captions, tok


def tiny(tok, slots=16):
    torch.manual_seed(0)
    return create_model('memclip-tiny', vocab_size=tok.vocab_size, vision_depth=1, text_depth=1, episodic_slots=slots).eval()


def test_memorize_text_captions_changes_reads_and_forget_restores(shots):
    images, captions, tok = shots
    model = tiny(tok)
    before = model.encode_image(images)
    info = model.memorize(images, captions, tokenizer=tok)
    assert info['items_written'] == 6 and info['slots'] == 16
    assert (model.encode_image(images) - before).norm(dim=-1).min() > 1e-4
    # a second write adds to the first
    assert model.memorize(images[:2], captions[:2], tokenizer=tok)['items_written'] == 8
    model.forget()
    torch.testing.assert_close(model.encode_image(images), before)


@pytest.mark.parametrize('bad, message', [
    (lambda im, cap, tok: (im, cap[:5]), '6 images but 5 captions'),
    (lambda im, cap, tok: (im[:0], []), 'empty batch'),
    (lambda im, cap, tok: (im[:, :1], cap), '(N, 3, 32, 32)'),
    (lambda im, cap, tok: (im[0], cap[:1]), '(N, 3, 32, 32)'),
    (lambda im, cap, tok: (im, tok(cap)['input_ids'][0]), '(N, L) tensor'),
    (lambda im, cap, tok: (im, {'input_ids': tok(cap)['input_ids'][:3]}), '6 images but 3 captions'),
    (lambda im, cap, tok: (im, cap[:5] + ['  ']), 'empty or not text'),
])
def test_memorize_rejects_bad_input_with_clear_errors(shots, bad, message):
    images, captions, tok = shots
    model = tiny(tok)
    args = bad(images, captions, tok)
    with pytest.raises(ValueError) as e:
        model.memorize(*args, tokenizer=tok)
    assert message in str(e.value), str(e.value)
    assert model.episodic.is_empty  # nothing half-written


def test_memorize_without_memory_or_tokenizer(shots):
    images, captions, tok = shots
    with pytest.raises(RuntimeError, match='episodic_slots'):
        create_model('memclip-tiny', vocab_size=tok.vocab_size).memorize(images, captions, tokenizer=tok)
    with pytest.raises(ValueError, match='need a tokenizer'):
        tiny(tok).memorize(images, captions)


def test_checkpoint_round_trip_keeps_memory(shots, tmp_path):
    images, captions, tok = shots
    model = tiny(tok)
    model.memorize(images, captions, tokenizer=tok)
    save_checkpoint(model, tmp_path / 'ck', tok)
    restored = load_checkpoint(tmp_path / 'ck')
    assert restored.model.config.episodic_slots == 16
    assert restored.model.episodic.capacity()['items_written'] == 6
    torch.testing.assert_close(restored.model.encode_image(images), model.encode_image(images))
    restored.model.forget()
    torch.testing.assert_close(restored.model.encode_image(images), model.encode_image(images, use_memory=False))


def test_memory_off_by_default_leaves_state_dict_unchanged():
    model = create_model('memclip-tiny', vocab_size=40)
    assert model.episodic is None
    assert not any('episodic' in k for k in model.state_dict())


def test_episodic_memory_file_round_trip(tmp_path):
    torch.manual_seed(0)
    memory, codes, held_out = EpisodicMemory(8, 16), torch.randn(5, 16), torch.randn(5, 16)
    memory.write(codes)
    restored = EpisodicMemory(8, 16).load(memory.save(tmp_path / 'm.safetensors'))
    torch.testing.assert_close(restored.read(held_out), memory.read(held_out))
    with pytest.raises(ValueError, match=r'holds a \(8, 16\) memory'):
        EpisodicMemory(4, 16).load(tmp_path / 'm.safetensors')
