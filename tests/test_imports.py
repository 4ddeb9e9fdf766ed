"""memvlm's modules import one way: each only from the modules before it in `ORDER`, the layers of
shared/DESIGN.md: config (the task table and options) -> data -> blocks (layers, encoders, memory, fusion, heads) ->
models (the registry, one module per family, `models` holding them all) -> losses (which judge what models predict) ->
engine -> training (the loop) -> evaluation (plots, metrics, widgets) -> recipes -> cli. A module that reaches forward,
even inside a function, fails here; a new module must be given its place."""
import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / 'memvlm'
ORDER = ['tasks', 'config',                                                              # options
         'images', 'bundled', 'shards', 'streams', 'sources', 'tokenizer', 'transforms', 'data',  # data
         'layers', 'encoders', 'lora', 'memory', 'fusion', 'heads',                         # blocks
         'registry', 'vae', 'larimar', 'models',                                            # models
         'losses', 'double_loop', 'engine', 'training',                                     # losses, engine, the loop
         'plots', 'evaluation', 'fewshot', 'fewshot_protocol', 'widgets',                   # judging
         'recipes', 'inference', 'cli', '__main__']                                         # faces
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
