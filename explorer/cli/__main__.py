"""``python -m explorer.cli`` (and ``torchrun ... -m explorer.cli cache``)."""

from explorer.cli import main

main()
