"""MultimodalVAE (vae-tiny) on digits-captions: caption BLEU (sacrebleu, against all six reference phrasings) and image
SSIM (scikit-image) on the test split, with and without the episodic memory.

Trains vae-tiny (16 px) on the train split for --epochs with AdamW, then on the test split reports
  bleu: greedy captions of test images; ssim: reconstructions of test images; ssim_text: images decoded from one
  caption alone (text -> image) against the test image; each without memory and with a memory holding the latents of
  `episodic_slots - 1` training image-caption pairs (a few per class) written by `memorize()`.
The last line is JSON with every figure. Usage: python benchmarks/vae_digits.py [--epochs 30] [--seed 0]
"""
import argparse
import json
import time

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()

    import sacrebleu
    from skimage.metrics import structural_similarity
    from memvlm.config import seed_everything
    from memvlm.data import CaptionTokenizer, ImageTextDataset, collate, digit_captions, image_transform, load_digits_captions, make_loader
    from memvlm.models import create_model
    from memvlm.losses import create_loss

    seed_everything(args.seed)
    data = load_digits_captions(seed=args.seed)
    tok = CaptionTokenizer.build([c for label in range(10) for c in digit_captions(label)], 16)
    model = create_model('vae-tiny', vocab_size=tok.vocab_size)
    loss_fn = create_loss(model)
    size = model.config.image_size
    loader = make_loader(ImageTextDataset(data['train'], tok, image_transform(size), seed=args.seed), 64, train=True, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * len(loader))
    start = time.time()
    for epoch in range(args.epochs):
        loader.dataset.set_epoch(epoch); model.train()
        for batch in loader:
            loss, logs = loss_fn(model(batch['image'], batch['input_ids'], batch['attention_mask']), batch)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        print(f'epoch {epoch + 1}: ' + ' '.join(f'{k}={v:.3f}' for k, v in logs.items()), flush=True)
    train_seconds = time.time() - start
    model.eval()
    torch.set_grad_enabled(False)

    test = collate([ImageTextDataset(data['test'], tok, image_transform(size), caption='first')[i] for i in range(len(data['test']))])
    refs = list(zip(*data['test']['captions']))  # sacrebleu: one list per reference phrasing
    rng = np.random.default_rng(args.seed)
    one_caption = tok([str(rng.choice(caps)) for caps in data['test']['captions']])

    def ssim(decoded):
        a = ((decoded.clamp(-1, 1) + 1) / 2).mean(1).numpy()  # undo the (0.5, 0.5) normalisation, grey
        b = ((test['image'] + 1) / 2).mean(1).numpy()
        return float(np.mean([structural_similarity(x, y, data_range=1.0, win_size=7) for x, y in zip(a, b)]))

    def scores(use_memory):
        captions = tok.decode(model.generate(test['image'], use_memory=use_memory))
        return {'bleu': sacrebleu.corpus_bleu(captions, [list(r) for r in refs]).score,
                'ssim': ssim(model.reconstruct(test['image'], use_memory=use_memory)),
                'ssim_text': ssim(model.reconstruct(input_ids=one_caption['input_ids'], attention_mask=one_caption['attention_mask'],
                                                    use_memory=use_memory)),
                'example_captions': captions[:3]}

    results = {'no_memory': scores(False)}
    n = model.config.episodic_slots - 1
    labels = np.array(data['train']['label'])
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), 2, replace=False) for c in range(10)])[:n]
    episode = collate([ImageTextDataset(data['train'], tok, image_transform(size), caption='first')[int(i)] for i in idx])
    model.memorize(episode['image'], episode['input_ids'], episode['attention_mask'])
    results['memory'] = scores(True)
    print(f"vae-tiny trained {args.epochs} epochs in {train_seconds:.0f} s; test split, {len(data['test'])} images; memory: {n} training pairs")
    print(f"{'':12} {'BLEU':>8} {'SSIM':>8} {'SSIM text->image':>18}")
    for k, r in results.items(): print(f"{k:12} {r['bleu']:8.2f} {r['ssim']:8.3f} {r['ssim_text']:18.3f}   e.g. {r['example_captions'][:2]}")
    print(json.dumps({f'{k}_{m}': round(v[m], 4) for k, v in results.items() for m in ('bleu', 'ssim', 'ssim_text')} | {'train_seconds': round(train_seconds)}))


if __name__ == '__main__':
    main()
