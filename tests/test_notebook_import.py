"""Kaggle/Colab style use: the repository on sys.path, and open_clip missing from the notebook image."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = f'''
import sys
class WithoutOpenClip:  # a finder ahead of all others: `import open_clip` and importlib.import_module('open_clip') both fail
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'open_clip': raise ModuleNotFoundError("No module named 'open_clip'")
sys.meta_path.insert(0, WithoutOpenClip())
sys.path.insert(0, {str(ROOT)!r})
import memvlm.cli  # every module imports without open_clip
from memvlm.data import CaptionTokenizer
try:
    CaptionTokenizer.build(['a handwritten digit seven'])
except ImportError as e:
    print(e)
'''


def test_library_imports_without_open_clip_and_names_the_install():
    r = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'pip install open-clip-torch' in r.stdout
