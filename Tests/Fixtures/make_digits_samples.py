"""Writes the scikit-learn digits data (scaled to [0, 1] like the mlp_digits fixture's inputs) as two samples:
digits_reference.npy (the first 1000 rows: reference statistics for screening) and digits_stream.csv (the other
797 rows: a natural query stream that the extraction monitor must not flag). Needs scikit-learn and numpy."""
import numpy as np
from sklearn.datasets import load_digits

x = (load_digits().data / 16.0).astype(np.float32)
np.save("digits_reference.npy", x[:1000])
with open("digits_stream.csv", "w") as f:
    f.write(",".join(f"p{i}" for i in range(64)) + "\n")
    for row in x[1000:]:
        f.write(",".join(f"{v:g}" for v in row) + "\n")
