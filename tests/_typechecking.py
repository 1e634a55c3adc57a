"""The runtime type checker that tests/conftest.py applies to `atomicspi.models` and
`atomicspi.inference` through jaxtyping's import hook: beartype, with PEP 484's numeric tower (an
`int` passes where a `float` is declared, as static type checkers accept it)."""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
