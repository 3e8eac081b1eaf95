"""Cloud-side tools for edged.

Model conversion now; training, packaging, signing, publishing and rollout later.
"""
