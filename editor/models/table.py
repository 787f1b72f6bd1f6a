"""The architecture table: one row per ``model_type`` steerfold edits, and one line per type it refuses and why.

Adding an architecture is adding a row, written in the vocabulary of ``editor.models.writers`` after reading its
transformers modeling file for every module whose output is added to the residual stream; the conformance
harness (tests/test_architectures.py) then proves the row exact on a tiny random model.
"""

from __future__ import annotations

import dataclasses

from steerfold.models.writers import (PRE_NORM, POST_NORM, Architecture, Spelling, TensorPattern, WriterSpec,
                                      linear_writer, moe_writer, sqrt_hidden)

GRANITE_SCALES = {"embedding_multiplier": "embedding_multiplier", "residual_multiplier": "residual_multiplier"}
# Qwen3-Next and Qwen3.5: a gated-delta-net (linear attention) block or a full attention block, by layer_types.
HYBRID_ATTENTION = (linear_writer("attention", "linear_attn.out_proj", layer_type="linear_attention"),
                    linear_writer("attention", "self_attn.o_proj", layer_type="full_attention"))
# A sigmoid-gated shared expert (Qwen2-MoE, Qwen3-Next, Qwen3.5-MoE): the gate is a per-token scalar.
SHARED_EXPERT = ("mlp.shared_expert.down_proj.weight",)
SHARED_EXPERTS = ("mlp.shared_experts.down_proj.weight",)  # DeepSeek, GLM-4-MoE, ERNIE 4.5 MoE, ...: added as is
# Granite MoE: experts fused in memory and on disk (output_linear); GraniteMoeShared adds a shared MLP beside them.
GRANITE_EXPERTS = moe_writer((), hook="block_sparse_moe", fused=("block_sparse_moe.experts.down_proj",
                                                                  "block_sparse_moe.output_linear.weight"))
MTP = ("num_nextn_predict_layers", "num_mtp_layers")
MTP_NOTE = "multi-token-prediction blocks after the last one are copied unedited (drafts only; outputs stay exact)"
# Mamba/attention hybrids (config layer_types, legacy names remapped by the config class), and LFM2's conv blocks.
# A hybrid block's token mixer, whatever its kind, has the attention role (per-role kernel weights apply to it).
MAMBA_HYBRID = (linear_writer("attention", "mamba.out_proj", layer_type="linear_attention"),
                linear_writer("attention", "self_attn.o_proj", layer_type="full_attention"))
SHORT_CONV_HYBRID = (linear_writer("attention", "conv.out_proj", layer_type="conv"),
                     linear_writer("attention", "self_attn.out_proj", layer_type="full_attention"))
PARALLEL = "parallel block: attention and MLP read the same norm, both add to the stream"
# gpt-oss: x @ down_proj[e] + down_proj_bias[e], with down_proj [E, inter, hidden]; attention sinks write nothing.
# Its routing weights are a softmax over the chosen experts (they sum to one), so the expert biases carry an offset.
GPT_OSS_EXPERTS = WriterSpec("mlp", "mlp", (TensorPattern("mlp.experts.down_proj", "experts_t"),),
                             offset="mlp.experts.down_proj_bias")
# Llama 4: experts stored [E, inter, hidden] like gpt-oss's (no biases), a shared expert, dense blocks between.
LLAMA4_FEED_FORWARD = WriterSpec("mlp", "feed_forward", (TensorPattern("feed_forward.experts.down_proj", "experts_t"),
                                                         TensorPattern("feed_forward.shared_expert.down_proj.weight"),
                                                         TensorPattern("feed_forward.down_proj.weight")))
# Vision-language wrappers: the language model under model.language_model (v5) or language_model.model (on disk).
GEMMA3_SPELLINGS = (Spelling("model.language_model"), Spelling("language_model.model", "language_model.lm_head"))
# Llama 4 checkpoints hold the vision-language model; AutoModelForCausalLM loads its language model alone.
LLAMA4_SPELLINGS = (Spelling(), Spelling("language_model.model", "language_model.lm_head"))
# Gemma 4: post-norm writes (its RMSNorm gain is the weight itself). With enable_moe_block the dense MLP and the experts
# each pass their own post-norm, then the shared one on their sum; with per-layer inputs (PLE) a gated projection of the
# token's per-layer embedding is a third post-normed write. Each block then scales the whole stream (layer_scalar).
MOE_BLOCK, DENSE_BLOCK = ("enable_moe_block", True), ("enable_moe_block", False)
PLE = ("hidden_size_per_layer_input", True)
GEMMA4 = (linear_writer("attention", "self_attn.o_proj", "post_attention_layernorm"),
          linear_writer("mlp", "mlp.down_proj", "post_feedforward_layernorm", when=DENSE_BLOCK),
          WriterSpec("mlp", "mlp.down_proj", (TensorPattern("mlp.down_proj.weight"),),
                     ("post_feedforward_layernorm_1", "post_feedforward_layernorm"), when=MOE_BLOCK),
          WriterSpec("mlp", "experts", (TensorPattern("experts.down_proj", "experts"),),
                     ("post_feedforward_layernorm_2", "post_feedforward_layernorm"), when=MOE_BLOCK),
          linear_writer("mlp", "per_layer_projection", "post_per_layer_input_norm", when=PLE))
GEMMA4_NOTE = "the MoE block's dense MLP and experts post-normed twice; per-layer-input projection; layer scalars"
# Falcon-H1: a Mamba-2 mixer and attention read one norm side by side, then an MLP; each output times its multiplier.
MAMBA_OUT = "PEFT refuses a LoRA on a Mamba mixer's out_proj in this model type (fused kernels read its weight)"
FALCON_H1 = (linear_writer("attention", "mamba.out_proj", multiplier="ssm_out_multiplier", no_lora=MAMBA_OUT),
             linear_writer("attention", "self_attn.o_proj", multiplier="attention_out_multiplier"),
             linear_writer("mlp", "feed_forward.down_proj", multiplier="mlp_multipliers[1]"))
# Nemotron-H: one mixer per block by layer_types (Mamba-2, attention, a non-gated MLP, or experts with a shared expert
# added as is); a latent MoE (moe_latent_size) writes through fc2_latent_proj, its experts' outputs being latent.
NEMOTRON_SHARED = TensorPattern("mixer.shared_experts.down_proj.weight")
NEMOTRON_H = (linear_writer("attention", "mixer.out_proj", layer_type="linear_attention", no_lora=MAMBA_OUT),
              linear_writer("attention", "mixer.o_proj", layer_type="full_attention"),
              linear_writer("mlp", "mixer.down_proj", layer_type="mlp"),
              WriterSpec("mlp", "mixer", (TensorPattern("mixer.experts.down_proj", "experts"),
                                          TensorPattern("mixer.experts.{e}.down_proj.weight"), NEMOTRON_SHARED),
                         layer_type="moe", when=("moe_latent_size", False)),
              WriterSpec("mlp", "mixer", (TensorPattern("mixer.fc2_latent_proj.weight"), NEMOTRON_SHARED),
                         layer_type="moe", when=("moe_latent_size", True)))
# Nemotron-H checkpoints spell the model backbone.* and its embedding embeddings (v5 loads it as model.*).
NEMOTRON_H_SPELLINGS = (Spelling(embed="embeddings"), Spelling("backbone", embed="embeddings"))
# Qwen3.5 checkpoints hold the vision-language model; AutoModelForCausalLM loads its language model alone.
QWEN3_5_SPELLINGS = (Spelling("model"), Spelling("model.language_model"))

ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "ministral3": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(),
    "phi3": Architecture(),
    "smollm3": Architecture(),
    "seed_oss": Architecture(),
    "ernie4_5": Architecture(),
    "ministral": Architecture(),
    "olmo": Architecture(),
    "helium": Architecture(),
    "glm": Architecture(),
    "arcee": Architecture(),
    "apertus": Architecture(),
    "nemotron": Architecture(),
    "hunyuan_v1_dense": Architecture(),
    "stablelm": Architecture(notes="parallel or sequential residual: the same two writers"),
    "cohere": Architecture(notes=PARALLEL),
    "cohere2": Architecture(notes=PARALLEL),
    "granite": Architecture(**GRANITE_SCALES),
    "granite_swa": Architecture(**GRANITE_SCALES),
    "vaultgemma": Architecture(embedding_scale=sqrt_hidden),
    "gemma": Architecture(embedding_scale=sqrt_hidden),
    "gemma2": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "gemma3_text": Architecture(POST_NORM, embedding_scale=sqrt_hidden, norm_gain_offset=1.0),
    "gemma3": Architecture(POST_NORM, GEMMA3_SPELLINGS, "text_config", sqrt_hidden, norm_gain_offset=1.0),
    "olmo2": Architecture(POST_NORM),
    "olmo3": Architecture(POST_NORM),
    "exaone4": Architecture(POST_NORM),
    "glm4": Architecture((linear_writer("attention", "self_attn.o_proj", post_norm="post_self_attn_layernorm"),
                          linear_writer("mlp", "mlp.down_proj", post_norm="post_mlp_layernorm"))),
    "mixtral": Architecture((PRE_NORM[0], moe_writer(("block_sparse_moe.experts.{e}.w2.weight",)))),
    "qwen3_moe": Architecture((PRE_NORM[0], moe_writer())),
    "qwen2_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERT))),
    "olmoe": Architecture((PRE_NORM[0], moe_writer())),
    "phimoe": Architecture((PRE_NORM[0], moe_writer(("block_sparse_moe.experts.{e}.w2.weight",)))),
    "deepseek_v3": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS)), extra_blocks=MTP, notes=MTP_NOTE),
    "glm4_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS)), extra_blocks=MTP, notes=MTP_NOTE),
    "ernie4_5_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS))),
    "dots1": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS))),
    "exaone_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS))),
    "hunyuan_v1_moe": Architecture((PRE_NORM[0], moe_writer(shared=("mlp.shared_mlp.down_proj.weight",)))),
    "granitemoeshared": Architecture((PRE_NORM[0], GRANITE_EXPERTS, linear_writer("mlp", "shared_mlp.output_linear")),
                                     **GRANITE_SCALES),
    "granitemoe": Architecture((PRE_NORM[0], GRANITE_EXPERTS), **GRANITE_SCALES),
    "granitemoe_swa": Architecture((PRE_NORM[0], GRANITE_EXPERTS, linear_writer("mlp", "shared_mlp.output_linear")),
                                   **GRANITE_SCALES),
    "deepseek_v2": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS))),
    "glm4_moe_lite": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS)), extra_blocks=MTP, notes=MTP_NOTE),
    "minimax_m2": Architecture((PRE_NORM[0], moe_writer(("block_sparse_moe.experts.{e}.w2.weight",)))),
    "cohere2_moe": Architecture((PRE_NORM[0], moe_writer(shared=SHARED_EXPERTS)), notes=PARALLEL),
    "lfm2_moe": Architecture((*SHORT_CONV_HYBRID, moe_writer(("feed_forward.experts.{e}.w2.weight",), hook="feed_forward",
                                                             fused=("feed_forward.experts.down_proj",), dense="w2"))),
    "gpt_oss": Architecture((PRE_NORM[0], GPT_OSS_EXPERTS), notes="biased o_proj and experts (which carry steering "
                            "offsets): no LoRA; MXFP4 checkpoints: the edited experts are written dequantized"),
    "granitemoehybrid": Architecture((*MAMBA_HYBRID, dataclasses.replace(GRANITE_EXPERTS, optional=True),
                                       linear_writer("mlp", "shared_mlp.output_linear")), **GRANITE_SCALES),
    "jamba": Architecture((*MAMBA_HYBRID, moe_writer(("feed_forward.experts.{e}.down_proj.weight",), hook="feed_forward",
                                                     fused=("feed_forward.experts.down_proj",)))),
    "lfm2": Architecture((*SHORT_CONV_HYBRID, linear_writer("mlp", "feed_forward.w2"))),
    "llama4_text": Architecture((PRE_NORM[0], LLAMA4_FEED_FORWARD)),
    "llama4": Architecture((PRE_NORM[0], LLAMA4_FEED_FORWARD), LLAMA4_SPELLINGS, "text_config"),
    "gemma4_text": Architecture(GEMMA4, embedding_scale=sqrt_hidden, notes=GEMMA4_NOTE),
    "gemma4": Architecture(GEMMA4, (Spelling("model.language_model"),), "text_config", sqrt_hidden, notes=GEMMA4_NOTE),
    "falcon_h1": Architecture(FALCON_H1, embedding_multiplier="embedding_multiplier",
                              notes="parallel Mamba-2 and attention on one norm, then the MLP"),
    "nemotron_h": Architecture(NEMOTRON_H, NEMOTRON_H_SPELLINGS),
    "qwen3_next": Architecture((*HYBRID_ATTENTION, moe_writer(shared=SHARED_EXPERT))),
    "qwen3_5_text": Architecture((*HYBRID_ATTENTION, PRE_NORM[1])),
    "qwen3_5": Architecture((*HYBRID_ATTENTION, PRE_NORM[1]), QWEN3_5_SPELLINGS, "text_config"),
    "qwen3_5_moe_text": Architecture((*HYBRID_ATTENTION, moe_writer(shared=SHARED_EXPERT))),
    "qwen3_5_moe": Architecture((*HYBRID_ATTENTION, moe_writer(shared=SHARED_EXPERT)), QWEN3_5_SPELLINGS, "text_config"),
    "starcoder2": Architecture((linear_writer("attention", "self_attn.o_proj"), linear_writer("mlp", "mlp.c_proj"))),
    "phi": Architecture((linear_writer("attention", "self_attn.dense"), linear_writer("mlp", "mlp.fc2"))),
}

# Types people ask for that no row can make exact, each with the one-line reason steerfold gives.
REFUSED: dict[str, str] = {
    "mistral3": "transformers loads mistral3 only as an image-text-to-text model (no AutoModelForCausalLM class), so "
                "steerfold cannot fit, hook or validate it: edit its language model as a ministral3/mistral checkpoint",
    "gemma3n": "Gemma 3n keeps several residual streams (AltUp) and adds per-layer embeddings inside each block, so "
               "no one map on a block's writes is exact",
}
