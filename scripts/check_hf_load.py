"""Checks by hand that transformers opens a paliforge checkpoint as paliforge sees it: no missing,
unexpected or mismatched keys, every stored tensor loaded unchanged, and the same greedy answers
as `paliforge predict` on the same images. Not a test (the tests need no Python).

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers safetensors pillow
    # DIR: a checkpoint folder (config.json, model.safetensors) with the run's tokenizer.json
    # copied in; one `paliforge predict --json` line per PNG image, in the same order:
    for i in 0 1 2; do paliforge predict --model DIR --image img$i.png --prompt "answer en ..." \
        --max-new-tokens 4 --json; done > predictions.jsonl
    /tmp/hfvenv/bin/python scripts/check_hf_load.py DIR predictions.jsonl img0.png img1.png img2.png
"""

import json
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import PaliGemmaForConditionalGeneration


def main(folder, predictions, images):
    model, info = PaliGemmaForConditionalGeneration.from_pretrained(
        folder, output_loading_info=True
    )
    model.eval()
    problems = {k: list(v) for k, v in info.items() if v}
    print("loading problems:", problems or "none")

    # transformers 5 holds `model.language_model.*` where the file says `language_model.model.*`.
    state = model.state_dict()
    saved = load_file(f"{folder}/model.safetensors")
    different = []
    for name, tensor in saved.items():
        suffix = name.replace("language_model.model.", "language_model.")
        matches = [k for k in state if k.endswith(suffix)]
        if len(matches) != 1 or not torch.equal(state[matches[0]], tensor):
            different.append(name)
    print(f"{len(saved)} stored tensors, {len(different)} missing or changed: {different}")

    eos = model.config.text_config.eos_token_id
    rows = [json.loads(line) for line in open(predictions)]
    same = 0
    for row, image in zip(rows, images):
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 255.0
        pixels = torch.from_numpy((rgb - 0.5) / 0.5).permute(2, 0, 1)[None]
        ids = torch.tensor([row["prompt_tokens"]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                pixel_values=pixels,
                attention_mask=torch.ones_like(ids),
                token_type_ids=torch.zeros_like(ids),
                max_new_tokens=len(row["tokens"]),
                do_sample=False,
            )
        generated = out[0, ids.shape[1]:].tolist()
        if eos in generated:
            generated = generated[: generated.index(eos) + 1]
        same += generated == row["tokens"]
        print(image, "transformers", generated, "paliforge", row["tokens"], repr(row["text"]))
    print(f"{same}/{len(rows)} identical greedy generations")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
