"""Shared diffusion machinery renderers build on: attention control, a batched pair sampler,
token alignment, masks and schedulers by name.

Import the submodules you need (`editkit.diffusion.control`, `.sampling`, ...): they import
torch, and this package stays import-light so plugin modules can name it at their top.
"""
