"""`cifarbench bench`: the runner, isolated row workers, scenarios, metrics, reports and compare.

The package is also callable, so ``cifarbench.bench(...)`` is the API's ``cifarbench.api.bench`` whichever
was imported first (a subpackage attribute would otherwise shadow a function of that name).
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cifarbench.api import bench

        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
