"""Names a package exports but imports on first use, so that importing the package stays fast (transformers
loads only when a trainer, loss or evaluator is asked for)."""
import importlib
from typing import Dict, Sequence


def lazy_exports(package: str, exports: Dict[str, Sequence[str]]):
    """`(__getattr__, __dir__, __all__)` for `package`'s namespace: `exports` maps a module to the names it gives."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # imported once
        return value

    def __dir__():
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__, sorted(module_of)
