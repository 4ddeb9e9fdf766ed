"""The offline docs build's own logic, on tiny inputs (the full build and the Chromium check run in .ci/run)."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / '.ci' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def notebook(front: str, cells=()) -> str:
    raw = {'cell_type': 'raw', 'metadata': {}, 'source': front}
    return json.dumps({'cells': [raw, *cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5})


def md(text): return {'cell_type': 'markdown', 'metadata': {}, 'source': text}


def test_pages_are_named_by_output_file_and_links_follow(tmp_path):
    build = load('build_docs')
    (tmp_path / 'tutorials').mkdir()
    (tmp_path / '00_config.ipynb').write_text(notebook('---\noutput-file: config.html\ntitle: Configuration\n---\n'))
    (tmp_path / '07_models.ipynb').write_text(notebook('---\noutput-file: models.html\ntitle: Models\n---\n',
                                                       [md('See [config](00_config.ipynb#presets) and 100_config.ipynb.')]))
    (tmp_path / 'tutorials' / '01_quick.ipynb').write_text(notebook('---\noutput-file: quick.html\ntitle: Quick\n---\n',
                                                                    [md('[models](../07_models.ipynb)')]))
    (tmp_path / 'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n      - 00_config.ipynb\n      - tutorials/01_quick.ipynb\n')
    renames = build.name_pages_by_output_file(tmp_path)
    assert renames == {'00_config.ipynb': 'config.ipynb', '07_models.ipynb': 'models.ipynb', 'tutorials/01_quick.ipynb': 'tutorials/quick.ipynb'}
    models = json.loads((tmp_path / 'models.ipynb').read_text())
    assert 'output-file' not in ''.join(models['cells'][0]['source'])  # smalldocs warns about a key it does not read
    assert models['cells'][1]['source'] == 'See [config](config.ipynb#presets) and 100_config.ipynb.'
    assert json.loads((tmp_path / 'tutorials' / 'quick.ipynb').read_text())['cells'][1]['source'] == '[models](../models.ipynb)'
    assert '- tutorials/quick.ipynb' in (tmp_path / 'sidebar.yml').read_text()


def test_the_checker_expects_each_notebooks_page_api_entries_and_plots():
    check = load('check_docs')
    nbs = check.notebooks()
    assert ROOT / 'nbs' / 'index.ipynb' in nbs and not any('_proc' in str(p) for p in nbs)
    assert check.page_of(ROOT / 'nbs' / '00_config.ipynb') == 'config.html'
    modidx = __import__('memvlm._modidx', fromlist=['d']).d
    api = check.expected_api(ROOT / 'nbs' / '00_config.ipynb', 'config.html', modidx)
    assert {'get_config', 'preset_config', 'runconfig'} <= api and not any(a.startswith('_') for a in api)
    assert check.image_outputs(ROOT / 'nbs' / 'tutorials' / 'kaggle_quickstart.ipynb') >= 2
