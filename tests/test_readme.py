"""The README's library example runs as written and learns."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
    text = README.read_text()
    code = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    mse = [float(x) for x in re.findall(r"query MSE after\s+\d+ step\(s\): ([0-9.]+)", out)]
    assert len(mse) == 2
    # 5000 MAML steps: well below the pretrained-style baseline (~2.4 after one step), and
    # ten steps adapt further than one.
    assert mse[0] < 1.5 and mse[1] < mse[0]
