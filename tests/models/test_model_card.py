"""The model card's opening section names the shipped weight files by their real sha256, and each
shipped file loads into the architecture the card says (so the card cannot drift from the files)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pipeline.models import build_model

WEIGHTS = Path(__file__).resolve().parents[2] / "pipeline" / "weights"


def test_card_opening_names_each_shipped_file_by_its_sha256() -> None:
    card = (WEIGHTS / "MODEL_CARD.md").read_text()
    opening = card.split("\n# ", 1)[0]
    named = dict(re.findall(r"`(\w+)\.pt` \(sha256 `([0-9a-f]{16})`\)", opening))
    shipped = {p.stem for p in WEIGHTS.glob("*.pt")}
    assert set(named) == shipped, f"card opening names {sorted(named)}, shipped {sorted(shipped)}"
    for name, prefix in named.items():
        digest = hashlib.sha256((WEIGHTS / f"{name}.pt").read_bytes()).hexdigest()
        assert digest[:16] == prefix, f"{name}.pt is {digest[:16]}, the card says {prefix}"
        build_model(name, checkpoint=str(WEIGHTS / f"{name}.pt"))  # strict load: same architecture


def test_trust_card_names_the_shipped_trust_model_by_its_sha256_and_threshold() -> None:
    import json

    card = (WEIGHTS / "TRUST_CARD.md").read_text()
    (prefix,) = re.findall(r"`trust_v1\.json` \(sha256 first 16: `([0-9a-f]{16})`\)", card)
    raw = (WEIGHTS / "trust_v1.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest()[:16] == prefix
    model = json.loads(raw)
    assert f"`min_score` = {model['min_score']:.3f}" in card
    assert f"{model['meta']['rows']:,} rows" in card
