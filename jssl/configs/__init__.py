"""The experiment configs shipped with jssl: one file per method, `get_config(preset)`.

Run one with `python -m jssl.main --config configs/<method>.py[:<preset>] --workdir DIR`
(`configs/` in the repository is a link to this folder) or load it in Python with
`jssl.config.load_file("<method>", preset)`. Presets: "smoke" (seconds on a CPU), "" (the
embedded-data default), "cifar10" (the paper setting), and per method more (e.g. "compare").
"""
