"""Model-family code: what `aoti` knows of transformers' and diffusers' classes, one file per library.

Each file imports its library lazily (inside functions), so `aoti` works without either installed.
"""
