"""``python -m handvla`` (and ``torchrun -m handvla``) runs the ``handvla`` command."""

from handvla.cli import main

raise SystemExit(main())
