"""Keyword-only `key` arguments in `atomicspi.models` and `atomicspi.inference` (GitHub issue 21)."""

import inspect

import pytest

import atomicspi.inference
import atomicspi.models


def _public_callables(package):
    for name in dir(package):
        value = getattr(package, name)
        if not name.startswith("_") and callable(value) and getattr(value, "__module__", "").startswith(package.__name__):
            yield f"{package.__name__}.{name}", value.__init__ if inspect.isclass(value) else value


@pytest.mark.parametrize("package", [atomicspi.models, atomicspi.inference], ids=lambda p: p.__name__)
def test_every_public_key_argument_is_keyword_only(package):
    positional = []
    for name, function in _public_callables(package):
        try:
            parameters = inspect.signature(inspect.unwrap(function)).parameters
        except (TypeError, ValueError):  # builtins such as NamedTuple's __init__
            continue
        if "key" in parameters and parameters["key"].kind is not inspect.Parameter.KEYWORD_ONLY:
            positional.append(name)
    assert not positional, f"public functions taking `key` by position: {positional}"
