"""Build the docs site offline into `_docs/`: what `nbdev_docs` does, with smalldocs in place of Quarto.

1. nbdev's own preparation: `nbdev.yml` from settings.ini, `sidebar.yml` from the notebooks that exist now
   (every notebook in nbs/ and its sub-folders, so the sidebar never goes stale), and `_proc/`: the notebooks
   processed for the docs (front matter with `output-file`, show_doc entries re-rendered, doc links, hidden cells
   dropped). Notebooks are processed from inside nbs/, where they run, so their relative paths resolve.
2. smalldocs renders `_proc/` (it reads `_quarto.yml`, `nbdev.yml`, `sidebar.yml`) into `_docs/`. Page names come from
   each notebook's `output-file` (`00_config.ipynb` -> `config.html`), which is what nbdev's doc links point to.

Usage: python .ci/build_docs.py [--strict]   (--strict: exit 1 on any smalldocs warning)
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


MIXED = []  # (notebook title, cell source) of cells mixing imports with other code


def run_only_imports_of_mixed_cells():
    """nbdev re-executes every cell that has an import to render show_doc; a cell that also computes something
    (nbdev's FAQ: keep imports in their own cells) can fail there because the cells before it did not run. Here such
    a cell runs its import statements only, and the build lists it, instead of failing the whole site."""
    import ast
    from nbdev import processors as P
    if getattr(P.exec_show_docs, '_memvlm_patched', False): return
    original = P.exec_show_docs.__call__
    def call(self, cell):
        runs = hasattr(self, 'k') and self.nb.has_docs_ and P._do_eval(cell)
        trees = cell.parsed_() if runs else None
        mixed = (trees and not (cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'})
                 and P._ast_contains(trees, (ast.Import, ast.ImportFrom)) and P._ast_contains(trees, (ast.Expr, ast.Assign)))
        if not mixed: return original(self, cell)
        imports = [ast.unparse(n) for n in trees if isinstance(n, (ast.Import, ast.ImportFrom))]
        MIXED.append((getattr(self.nb, 'frontmatter_', {}).get('title', '?'), cell.source.splitlines()[0]))
        self.k.run_cell('\n'.join(imports))
    P.exec_show_docs.__call__ = call
    P.exec_show_docs._memvlm_patched = True


def process_notebooks() -> Path:
    "nbdev's docs preparation without Quarto: nbdev.yml, sidebar.yml and the processed notebooks in `_proc/`."
    import warnings
    from nbdev.doclinks import _build_modidx
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import proc_nbs
    os.chdir(ROOT / 'nbs')
    refresh_quarto_yml()
    _build_modidx()
    nbdev_sidebar.__wrapped__(path=ROOT / 'nbs')
    run_only_imports_of_mixed_cells()
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Found cells containing imports')  # listed by MIXED instead
        return proc_nbs(ROOT / 'nbs', n_workers=0, force=True)  # in this process (the patch applies); force: the pages are renamed below


def front_matter(nb: dict) -> tuple[dict, dict]:
    "The raw front-matter cell nbdev's processing puts first, and its YAML as a dict."
    import yaml
    cell = nb['cells'][0] if nb['cells'] and nb['cells'][0]['cell_type'] == 'raw' else None
    text = ''.join(cell['source']).strip() if cell else ''
    return cell, (yaml.safe_load(text.strip('-')) or {}) if text.startswith('---') else {}


def name_pages_by_output_file(proc: Path) -> dict:
    """Rename each processed notebook to its `output-file` (`00_config.ipynb` -> `config.ipynb`), since smalldocs names a
    page after its source: then `config.html` exists, as nbdev's doc links and the README expect. Links between notebooks
    and the sidebar are rewritten to the new names. Returns {old relative path: new relative path}."""
    import json
    import re
    import yaml
    renames = {}
    for nb_path in sorted(proc.rglob('*.ipynb')):
        if any(part.startswith(('_', '.')) for part in nb_path.relative_to(proc).parts): continue
        nb = json.loads(nb_path.read_text())
        cell, fm = front_matter(nb)
        out_file = fm.pop('output-file', None)
        if cell is not None:  # smalldocs does not read output-file (it warns); the file name now carries it
            cell['source'] = '---\n' + yaml.safe_dump(fm, sort_keys=False, allow_unicode=True) + '---\n'
            nb_path.write_text(json.dumps(nb))
        if out_file and Path(out_file).stem != nb_path.stem:
            new = nb_path.with_name(Path(out_file).stem + '.ipynb')
            if new.exists(): raise SystemExit(f'docs: {nb_path.name} and {new.name} both want the page {out_file}')
            renames[nb_path.relative_to(proc).as_posix()] = new.relative_to(proc).as_posix()
            nb_path.rename(new)
    def rename_links(text: str) -> str:
        for old, new in renames.items():
            text = re.sub(r'(?<![\w.-])' + re.escape(Path(old).name) + r'(?=[#)\s"\'\\]|$)', Path(new).name, text, flags=re.M)
        return text
    for f in [*proc.rglob('*.ipynb'), proc / 'sidebar.yml']:
        if f.is_file() and '_docs' not in f.parts: f.write_text(rename_links(f.read_text()))
    return renames


def render(proc: Path, out: Path):
    "Render the processed notebooks with smalldocs into `out`; returns the site (its `warnings` list included)."
    from smalldocs.config import load
    from smalldocs.site import Site
    site = Site(load(proc), quiet=True)
    site.out = out.resolve()
    n = site.build()
    print(f'docs: wrote {n} pages to {out}')
    return site


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--strict', action='store_true', help='exit 1 when smalldocs warns')
    args = p.parse_args(argv)
    t0 = time.time()
    os.environ.setdefault('MPLBACKEND', 'agg')
    proc = process_notebooks()
    name_pages_by_output_file(proc)
    site = render(proc, ROOT / '_docs')
    if MIXED:
        print(f'docs: {len(MIXED)} cells mix imports with other code; only their imports ran for show_doc (nbdev_docs '
              f'runs them whole and fails where they need earlier cells; nbdev FAQ: imports in their own cell): '
              + ', '.join(sorted({t for t, _ in MIXED})))
    known = ('format commonmark is not built', 'format.html.keep-md is ignored')  # nbdev's _quarto.yml, for Quarto
    site.warnings = [w for w in site.warnings if not w.startswith(known)]
    for w in site.warnings: print(f'docs warning: {w}', file=sys.stderr)
    print(f'docs: built in {time.time() - t0:.0f} s')
    return 1 if args.strict and site.warnings else 0


if __name__ == '__main__':
    sys.exit(main())
