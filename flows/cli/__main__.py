"""``python -m flows.cli``: the same as the ``cci`` console script."""
from flows.cli import app

app()
