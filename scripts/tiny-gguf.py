#!/usr/bin/env python3
"""Writes a tiny llama GGUF model (random weights, 32-token vocabulary, one
layer, about 16 KB) that llama.cpp loads: for tests that start llama-server
on a real file. Usage: tiny-gguf.py OUT.gguf (needs the gguf package)."""
import sys, numpy as np, gguf
out = sys.argv[1]
w = gguf.GGUFWriter(out, "llama")
n_vocab, n_embd, n_ff, n_head, n_layer, ctx = 32, 16, 32, 2, 1, 64
w.add_name("tierd-tiny")
w.add_context_length(ctx)
w.add_embedding_length(n_embd)
w.add_feed_forward_length(n_ff)
w.add_block_count(n_layer)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0)
w.add_tokenizer_model("llama")
toks = [b"<unk>", b"<s>", b"</s>"] + [bytes([0xE2, 0x96, 0x81]) + bytes([97 + i % 26]) for i in range(n_vocab - 3)]
# distinct tokens
toks = toks[:3] + [t + (b"%d" % i if i >= 26 else b"") for i, t in enumerate(toks[3:])]
w.add_token_list(toks)
w.add_token_scores([0.0] * n_vocab)
w.add_token_types([2, 3, 3] + [1] * (n_vocab - 3))
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)
rng = np.random.default_rng(0)
def t(name, *shape):
    w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
t("token_embd.weight", n_vocab, n_embd)
w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
t("output.weight", n_vocab, n_embd)
for i in range(n_layer):
    p = f"blk.{i}."
    w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    t(p + "attn_q.weight", n_embd, n_embd)
    t(p + "attn_k.weight", n_embd, n_embd)
    t(p + "attn_v.weight", n_embd, n_embd)
    t(p + "attn_output.weight", n_embd, n_embd)
    w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    t(p + "ffn_gate.weight", n_ff, n_embd)
    t(p + "ffn_down.weight", n_embd, n_ff)
    t(p + "ffn_up.weight", n_ff, n_embd)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
