"""Load a ``samsr review export --to fiftyone`` dataset with the real FiftyOne, as a user would.

Run with ``.venv-fiftyone/bin/python`` (the project's own venv never imports FiftyOne), with
``FIFTYONE_DATABASE_DIR`` set to a temp dir (FiftyOne starts its bundled mongod there and stops
it when this process exits):

    python tests/review/fo_driver.py --dataset DIR

Prints one JSON line: the sample count, the sample fields with their FiftyOne types, per key the
filepath, the metrics and, for each Segmentation's mask read by FiftyOne
(``Segmentation.get_mask``), its shape, foreground pixel count and a SHA-1 of its packed bits;
the keys sorted by trust score, and those with trust_score < 0.5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F

LABELS = ("coarse", "refined", "ground_truth")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", required=True)
    a = p.parse_args()
    ds = fo.Dataset.from_dir(dataset_dir=a.dataset, dataset_type=fo.types.FiftyOneDataset,
                             name="samsr-review")
    schema = {name: type(f).__name__ + (f"({f.document_type.__name__})" if hasattr(f, "document_type")
                                        else "") for name, f in ds.get_field_schema().items()}
    samples = {}
    for s in ds:
        entry = {"filepath": s.filepath, "trust_score": s["trust_score"], "change_iou": s["change_iou"],
                 "accepted": s["accepted"], "width": s["width"]}
        for name in LABELS:
            if name in schema and s[name] is not None:
                mask = s[name].get_mask()
                fg = mask > 0
                entry[name] = {"shape": list(mask.shape), "foreground": int(fg.sum()),
                               "sha1": hashlib.sha1(np.packbits(fg).tobytes()).hexdigest()}
        samples[s["key"]] = entry
    print(json.dumps({"count": len(ds), "fields": schema, "samples": samples,
                      "by_trust": ds.sort_by("trust_score").values("key"),
                      "trust_below_half": sorted(ds.match(F("trust_score") < 0.5).values("key"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
