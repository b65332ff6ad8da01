"""``python -m nvrxlog``: the same as the ``nvrxlog`` console script."""

from ._cli import main

raise SystemExit(main())
