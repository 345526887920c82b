"""Every public name is documented; the flat public face re-exports what the modules define."""

import inspect

import pytest

import jmeta
from jmeta import algorithms, core, data, distributed, inner, models, train

MODULES = [jmeta, core, inner, algorithms, models, data, distributed, train]


def _public(module):
    return [(n, getattr(module, n)) for n in dir(module) if not n.startswith("_")]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_every_public_callable_has_a_docstring(module):
    missing = [
        name for name, obj in _public(module)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip()
    ]
    assert not missing, f"{module.__name__}: undocumented public names {missing}"


@pytest.mark.parametrize("module", [core, inner, algorithms, models, data, distributed],
                         ids=lambda m: m.__name__)
def test_public_functions_show_an_example(module):
    missing = [
        name for name, obj in _public(module)
        if inspect.isfunction(obj)
        and not any(m in (obj.__doc__ or "") for m in (">>>", "Example::"))
        and name not in ("meta_step_fn",)
    ]
    assert not missing, f"{module.__name__}: public functions without an example {missing}"
