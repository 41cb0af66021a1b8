"""``python -m sana_deploy``: the same as the ``sana-deploy`` console script."""

from sana_deploy.cli import main

main()
