"""The decoder's attention: same numbers as nn.MultiheadAttention, loads its checkpoints."""

import torch
from torch import nn

from edgeasr.nn.mha import MultiHeadAttention


def test_matches_torch_multihead_attention_and_loads_its_weights():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ours = MultiHeadAttention(32, 4)
    ours.load_state_dict(reference.state_dict())  # in_proj_weight / in_proj_bias -> in_proj
    assert isinstance(ours.in_proj, nn.Linear)
    query, memory = torch.randn(3, 7, 32), torch.randn(3, 9, 32)
    causal = torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True
    with torch.no_grad():
        a, _ = reference(query, memory, memory, key_padding_mask=padding, need_weights=False)
        b, _ = ours(query, memory, memory, key_padding_mask=padding)
        c, _ = reference(query, query, query, attn_mask=causal, need_weights=False)
        d, _ = ours(query, query, query, attn_mask=causal)
    assert (a - b).abs().max() < 1e-5 and (c - d).abs().max() < 1e-5
