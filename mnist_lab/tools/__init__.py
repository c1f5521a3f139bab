"""The commands besides training: evaluate, predict, export, report, finetune_table, strings_benchmark, serve.

Each is `mnist-lab <command> [overrides]` (or `python -m mnist_lab <command>`, or
`python -m mnist_lab.tools.<command>`); see mnist_lab/__main__.py.
"""
