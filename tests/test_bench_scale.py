"""The scale benchmark's building blocks: a Llama-3-8B-shaped (GQA) checkpoint written shard by
shard has exactly the keys and shapes ``from_pretrained`` expects, and the report shows GPU runs
(``benchmarks/gpu_check.sh``) apart from the CPU ones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gqa_checkpoint_matches_from_pretrained_and_is_dense(tmp_path):
    scale = _load("scale")
    shape = {**scale.LLAMA3_8B, **scale.TINY, "num_hidden_layers": 2}
    size = scale.write_checkpoint(tmp_path / "ckpt", shape=shape)
    index = json.loads((tmp_path / "ckpt" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == size
    assert len(set(index["weight_map"].values())) == 3  # non-block shard + one per block
    chk = scale.check_output(tmp_path / "ckpt", "wanda", "unstructured")
    assert chk["keys_and_shapes_match_from_pretrained"] is True
    assert chk["linear_sparsity"] == 0.0 and chk["dtypes"] == ["torch.bfloat16"]
    # GQA: k/v have num_key_value_heads * head_dim rows, not hidden
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ckpt" / index["weight_map"]["model.layers.0.self_attn.k_proj.weight"]), "pt") as f:
        k = f.get_tensor("model.layers.0.self_attn.k_proj.weight")
    assert tuple(k.shape) == (256 * 8 // 32, 256)


def _record(device: str, method: str, **extra) -> dict:
    return {"method": method, "pattern": "unstructured", "blocks": 32, "checkpoint_gb": 16.06,
            "peak_rss_gb": 3.2, "wall_s": 300.0, "device": device, "shape_name": "llama3-8b",
            "calibration": "128 x 2048 random token ids",
            "output": {"min_linear_sparsity": 0.5, "dtypes": ["torch.bfloat16"],
                       "keys_and_shapes_match_from_pretrained": True}, **extra}


@pytest.mark.parametrize("with_gpu", [False, True])
def test_report_shows_gpu_runs_apart_from_cpu_runs(tmp_path, with_gpu):
    report = _load("report")
    (tmp_path / "llama2-7b-shape.json").write_text(json.dumps(_record("cpu", "wanda", shape_name="llama2-7b")))
    if with_gpu:
        gpu = {"name": "NVIDIA H200", "max_allocated_gb": 21.37, "max_reserved_gb": 24.0}
        (tmp_path / "llama3-8b-shape-sparsegpt-unstructured-cuda.json").write_text(
            json.dumps(_record("cuda", "sparsegpt", gpu=gpu)))
    text = "\n".join(report.scale_section(tmp_path))
    assert "| wanda unstructured | 32 of 32 |" in text  # the CPU table
    assert ("not measured" in text) is not with_gpu
    if with_gpu:
        row = next(line for line in text.splitlines() if line.startswith("| llama3-8b |"))
        assert "sparsegpt unstructured" in row and "NVIDIA H200" in row and "**21.4** (24.0)" in row
        assert "128 x 2048" in row
        assert not any(line.startswith("| sparsegpt") for line in text.splitlines())  # not a CPU-table row
