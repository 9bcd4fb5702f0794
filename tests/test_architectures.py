"""Every post-training method on the other block layouts: Gemma-3's (norms after the attention and the MLP as
well as before them, (1 + weight) norm gains, sliding-window blocks beside global ones, GeLU gates) and Qwen2's
(biases on q/k/v, an untied LM head). Each must
quantize every decoder Linear and leave a model that still computes finite logits near the original's."""

import pytest
import torch

from llmq_core.methods import METHODS, QuantSpec
from llmq_core.models import decoder_linears

PTQ_METHODS = [name for name, method in METHODS.items() if method.track == "ptq" and name != "fp16"]


def spec_for(name: str) -> QuantSpec:
    """Each method's lowest supported setting of 4 bits or more (the average-bits methods: their only ones)."""
    method = METHODS[name]
    wbits = min((bits for bits in method.wbits if bits >= 4), default=max(method.wbits))
    abits = 8 if 16 not in method.abits else 16
    return QuantSpec(wbits, abits=abits, group_size=32 if method.grouped else None, options=(
        {"steps": 2} if name == "dbllm" else {}))


@pytest.mark.parametrize("architecture", ["tiny_gemma3", "tiny_qwen2"])
@pytest.mark.parametrize("name", PTQ_METHODS)
def test_every_method_quantizes_other_block_layouts(architecture, name, request):
    model = request.getfixturevalue(architecture)
    windows = torch.randint(0, 128, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(windows).logits
    before = {path: linear.weight.detach().clone() for path, linear in decoder_linears(model).items()}
    METHODS[name].quantize(model, spec_for(name), windows)
    after = decoder_linears(model)
    assert set(after) == set(before)
    changed = [path for path in before if not torch.equal(after[path].weight, before[path])]
    assert len(changed) == len(before), f"{name} left {set(before) - set(changed)} as they were"
    with torch.no_grad():
        logits = model(windows).logits
    assert torch.isfinite(logits).all()
    # a quantized model still predicts like the original: its logits correlate with the reference's
    correlation = torch.corrcoef(torch.stack([logits.flatten(), reference.flatten()]))[0, 1]
    assert correlation > 0.5, f"{name}: logits correlate {float(correlation):.2f} with the original's"
