"""Language models: token-id calibration, perplexity and lm-eval evaluations."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.calibration import STYLES, get_calibration
from ..evaluations import ConfigError, check_choice, positive_int
from ..models.loading import LOADS, load_model
from .base import Task


class TextTask(Task):
    kind = "text"
    loads = LOADS

    def check_data(self, data: Mapping[str, Any]) -> None:
        if data.get("kind", "tokens") != "tokens":
            raise ConfigError(f"data.kind={data.get('kind')!r}: a language model calibrates on text; use a data "
                              "config without kind: images (data=ci, data=local_wiki, data=c4)")
        positive_int("data.seqlen", data.get("seqlen"))
        check_choice("data.style", data.get("style"), STYLES)

    def load(self, mcfg: Mapping[str, Any], load: str = "eager") -> tuple[nn.Module, Any]:
        return load_model(mcfg["name"], dtype=mcfg.get("dtype", "float32"), load=load)

    def calibrate(self, tokenizer: Any, dcfg: Mapping[str, Any], data_root: str | None,
                  mcfg: Mapping[str, Any]) -> torch.Tensor:
        """(nsamples, seqlen) token ids; each starts with BOS when ``model.bos_per_window``."""
        return get_calibration(tokenizer, source=dcfg["source"], nsamples=dcfg["nsamples"], seqlen=dcfg["seqlen"],
                               style=dcfg["style"], seed=dcfg.get("seed"), data_root=data_root,
                               bos_per_window=bool(mcfg.get("bos_per_window", False)))
