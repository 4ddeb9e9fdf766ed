"""Check the built docs site (`_docs/`) in headless Chromium, served by `python -m http.server` on 127.0.0.1.

For every notebook in nbs/ (sub-folders included, whatever exists now):
- its page exists, named after the notebook's `output-file` as nbdev's doc links expect (`00_config.ipynb` -> `config.html`);
- the page, as Chromium renders it, has an API entry (an element whose id is the symbol's doc anchor) for each `show_doc`
  in the notebook and for each public symbol nbdev's index (`memvlm/_modidx.py`) points at this page;
- it shows at least as many images as the notebook has image outputs in cells that are not hidden;
- no internal link or image on any page is broken (the target answers 200 and its #anchor exists).
Screenshots of the home page and one API page are saved as `_docs/screenshot-home.png` and `_docs/screenshot-api.png`.

Usage: python .ci/check_docs.py [--site _docs] [--chromium chromium]; exits 1 listing every problem.
"""
import argparse
import ast
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-dev-shm-usage', '--hide-scrollbars']


def notebooks() -> list[Path]:
    "Every notebook of the docs, as nbdev finds them (folders and files starting with `_` or `.` are left out)."
    return sorted(p for p in NBS.rglob('*.ipynb') if not any(s.startswith(('.', '_')) for s in p.relative_to(NBS).parts))


def page_of(nb: Path) -> str:
    "The page nbdev gives a notebook: its `output-file` (nbdev's `_nbpath2html`), relative to the site root."
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(nb.relative_to(NBS)).as_posix()


def _directives(src: str) -> dict:
    return {m.group(1): m.group(2).strip() for m in re.finditer(r'^#\|\s*([\w-]+):?(.*)$', src, re.M)}


def shown_cells(nb: dict) -> list[dict]:
    "Code cells whose output the docs show (not `#| hide`, `#| include: false` or `#| output: false`)."
    out = []
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        d = _directives(''.join(c['source']))
        if 'hide' in d or d.get('include') == 'false' or d.get('output') == 'false': continue
        out.append(c)
    return out


def expected_api(nb_path: Path, page: str, modidx: dict) -> set[str]:
    "Doc anchors the page must have: one per `show_doc(x)` in the notebook, one per public symbol nbdev links to the page."
    nb = json.loads(nb_path.read_text())
    names = set()
    for c in nb['cells']:
        if c['cell_type'] != 'code' or 'hide' in _directives(''.join(c['source'])): continue
        for m in re.finditer(r'^show_doc\(\s*([\w.]+)', ''.join(c['source']), re.M): names.add(m.group(1).lower())
    for syms in modidx['syms'].values():
        for sym, (link, _) in syms.items():
            target, _, anchor = link.partition('#')
            if target == page and not sym.rsplit('.', 1)[-1].startswith('_') and '.' not in anchor: names.add(anchor)
    return names


def image_outputs(nb_path: Path) -> int:
    "Image outputs the notebook shows in the docs."
    nb = json.loads(nb_path.read_text())
    return sum(1 for c in shown_cells(nb) for o in c.get('outputs', []) if any(k.startswith('image/') for k in o.get('data', {})))


class Dom(HTMLParser):
    "What the checks need from a rendered page: ids, links, images."
    def __init__(self):
        super().__init__(); self.ids, self.links, self.images = set(), [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get('id'): self.ids.add(a['id'])
        if tag == 'a' and a.get('href'): self.links.append(a['href'])
        if tag == 'img' and a.get('src'): self.images.append(a['src'])
        if tag == 'link' and a.get('href') and a.get('rel') in ('stylesheet',): self.links.append(a['href'])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class Chromium:
    def __init__(self, exe: str):
        self.exe, self.profile = exe, tempfile.mkdtemp(prefix='memvlm-chromium-')
    def run(self, *args, timeout=120) -> str:
        cmd = [self.exe, *CHROMIUM_FLAGS, f'--user-data-dir={self.profile}', *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0: raise RuntimeError(f'chromium failed ({r.returncode}): {" ".join(cmd)}\n{r.stderr[-2000:]}')
        return r.stdout
    def dom(self, url: str) -> str:
        return self.run('--virtual-time-budget=3000', '--dump-dom', url)
    def screenshot(self, url: str, path: Path, size='1280,1000'):
        self.run('--virtual-time-budget=3000', f'--window-size={size}', f'--screenshot={path}', url)
        if not path.is_file() or path.stat().st_size == 0: raise RuntimeError(f'chromium wrote no screenshot {path}')


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r: return r.status, r.read().decode('utf-8', 'replace')
    except urllib.error.HTTPError as e: return e.code, ''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--site', type=Path, default=ROOT / '_docs')
    p.add_argument('--chromium', default=shutil.which('chromium') or shutil.which('chromium-browser') or 'chromium')
    p.add_argument('--api-page', default='models.html', help='the API page to take a screenshot of')
    args = p.parse_args(argv)
    site = args.site.resolve()
    if not (site / 'index.html').is_file(): sys.exit(f'check_docs: {site}/index.html is missing; build the site first (make docs)')
    sys.path.insert(0, str(ROOT))
    modidx = __import__('memvlm._modidx', fromlist=['d']).d
    port = free_port()
    server = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1', '--directory', str(site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}/'
    problems, t0 = [], time.time()
    try:
        for _ in range(100):
            try: fetch(base); break
            except OSError: time.sleep(0.1)
        chrome = Chromium(args.chromium)
        doms, pages = {}, {}
        for nb in notebooks():
            page = page_of(nb); pages[nb] = page
            status, _ = fetch(base + page)
            if status != 200: problems.append(f'{nb.relative_to(ROOT)}: no page {page} (HTTP {status})'); continue
            dom = Dom(); dom.feed(chrome.dom(base + page)); doms[page] = dom
            missing = sorted(a for a in expected_api(nb, page, modidx) if a not in dom.ids)
            if missing: problems.append(f'{page}: API entries missing: {", ".join(missing)}')
            want, have = image_outputs(nb), len([s for s in dom.images if 'site_libs' not in s])
            if have < want: problems.append(f'{page}: {have} images shown, its notebook has {want} image outputs')
            print(f'check_docs: {page:28s} {len(expected_api(nb, page, modidx)):3d} API entries, {have}/{want} images')
        checked = {}
        for page, dom in doms.items():
            for ref in dom.links + dom.images:
                url = urljoin(base + page, ref)
                if urlparse(url).netloc != urlparse(base).netloc: continue  # external: not reachable from CI
                target, frag = urldefrag(url)
                if target not in checked: checked[target] = fetch(target)
                status, html = checked[target]
                if status != 200: problems.append(f'{page}: broken link {ref} (HTTP {status})'); continue
                if frag:
                    rel = urlparse(target).path.lstrip('/')
                    ids = doms[rel].ids if rel in doms else set(re.findall(r'\bid="([^"]+)"', html))
                    if frag not in ids: problems.append(f'{page}: broken anchor {ref}')
        shots = [(base + 'index.html', site / 'screenshot-home.png'), (base + args.api_page, site / 'screenshot-api.png')]
        for url, path in shots: chrome.screenshot(url, path); print(f'check_docs: screenshot {path}')
    finally:
        server.terminate(); server.wait()
    for pr in problems: print(f'check_docs: {pr}', file=sys.stderr)
    print(f'check_docs: {len(doms)} pages, {len(checked)} internal targets checked in {time.time() - t0:.0f} s; '
          f'{len(problems)} problems', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
