"""Weight layouts tuned for inference on the CPU (values unchanged)."""

import torch


def decode_layout(model):
    """Store each wide weight matrix column-major (a free, value-preserving change) for fast CPU decoding.

    At batch 1 every step is a matrix-vector product per weight, limited by how fast memory streams the
    weights. CPU BLAS streams a matrix fastest along its longer contiguous rows: for an ``nn.Linear`` with
    more outputs than inputs (the fused q/k/v, the FFN up projection, and the head, which for a tied model
    is the token embedding) that means the transpose of PyTorch's (out, in) layout, which makes GPT-2
    small's decode step faster (bench/README.md, "Figures behind the code's comments"). Values, shapes, parameter
    identity and weight tying are unchanged (``load_state_dict`` keeps the layout), so saving and
    training still work, training perhaps slower. No-op off the CPU. Returns ``model``.
    """
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and w.device.type == "cpu" and \
                    module.out_features > module.in_features and w.stride(0) != 1:
                w.data = w.data.t().contiguous().t()            # same (out, in) tensor, column-major
    return model
