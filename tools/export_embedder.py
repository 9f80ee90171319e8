"""Export all-MiniLM-L6-v2 to ONNX for the served embedder (server/lookup/embedding.py):
once, by `make models`; a second run with the same weights does nothing.

    python -m tools.export_embedder [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from server.lookup.embedding import NAME, ONNX_DIR, ONNX_FILE, Embedder, mean_pool, model_path
from tools.prepare_models import sha256

STAMP = "triage-exported.json"
# Sentences the exported model must embed like PyTorch does.
CHECK_SENTENCES = (
    "What is the capital of France?",
    "Is Pluto not a planet?",
    "Explain how TCP slow start works, step by step, with an example of a congestion window growing.",
    "hello",
)


def pytorch_model():
    """The package's tokenizer and float32 PyTorch model (for the export, and
    as the reference the benchmark compares with)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = model_path()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return tokenizer, AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float32).eval()


def export(out_dir: Path = ONNX_DIR) -> Path:
    """PyTorch weights -> ONNX, checked against PyTorch on CHECK_SENTENCES;
    a second run with the same weights does nothing."""
    import torch

    weights_sha = sha256(model_path() / "model.safetensors")
    target, stamp = out_dir / ONNX_FILE, out_dir / STAMP
    if target.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("weights_sha256") == weights_sha:
        print(f"{target} is up to date")
        return target

    tokenizer, model = pytorch_model()

    class LastHiddenState(torch.nn.Module):  # keyword arguments: transformers 5's forward takes more positionals
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / (ONNX_FILE + ".partial")
    example = tokenizer(["What is the capital of France?"], return_tensors="pt")
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}, "last_hidden_state": {0: "batch", 1: "tokens"}}
    with torch.inference_mode():
        torch.onnx.export(LastHiddenState(model).eval(), (example["input_ids"], example["attention_mask"]), str(partial),
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
        enc = tokenizer(list(CHECK_SENTENCES), padding=True, return_tensors="pt")
        expected = mean_pool(model(**enc).last_hidden_state.numpy(), enc["attention_mask"].numpy())
    got = Embedder(partial).embed(list(CHECK_SENTENCES))
    worst = float(np.min((expected * got).sum(1)))
    if worst < 0.99999:
        raise SystemExit(f"the exported embedding model disagrees with PyTorch (cosine {worst:.6f}); not installed")
    partial.replace(target)
    stamp.write_text(json.dumps({"model": NAME, "weights_sha256": weights_sha, "min_cosine_vs_pytorch": worst}, indent=2) + "\n")
    print(f"exported {NAME} to {target} (cosine to PyTorch >= {worst:.6f})")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.export_embedder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ONNX_DIR, help=f"folder (default {ONNX_DIR})")
    args = parser.parse_args(argv)
    export(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
