"""GPU check: what a cluster machine runs of the policy stack, before a real recipe (README, GPU section).

    python bench/gpu_check.py              # on a machine with a CUDA GPU
    python bench/gpu_check.py --quick      # the same checks (what `make bench` runs)
    python bench/gpu_check.py --self-test  # the same code with the test-size policy on the CPU (checks this script)

Checks, each printing what it saw or why it was skipped:
1. the device: GPU, memory, bf16 support, versions of torch / transformers / trl / vllm / deepspeed;
2. one bf16 GRPO step (`medagent.train.grpo.run_grpo`, the same path as the recipes) of a random-init Qwen3-VL
   with Qwen3-VL-2B-Instruct's dimensions (`QWEN3_VL_2B`, from its config.json: text 28 x 2048, vision 24 x 1024,
   vocabulary 151,936, tied embeddings; about 2.1 B parameters), built here from the config (no download), with
   medagent's tiny tokenizer padded to the vocabulary; rollouts by transformers' generate, then, when vllm
   imports, by vLLM colocated in the process (TRL's `vllm_mode="colocate"`);
3. the SAM ViT-B image encoder (official architecture, random init, one 1024 x 1024 image): milliseconds per
   encode in float32 and under bf16 autocast;
and the peak GPU memory of each. On a machine without CUDA it prints that every check was skipped and exits 0.
The random policy writes random text: the step measures time and memory, not learning.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

#: Qwen/Qwen3-VL-2B-Instruct's config.json (the fields a model is built from).
QWEN3_VL_2B = {
    "text": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
             "vocab_size": 151_936},
    "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16,
               "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]},
    "tie_word_embeddings": True,
}
#: The test-size counterpart for `--self-test` (TinyVLMConfig's defaults).
TINY = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
             "vocab_size": 4096},
    "vision": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_position_embeddings": 64,
               "deepstack_visual_indexes": [0]},
    "tie_word_embeddings": False,
}


def say(section: str, text: str) -> None:
    print(f"[{section}] {text}", flush=True)


def version(name: str) -> str:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"not importable ({type(exc).__name__})"
    return str(getattr(module, "__version__", "?"))


def build_policy(folder: Path, dims: dict, image_px: int) -> int:
    """A random-init Qwen3-VL with `dims` and medagent's tokenizer (padded to the vocabulary) saved in `folder`
    (bf16 safetensors + processor + TRL's chat template); returns its parameter count."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from medagent.agents.vlm import SPECIAL_TOKENS, TinyVLMConfig, build_processor

    processor = build_processor(TinyVLMConfig(min_pixels=image_px * image_px, max_pixels=image_px * image_px))
    tok = processor.tokenizer
    vocab = dims["text"]["vocab_size"]
    if len(tok) < vocab:  # random ids decode to <|pad_N|> pieces, as a real vocabulary would to text
        tok.add_tokens([f"<|pad_{i}|>" for i in range(vocab - len(tok))])
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text, vision = dims["text"], dims["vision"]
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": vocab, "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"], "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"], "head_dim": text["head_dim"],
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": text["rope_theta"],
                                "mrope_section": text["mrope_section"], "mrope_interleaved": True},
            "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": vision["depth"], "hidden_size": vision["hidden_size"], "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"], "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": text["hidden_size"], "num_position_embeddings": vision["num_position_embeddings"],
            "deepstack_visual_indexes": vision["deepstack_visual_indexes"],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=dims["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    gc.collect()
    return params


def grpo_step(policy: Path, out: Path, gpu: bool, use_vllm: bool, image_px: int) -> dict:
    """One GRPO step of `policy` through `run_grpo` (builtin phantom data, shipped tiny tools); seconds, memory."""
    import torch

    from medagent.train.grpo import GRPORunConfig, run_grpo

    config = GRPORunConfig(
        model=str(policy), env={"dataset": "phantom", "image_size": image_px, "max_turns": 2}, prompts=2,
        output_dir=str(out), max_steps=1, num_generations=2, per_device_train_batch_size=2,
        max_completion_length=128, learning_rate=1e-6, device="cuda" if gpu else "cpu", bf16=gpu,
        gradient_checkpointing=gpu, use_vllm=use_vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
        save_model=False, progress=False, logging_steps=1)
    if gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run_grpo(config)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds}
    if gpu:
        free, total = torch.cuda.mem_get_info()
        result.update(peak_gib=torch.cuda.max_memory_allocated() / 2**30, device_used_gib=(total - free) / 2**30)
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return result


def sam_encode(device: str, repeats: int) -> dict:
    """Milliseconds per SAM ViT-B image-encoder pass (1024 x 1024, random init): float32 and bf16 autocast."""
    import torch

    from medagent.tools.sam.model import OFFICIAL_ARCHS, build_sam

    torch.manual_seed(0)
    encoder = build_sam(OFFICIAL_ARCHS["vit_b"]).image_encoder.to(device).eval()
    image = torch.randn(1, 3, 1024, 1024, device=device)
    out: dict[str, float] = {}
    for name, autocast in (("float32", False), ("bf16", device == "cuda")):
        if name == "bf16" and not autocast:
            continue
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            encoder(image)  # warm-up (kernels, allocator)
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(repeats):
                encoder(image)
            if device == "cuda":
                torch.cuda.synchronize()
        out[f"{name}_ms"] = 1e3 * (time.perf_counter() - started) / repeats
        if device == "cuda":
            out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del encoder
    gc.collect()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the same checks (one GRPO step is already the smallest)")
    ap.add_argument("--self-test", action="store_true",
                    help="run the checks on the CPU with the test-size policy (fp32, no vLLM): checks this script")
    ap.add_argument("--image-size", type=int, default=256, help="policy image side, pixels (256: 64 image tokens)")
    ap.add_argument("--repeats", type=int, default=5, help="SAM encoder passes timed")
    args = ap.parse_args()

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    gpu = torch.cuda.is_available()
    skipped: list[str] = []
    say("device", f"torch {torch.__version__}, transformers {version('transformers')}, trl {version('trl')}, "
                  f"vllm {version('vllm')}, deepspeed {version('deepspeed')}, accelerate {version('accelerate')}")
    if not gpu and not args.self_test:
        say("device", "no CUDA device: skipped everything (the bf16 GRPO step of a 2B-sized Qwen3-VL, vLLM "
                      "colocate, the SAM ViT-B encode time, peak GPU memory); nothing to check on this machine")
        return 0
    if gpu:
        props = torch.cuda.get_device_properties(0)
        say("device", f"{torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                      f"capability {props.major}.{props.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}, "
                      f"CUDA {torch.version.cuda}")
        if not torch.cuda.is_bf16_supported():
            skipped.append("bf16 (this GPU has none: the recipes' bf16: true will not run here)")
    else:
        say("device", "self-test on the CPU: test-size policy, float32, no vLLM")
    dims = QWEN3_VL_2B if gpu else TINY
    image_px = args.image_size if gpu else 32

    failures = 0
    with tempfile.TemporaryDirectory(prefix="medagent-gpu-check-") as tmp:
        root = Path(tmp)
        try:
            started = time.perf_counter()
            params = build_policy(root / "policy", dims, image_px)
            size = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
            say("policy", f"random-init Qwen3-VL, {'Qwen3-VL-2B' if gpu else 'test-size'} dimensions: "
                          f"{size} parameters, built and saved in {time.perf_counter() - started:.1f} s")
        except Exception as exc:  # noqa: BLE001 - report and go on with the SAM check
            say("policy", f"FAILED to build: {type(exc).__name__}: {exc}")
            failures += 1
            skipped.append("GRPO steps (no policy)")
        else:
            engines = [("transformers generate", False)]
            if gpu and version("vllm").startswith("not"):
                skipped.append(f"vLLM colocate (vllm {version('vllm')}: use the [vllm] environment, README)")
            elif gpu:
                engines.append(("vLLM colocate", True))
            for label, use_vllm in engines:
                if use_vllm:  # TRL's colocate mode runs vLLM with torch.distributed's variables
                    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
                        os.environ.setdefault(key, value)
                try:
                    r = grpo_step(root / "policy", root / f"grpo-{int(use_vllm)}", gpu, use_vllm, image_px)
                except Exception as exc:  # noqa: BLE001
                    say("grpo", f"{label}: FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                    failures += 1
                    continue
                memory = (f", peak allocated {r['peak_gib']:.1f} GiB, device in use after {r['device_used_gib']:.1f} GiB"
                          if gpu else "")
                say("grpo", f"{label}: one {'bf16 ' if gpu else ''}GRPO step (2 rollouts x 128 tokens, "
                            f"{image_px} px) in {r['seconds']:.1f} s{memory}")
        try:
            r = sam_encode("cuda" if gpu else "cpu", args.repeats if gpu else 1)
            text = ", ".join(f"{k.replace('_ms', '')} {v:.1f} ms" for k, v in r.items() if k.endswith("_ms"))
            peaks = ", ".join(f"{k.replace('_peak_gib', '')} peak {v:.2f} GiB" for k, v in r.items() if k.endswith("_gib"))
            say("sam", f"ViT-B image encoder, 1024 x 1024, random init: {text}" + (f" ({peaks})" if peaks else ""))
        except Exception as exc:  # noqa: BLE001
            say("sam", f"FAILED: {type(exc).__name__}: {exc}")
            failures += 1
    say("summary", f"{failures} check(s) failed; skipped: {'; '.join(skipped) if skipped else 'nothing'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
