"""Leaf file utilities shared by every layer: atomic writes and sha256 (:mod:`~dasgen.io.atomic`), the PNG codec
(:mod:`~dasgen.io.png`) and safe relative paths and ids (:mod:`~dasgen.io.paths`). They import nothing of dasgen
but :mod:`dasgen.errors`.
"""
