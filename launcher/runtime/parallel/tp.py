"""Tensor parallelism (Megatron-style column/row split with DTensor), with optional sequence parallelism."""
from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, PrepareModuleOutput,
                                               RowwiseParallel, SequenceParallel, parallelize_module)

from launcher.runtime.model import Transformer


def apply_tp(model: Transformer, tp_mesh: DeviceMesh, *, sequence_parallel: bool, vocab_parallel: bool) -> None:
    """Shard ``model`` (a whole model or one pipeline stage) over ``tp_mesh`` in place.

    - Attention: wq, wk, wv column-wise (each rank gets heads / tp query and key/value heads), wo row-wise.
      MLP: w1, w3 column-wise, w2 row-wise. One all-reduce (or reduce-scatter + all-gather with sequence
      parallelism) per sub-layer in forward and in backward.
    - ``sequence_parallel``: activations between sub-layers are sharded along the sequence (Shard(1)); the
      norms run on the local sequence shard (SequenceParallel) and PrepareModuleInput all-gathers the sequence
      before attention and MLP; wo/w2 reduce-scatter their outputs back to sequence shards (Korthikanti 2022).
      Without it those activations stay replicated and wo/w2 all-reduce.
    - ``vocab_parallel`` (the plan key): the embedding is row-wise over the vocabulary (each rank looks up its
      vocabulary rows; the partial sums are reduced into the sequence-sharded or replicated layout), the output
      column-wise, and the logits stay vocabulary-sharded DTensors: the cross-entropy runs inside
      ``torch.distributed.tensor.parallel.loss_parallel()`` (no rank builds the full logits). Off, both stay
      whole on every rank: under sequence parallelism the embedding's output is sliced to the rank's sequence
      shard (its gradient all-gathered in backward) and the output projection's input all-gathered, so every
      rank computes the same full logits and the same gradients of the replicated weights.
    - A tied output weight is re-tied after sharding: both modules shard the (V, h) weight along V.
    """
    if tp_mesh.size() == 1:
        return
    seq = Shard(1) if sequence_parallel else Replicate()
    root: dict = {}
    if model.tok_embeddings is not None:
        if vocab_parallel:
            root["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
        elif sequence_parallel:
            root["tok_embeddings"] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=seq)
    if model.norm is not None and sequence_parallel:
        root["norm"] = SequenceParallel()
    if model.output is not None:
        if vocab_parallel:
            root["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Shard(-1), use_local_output=False)
        elif sequence_parallel:
            root["output"] = PrepareModuleInput(input_layouts=(seq,), desired_input_layouts=(Replicate(),),
                                                use_local_output=True)
    if root:
        parallelize_module(model, tp_mesh, root)
    if model.spec.tie_word_embeddings and model.tok_embeddings is not None and model.output is not None:
        model.output.weight = model.tok_embeddings.weight

    for block in model.layers.values():
        layer_plan: dict = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
        }
        if block.feed_forward.w3 is not None:
            layer_plan["feed_forward.w3"] = ColwiseParallel()
        if sequence_parallel:
            layer_plan.update({
                "attention_norm": SequenceParallel(),
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                                desired_input_layouts=(Replicate(), None, None)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                                   desired_input_layouts=(Replicate(),)),
            })
        parallelize_module(block, tp_mesh, layer_plan)
