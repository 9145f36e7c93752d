"""Drive a running Label Studio as a project admin and a reviewer would, through label-studio-sdk.

Run with ``.venv-labelstudio/bin/python`` (the project's own venv never imports Label Studio):

    python tests/review/ls_driver.py --url URL --legacy-token T --config config.xml --tasks tasks.json \\
        --key KEY --mask reviewer.png --export export.json --decoded DIR

1. makes a personal access token (``POST /api/token/`` with the user's legacy token) and uses it
   for everything after (the SDK exchanges it for access tokens);
2. creates a project with the labeling config, imports the tasks (with their predictions);
3. checks each task holds both predictions as sent, and decodes their brush RLE with Label
   Studio's own converter (``label_studio_sdk.converter.brush.decode_rle``) into
   DECODED/<task index>-<model version>.png (the alpha channel);
4. annotates the task of KEY with the reviewer's mask (PNG, > 128 = in), encoded with Label
   Studio's own ``mask2rle``;
5. writes the project's JSON export to EXPORT.

Prints one JSON line: project id, personal access token, task and prediction counts, whether the
predictions decode to the masks samsr exported.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from PIL import Image


def personal_token(url: str, legacy: str) -> str:
    req = urllib.request.Request(f"{url}/api/token/", data=b"{}", method="POST",
                                 headers={"Authorization": f"Token {legacy}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["token"]


def create_project(ls: LabelStudio, config: str, tasks: str) -> tuple:
    """(project, the tasks as exported, the tasks as Label Studio holds them): a project with the
    labeling config file ``config`` and the exported tasks file ``tasks`` imported."""
    with open(config) as f:
        project = ls.projects.create(title="samsr review", label_config=f.read())
    with open(tasks) as f:
        exported = json.load(f)
    ls.projects.import_tasks(id=project.id, request=exported)
    return project, exported, list(ls.tasks.list(project=project.id, fields="all"))


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("url", "legacy-token", "config", "tasks", "key", "mask", "export", "decoded"):
        p.add_argument(f"--{name}", required=True)
    a = p.parse_args()
    token = personal_token(a.url, a.legacy_token)
    ls = LabelStudio(base_url=a.url, api_key=token)
    me = ls.users.whoami()
    project, exported, tasks = create_project(ls, a.config, a.tasks)
    by_key = {t.data["samsr_key"]: t for t in tasks}
    predictions, decoded_equal = [], True
    for n, sent in enumerate(exported):
        task = by_key[sent["data"]["samsr_key"]]
        preds = sorted(ls.predictions.list(task=task.id), key=lambda pr: pr.model_version)
        predictions.append(len(preds))
        h, w = sent["data"]["samsr_height"], sent["data"]["samsr_width"]
        ours = {pr["model_version"]: pr["result"][0]["value"]["rle"] for pr in sent["predictions"]}
        for pr in preds:
            theirs = pr.result[0]["value"]["rle"]
            alpha = np.reshape(decode_rle(theirs), (h, w, 4))[:, :, 3]
            mine = np.reshape(decode_rle(ours[pr.model_version]), (h, w, 4))[:, :, 3]
            decoded_equal &= bool(np.array_equal(alpha, mine) and set(np.unique(alpha)) <= {0, 255})
            Image.fromarray(alpha).save(f"{a.decoded}/{n}-{pr.model_version}.png")
    task = by_key[a.key]
    mask = (np.asarray(Image.open(a.mask).convert("L")) > 128).astype(np.uint8) * 255
    h, w = mask.shape
    result = [{"id": "reviewer-1", "from_name": "mask", "to_name": "image", "type": "brushlabels",
               "original_width": w, "original_height": h, "image_rotation": 0,
               "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["object"]}}]
    ls.annotations.create(id=task.id, result=result, was_cancelled=False, ground_truth=False, lead_time=12.5)
    chunks = ls.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True)
    data = b"".join(chunks)
    with open(a.export, "wb") as f:
        f.write(data)
    print(json.dumps({"project": project.id, "api_key": token, "user": me.email, "tasks": len(tasks),
                      "predictions": predictions, "predictions_decoded_equal": decoded_equal}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
