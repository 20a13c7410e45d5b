"""The course's scaffolding: everything the chapters need that is not the LoRA library itself.

``minilora`` (one level up) is the library the chapters build, in PEFT's vocabulary. This package
holds what runs the course around it, and ``import minilora`` never loads it (nor scikit-learn,
SciPy, matplotlib or pandas):

* ``models``: loading the two pretrained models from the cache (all-MiniLM-L6-v2, SmolLM2-135M);
* ``assets``: fetching and caching them once (``python -m minilora.course.assets``, ``make assets``);
* ``data``: the course's datasets in ``data/`` and their loaders;
* ``experiments``: the fair-comparison protocols behind chapters 05, 09 and 11;
* ``measure``: peak memory of a block of code;
* ``distributed``: chapter 12's torchrun worker support;
* ``plots``: the figures the chapters draw;
* ``env``: chapter 00's environment check;
* ``exercises``: the checkers of every chapter's exercises.
"""
