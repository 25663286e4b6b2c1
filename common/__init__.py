"""What every part of the pipeline shares: errors, settings, safe file writes, device choice.

Nothing here imports torch, zarr or numpy at module level, so `cli.py --help` stays fast.
"""
