"""``python -m lib_deepcache.bench``: see :mod:`.cli`."""

from .cli import main

main()
