"""Peers of the kernel on the same chain and the same visits: kernel.reference, Polars, DuckDB SQL.

Optional (`pip install .[bench]`); nothing in kernel/, pyx/ or server/ imports this package.
"""
