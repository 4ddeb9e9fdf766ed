"""Larimar's measures for `larimar-tiny`: episodic edits (success, generalisation, locality, forgetting) and new concepts,
against no memory, nearest-neighbour caption retrieval and fine-tuning the decoder on the same writes.

Two models are trained here with AdamW and a one-cycle schedule (the same recipe for both; nothing is chosen on test
images): one on every class of digits-captions, one on the shape classes 0-4 of shapes-attributes. The memory's scope is
calibrated on training and validation images only. Then, on images the models never trained on:

- Edits (Larimar's counterfactual edits, in pictures). N = 1, 10, 100 test images are written with captions the model
  cannot guess from the image, made of words it knows: a digit captioned as another digit; a shape given another colour
  and another known shape name. Edit success: the caption generated for the written image (exact match, token F1);
  generalisation: for another view of it (rotation up to 5 degrees, shift up to 5%); locality: the captions of up to 500
  unrelated images (validation and test images not written, topped up with training images) unchanged against no memory.
  Forget: the first half of the edits is forgotten; their recall must fall to the no-memory level, the others stay.
- New concepts: shape classes 5-9 taught with K = 1 and 5 shots (training images, memorised as concepts) to the model
  trained on 0-4; the captions of the test images of 5-9 scored for the noun, the attributes (size, colour, place) and
  both at once; the old classes' BLEU before and after.
- Baselines on the same writes: no memory; nearest-neighbour caption retrieval (a GRACE-style codebook: the caption of
  the nearest memorised image by the model's own key, within the memory's same-image radius, else the model's caption;
  for concepts, the caption of the nearest shot); fine-tuning the decoder on the written pairs with Adam until it reaches
  the memory's edit success (its wall time, and the old captions after).

Writes the tables, nbs/images/episodic_editing.json and nbs/images/episodic_recall.png; the last line is JSON.
Usage: python benchmarks/episodic_editing.py [--epochs-digits 60] [--epochs-shapes 100] [--seed 0] [--quick]
       [--save-checkpoints data/checkpoints]
"""
import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def train(model, rows, tok, epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3):
    "AdamW with a one-cycle schedule over `rows`, shuffled per epoch; the loop of every memvlm model trained here."
    from memvlm.data import ImageTextDataset, image_transform, make_loader
    from memvlm.losses import create_loss
    loss_fn = create_loss(model)
    ds = ImageTextDataset(rows, tok, image_transform(model.config.image_size), seed=seed)
    loader = make_loader(ds, batch_size, train=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(loader))
    start = time.time()
    for epoch in range(epochs):
        ds.set_epoch(epoch); model.train()
        for batch in loader:
            out = model(batch['image'], batch['input_ids'], batch['attention_mask'], batch.get('label'))
            loss, logs = loss_fn(out, batch)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            print(f'  epoch {epoch + 1}: ' + ' '.join(f'{k}={v:.3f}' for k, v in logs.items()), flush=True)
    return time.time() - start


def batch_of(rows, tok, size):
    from memvlm.data import ImageTextDataset, collate, image_transform
    ds = ImageTextDataset(rows, tok, image_transform(size), caption='first')
    return collate([ds[i] for i in range(len(ds))])


def token_f1(a: str, b: str) -> float:
    x, y = a.split(), b.split()
    common = sum(min(x.count(w), y.count(w)) for w in set(x))
    return 0.0 if not common else 2 * common / (len(x) + len(y))


def scores(got, want) -> dict:
    return {'exact': float(np.mean([g == w for g, w in zip(got, want)])),
            'f1': float(np.mean([token_f1(g, w) for g, w in zip(got, want)]))}


class Captioner:
    "A trained model with its tokenizer: captions with and without memory, and the baselines' captions."
    def __init__(self, model, tok): self.model, self.tok = model.eval(), tok

    def caption(self, images, use_memory=True) -> list:
        return [c for x in images.split(256) for c in self.tok.decode(self.model.generate(x, use_memory=use_memory))]

    def knn(self, images, memory_images, memory_captions, concept=False) -> list:
        "The caption of the nearest memorised image: by key within the same-image radius (else no memory), or by concept key."
        keys, concepts = self.model.image_keys(images)
        mkeys, mconcepts = self.model.image_keys(memory_images)
        own = self.caption(images, use_memory=False)
        if concept: return [memory_captions[j] for j in torch.cdist(concepts, mconcepts).argmin(1).tolist()]
        sim = keys @ mkeys.T
        best = sim.max(1)
        return [memory_captions[j] if s >= float(self.model.same_image_cosine) - 1e-6 else o
                for s, j, o in zip(best.values.tolist(), best.indices.tolist(), own)]


def edit_table(cap: Captioner, written, edits, unrelated, ns, seed) -> tuple[dict, dict]:
    "Edit success, generalisation, locality and forgetting at each N, for the memory and the baselines."
    from memvlm.larimar import augment_view
    model, tok = cap.model, cap.tok
    torch.manual_seed(seed)
    views = augment_view(written)
    no_memory = {'same': cap.caption(written, False), 'view': cap.caption(views, False), 'other': cap.caption(unrelated, False)}
    rows, timing = {}, {}
    for n in ns:
        model.forget()
        ids = tok(edits[:n])
        start = time.perf_counter(); model.memorize(written[:n], ids['input_ids'], ids['attention_mask'])
        timing[n] = (time.perf_counter() - start) * 1000
        same, view, other = cap.caption(written[:n]), cap.caption(views[:n]), cap.caption(unrelated)
        knn = {k: cap.knn(x, written[:n], edits[:n]) for k, x in (('same', written[:n]), ('view', views[:n]), ('other', unrelated))}
        rows[n] = {
            'memory': {'success': scores(same, edits[:n]), 'generalisation': scores(view, edits[:n]),
                       'locality': float(np.mean([a == b for a, b in zip(other, no_memory['other'])]))},
            'knn': {'success': scores(knn['same'], edits[:n]), 'generalisation': scores(knn['view'], edits[:n]),
                    'locality': float(np.mean([a == b for a, b in zip(knn['other'], no_memory['other'])]))},
            'no_memory': {'success': scores(no_memory['same'][:n], edits[:n]), 'generalisation': scores(no_memory['view'][:n], edits[:n]),
                          'locality': 1.0}}
    n = max(ns); half = n // 2
    model.forget(list(range(half)))  # the first half forgotten, the second kept
    after = cap.caption(written[:n])
    forget = {'forgotten_recall': scores(after[:half], edits[:half])['exact'],
              'no_memory_recall': scores(no_memory['same'][:half], edits[:half])['exact'],
              'kept_recall': scores(after[half:], edits[half:n])['exact'],
              'forgotten_own_caption': float(np.mean([a == b for a, b in zip(after[:half], no_memory['same'][:half])])),
              'locality_after': float(np.mean([a == b for a, b in zip(cap.caption(unrelated), no_memory['other'])]))}
    model.forget()
    return rows, {'write_ms': timing, 'forget': forget}


def finetune_to(cap: Captioner, written, edits, target: float, old_images, old_refs, max_steps: int = 400) -> dict:
    "Fine-tune the decoder (and its image and memory inputs) on the written pairs until edit success reaches `target`."
    from memvlm.evaluation import bleu_score
    from memvlm.larimar import _no_recall
    model = copy.deepcopy(cap.model); model.forget()
    tuned = Captioner(model, cap.tok)
    params = [p for n, p in model.named_parameters() if n.startswith(('decoder.', 'image_prefix.'))]
    opt = torch.optim.Adam(params, lr=1e-3)
    ids = cap.tok(edits)
    target_ids, mask = ids['input_ids'], ids['attention_mask']
    length = int(mask.sum(1).max()); target_ids, mask = target_ids[:, :length], mask[:, :length]
    start, steps, success = time.perf_counter(), 0, 0.0
    while steps < max_steps:
        model.train()
        prefix = model.encode_image(written)[0]
        logits = model._decode(prefix, _no_recall(len(written), model.config.value_dim, written.device), target_ids[:, :-1])
        tgt = target_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), ignore_index=-100)
        opt.zero_grad(); loss.backward(); opt.step(); steps += 1
        if steps % 10 == 0:
            success = scores(tuned.caption(written), edits)['exact']
            if success >= target: break
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'steps': steps, 'success': success,
            'old_bleu_after': bleu_score(tuned.caption(old_images), old_refs)}


def concept_table(cap: Captioner, shots_rows, tok, test_new, old_images, old_refs, ks, seed) -> dict:
    "New concepts from K shots: the noun, the attributes and both, for the memory and the baselines; old BLEU after."
    from memvlm.evaluation import bleu_score
    model = cap.model
    labels = np.array(shots_rows['label'])
    truth = test_new['caption']
    def parts(c):  # 'a small red triangle at the top left' -> (noun, attributes)
        w = c.split(); return w[3:4], w[1:3] + w[4:]
    def score(got):
        noun = np.mean([parts(g)[0] == parts(t)[0] for g, t in zip(got, truth)])
        attrs = np.mean([parts(g)[1] == parts(t)[1] for g, t in zip(got, truth)])
        return {'noun': float(noun), 'attributes': float(attrs), 'both': float(np.mean([g == t for g, t in zip(got, truth)]))}
    rng = np.random.default_rng(seed)
    table = {'no_memory': score(cap.caption(test_new['image'], False))}
    for k in ks:
        pick = np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in range(5, 10)])
        shots = batch_of(shots_rows.select(pick.tolist()), tok, model.config.image_size)
        model.forget()
        model.memorize(shots['image'], shots['input_ids'], shots['attention_mask'], concept=True)
        got, recall = model.generate(test_new['image'], return_recall=True)
        told = tok.decode(model.generate(test_new['image'], assume_concept=True))
        knn_old = cap.knn(old_images, shots['image'], shots['caption'], concept=True)  # retrieval has no scope
        table[k] = {'memory': score(tok.decode(got)), 'claimed': float((recall.mode == 2).float().mean()),
                    'memory_told': score(told),
                    'knn': score(cap.knn(test_new['image'], shots['image'], shots['caption'], concept=True)),
                    'old_bleu_after': bleu_score(cap.caption(old_images), old_refs),
                    'knn_old_bleu_after': bleu_score(knn_old, old_refs)}
    model.forget()
    return table


def figure(cap: Captioner, written, edits, path):
    "Recalled captions beside the images: no memory, then after the write."
    import matplotlib; matplotlib.use('agg')
    import matplotlib.pyplot as plt
    n = 6
    cap.model.forget(); before = cap.caption(written[:n])
    ids = cap.tok(edits[:n]); cap.model.memorize(written[:n], ids['input_ids'], ids['attention_mask'])
    after = cap.caption(written[:n]); cap.model.forget()
    fig, axes = plt.subplots(1, n, figsize=(2.3 * n, 3.4))
    for ax, img, b, w, a in zip(axes, written[:n], before, edits, after):
        ax.imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()); ax.axis('off')
        ax.set_title(f'no memory:\n{b}\nmemorised:\n{w}\nsays:\n{a}', fontsize=6.5, loc='left')
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.62, wspace=0.08)
    fig.savefig(path, dpi=110); plt.close(fig)


def train_captioner(name: str, splits: dict, tok, epochs: int, seed: int):
    """larimar-tiny trained on `splits['train']`, its scope calibrated on the training and validation images:
    (captioner, training seconds, the train, validation and test batches)."""
    from memvlm.models import create_model  # every family's models are registered there
    torch.manual_seed(seed)
    model = create_model('larimar-tiny', vocab_size=tok.vocab_size)
    print(f'{name}: training larimar-tiny ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M) for {epochs} epochs')
    seconds = train(model, splits['train'], tok, epochs, seed)
    tr, va, te = (batch_of(splits[s], tok, 32) for s in ('train', 'validation', 'test'))
    print('  scope', model.calibrate_scope(tr['image'], tr['label'], va['image']))
    return Captioner(model, tok), seconds, tr, va, te


def edit_setup(tr, va, te, n: int, counterfactual, seed: int):
    """`n` random test images with captions from `counterfactual(test index, rng)`, and up to 500 unrelated images
    (the other test images, then validation and training images)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(te['caption']))
    edits = [counterfactual(int(i), rng) for i in order[:n]]
    unrelated = torch.cat([te['image'][order[n:]], va['image'], tr['image']])[:500]
    return te['image'][order[:n]], edits, unrelated


def bleu_score_of(cap, batch) -> float:
    from memvlm.evaluation import bleu_score
    return bleu_score(cap.caption(batch['image'], False), [[c] for c in batch['caption']])


def digits_edits(args):
    from memvlm.bundled import DIGIT_NAMES, load_digits_captions
    from memvlm.data import CaptionTokenizer
    data = load_digits_captions(seed=args.seed)
    tok = CaptionTokenizer.build([c for caps in data['train']['captions'] for c in caps], 16)
    cap, seconds, tr, va, te = train_captioner('digits-captions', data.splits, tok, args.epochs_digits, args.seed)
    def counterfactual(i, rng):  # the same phrasing, another digit's name (and numeral)
        caption, label = te['caption'][i], int(te['label'][i])
        other = int(rng.choice([d for d in range(10) if d != label]))
        return caption.replace(DIGIT_NAMES[label], DIGIT_NAMES[other]).replace(str(label), str(other))
    written, edits, unrelated = edit_setup(tr, va, te, max(args.ns), counterfactual, args.seed)
    rows, extra = edit_table(cap, written, edits, unrelated, args.ns, args.seed)
    base_bleu = bleu_score_of(cap, te)
    return {'train_seconds': seconds, 'rows': rows, **extra, 'test_bleu': base_bleu, 'unrelated': len(unrelated)}, (cap, written, edits)


def shapes(args):
    from memvlm.bundled import SHAPE_COLOURS, SHAPE_NAMES, load_shapes_attributes
    from memvlm.data import CaptionTokenizer
    data = load_shapes_attributes(seed=args.seed)
    old = {s: data[s].filter(lambda r: r['label'] < 5) for s in data.splits}
    new = {s: data[s].filter(lambda r: r['label'] >= 5) for s in data.splits}
    # the vocabulary holds every word of the dataset's captions, new shapes' names included: words the model never
    # says for a picture in training, but may be asked to copy from the memory (renamed classes draw from all of it)
    tok = CaptionTokenizer.build([c for caps in data['train']['captions'] for c in caps], 16)
    cap, seconds, tr, va, te = train_captioner('shapes-attributes 0-4', old, tok, args.epochs_shapes, args.seed)
    def counterfactual(i, rng):  # another colour and another known shape name
        w = te['caption'][i].split()
        w[2] = str(rng.choice([c for c in SHAPE_COLOURS if c != w[2]]))
        w[3] = str(rng.choice([s for s in SHAPE_NAMES[:5] if s != w[3]]))
        return ' '.join(w)
    written, edits, unrelated = edit_setup(tr, va, te, max(args.ns), counterfactual, args.seed)
    n = max(args.ns)
    rows, extra = edit_table(cap, written, edits, unrelated, args.ns, args.seed)
    old_refs = [[c] for c in te['caption']]
    old_bleu = bleu_score_of(cap, te)
    success = rows[n]['memory']['success']['exact']
    finetune = finetune_to(cap, written, edits, success, te['image'], old_refs)
    concepts = concept_table(cap, new['train'], tok, batch_of(new['test'], tok, 32), te['image'], old_refs, args.ks, args.seed)
    return {'train_seconds': seconds, 'rows': rows, **extra, 'old_bleu_before': old_bleu, 'finetune': finetune,
            'concepts': concepts, 'unrelated': len(unrelated)}, (cap, written, edits)


def tables(results: dict, ns, ks) -> str:
    out = []
    for name in ('digits', 'shapes'):
        r = results[name]
        out.append(f"{name}: edits (exact match / token F1); locality on {r['unrelated']} unrelated images")
        out.append(f"{'N':>4} {'method':10} {'success':>14} {'generalisation':>16} {'locality':>9}")
        for n in ns:
            for m in ('memory', 'knn', 'no_memory'):
                x = r['rows'][n][m]
                out.append(f"{n:>4} {m:10} {x['success']['exact']:7.3f} /{x['success']['f1']:5.2f} "
                           f"{x['generalisation']['exact']:9.3f} /{x['generalisation']['f1']:5.2f} {x['locality']:9.3f}")
        f = r['forget']
        out.append(f"forget half of N={max(ns)}: forgotten recall {f['forgotten_recall']:.3f} (no memory {f['no_memory_recall']:.3f}), "
                   f"kept recall {f['kept_recall']:.3f}, locality after {f['locality_after']:.3f}; "
                   f"write of {max(ns)}: {r['write_ms'][max(ns)]:.1f} ms")
        out.append('')
    s = results['shapes']
    ft = s['finetune']
    out.append(f"shapes: fine-tuning the decoder to edit success {ft['success']:.3f}: {ft['steps']} steps, {ft['seconds']:.1f} s "
               f"({ft['seconds'] * 1000 / s['write_ms'][max(ns)]:.0f}x the memory's write); old-class BLEU "
               f"{s['old_bleu_before']:.2f} -> {ft['old_bleu_after']:.2f}")
    out.append('')
    c = s['concepts']
    out.append('shapes 5-9 as new concepts (noun / attributes / both right)')
    out.append(f"{'K':>3} {'method':11} {'noun':>6} {'attrs':>6} {'both':>6}  old-class BLEU after")
    out.append(f"{'-':>3} {'no_memory':11} {c['no_memory']['noun']:6.3f} {c['no_memory']['attributes']:6.3f} {c['no_memory']['both']:6.3f}  {s['old_bleu_before']:.2f}")
    for k in ks:
        for m in ('memory', 'memory_told', 'knn'):
            x = c[k][m]
            extra = {'memory': f"  {c[k]['old_bleu_after']:.2f} (claims {c[k]['claimed']:.2f} of the new images)",
                     'memory_told': '  (told the images show memorised concepts)',
                     'knn': f"  {c[k]['knn_old_bleu_after']:.2f} (no scope: it answers for old images too)"}[m]
            out.append(f"{k:>3} {m:11} {x['noun']:6.3f} {x['attributes']:6.3f} {x['both']:6.3f}{extra}")
    return '\n'.join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--epochs-digits', type=int, default=60)
    p.add_argument('--epochs-shapes', type=int, default=100)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quick', action='store_true', help='2 epochs each and no files: checks that the script runs')
    p.add_argument('--save-checkpoints', metavar='DIR', help='also save both trained models as memvlm checkpoints here')
    args = p.parse_args()
    if args.quick: args.epochs_digits = args.epochs_shapes = 2
    args.ns, args.ks = [1, 10, 100], [1, 5]
    torch.manual_seed(args.seed)
    digits, (dcap, dwritten, dedits) = digits_edits(args)
    shape, (scap, swritten, sedits) = shapes(args)
    if args.save_checkpoints:  # the shapes model, memory empty and scope calibrated: the tutorial loads it
        from memvlm.registry import save_checkpoint
        scap.model.forget()
        save_checkpoint(scap.model, Path(args.save_checkpoints) / 'larimar-tiny-shapes-0-4', scap.tok,
                        {'benchmark': 'episodic_editing.py', 'seed': args.seed})
    results = {'digits': digits, 'shapes': shape}
    text = tables(results, args.ns, args.ks)
    print(text)
    n = max(args.ns)
    c = shape['concepts']
    summary = {'edit_success_100': shape['rows'][n]['memory']['success']['exact'],
               'generalisation_100': shape['rows'][n]['memory']['generalisation']['exact'],
               'locality_100': shape['rows'][n]['memory']['locality'],
               'digits_edit_success_100': digits['rows'][n]['memory']['success']['exact'],
               'digits_generalisation_100': digits['rows'][n]['memory']['generalisation']['exact'],
               'digits_locality_100': digits['rows'][n]['memory']['locality'],
               'forget_recall': shape['forget']['forgotten_recall'], 'forget_no_memory_recall': shape['forget']['no_memory_recall'],
               'forget_kept_recall': shape['forget']['kept_recall'],
               'new_concept_both_memory': c[5]['memory']['both'], 'new_concept_both_knn': c[5]['knn']['both'],
               'new_concept_both_memory_told': c[5]['memory_told']['both'],
               'knn_old_bleu_after': c[5]['knn_old_bleu_after'],
               'new_concept_both_no_memory': c['no_memory']['both'],
               'write_ms_100': shape['write_ms'][n], 'finetune_seconds_same_success': shape['finetune']['seconds'],
               'old_bleu_before': shape['old_bleu_before'], 'old_bleu_after': c[5]['old_bleu_after']}
    if not args.quick:
        images = ROOT / 'nbs' / 'images'
        (images / 'episodic_editing.json').write_text(json.dumps({'summary': summary, 'tables': text, 'results': results,
                                                                   'args': {k: v for k, v in vars(args).items()}}, indent=1))
        figure(scap, swritten, sedits, images / 'episodic_recall.png')
    print(json.dumps({k: round(v, 4) for k, v in summary.items()}))


if __name__ == '__main__':
    main()
