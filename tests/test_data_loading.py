"""Data loading across processes: worker processes, which persist from epoch to epoch, must see the epoch, or captions
stop being redrawn."""
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
