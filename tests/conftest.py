import os

# Tests never depend on the reader's scale setting.
os.environ.setdefault("DIFFUSION_BOOK_SCALE", "small")
os.environ.setdefault("MPLBACKEND", "Agg")
