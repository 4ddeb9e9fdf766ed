"""Few-shot concept learning through MemoryCLIP's episodic memory, against a logistic-regression probe and a
nearest-neighbour cache on the same shots.

Protocol: train memclip-tiny on digits-captions classes 0-4 only (the tokenizer's vocabulary covers all ten classes'
captions, as open_clip's full vocabulary would, but the words for 5-9 are never trained). For classes 5-9, draw K = 1, 5
and 10 image-caption pairs per class from the train split and write them with `memorize()` (no gradient). On the test
images of 5-9 report 5-way accuracy over the classes 5-9: zero-shot without memory, zero-shot with memory, a scikit-learn
logistic-regression probe on the K shots' frozen image embeddings, and a 1-nearest-neighbour cache on the same
embeddings; the wall time of the 5-shot `memorize()` (CPU, median of repeats); and zero-shot accuracy on the test images
of 0-4 over all ten class prompts before and after the write (what memory costs old knowledge).

Targets: memory >= probe at K = 5; write <= 50 ms on CPU; old-class accuracy drops <= 1 point.
The last line is JSON with the 5-shot figures: acc_no_memory, acc_memory, acc_probe, acc_knn, write_ms,
old_acc_before, old_acc_after.
Usage: python benchmarks/fewshot_memory.py [--epochs 40] [--slots 32] [--weight 0.5] [--checkpoint DIR] [--json-out FILE]
"""
import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def train_old_classes(epochs: int, seed: int, tokenizer):
    "memclip-tiny trained on digits-captions classes 0-4."
    from memvlm.config import TrainConfig, seed_everything
    from memvlm.data import ImageTextDataset, image_transform, load_digits_captions, make_loader
    from memvlm.models import create_model
    from memvlm.training import Trainer
    seed_everything(seed)
    rows = load_digits_captions()['train']
    rows = rows.select(np.flatnonzero(np.array(rows['label']) < 5))
    model = create_model('memclip-tiny', vocab_size=tokenizer.vocab_size)
    loader = make_loader(ImageTextDataset(rows, tokenizer, image_transform(32, train=True, augment=True), seed=seed), 128, train=True, seed=seed)
    Trainer(model, loader, config=TrainConfig(epochs=epochs, device='cpu', seed=seed), monitor='train_loss', progress=False).fit()
    return model.eval()


def with_memory(model, slots: int, weight: float):
    "The same weights in a MemoryCLIP that has an episodic memory of `slots` slots."
    from memvlm.models import MemoryCLIP
    out = MemoryCLIP(replace(model.config, episodic_slots=slots, memory_weight=weight))
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith('episodic') for k in missing), (missing, unexpected)
    return out.eval()


def stack_images(rows, transform) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([transform(im) for im in rows['image']]), torch.tensor(rows['label'])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--epochs', type=int, default=40)
    p.add_argument('--slots', type=int, default=32, help='episodic memory slots')
    p.add_argument('--weight', type=float, default=0.5, help='memory_weight: how much the read-out moves an image embedding')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--shots', type=int, nargs='+', default=[1, 5, 10])
    p.add_argument('--checkpoint', default='', help='reuse (or, if absent, write) the 0-4 model here instead of training each run')
    p.add_argument('--json-out', default='', help='also write every figure to this JSON file (the notebook plots it)')
    args = p.parse_args()

    from sklearn.linear_model import LogisticRegression
    from memvlm.data import CaptionTokenizer, digit_captions, image_transform, load_digits_captions
    from memvlm.evaluation import zero_shot_classifier
    from memvlm.models import load_checkpoint, save_checkpoint
    torch.set_grad_enabled(False)

    data = load_digits_captions(seed=args.seed)
    if args.checkpoint and Path(args.checkpoint, 'config.json').is_file():
        ck = load_checkpoint(args.checkpoint); base, tok = ck.model, ck.tokenizer
    else:
        tok = CaptionTokenizer.build([c for label in range(10) for c in digit_captions(label)], 16)
        start = time.time()
        with torch.enable_grad(): base = train_old_classes(args.epochs, args.seed, tok)
        print(f'trained on classes 0-4 in {time.time() - start:.0f} s')
        if args.checkpoint: save_checkpoint(base, args.checkpoint, tok)
    torch.manual_seed(args.seed)  # the memory prior is random
    model = with_memory(base, args.slots, args.weight)

    transform = image_transform(model.config.image_size)
    test_images, test_labels = stack_images(data['test'], transform)
    new, old = test_labels >= 5, test_labels < 5
    classifier = zero_shot_classifier(model, tok, data.class_prompts)  # (10, D), all ten classes

    def accuracy(embeds, labels, classes):
        return (embeds @ classifier[classes].T).argmax(1).eq(labels - classes[0]).float().mean().item()

    new_classes, old_classes, all_classes = list(range(5, 10)), list(range(5)), list(range(10))
    frozen_test = model.encode_image(test_images, use_memory=False)
    acc_no_memory = accuracy(frozen_test[new], test_labels[new], new_classes)
    old_acc_before = accuracy(frozen_test[old], test_labels[old], all_classes)

    train = data['train']
    train_labels = np.array(train['label'])
    rng = np.random.default_rng(args.seed)
    results = {}
    for k in args.shots:
        idx = np.concatenate([rng.choice(np.flatnonzero(train_labels == c), k, replace=False) for c in new_classes])
        shots, shot_labels = stack_images(train.select(idx), transform)
        captions = [str(rng.choice(digit_captions(int(label)))) for label in shot_labels]
        tokens = tok(captions)
        model.forget()
        model.memorize(shots, tokens)
        times = []
        for _ in range(7 if k == 5 else 1):  # the figure is the write of an already-tokenised 5-shot episode
            model.forget()
            start = time.perf_counter(); model.memorize(shots, tokens); times.append(1000 * (time.perf_counter() - start))
        memory_test = model.encode_image(test_images)
        shot_embeds = model.encode_image(shots, use_memory=False)
        probe = LogisticRegression(max_iter=2000).fit(shot_embeds.numpy(), shot_labels.numpy())
        results[k] = {
            'acc_no_memory': acc_no_memory,
            'acc_memory': accuracy(memory_test[new], test_labels[new], new_classes),
            'acc_probe': float((probe.predict(frozen_test[new].numpy()) == test_labels[new].numpy()).mean()),
            'acc_knn': shot_labels[(frozen_test[new] @ shot_embeds.T).argmax(1)].eq(test_labels[new]).float().mean().item(),
            'acc_memory_10way': accuracy(memory_test[new], test_labels[new], all_classes),
            'write_ms': statistics.median(times),
            'old_acc_before': old_acc_before,
            'old_acc_after': accuracy(memory_test[old], test_labels[old], all_classes),
        }
    model.forget()

    cols = ['acc_no_memory', 'acc_memory', 'acc_probe', 'acc_knn', 'acc_memory_10way', 'write_ms', 'old_acc_before', 'old_acc_after']
    print(f'memclip-tiny trained on 0-4, episodic memory {args.slots} slots, weight {args.weight}; new-class accuracy is 5-way over 5-9, '
          f'old-class accuracy 10-way; {len(test_labels[new])} new and {len(test_labels[old])} old test images')
    print(f"{'shots':>5} " + ' '.join(f'{c:>16}' for c in cols))
    for k, r in results.items(): print(f'{k:>5} ' + ' '.join(f'{r[c]:>16.3f}' for c in cols))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({'slots': args.slots, 'weight': args.weight, 'epochs': args.epochs,
                                                   'results': {str(k): v for k, v in results.items()}}, indent=1))
    five = results.get(5, next(iter(results.values())))
    print(json.dumps({c: round(five[c], 4) for c in ['acc_no_memory', 'acc_memory', 'acc_probe', 'acc_knn', 'write_ms', 'old_acc_before', 'old_acc_after']}))


if __name__ == '__main__':
    main()
