"""CLIP and SigLIP losses computed in tiles, forward and backward, never holding the B x B logit matrix.

Each tile of logits (rows x columns of at most `chunk`) is computed, used and dropped. The softmax loss keeps an
online log-sum-exp per row (and, in one process, per column: there the text->image logits are the transpose of
the image->text ones, so one tile serves both directions). The backward pass recomputes each tile from the
embeddings. Memory is O(B x D + chunk^2) instead of O(B^2); the result equals `losses.clip_loss` /
`losses.siglip_loss` up to float rounding, gradients included (w.r.t. both embedding sets, scale and bias).

Arguments follow `losses`: local embeddings, optionally the embeddings of all processes (gathered with
gradient) and this process's row offset among them.
"""

from __future__ import annotations

import torch


def _tiles(n: int, chunk: int):
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def _targets(g: torch.Tensor, r0: int, r1: int, c0: int, c1: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices within tile (r0:r1, c0:c1) of the positive pairs (row i, column i + offset)."""
    rr = torch.arange(r0, r1, device=g.device)
    inside = (rr + offset >= c0) & (rr + offset < c1)
    return rr[inside] - r0, rr[inside] + offset - c0


class _SoftmaxDirections(torch.autograd.Function):
    """Cross-entropy of queries q (b, D) over keys k (n, D), logits scale * q @ k.T, targets offset + i, label
    smoothing eps, averaged over queries; for two (q, k) directions, halved. With `shared` (one process) the
    second direction is the first transposed (q2 is k1, k2 is q1), and each tile serves both."""

    @staticmethod
    def forward(ctx, q1, k1, q2, k2, scale, offset: int, eps: float, chunk: int, shared: bool):
        lses, sums = [], []
        pairs = [(q1, k1)] if shared else [(q1, k1), (q2, k2)]
        if shared:
            lses.append(torch.full((q1.shape[0],), float("-inf"), dtype=q1.dtype, device=q1.device))
            lses.append(torch.full((k1.shape[0],), float("-inf"), dtype=q1.dtype, device=q1.device))
        for d, (q, k) in enumerate(pairs):
            if not shared:
                lses.append(torch.full((q.shape[0],), float("-inf"), dtype=q.dtype, device=q.device))
            total = torch.zeros((), dtype=q.dtype, device=q.device)
            for r0, r1 in _tiles(q.shape[0], chunk):
                q_scaled = scale * q[r0:r1]
                for c0, c1 in _tiles(k.shape[0], chunk):
                    logits = q_scaled @ k[c0:c1].T  # (r, c): the only logits in memory
                    lses[d][r0:r1] = torch.logaddexp(lses[d][r0:r1], logits.logsumexp(dim=1))
                    if shared:
                        lses[1][c0:c1] = torch.logaddexp(lses[1][c0:c1], logits.logsumexp(dim=0))
                    total += logits.sum()
            sums.append(total)
        if shared:
            sums.append(sums[0])
        loss = 0
        for (q, k), lse, total in zip([(q1, k1), (q2, k2)], lses, sums):
            target = scale * (q * k[offset : offset + q.shape[0]]).sum(dim=1)
            loss = loss + (lse - (1 - eps) * target).mean() - eps * total / (q.shape[0] * k.shape[0])
        ctx.save_for_backward(q1, k1, q2, k2, scale, *lses)
        ctx.offset, ctx.eps, ctx.chunk, ctx.shared = offset, eps, chunk, shared
        return loss / 2

    @staticmethod
    def backward(ctx, grad_out):
        q1, k1, q2, k2, scale, lse1, lse2 = ctx.saved_tensors
        offset, eps, chunk, shared = ctx.offset, ctx.eps, ctx.chunk, ctx.shared
        g = {name: torch.zeros_like(t) for name, t in (("q1", q1), ("k1", k1), ("q2", q2), ("k2", k2))}
        g_scale = torch.zeros((), dtype=q1.dtype, device=q1.device)
        half = grad_out / 2

        directions = [("q1", "k1", q1, k1, lse1)] if shared else [("q1", "k1", q1, k1, lse1),
                                                                   ("q2", "k2", q2, k2, lse2)]
        for qn, kn, q, k, lse in directions:
            n_q, n_k = q.shape[0], k.shape[0]
            for r0, r1 in _tiles(n_q, chunk):
                q_scaled = scale * q[r0:r1]
                for c0, c1 in _tiles(n_k, chunk):
                    logits = q_scaled @ k[c0:c1].T  # (r, c), recomputed
                    # d loss / d logits = (softmax - smoothed one-hot) / queries, for each direction.
                    grad = (logits - lse[r0:r1, None]).exp_()
                    i, j = _targets(grad, r0, r1, c0, c1, offset)
                    if shared:  # the transposed direction (texts as queries): same tile, column-wise softmax
                        grad += logits.sub_(lse2[None, c0:c1]).exp_()
                        grad -= 2 * eps / n_k
                        grad[i, j] -= 2 * (1 - eps)
                    else:
                        grad -= eps / n_k
                        grad[i, j] -= 1 - eps
                    grad *= half / n_q
                    g_q_tile = grad @ k[c0:c1]  # (r, D)
                    g_scale += (q[r0:r1] * g_q_tile).sum()  # sum of grad * cosine, without the (r, c) product
                    g[qn][r0:r1] += scale * g_q_tile
                    g[kn][c0:c1] += scale * (grad.T @ q[r0:r1])
        return g["q1"], g["k1"], g["q2"], g["k2"], g_scale, None, None, None, None


def chunked_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                      all_image: torch.Tensor | None = None, all_text: torch.Tensor | None = None, offset: int = 0,
                      label_smoothing: float = 0.0, chunk: int = 4096) -> torch.Tensor:
    """`losses.clip_loss` in tiles of at most chunk x chunk logits."""
    if all_image is None and all_text is None:
        return _SoftmaxDirections.apply(image, text, text, image, logit_scale, 0, label_smoothing, chunk, True)
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    return _SoftmaxDirections.apply(image, all_text, text, all_image, logit_scale, offset, label_smoothing, chunk,
                                    False)


class _SiglipLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, cols, scale, bias, offset: int, chunk: int):
        b = rows.shape[0]
        total = torch.zeros((), dtype=rows.dtype, device=rows.device)
        for r0, r1 in _tiles(b, chunk):
            rows_scaled = scale * rows[r0:r1]
            for c0, c1 in _tiles(cols.shape[0], chunk):
                logits = torch.addmm(bias, rows_scaled, cols[c0:c1].T)
                total -= torch.nn.functional.softplus(logits).sum()  # log sigmoid(-x): every pair as a negative ...
        target = scale * (rows * cols[offset : offset + b]).sum(dim=1) + bias
        # ... then the positives corrected: log sigmoid(x) - log sigmoid(-x) = x.
        total += target.sum()
        ctx.save_for_backward(rows, cols, scale, bias)
        ctx.offset, ctx.chunk = offset, chunk
        return -total / b

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, scale, bias = ctx.saved_tensors
        offset, chunk = ctx.offset, ctx.chunk
        b = rows.shape[0]
        g_rows, g_cols = torch.zeros_like(rows), torch.zeros_like(cols)
        g_scale = torch.zeros((), dtype=rows.dtype, device=rows.device)
        g_bias = torch.zeros((), dtype=rows.dtype, device=rows.device)
        for r0, r1 in _tiles(b, chunk):
            rows_scaled = scale * rows[r0:r1]
            for c0, c1 in _tiles(cols.shape[0], chunk):
                grad = torch.addmm(bias, rows_scaled, cols[c0:c1].T).sigmoid_()  # a negative's
                i, j = _targets(grad, r0, r1, c0, c1, offset)
                grad[i, j] -= 1.0  # a positive: sigmoid(x) - 1
                grad *= grad_out / b
                g_rows_tile = grad @ cols[c0:c1]  # (r, D)
                g_scale += (rows[r0:r1] * g_rows_tile).sum()
                g_bias += grad.sum()
                g_rows[r0:r1] += scale * g_rows_tile
                g_cols[c0:c1] += scale * (grad.T @ rows[r0:r1])
        return g_rows, g_cols, g_scale, g_bias, None, None


def chunked_siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                        logit_bias: torch.Tensor, all_text: torch.Tensor | None = None, offset: int = 0,
                        chunk: int = 4096) -> torch.Tensor:
    """`losses.siglip_loss` in tiles of at most chunk x chunk logits."""
    all_text = text if all_text is None else all_text
    return _SiglipLossFn.apply(image, all_text, logit_scale, logit_bias, offset, chunk)
