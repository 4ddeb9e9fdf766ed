"""Worker for tests/test_training_engine.py: a few steps of a tiny MemoryCLIP on synthetic pairs, in 1 or N processes.

Run as `python -m torch.distributed.run --standalone --nproc_per_node=N tests/ddp_worker.py OUT.json [ACCUM]`; rank 0 writes the
per-step losses and a checksum of the final weights to OUT.json.
"""
import json, sys

import torch

from memvlm.config import TrainConfig, seed_everything
from memvlm.models import create_model
from memvlm.engine import distributed_loader
from memvlm.training import Trainer


def pairs(n=32, classes=4, seed=0):
    "Synthetic image-caption pairs: the image's mean colour and the caption's first token both encode the class."
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        c = i % classes
        image = torch.randn(3, 16, 16, generator=g) * 0.5 + c
        ids = torch.tensor([1, 2 + c, *torch.randint(6, 20, (4,), generator=g).tolist(), 0, 0])
        out.append({'image': image, 'input_ids': ids, 'attention_mask': (ids > 0).long()})
    return out


class RecordSteps:
    def __init__(self): self.losses = []
    def on_step_end(self, trainer, record): self.losses.append(record['loss'])


def main(out_path, accumulation=1):
    seed_everything(0)
    model = create_model('memclip-tiny', image_size=16, patch_size=4, stem='patch', vocab_size=20, context_length=8, vision_width=32,
                         vision_depth=1, vision_heads=2, text_width=32, text_depth=1, text_heads=2, embed_dim=16, memory_tokens=2)
    loader = torch.utils.data.DataLoader(pairs(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)
    world = int(__import__('os').environ.get('WORLD_SIZE', '1'))
    if world == 1: loader = distributed_loader(loader, 0, 1, seed=0)  # the same sample order a DDP run's samplers share out
    rec = RecordSteps()
    trainer = Trainer(model, loader, None, TrainConfig(epochs=2, lr=3e-3, device='cpu', accumulation_steps=accumulation, warmup_fraction=0.25),
                      monitor='train_loss', progress=False, callbacks=[rec])
    trainer.fit()
    if trainer.is_main:
        checksum = sum(p.double().sum().item() for p in model.parameters())
        with open(out_path, 'w') as f: json.dump({'losses': rec.losses, 'checksum': checksum, 'world': trainer.world}, f)


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
