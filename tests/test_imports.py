"""memvlm's modules import one way: each only from the modules before it in `ORDER` (the task table and config, then
data, the building blocks and losses, models, the training engine, plots and evaluation, the recipes and the command line
last). A module that reaches forward, even
inside a function, fails here; a new module must be given its place."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / 'memvlm'
ORDER = ['tasks', 'config', 'images', 'bundled', 'sources', 'tokenizer', 'transforms', 'data', 'layers', 'encoders',
         'memory', 'fusion', 'losses', 'heads', 'registry', 'vae', 'larimar', 'models', 'double_loop',
         'engine', 'training', 'plots', 'evaluation', 'fewshot', 'fewshot_protocol', 'widgets', 'recipes', 'cli', '__main__']
MODULES = sorted(p.stem for p in LIB.glob('*.py') if p.stem not in ('__init__', '_modidx'))


def imported_modules(path: Path) -> set[str]:
    "The memvlm modules a file imports, at the top or inside functions."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: found.add(node.module.split('.')[0])
            elif node.level == 1: found.update(a.name for a in node.names)  # from . import vae
            elif (node.module or '').startswith('memvlm.'): found.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split('.')[1] for a in node.names if a.name.startswith('memvlm.'))
    return found


def test_every_module_has_its_place():
    assert set(MODULES) <= set(ORDER), f'give {sorted(set(MODULES) - set(ORDER))} a place in ORDER'


@pytest.mark.parametrize('module', MODULES)
def test_imports_run_one_way(module):
    later = sorted(m for m in imported_modules(LIB / f'{module}.py') if m in ORDER and ORDER.index(m) >= ORDER.index(module))
    assert not later, f'memvlm.{module} imports {later}, which come after it in {ORDER}'


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / 'x.py'
    f.write_text('def f():\n    from memvlm.cli import main\n    from . import vae\n    import memvlm.training\n')
    assert imported_modules(f) == {'cli', 'vae', 'training'}
