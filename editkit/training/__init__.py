"""The training core shared by the `instruct-pix2pix`, `lora` and `dreambooth` trainers.

One loop (`loop.run`) drives a *task* (what a batch is and what its loss is) under
`accelerate`: data parallelism, mixed precision, gradient accumulation, 8-bit optimizers,
EMA, atomic checkpoints with true resume, validation and export. The plugins only pick a task
and its options. Nothing here imports torch at module import time.
"""
