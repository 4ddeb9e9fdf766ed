"""The double-loop meta-controller against the fixed schedule, on digits-captions with memclip-tiny.

Both arms use `memvlm train`'s defaults (AdamW, warmup + cosine) with the same seeds; the double-loop arm switches on
`TrainConfig.double_loop`, whose LSTM rescales the scheduled learning rate every `--interval` optimiser steps. Reported per
arm: test zero-shot accuracy of the best checkpoint (mean ± sd over seeds) and the optimiser steps until validation
zero-shot accuracy first reached 90% (measured at epoch ends; mean over the seeds that reached it).

Prints a table and, last, one line of JSON with fixed_acc_mean, double_loop_acc_mean, fixed_steps_to_90, double_loop_steps_to_90.
Usage: python benchmarks/double_loop.py [--epochs 10] [--seeds 0 1 2] [--interval 5]
(`--epochs 40` is the default run length of `memvlm train`; fewer keeps the benchmark within minutes on a CPU.)
"""
import argparse
import json
import statistics
import tempfile
import time


def run(seed: int, epochs: int, double_loop: bool, interval: int, device: str) -> dict:
    from memvlm.recipes import train
    from memvlm.config import RunConfig, update_config
    with tempfile.TemporaryDirectory() as out:
        cfg = update_config(RunConfig(), {'seed': seed, 'epochs': epochs, 'output_dir': out, 'device': device,
                                          'double_loop': double_loop, 'double_loop_interval': interval})
        start = time.time()
        m = train(cfg, progress=False)
    reached = [r['step'] for r in m['history'] if r.get('val_zero_shot_acc', 0) >= 0.9]
    return {'acc': m['test_zero_shot_acc'], 'steps_to_90': reached[0] if reached else None, 'seconds': time.time() - start,
            'final_lr': m['history'][-1]['lr']}


def summarise(runs: list[dict]) -> dict:
    accs = [r['acc'] for r in runs]
    steps = [r['steps_to_90'] for r in runs if r['steps_to_90'] is not None]
    return {'acc_mean': statistics.mean(accs), 'acc_sd': statistics.stdev(accs) if len(accs) > 1 else 0.0,
            'steps_to_90': statistics.mean(steps) if steps else None, 'reached_90': f'{len(steps)}/{len(runs)}',
            'seconds': statistics.mean(r['seconds'] for r in runs)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=10)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--interval', type=int, default=5, help='optimiser steps between two decisions of the controller')
    p.add_argument('--device', default='cpu')
    a = p.parse_args()
    results = {}
    for name, dl in (('fixed', False), ('double_loop', True)):
        runs = []
        for s in a.seeds:
            runs.append(run(s, a.epochs, dl, a.interval, a.device))
            r = runs[-1]
            print(f'{name:12s} seed {s}: test zero-shot {r["acc"]:.4f}, steps to 90% {r["steps_to_90"]}, {r["seconds"]:.0f} s', flush=True)
        results[name] = summarise(runs)
    print(f'\n{a.epochs} epochs, seeds {a.seeds}, controller interval {a.interval} steps, device {a.device}')
    print('| schedule | test zero-shot acc (mean ± sd) | steps to 90% val acc (mean) | runs reaching 90% | s/run |')
    print('|---|---|---|---|---|')
    for name, r in results.items():
        steps = '—' if r['steps_to_90'] is None else f"{r['steps_to_90']:.0f}"
        print(f"| {name.replace('_', ' ')} | {r['acc_mean']:.4f} ± {r['acc_sd']:.4f} | {steps} | {r['reached_90']} | {r['seconds']:.0f} |")
    print(json.dumps({'fixed_acc_mean': results['fixed']['acc_mean'], 'double_loop_acc_mean': results['double_loop']['acc_mean'],
                      'fixed_steps_to_90': results['fixed']['steps_to_90'], 'double_loop_steps_to_90': results['double_loop']['steps_to_90'],
                      'epochs': a.epochs, 'seeds': a.seeds, 'interval': a.interval}))


if __name__ == '__main__':
    main()
