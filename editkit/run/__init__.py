"""Recipes and run folders: validation, the one owner of the run folder's layout and
the dataset format, the stages and the runner that resumes them."""
