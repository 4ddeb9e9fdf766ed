"""The double-loop meta-controller against the fixed schedule, on digits-captions with memclip-tiny, where the schedule
is well tuned and where it is not.

Both arms use `memvlm train`'s recipe (AdamW, warmup + cosine, batch 128) with the same seeds; the double-loop arm
switches on `TrainConfig.double_loop`, whose LSTM rescales the scheduled learning rate (within [1/2, 2], the
controller's `max_scale`) every `--interval` optimiser steps. Scenarios (`--scenarios`), each with and without the
controller:
  default   lr 1e-3 (`memvlm train`'s), `--epochs` epochs: a schedule already tuned for this data
  lr_x10    the learning rate mis-set 10x up (1e-2)
  lr_div10  the learning rate mis-set 10x down (1e-4)
  short     the run cut to a third of the epochs (round(`--epochs` / 3)), warmup + cosine planned over that short
            run (the recipe always fits its schedule to the epochs it runs; a schedule stopped part-way cannot be
            asked of it)
Reported per scenario and arm: test zero-shot accuracy of the best checkpoint (by validation accuracy, as
`memvlm train` reports it), mean ± sd over seeds; the last epoch's validation zero-shot accuracy; the optimiser steps
until validation zero-shot accuracy first reached 90% (measured at epoch ends; mean over the seeds that reached it).
Also the controller's learning-rate multiplier at each epoch end (the controlled run's rate over the fixed run's, same
seed): whether it lowered a rate set too high or raised one set too low. The per-epoch validation curves go to
`--json-out` and are plotted, one panel per scenario, to `--plot-out`.

Prints a table and, last, one line of JSON: fixed_acc_mean, double_loop_acc_mean, fixed_steps_to_90,
double_loop_steps_to_90 (the default scenario, as before) and `scenarios` (every scenario's figures).
Usage: python benchmarks/double_loop.py [--epochs 20] [--seeds 0 1 2] [--interval 5]
       [--scenarios default lr_x10 lr_div10 short] [--json-out FILE] [--plot-out FILE.png] [--quick]
(`--epochs 40` is the default run length of `memvlm train`; 20 (200 optimiser steps, 40 decisions of the controller)
keeps the benchmark within minutes on a CPU and still reaches 90% validation accuracy.)
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_LR = 1e-3
SCENARIOS = {  # name: (learning rate, fraction of --epochs), with what each one means
    'default': (DEFAULT_LR, 1, 'lr 1e-3, the full run'),
    'lr_x10': (10 * DEFAULT_LR, 1, 'lr 10x too high (1e-2)'),
    'lr_div10': (DEFAULT_LR / 10, 1, 'lr 10x too low (1e-4)'),
    'short': (DEFAULT_LR, 1 / 3, 'a third of the epochs'),
}
ARMS = (('fixed', False), ('double_loop', True))


def run(seed: int, epochs: int, double_loop: bool, interval: int, device: str, lr: float = DEFAULT_LR) -> dict:
    "One `memvlm train` run; its test accuracy, steps to 90% validation accuracy and per-epoch curve."
    from memvlm.recipes import train
    from memvlm.config import RunConfig, update_config
    with tempfile.TemporaryDirectory() as out:
        cfg = update_config(RunConfig(), {'seed': seed, 'epochs': epochs, 'output_dir': out, 'device': device,
                                          'double_loop': double_loop, 'double_loop_interval': interval, 'lr': lr})
        start = time.time()
        m = train(cfg, progress=False)
    history = m['history']
    reached = [r['step'] for r in history if r.get('val_zero_shot_acc', 0) >= 0.9]
    return {'acc': m['test_zero_shot_acc'], 'steps_to_90': reached[0] if reached else None,
            'seconds': time.time() - start, 'final_lr': history[-1]['lr'],
            'final_val_acc': history[-1]['val_zero_shot_acc'],
            'curve': {'step': [r['step'] for r in history], 'val_acc': [r['val_zero_shot_acc'] for r in history],
                      'lr': [r['lr'] for r in history]}}


def summarise(runs: list[dict]) -> dict:
    accs = [r['acc'] for r in runs]
    finals = [r['final_val_acc'] for r in runs]
    steps = [r['steps_to_90'] for r in runs if r['steps_to_90'] is not None]
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {'acc_mean': statistics.mean(accs), 'acc_sd': sd(accs), 'final_val_mean': statistics.mean(finals),
            'final_val_sd': sd(finals), 'steps_to_90': statistics.mean(steps) if steps else None,
            'reached_90': f'{len(steps)}/{len(runs)}', 'seconds': statistics.mean(r['seconds'] for r in runs)}


def run_scenario(name: str, a) -> dict:
    "Both arms of scenario `name`, every seed."
    lr, fraction, _ = SCENARIOS[name]
    epochs = max(1, round(a.epochs * fraction))
    out = {'lr': lr, 'epochs': epochs}
    for arm, dl in ARMS:
        runs = []
        for s in a.seeds:
            runs.append(run(s, epochs, dl, a.interval, a.device, lr))
            r = runs[-1]
            print(f'{name:9s} {arm:12s} seed {s}: test zero-shot {r["acc"]:.4f}, last val {r["final_val_acc"]:.4f}, '
                  f'steps to 90% {r["steps_to_90"]}, {r["seconds"]:.0f} s', flush=True)
        out[arm] = {**summarise(runs), 'runs': runs}
    out['controller_scale'] = controller_scale(out['fixed']['runs'], out['double_loop']['runs'])
    return out


def controller_scale(fixed: list[dict], controlled: list[dict]) -> dict:
    "The controller's rate multiplier at each epoch end: the controlled run's rate over the fixed run's (same seed)."
    per_seed = [[c / f for c, f in zip(rc['curve']['lr'], rf['curve']['lr'])] for rf, rc in zip(fixed, controlled)]
    flat = [x for seed in per_seed for x in seed]
    return {'mean': statistics.mean(flat), 'min': min(flat), 'max': max(flat),
            'per_seed_mean': [statistics.mean(seed) for seed in per_seed]}


def print_table(results: dict):
    print('| scenario | schedule | test zero-shot acc (mean ± sd) | last-epoch val acc | steps to 90% val acc (mean) '
          '| runs reaching 90% | lr multiplier at epoch ends: mean (range) | s/run |')
    print('|---|---|---|---|---|---|---|---|')
    for name, sc in results.items():
        for arm, _ in ARMS:
            r = sc[arm]
            steps = '—' if r['steps_to_90'] is None else f"{r['steps_to_90']:.0f}"
            c = sc['controller_scale']
            scale = f"{c['mean']:.2f} ({c['min']:.2f}-{c['max']:.2f})" if arm == 'double_loop' else '1'
            print(f"| {name} (lr {sc['lr']:g}, {sc['epochs']} ep) | {arm.replace('_', ' ')} "
                  f"| {r['acc_mean']:.4f} ± {r['acc_sd']:.4f} | {r['final_val_mean']:.4f} ± {r['final_val_sd']:.4f} "
                  f"| {steps} | {r['reached_90']} | {scale} | {r['seconds']:.0f} |")


def plot_curves(results: dict, path: str):
    "Validation zero-shot accuracy against optimiser steps, one small panel per scenario, both arms (mean, min-max)."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, len(results), figsize=(2.6 * len(results), 2.4), sharex=True, sharey=True,
                             squeeze=False)  # shared steps: the short run ends early
    for ax, (name, sc) in zip(axes[0], results.items()):
        for (arm, _), color in zip(ARMS, ('tab:blue', 'tab:orange')):
            curves = [r['curve'] for r in sc[arm]['runs']]
            steps = curves[0]['step']
            acc = np.array([c['val_acc'] for c in curves])
            ax.plot(steps, acc.mean(0), color=color, marker='o', markersize=2.5, label=arm.replace('_', ' '))
            ax.fill_between(steps, acc.min(0), acc.max(0), color=color, alpha=0.2, linewidth=0)
        ax.axhline(0.9, color='grey', linewidth=0.6, linestyle=':')
        ax.set_title(f"{name} (lr {sc['lr']:g})", fontsize=9)
        ax.set_xlabel('optimiser step', fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, 1)
        ax.set_xlim(left=0)
    axes[0][0].set_ylabel('val zero-shot acc', fontsize=8)
    axes[0][0].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--interval', type=int, default=5, help='optimiser steps between two decisions of the controller')
    p.add_argument('--scenarios', nargs='+', default=list(SCENARIOS), choices=list(SCENARIOS))
    p.add_argument('--device', default='cpu')
    p.add_argument('--json-out', default='', help='also write every run and curve to this JSON file')
    p.add_argument('--plot-out', default='', help='plot the validation curves to this PNG')
    p.add_argument('--quick', action='store_true', help='a smoke run: 1 epoch, one seed')
    p.add_argument('--from-json', default='', help='print and plot the runs a --json-out file holds; train nothing')
    a = p.parse_args()
    if a.quick: a.epochs, a.seeds = 1, [0]
    start = time.time()
    if a.from_json:
        saved = json.loads(Path(a.from_json).read_text())
        a.epochs, a.seeds, a.interval, results = saved['epochs'], saved['seeds'], saved['interval'], saved['scenarios']
        for sc in results.values():
            sc['controller_scale'] = controller_scale(sc['fixed']['runs'], sc['double_loop']['runs'])
        print(f'the runs saved in {a.from_json}')
    else:
        results = {name: run_scenario(name, a) for name in a.scenarios}
        print(f'\ndevice {a.device}, wall time {time.time() - start:.0f} s')
    print(f'seeds {a.seeds}, controller interval {a.interval} steps')
    print_table(results)
    if a.json_out and not a.from_json:
        Path(a.json_out).write_text(json.dumps({'epochs': a.epochs, 'seeds': a.seeds, 'interval': a.interval,
                                                'scenarios': results}, indent=1))
    if a.plot_out: plot_curves(results, a.plot_out)
    brief = {name: {'lr': sc['lr'], 'epochs': sc['epochs'], 'controller_scale': sc['controller_scale'],
                    **{arm: {k: v for k, v in sc[arm].items() if k != 'runs'} for arm, _ in ARMS}}
             for name, sc in results.items()}
    summary = {'epochs': a.epochs, 'seeds': a.seeds, 'interval': a.interval, 'scenarios': brief}
    if 'default' in results:
        d = results['default']
        summary = {'fixed_acc_mean': d['fixed']['acc_mean'], 'double_loop_acc_mean': d['double_loop']['acc_mean'],
                   'fixed_steps_to_90': d['fixed']['steps_to_90'],
                   'double_loop_steps_to_90': d['double_loop']['steps_to_90'], **summary}
    print(json.dumps(summary))


if __name__ == '__main__':
    main()
