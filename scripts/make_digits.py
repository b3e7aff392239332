#!/usr/bin/env python3
"""Exports scikit-learn's bundled handwritten digits (1,797 scans of 8x8 pixels, UCI's
"Optical Recognition of Handwritten Digits", BSD-licensed with scikit-learn) as PNG files and
JSONL annotations that `paliforge prepare` converts into shards.

    pip install scikit-learn pillow
    python3 scripts/make_digits.py OUT

writes OUT/images/NNNN.png (upscaled to 56x56, dark ink on white) and OUT/{train,test}.jsonl
(rows: image, digit, word). Every fifth scan is held out for test.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def main(out: Path) -> None:
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "test": []}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        ink = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
        name = f"{i:04d}.png"
        Image.fromarray(ink, "L").resize((56, 56), Image.NEAREST).save(out / "images" / name)
        split = "test" if i % 5 == 0 else "train"
        splits[split].append({"image": name, "digit": str(int(label)), "word": WORDS[label]})
    for split, rows in splits.items():
        with open(out / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{split}: {len(rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
