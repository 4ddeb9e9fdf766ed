"""The shape limits of memvlm's library code (issue 16): no function above cyclomatic complexity 15 (radon), no line
over 120 characters, no module over 600 lines. Each check names what breaks it. The first line nbdev writes for
`__all__` is left out: nbdev wraps the names at 120 characters but puts `__all__ = ` in front of the first line."""
from pathlib import Path

import pytest
from radon.complexity import cc_visit

LIB = Path(__file__).resolve().parent.parent / 'memvlm'
MODULES = sorted(p for p in LIB.glob('*.py') if p.name != '_modidx.py')  # _modidx.py is nbdev's generated index
MAX_COMPLEXITY, MAX_LINE, MAX_LINES = 15, 120, 600


def most_complex(n: int = 10) -> list[tuple[int, str]]:
    "The `n` most complex functions and methods of the library, as (complexity, 'module:line name')."
    found = set()  # radon lists a method both alone and inside its class; a class's own figure sums its methods
    for path in MODULES:
        for block in cc_visit(path.read_text()):
            for b in getattr(block, 'methods', None) or [block]:
                found.add((b.complexity, f'{path.stem}:{b.lineno} {b.fullname}'))
    return sorted(found, reverse=True)[:n]


def test_no_function_above_the_complexity_limit():
    over = [f'{name} ({c})' for c, name in most_complex(50) if c > MAX_COMPLEXITY]
    assert not over, f'above cyclomatic complexity {MAX_COMPLEXITY}: {over}; split them into named helpers'


@pytest.mark.parametrize('path', MODULES, ids=[p.stem for p in MODULES])
def test_module_shape(path):
    lines = path.read_text().splitlines()
    long = [i + 1 for i, line in enumerate(lines) if len(line) > MAX_LINE and not line.startswith('__all__ = [')]
    assert not long, f'{path.name}: lines over {MAX_LINE} characters: {long[:10]}'
    assert len(lines) <= MAX_LINES, f'{path.name} has {len(lines)} lines, more than {MAX_LINES}: split it by concern'


def test_the_checks_can_fail(tmp_path):
    deep = 'def f(x):\n' + ''.join(f'    if x == {i}: return {i}\n' for i in range(20)) + '    return -1\n'
    assert cc_visit(deep)[0].complexity > MAX_COMPLEXITY


if __name__ == '__main__':  # CI prints the table: python tests/test_code_shape.py
    print('the ten most complex functions of memvlm/ (radon cyclomatic complexity; limit %d):' % MAX_COMPLEXITY)
    for c, name in most_complex(): print(f'  {c:3d}  {name}')
