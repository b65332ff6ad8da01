"""``python -m nvrxlog``: the same as the ``nvrxlog`` console script."""

from nvrxlog.cli.main import main

raise SystemExit(main())
