"""SHA-256 of what the fast sampler draws, for every architecture x head x gray/RGB x conditional: a refactor check.

A change to the models or the incremental forms that keeps behaviour prints the same table before and after
(run it on both commits, on one machine).  Each case is a small seeded random model in eval mode (BatchNorm with
trained-looking statistics); the table gives the hash of its state dict's values (in registration order, so that a
renamed submodule still hashes the same), of 4 images sampled from seeded noise, and of 2 x 2 completions of
3 kept rows.

    python benchmarks/sampler_hashes.py
"""

from __future__ import annotations

import hashlib
import itertools

import torch

from pixelnet.config import UNREAD
from pixelnet.model.build import ARCHITECTURES, build_model
from pixelnet.model.config import ModelConfig
from pixelnet.sampling import sample_fast, sampling_noise
from pixelnet.sampling.fast import complete

SIZES = {"pixelcnn": {"blocks": 2, "first_kernel": 5, "kernel": 3, "norm": "batch"},
         "gated": {"blocks": 2, "first_kernel": 5, "kernel": 3, "norm": "batch"},
         "pixelcnnpp": {"resnet_layers": 1, "resolutions": 3, "norm": "weight"}}


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def case_model(arch: str, head: str, channels: int, conditional: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    mixtures = {"mixtures": 3} if head == "logistic_mixture" else {}
    config = ModelConfig.from_mapping(UNREAD | dict(  # the keys this model does not read keep their values
        arch=arch, channels=12, head=head, conditional=conditional, **SIZES[arch], **mixtures,
        n_classes=3 if conditional else 0, levels=256, image_channels=channels, height=6, width=7))
    model = build_model(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 1.0)
    return model.eval()


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'case':<44} {'state dict':<17} {'samples':<17} {'completions':<17}")
    everything = hashlib.sha256()
    for arch, head, channels, conditional in itertools.product(ARCHITECTURES, ("softmax", "logistic_mixture"),
                                                               (1, 3), (False, True)):
        model = case_model(arch, head, channels, conditional)
        cfg = model.config
        labels = torch.arange(4) % 3 if conditional else None
        samples = sample_fast(model, sampling_noise(4, channels, cfg.height, cfg.width, seed=3), labels=labels)
        given = samples[:2].long()
        done = complete(model, given, rows=3, completions=2, seed=4, temperature=0.8,
                        labels=labels[:2] if conditional else None)
        row = (digest(*model.state_dict().values()), digest(samples), digest(done))
        everything.update("".join(row).encode())
        name = f"{arch}-{head}-{'rgb' if channels == 3 else 'gray'}-{'cond' if conditional else 'uncond'}"
        print(f"{name:<44} {row[0]:<17} {row[1]:<17} {row[2]:<17}")
    print(f"all: {everything.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
