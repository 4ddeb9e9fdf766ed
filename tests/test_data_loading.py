"""Data loading across processes. Worker processes persist from epoch to epoch: they must see the epoch, or captions stop
being redrawn, and seed their random transforms by epoch, or a resumed run draws other augmentations."""
import torch

from memvlm.data import CaptionTokenizer, ImageTextDataset, image_transform, load_digits_captions, make_loader


def captions_per_epoch(num_workers):
    digits = load_digits_captions()
    split = digits['train'].select(range(64))
    tok = CaptionTokenizer.build([c for caps in split['captions'] for c in caps])
    ds = ImageTextDataset(split, tok, image_transform(32), seed=0)
    loader = make_loader(ds, 16, train=False, num_workers=num_workers)
    assert loader.persistent_workers == (num_workers > 0)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        seen.append([c for batch in loader for c in batch['caption']])
    return seen


def test_workers_redraw_captions_each_epoch_like_the_main_process():
    in_process, in_workers = captions_per_epoch(0), captions_per_epoch(2)
    assert in_process[0] != in_process[1]
    assert in_workers == in_process


def images_of_epoch(loader, epoch):
    loader.dataset.set_epoch(epoch)
    return torch.cat([batch['image'] for batch in loader])


def augmenting_loader():
    split = load_digits_captions()['train'].select(range(64))
    tok = CaptionTokenizer.build([c for caps in split['captions'] for c in caps])
    ds = ImageTextDataset(split, tok, image_transform(32, train=True, augment=True), seed=0)  # random per image
    return make_loader(ds, 16, train=False, num_workers=2)


def test_random_transforms_in_persistent_workers_repeat_on_resume():
    "Epoch 1 from workers that ran epoch 0 first equals epoch 1 from fresh workers (a resumed run); epochs differ."
    loader = augmenting_loader()
    first = images_of_epoch(loader, 0)
    straight = images_of_epoch(loader, 1)
    resumed = images_of_epoch(augmenting_loader(), 1)
    assert torch.equal(straight, resumed)
    assert not torch.equal(first, straight)
