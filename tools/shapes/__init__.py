"""Scripts that train, judge and ship the shapes world's models (repository tools:
they are not in the wheel). Run them from the repository root, e.g.
`python -m tools.shapes.train_world OUT`."""
