"""Pinned partition counts of every zoo model, per exporter.

Losing prunability anywhere (a rule that turns into a barrier, a missed Add branch that splits a
group) changes these numbers, where `assert result.prunable` would still pass.
"""

from __future__ import annotations

# A rule change that changes these counts must update this table on purpose, saying so.
GROUP_COUNTS: dict[tuple[str, str], dict[str, int]] = {
    ("demonet", "legacy"): {"groups": 5, "prunable": 4, "channels": 586, "prunable_channels": 576},
    ("demonet", "dynamo"): {"groups": 5, "prunable": 4, "channels": 586, "prunable_channels": 576},
    ("mlpnet", "legacy"): {"groups": 3, "prunable": 2, "channels": 70, "prunable_channels": 60},
    ("mlpnet", "dynamo"): {"groups": 3, "prunable": 2, "channels": 70, "prunable_channels": 60},
    ("vgg_bn", "legacy"): {"groups": 5, "prunable": 4, "channels": 130, "prunable_channels": 120},
    ("vgg_bn", "dynamo"): {"groups": 5, "prunable": 4, "channels": 130, "prunable_channels": 120},
    ("resnet_basic", "legacy"): {"groups": 7, "prunable": 6, "channels": 82,
                                 "prunable_channels": 72},
    ("resnet_basic", "dynamo"): {"groups": 7, "prunable": 6, "channels": 82,
                                 "prunable_channels": 72},
    ("resnet_bottleneck", "legacy"): {"groups": 12, "prunable": 11, "channels": 218,
                                      "prunable_channels": 208},
    ("resnet_bottleneck", "dynamo"): {"groups": 12, "prunable": 11, "channels": 218,
                                      "prunable_channels": 208},
    ("resnet50", "legacy"): {"groups": 38, "prunable": 37, "channels": 12456,
                             "prunable_channels": 11456},
    ("resnet50", "dynamo"): {"groups": 38, "prunable": 37, "channels": 12456,
                             "prunable_channels": 11456},
    ("densenet", "legacy"): {"groups": 13, "prunable": 12, "channels": 246,
                             "prunable_channels": 236},
    ("densenet", "dynamo"): {"groups": 13, "prunable": 12, "channels": 246,
                             "prunable_channels": 236},
    ("mobilenetv2", "legacy"): {"groups": 10, "prunable": 9, "channels": 394,
                                "prunable_channels": 384},
    ("mobilenetv2", "dynamo"): {"groups": 10, "prunable": 9, "channels": 394,
                                "prunable_channels": 384},
    ("se_net", "legacy"): {"groups": 5, "prunable": 4, "channels": 98, "prunable_channels": 88},
    ("se_net", "dynamo"): {"groups": 5, "prunable": 4, "channels": 98, "prunable_channels": 88},
    ("convnext", "legacy"): {"groups": 4, "prunable": 2, "channels": 298,
                             "prunable_channels": 256},
    ("convnext", "dynamo"): {"groups": 4, "prunable": 2, "channels": 298,
                             "prunable_channels": 256},
    ("stacked_unets", "legacy"): {"groups": 26, "prunable": 25, "channels": 373,
                                  "prunable_channels": 372},
    ("stacked_unets", "dynamo"): {"groups": 26, "prunable": 25, "channels": 373,
                                  "prunable_channels": 372},
    ("carn", "legacy"): {"groups": 9, "prunable": 8, "channels": 131, "prunable_channels": 128},
    ("carn", "dynamo"): {"groups": 9, "prunable": 8, "channels": 131, "prunable_channels": 128},
    ("vit", "legacy"): {"groups": 6, "prunable": 4, "channels": 178, "prunable_channels": 136},
    ("vit", "dynamo"): {"groups": 6, "prunable": 4, "channels": 178, "prunable_channels": 136},
}
