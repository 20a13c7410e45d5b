"""The course's maintenance scripts (make notebooks, make doctor, make kit, make site, the sweeps behind the
results/ files, the data generators). Run one from the repository root either way:

    python -m tools.sweep_ch05 --help      # as a module of this package (the Makefile's way)
    python tools/sweep_ch05.py --help      # as a script (the commands written in results/*.csv)

Neither edits ``sys.path``: minilora comes from ``pip install -e .`` (``make venv``), and a script that uses
a sibling module imports it relatively as a module of the package, or by name as a script (Python puts the
script's own folder first on ``sys.path``). Tests import them as ``tools.<name>``.
"""
