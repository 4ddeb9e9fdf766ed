"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does, without Quarto, which these machines lack).

Markdown cells are copied; code cells not marked `#| hide` become Python blocks followed by their text and
markdown outputs. Relative image paths are rewritten to point into nbs/, links to chapters to the docs site.
"""
import json
import re
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def directives(src: str) -> set:
    return {m.group(1) for m in re.finditer(r'^#\|\s*([\w-]+)', src, re.M)}


def cell_text(cell) -> str:
    return ''.join(cell['source'])


def outputs_md(cell) -> list:
    parts = []
    for out in cell.get('outputs', []):
        data = out.get('data', {})
        if 'text/markdown' in data: parts.append(''.join(data['text/markdown']).strip())
        elif 'text/plain' in data: parts.append('```\n' + ''.join(data['text/plain']).rstrip() + '\n```')
        elif out.get('output_type') == 'stream': parts.append('```\n' + ''.join(out['text']).rstrip() + '\n```')
    return parts


def doc_links(md: str, docs: str) -> str:
    "Links to docs pages (`config.html`, `tutorials/x.html#y`) made absolute, pointing at the docs site."
    return re.sub(r'\]\((?!https?:|#|/)([\w/-]+\.html)(#[\w-]*)?\)', lambda m: f']({docs}{m.group(1)}{m.group(2) or ""})', md)


def main():
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini')
    docs = cfg['DEFAULT']['doc_host'].rstrip('/') + cfg['DEFAULT']['doc_baseurl'].rstrip('/') + '/'
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    parts = ['<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = cell_text(cell)
        if cell['cell_type'] == 'markdown':
            src = re.sub(r'\]\((?!https?:|#|/)([^)]+\.(?:png|jpg|svg))\)', r'](nbs/\1)', src)
            parts.append(doc_links(src, docs).strip())
        elif cell['cell_type'] == 'code' and 'hide' not in directives(src):
            code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
            echo = not re.search(r'^#\|\s*echo:\s*false', src, re.M)  # `#| echo: false`: the output without the code
            if code and echo: parts.append('```python\n' + code + '\n```')
            parts += [doc_links(o, docs) for o in outputs_md(cell)]
    (ROOT / 'README.md').write_text('\n\n'.join(p for p in parts if p) + '\n')


if __name__ == '__main__':
    main()
