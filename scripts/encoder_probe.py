"""Trains the `small` model's image encoder alone (SigLIP's shape: 192 wide, 4 layers, 14 px
patches, 112 px) on the demo scenes and writes it out: as a file of its own, which `paliforge
train --image-encoder` (and the quickstart, model/pretrained/) starts a fresh model's vision
tower from, or with `--into` written into a copy of a paliforge checkpoint folder. It measured
how much of the quickstart's gap is the image encoder (README, "Where it stands"), and made the
shipped encoder (model/pretrained/README.md). The tests need no Python.

    python3 -m venv /tmp/probe && /tmp/probe/bin/pip install torch pyarrow pillow safetensors
    paliforge demo-data --out demo
    /tmp/probe/bin/python scripts/encoder_probe.py demo/scenes encoder.safetensors \
        --objective objects --steps 1500
    # first-stage.toml: mixtures/specs/quickstart.toml with only its first stage
    paliforge train first-stage.toml --image-encoder encoder.safetensors --out run

Objectives: `objects` (the shape and colour of the first, second and third object from the
left, 12 classes each, from the caption), `shapes` (their shapes only), `siglip` (SigLIP's
sigmoid image-text loss against a small caption encoder).

How fast the encoder alone can learn the objects, told them directly: `--objective objects
--head thirds --three-objects --lr 1e-3 --steps 3000` (README, "Where it stands").
`--keep-position` adds a term that asks every output token for its column: without it the
objects objective washes much of the position out of the tokens. `--boxes` adds one that asks
every token inside a known box (the row's `objects`) for that box's corners, which detection
needs finer than a patch.
"""

import argparse
import io
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as save_torch

SHAPES = ["circle", "square", "triangle"]
COLOURS = ["red", "green", "blue", "yellow"]
WIDTH, LAYERS, HEADS, PATCH, SIDE = 192, 4, 3, 14, 112
GRID = SIDE // PATCH


def read_split(folder, split):
    rows = []
    for shard in sorted(Path(folder).glob(f"{split}-*.parquet")):
        rows += pq.read_table(shard, columns=["image", "caption", "objects"]).to_pylist()
    pixels = np.stack(
        [np.asarray(Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB")) for r in rows]
    )
    # The batch contract: channels first, x / 127.5 - 1.
    images = torch.tensor(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [r["caption"] for r in rows], token_boxes([r["objects"] for r in rows])


def token_boxes(objects):
    """Per image, the box (y0, x0, y1, x1) each patch token's centre lies in, and which tokens
    lie in one. Only the boxes of the row's detection class are known; the others' tokens stay
    unasked."""
    centre = (torch.arange(GRID) + 0.5) / GRID
    cy, cx = centre.repeat_interleave(GRID), centre.repeat(GRID)
    targets = torch.zeros(len(objects), GRID * GRID, 4)
    known = torch.zeros(len(objects), GRID * GRID, dtype=torch.bool)
    for i, boxes in enumerate(objects):
        for b in boxes:
            inside = (cy > b["y0"]) & (cy < b["y1"]) & (cx > b["x0"]) & (cx < b["x1"])
            targets[i, inside] = torch.tensor([b["y0"], b["x0"], b["y1"], b["x1"]])
            known[i] |= inside
    return targets, known


def object_labels(captions, with_colour):
    """Per caption, one class per object left to right (up to three), -1 where there is none."""
    labels = torch.full((len(captions), 3), -1)
    for i, caption in enumerate(captions):
        for j, phrase in enumerate(caption.split(" left of ")):
            _, colour, shape = phrase.split()
            cls = SHAPES.index(shape)
            labels[i, j] = cls * len(COLOURS) + COLOURS.index(colour) if with_colour else cls
    return labels


class Block(nn.Module):
    """Pre-norm transformer block with tanh-GELU, as SigLIP's."""

    def __init__(self, width, heads):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.layer_norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x, padding=None):
        h = self.layer_norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.layer_norm2(x)), approximate="tanh"))


class Encoder(nn.Module):
    """SigLIP's vision tower without the pooling head: the tokens the projector reads."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
        self.position = nn.Parameter(torch.randn(GRID * GRID, WIDTH) / math.sqrt(WIDTH))
        self.layers = nn.ModuleList(Block(WIDTH, HEADS) for _ in range(LAYERS))
        self.post_layernorm = nn.LayerNorm(WIDTH, eps=1e-6)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2) + self.position
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)

    def hf_weights(self):
        """The weights under transformers' SigLIP names, as paliforge checkpoints store them."""
        out = {
            "embeddings.patch_embedding.weight": self.patch.weight,
            "embeddings.patch_embedding.bias": self.patch.bias,
            "embeddings.position_embedding.weight": self.position,
            "post_layernorm.weight": self.post_layernorm.weight,
            "post_layernorm.bias": self.post_layernorm.bias,
        }
        for i, block in enumerate(self.layers):
            p = f"encoder.layers.{i}."
            for name in ("layer_norm1", "layer_norm2", "fc1", "fc2"):
                module = getattr(block, name)
                prefix = p + ("mlp." if name.startswith("fc") else "")
                out[f"{prefix}{name}.weight"] = module.weight
                out[f"{prefix}{name}.bias"] = module.bias
            for proj, w, b in zip(
                "qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)
            ):
                out[f"{p}self_attn.{proj}_proj.weight"] = w
                out[f"{p}self_attn.{proj}_proj.bias"] = b
            out[f"{p}self_attn.out_proj.weight"] = block.attn.out_proj.weight
            out[f"{p}self_attn.out_proj.bias"] = block.attn.out_proj.bias
        return {
            "vision_tower." + k: v.detach().float().contiguous().numpy() for k, v in out.items()
        }


class ObjectHead(nn.Module):
    """Reads every token at once: one classification per object, left to right."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes
        self.linear = nn.Linear(GRID * GRID * WIDTH, 3 * classes)

    def logits(self, tokens):
        return self.linear(tokens.flatten(1)).view(-1, 3, self.classes)

    def loss(self, tokens, labels):
        logits = self.logits(tokens)
        present = labels >= 0
        return F.cross_entropy(logits[present], labels[present]), logits.argmax(-1)


class ThirdsHead(ObjectHead):
    """One shared classifier over the mean token of each third of the image, for scenes whose
    j-th object is in the j-th third (`--three-objects`): it asks only what the encoder sees
    there, with few parameters of its own to overfit."""

    def __init__(self, classes):
        nn.Module.__init__(self)
        self.classes = classes
        self.linear = nn.Linear(WIDTH, classes)
        third = (torch.arange(GRID) + 0.5) * 3 // GRID
        self.register_buffer("third", third.long())

    def logits(self, tokens):
        grid = tokens.view(len(tokens), GRID, GRID, WIDTH)
        thirds = [grid[:, :, self.third == t].mean((1, 2)) for t in range(3)]
        return self.linear(torch.stack(thirds, 1))


class CaptionTower(nn.Module):
    """SigLIP's other half at toy size: words in, one normalised embedding out."""

    def __init__(self, vocabulary, width=128, length=16):
        super().__init__()
        self.words = {w: i + 1 for i, w in enumerate(vocabulary)}
        self.length = length
        self.embed = nn.Embedding(len(vocabulary) + 1, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        self.layers = nn.ModuleList(Block(width, 4) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.image_head = nn.Linear(WIDTH, width)
        self.text_head = nn.Linear(width, width)
        # SigLIP's initial temperature and bias.
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_text(self, captions):
        ids = torch.zeros(len(captions), self.length, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = [self.words[w] for w in caption.split()][: self.length]
            ids[i, : len(words)] = torch.tensor(words)
        padding = ids == 0
        x = self.embed(ids) + self.position
        for layer in self.layers:
            x = layer(x, padding)
        keep = (~padding).float().unsqueeze(-1)
        pooled = (self.norm(x) * keep).sum(1) / keep.sum(1)
        return F.normalize(self.text_head(pooled), dim=-1)

    def loss(self, tokens, captions):
        images = F.normalize(self.image_head(tokens.mean(1)), dim=-1)
        logits = images @ self.embed_text(captions).T * self.log_scale.exp() + self.bias
        # Pairs are positive where the captions are equal, not only on the diagonal.
        same = torch.tensor([[a == b for b in captions] for a in captions])
        return -F.logsigmoid(torch.where(same, 1.0, -1.0) * logits).sum() / len(captions)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenes", help="demo/scenes: train-*.parquet and test-*.parquet")
    parser.add_argument("out", help="the encoder's safetensors file, or with --into a checkpoint folder")
    parser.add_argument(
        "--into", metavar="CHECKPOINT",
        help="write a copy of this paliforge checkpoint folder with the trained encoder in it",
    )
    parser.add_argument("--objective", choices=["objects", "shapes", "siglip"], default="objects")
    parser.add_argument(
        "--head", choices=["all", "thirds"], default="all",
        help="objects/shapes: a linear map of every token, or one of each third's mean token",
    )
    parser.add_argument(
        "--three-objects", action="store_true",
        help="train and score on the scenes with three objects only (one in each third)",
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--decay", action="store_true", help="cosine decay of the rate to zero after warm-up"
    )
    parser.add_argument(
        "--keep-position", action="store_true",
        help="also ask every token which column of the patch grid it is in, so that its "
        "position stays readable",
    )
    parser.add_argument(
        "--boxes", action="store_true",
        help="also ask every token inside a known box for that box's corners (L1), so that "
        "where an object is, finer than a patch, stays readable",
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    train_x, train_c, train_b = read_split(args.scenes, "train")
    test_x, test_c, test_b = read_split(args.scenes, "test")
    if args.three_objects:
        def three(x, c, b):
            keep = [i for i, caption in enumerate(c) if caption.count(" left of ") == 2]
            return x[keep], [c[i] for i in keep], (b[0][keep], b[1][keep])

        train_x, train_c, train_b = three(train_x, train_c, train_b)
        test_x, test_c, test_b = three(test_x, test_c, test_b)
    encoder = Encoder()
    if args.objective == "siglip":
        vocabulary = sorted({w for c in train_c + test_c for w in c.split()})
        head = CaptionTower(vocabulary)
    else:
        with_colour = args.objective == "objects"
        head = (ThirdsHead if args.head == "thirds" else ObjectHead)(12 if with_colour else 3)
        train_y = object_labels(train_c, with_colour)
        test_y = object_labels(test_c, with_colour)
    params = list(encoder.parameters()) + list(head.parameters())
    column = torch.arange(GRID * GRID) % GRID
    if args.keep_position:
        position_head = nn.Linear(WIDTH, GRID)
        params += list(position_head.parameters())
    if args.boxes:
        box_head = nn.Linear(WIDTH, 4)
        params += list(box_head.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    start = time.time()
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, len(train_x), (args.batch,))
        tokens = encoder(train_x[rows])
        if args.objective == "siglip":
            loss = head.loss(tokens, [train_c[r] for r in rows])
        else:
            loss, _ = head.loss(tokens, train_y[rows])
        if args.keep_position:
            guess = position_head(tokens).flatten(0, 1)
            loss = loss + F.cross_entropy(guess, column.repeat(len(rows)))
        if args.boxes:
            targets, known = train_b[0][rows], train_b[1][rows]
            if known.any():
                # In tenths of the side, so that the term weighs about as much as the others.
                loss = loss + 10 * F.l1_loss(box_head(tokens)[known], targets[known])
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, step / 50)
            if args.decay and step > 50:
                group["lr"] *= 0.5 * (1 + math.cos(math.pi * (step - 50) / (args.steps - 50)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == args.steps:
            report = f"step {step} loss {loss.item():.3f}"
            if args.objective != "siglip":
                with torch.no_grad():
                    _, guess = head.loss(encoder(test_x), test_y)
                present = test_y >= 0
                accuracy = (guess[present] == test_y[present]).float().mean().item()
                report += f" held-out objects right {accuracy:.2f}"
            if args.boxes:
                with torch.no_grad():
                    error = F.l1_loss(box_head(encoder(test_x))[test_b[1]], test_b[0][test_b[1]])
                report += f", box corners off by {error.item():.3f} of the side"
            print(f"{report} ({time.time() - start:.0f} s)", flush=True)

    out = Path(args.out)
    if args.into is None:
        # The encoder alone, in bf16 as Hugging Face ships SigLIP: `paliforge train
        # --image-encoder` starts a fresh model's vision tower from it.
        tensors = {k: torch.from_numpy(v).bfloat16() for k, v in encoder.hf_weights().items()}
        save_torch(tensors, out, metadata={"format": "pt", "image_size": str(SIDE)})
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json"):
            shutil.copy(Path(args.into) / name, out / name)
        weights = load_file(Path(args.into) / "model.safetensors")
        for name, value in encoder.hf_weights().items():
            assert weights[name].shape == value.shape, name
            weights[name] = value
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
