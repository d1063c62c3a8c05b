#!/usr/bin/env python3
"""Writes a tiny valid llama-architecture GGUF that llama-server really loads.

Random weights, a byte vocabulary (<unk>, <s>, </s> and the 256 bytes), so
the file is a few hundred KB by default. `--size-mib N` grows the
feed-forward width until the file is about N MiB (the ~1 GiB bench model).

Run with the CI venv's python, which has `gguf` and `numpy`:
    /var/cache/tierd-ci/venv/bin/python scripts/tiny_gguf.py out.gguf [--size-mib 1024] [--seed 1]
"""
import argparse
import sys

import numpy as np
import gguf


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size-mib", type=float, default=0.0, help="grow the model to about this many MiB")
    ap.add_argument("--seed", type=int, default=1, help="random seed (different seeds: different files)")
    ap.add_argument("--name", default="tierd-tiny")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    n_embd, n_head, n_layer, ctx = 64, 4, 2, 256
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    n_vocab = len(vocab)
    n_ff = 128
    if args.size_mib > 0:
        # Per layer: 4 attention matrices (n_embd^2) + 3 FFN matrices
        # (n_embd * n_ff), f32; plus embeddings and output.
        target = args.size_mib * 1024 * 1024
        fixed = 4 * (2 * n_vocab * n_embd + n_layer * 4 * n_embd * n_embd)
        n_ff = max(128, int((target - fixed) / (4 * 3 * n_embd * n_layer)) // 32 * 32)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(args.name)
    w.add_context_length(ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab)
    w.add_token_scores([0.0] * n_vocab)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(name, *shape):
        # numpy shapes are ggml's dimensions reversed.
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    t("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        t(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_k.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_v.weight", n_embd, n_embd)
        t(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        t(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        t(f"blk.{i}.ffn_down.weight", n_embd, n_ff)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
