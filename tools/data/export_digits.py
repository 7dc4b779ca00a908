"""Exports scikit-learn's copy of the UCI handwritten digits to `data/digits.safetensors`.

The data: `sklearn.datasets.load_digits()`, the test set (`optdigits.tes`) of the UCI ML
"Optical Recognition of Handwritten Digits" dataset (E. Alpaydin, C. Kaynak, 1998): 1797
images of 8x8 pixels, each pixel an integer count 0..16, labels 0..9. Licence and attribution:
`data/digits.README.md`.

The file holds two tensors, in scikit-learn's example order:

    images  U8  [1797, 8, 8]   values 0..16 (`load_digits().images`, exact integers)
    labels  U8  [1797]         values 0..9  (`load_digits().target`)

and the header metadata `source` and `license`. The Rust loader is `umup::arrays::digits()`.

Exported once with scikit-learn 1.9.1, numpy 2.4.6 and safetensors 0.8.0 (Python 3.11). To rerun:

    python3.11 -m venv /tmp/digits-venv
    /tmp/digits-venv/bin/pip install scikit-learn==1.9.1 safetensors==0.8.0 numpy
    /tmp/digits-venv/bin/python tools/data/export_digits.py data/digits.safetensors

It prints the class counts (asserted against the UCI test-set counts) and the file's sha256,
which `data/digits.README.md` records.
"""

import hashlib
import sys

import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

# Examples per class 0..9 in the UCI test set (optdigits.tes), which is what sklearn ships.
KNOWN_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def main(path):
    digits = load_digits()
    images = digits.images  # float64 [1797, 8, 8], integer values
    labels = digits.target  # int64 [1797]
    assert images.shape == (1797, 8, 8), images.shape
    assert labels.shape == (1797,), labels.shape
    assert (images == np.round(images)).all(), "pixels are not integers"
    assert images.min() == 0 and images.max() == 16, (images.min(), images.max())
    counts = np.bincount(labels, minlength=10).tolist()
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}", file=sys.stderr)
    print(f"class counts 0..9: {counts}", file=sys.stderr)
    assert counts == KNOWN_COUNTS, counts

    tensors = {
        "images": images.astype(np.uint8),
        "labels": labels.astype(np.uint8),
    }
    metadata = {
        "source": "sklearn.datasets.load_digits: UCI ML Optical Recognition of Handwritten "
        "Digits, test set (E. Alpaydin, C. Kaynak, 1998)",
        "license": "CC BY 4.0 (UCI Machine Learning Repository); see data/digits.README.md",
    }
    save_file(tensors, path, metadata=metadata)
    with open(path, "rb") as f:
        raw = f.read()
    print(f"{path}: {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/digits.safetensors")
