"""A Kaggle session, simulated: the tutorials run top to bottom with only what Kaggle's image has.

A fresh venv (no pip, created in seconds) gets the project venv's packages as symbolic links in its site-packages,
except those Kaggle lacks (open_clip, nbdev, execnb, sacrebleu, ...) and memvlm's own installation (the .pth files are
left out): `import open_clip` fails as it does there, and the repository is reached only by `sys.path.append`. The kernel
looks like Kaggle's (`KAGGLE_KERNEL_RUN_TYPE=Interactive`), runs from a temporary stand-in for /kaggle/working, and
executes the notebook's cells in IPython (Kaggle's kernel). `%pip install X` is simulated by linking X's files from the
project venv, as the real install would make X importable; no network is used.
"""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_SITE = Path(sysconfig.get_paths()['purelib'])
NOT_ON_KAGGLE = ['open_clip', 'open_clip_train', 'open_clip_torch', 'nbdev', 'execnb', 'sacrebleu', 'smalldocs', 'hypothesis',
                 'memvlm', '__editable__']


def top_name(entry: str) -> str:
    "`open_clip_torch-2.24.0.dist-info` -> `open_clip_torch`; `nbdev` -> `nbdev`."
    return entry.split('-')[0].split('.')[0].lower()

RUNNER = '''
import importlib, json, os, sys
from pathlib import Path
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
installs = []
def pip(line):
    "Simulated `%pip install`: the package's files are linked from the project venv, as a real install would add them."
    pkgs = [a for a in line.split()[1:] if not a.startswith('-')]
    installs.extend(pkgs)
    tops = {'open_clip', 'open_clip_train', 'open_clip_torch'} if 'open-clip-torch' in pkgs else {p.replace('-', '_') for p in pkgs}
    site = Path(os.environ['SIM_VENV_SITE'])
    for e in Path(os.environ['SIM_PROJECT_SITE']).iterdir():
        if e.name.split('-')[0].split('.')[0].lower() in tops and not (site / e.name).exists(): (site / e.name).symlink_to(e)
    importlib.invalidate_caches()
shell.register_magic_function(pip, 'line', 'pip')
nb = json.load(open(sys.argv[1]))
for cell in nb['cells']:
    src = ''.join(cell['source'])
    if cell['cell_type'] != 'code' or '#| eval: false' in src or 'nbdev_export' in src: continue
    r = shell.run_cell(src)
    if not r.success: print('FAILED CELL:\\n' + src, file=sys.stderr); sys.exit(1)
print('SIMULATED PIP INSTALLS:', installs)
'''


def kaggle_python(tmp_path: Path) -> tuple[Path, Path]:
    "A venv with the project's packages minus those Kaggle lacks and memvlm's own installation; (python, site-packages)."
    venv = tmp_path / 'kaggle-venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([venv / 'bin' / 'python', '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               capture_output=True, text=True, check=True).stdout.strip())
    for e in PROJECT_SITE.iterdir():
        if e.suffix == '.pth' or top_name(e.name) in NOT_ON_KAGGLE or (site / e.name).exists(): continue
        (site / e.name).symlink_to(e)
    return venv / 'bin' / 'python', site


def run_like_kaggle(kaggle, notebook: Path, working: Path, env: dict = None):
    python, site = kaggle
    base = {k: v for k, v in os.environ.items() if not k.startswith(('MEMVLM_', 'PYTHON', 'KAGGLE_', 'COLAB_'))}
    env = {**base, 'KAGGLE_KERNEL_RUN_TYPE': 'Interactive', 'MPLBACKEND': 'agg', 'SIM_VENV_SITE': str(site),
           'SIM_PROJECT_SITE': str(PROJECT_SITE), **(env or {})}
    runner = working / '_runner.py'; runner.write_text(RUNNER)
    return subprocess.run([str(python), str(runner), str(notebook)], cwd=working, env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.fixture
def kaggle(tmp_path):
    return kaggle_python(tmp_path)


def test_the_simulated_image_lacks_open_clip_and_nbdev_and_imports_memvlm_from_the_repo(kaggle, tmp_path):
    code = (f"import importlib.util as u, sys\n"
            f"print([m for m in ('open_clip', 'nbdev', 'execnb', 'sacrebleu', 'memvlm') if u.find_spec(m) is not None])\n"
            f"sys.path.append({str(ROOT)!r})\n"
            f"import memvlm.cli, memvlm.recipes, memvlm.evaluation, memvlm.models, memvlm.training, memvlm.data\n"
            f"print(memvlm.__file__)\n"
            f"try: memvlm.data.CaptionTokenizer.build(['a digit'])\n"
            f"except ImportError as e: print(e)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(('MEMVLM_', 'PYTHON'))}
    r = subprocess.run([str(kaggle[0]), '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == '[]', f'these should not be importable before the repository is on sys.path: {lines[0]}'
    assert lines[1] == str(ROOT / 'memvlm' / '__init__.py')
    assert 'pip install open-clip-torch' in r.stdout


def test_quick_start_tutorial_runs_top_to_bottom_on_kaggle(kaggle, tmp_path):
    working = tmp_path / 'kaggle' / 'working'; working.mkdir(parents=True)  # the stand-in for /kaggle/working
    (tmp_path / 'kaggle' / 'input').mkdir(); (tmp_path / 'kaggle' / 'input' / 'memvlm').symlink_to(ROOT)  # the attached dataset
    nb = ROOT / 'nbs' / 'tutorials' / 'kaggle_quickstart.ipynb'
    r = run_like_kaggle(kaggle, nb, working, env={'MEMVLM_EPOCHS': '1', 'MEMVLM_OUTPUT_DIR': str(working / 'runs' / 'quickstart')})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "SIMULATED PIP INSTALLS: ['open-clip-torch']" in r.stdout
    assert 'kaggle cpu-smoke -> memclip-tiny' in r.stdout
    assert f"from {tmp_path / 'kaggle' / 'input' / 'memvlm' / 'memvlm'}" in r.stdout  # the attached repository, not an install
    metrics = json.loads((working / 'runs' / 'quickstart' / 'metrics.json').read_text())
    assert 0 <= metrics['test_zero_shot_acc'] <= 1  # one epoch checks the environment, not learning (3 epochs reach ~70%)
    assert (working / 'runs' / 'quickstart' / 'report' / 'metrics.json').is_file()  # evaluate() wrote its report
