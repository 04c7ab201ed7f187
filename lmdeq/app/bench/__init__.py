"""Benchmarks that ship with the package (``lmdeq bench``); thin scripts in benchmarks/ call them."""
