"""Worker for tests/test_resume_mid_epoch.py: two epochs of a tiny MemoryCLIP on webdataset shards, in 1 or N processes.

Run as `python -m torch.distributed.run --standalone --nproc_per_node=N tests/ddp_shards_worker.py SHARDS OUT_PREFIX`; each rank
writes OUT_PREFIX.<rank>.json: the keys of the examples each of its batches held, epoch by epoch.
"""
import json, sys

from memvlm.config import TrainConfig, seed_everything
from memvlm.data import CaptionTokenizer, ImageTextDataset, ShardDataset, image_transform, load_shards, make_loader
from memvlm.losses import create_loss
from memvlm.models import create_model
from memvlm.training import Trainer


def main(shards, out_prefix, batch_size=8, workers=1):
    seed_everything(0)
    data = load_shards(shards)
    tok = CaptionTokenizer.build([c for caps in data['train']['captions'] for c in caps])
    rows = ImageTextDataset(data['train'], tok, image_transform(16))
    loader = make_loader(ShardDataset(data.stream, rows, batch_size, num_workers=workers), batch_size, train=True, num_workers=workers)
    model = create_model('memclip-tiny', image_size=16, patch_size=4, vocab_size=tok.vocab_size, vision_depth=1, text_depth=1,
                         vision_width=32, text_width=32, embed_dim=16)
    judge, seen = create_loss(model), {}
    def loss_fn(out, batch):  # the trainer's judge, noting which examples each batch held
        seen.setdefault(trainer.epoch, []).append(batch['key'])
        return judge(out, batch)
    trainer = Trainer(model, loader, None, TrainConfig(epochs=2, device='cpu'), loss_fn=loss_fn, monitor='train_loss', progress=False)
    trainer.fit()
    with open(f'{out_prefix}.{trainer.rank}.json', 'w') as f:
        json.dump({'world': trainer.world, 'epochs': seen, 'train_keys': [k for ks in data.stream.keys for k in ks]}, f)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
