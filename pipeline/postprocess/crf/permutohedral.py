"""Permutohedral lattice Gaussian filtering written with PyTorch tensor ops.

This mirrors ``permutohedral.cpp`` of Krähenbühl's dense CRF code (the code behind ``pydensecrf``) step by step, so
that filtering a signal gives the same result up to float rounding:

* features are elevated onto the hyperplane ``H_d`` with the same scale factors (``sqrt(2/3) * (d+1) /
  sqrt((i+1)(i+2))``), in float32 and in the same order of operations;
* the enclosing simplex is found by the same rounding to the nearest remainder-0 point, the same ranking rule
  (ties go to the later coordinate) and the same wrap-around; barycentric weights are computed identically;
* splatting accumulates ``barycentric * value`` on the ``d+1`` lattice vertices of each point;
* blurring runs along the ``d+1`` lattice directions in order with the ``[0.5, 1, 0.5]`` stencil, missing neighbours
  counting as zero;
* slicing interpolates back with the barycentric weights and the magic constant ``alpha = 1 / (1 + 2^-d)``.

Instead of a hash table, lattice vertex keys (``d`` integer coordinates) are packed into one int64 with a mixed radix
whose ranges come from interval bounds on the elevated features, deduplicated with :func:`torch.unique` and looked up
with :func:`torch.searchsorted`; the neighbour of a vertex along a lattice direction is then a constant offset of its
packed key. Points are processed in chunks so that peak memory stays at a small multiple of the stored lattice
(``int32`` vertex offsets and ``float32`` barycentric weights, ``d+1`` per point).
"""

from __future__ import annotations

import math

import torch

_CHUNK = 1 << 18


class PermutohedralLattice:
    """A permutohedral lattice built over fixed features, reusable to filter many signals.

    Args:
        features: ``(d, N)`` float tensor of already scaled features (position / sigma, ...; one row per feature,
            as pydensecrf takes them), on the device to compute on. It is not kept.
        chunk_size: points processed at once while building the lattice and filtering (bounds temporary memory).
        cache_limit: while building, the int64 vertex keys of all points are kept between the two passes when they
            take at most this many bytes; above it they are recomputed (slower, less memory).
    """

    def __init__(self, features: torch.Tensor, chunk_size: int = _CHUNK, cache_limit: int = 192 * 2**20,
                 dense_table_limit: int = 2**25) -> None:
        if features.ndim != 2:
            raise ValueError(f"features must be (d, N), got shape {tuple(features.shape)}")
        d, n = features.shape
        if n < 1 or d < 1:
            raise ValueError(f"features must have at least one point and one dimension, got {tuple(features.shape)}")
        self.n, self.d = int(n), int(d)
        self.device = features.device
        self.chunk = int(chunk_size)
        d1 = d + 1
        # Scale factors exactly as the C++ code: inv_std_dev is a float, scale_factor = (1/sqrt(double)) * inv.
        inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * d1, dtype=torch.float32))
        self._scale = [
            float(torch.tensor(1.0 / math.sqrt(float((i + 2) * (i + 1))) * inv_std_dev, dtype=torch.float32))
            for i in range(d)
        ]
        self._down = float(torch.tensor(1.0 / d1, dtype=torch.float32))
        self._up = float(d1)
        self.alpha = float(torch.tensor(1.0 / (1.0 + 2.0 ** (-d)), dtype=torch.float32))

        feats = features.to(torch.float32)
        self._setup_packing(feats)
        self.offset_t = torch.empty((d1, n), dtype=torch.int32, device=self.device)
        self.bary_t = torch.empty((d1, n), dtype=torch.float32, device=self.device)
        if self._total <= dense_table_limit:
            self._build_dense(feats)
        else:
            self._build_sorted(feats, cache=n * d1 * 8 <= cache_limit)
        del feats

    def _build_dense(self, feats: torch.Tensor) -> None:
        """One pass with a dense ``packed key -> vertex row`` table (used when the key range is small).

        Vertices are numbered in order of first appearance, like the hash table of the C++ code.
        """
        table = torch.zeros(self._total, dtype=torch.int32, device=self.device)
        by_id: list[torch.Tensor] = []
        m = 0
        for s in range(0, self.n, self.chunk):
            e = min(self.n, s + self.chunk)
            keys, bary = self._simplex(feats[:, s:e], want_bary=True)
            self.bary_t[:, s:e] = bary
            del bary
            rows = table[keys]
            new = keys[rows == 0]
            if new.numel():
                u = torch.unique(new)
                table[u] = torch.arange(m + 1, m + 1 + u.numel(), dtype=torch.int32, device=self.device)
                m += int(u.numel())
                by_id.append(u)
                rows = table[keys]
            self.offset_t[:, s:e] = rows
            del keys, rows, new
        self.m = m
        keys = torch.cat(by_id)
        del by_id
        # Blur neighbours along each of the d+1 lattice directions (row, 0 when the vertex does not exist).
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.neighbours: list[tuple[torch.Tensor, torch.Tensor]] = []
        for j in range(self.d + 1):
            delta = self._direction_delta(j)
            n1 = torch.cat([zero, table[keys + delta].to(torch.int64)])
            n2 = torch.cat([zero, table[keys - delta].to(torch.int64)])
            self.neighbours.append((n1, n2))
        del table, keys

    def _build_sorted(self, feats: torch.Tensor, cache: bool) -> None:
        """Two passes with sorted unique keys and binary search (used when the key range is too large for a table).

        Args:
            feats: ``(d, N)`` features.
            cache: keep every point's int64 keys between the passes instead of recomputing them.
        """
        n, d1 = self.n, self.d + 1
        # Pass 1: the unique vertex keys (and, with ``cache``, every point's keys and weights).
        cached: list[torch.Tensor] = []
        uniq: torch.Tensor | None = None
        pending: list[torch.Tensor] = []
        pending_n = 0
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            keys, bary = self._simplex(feats[:, s:e], want_bary=cache)
            if cache:
                cached.append(keys)
                self.bary_t[:, s:e] = bary
            u = torch.unique(keys)
            del keys, bary
            pending.append(u)
            pending_n += u.numel()
            if pending_n > 4 * self.chunk * d1:
                if uniq is not None:
                    pending.append(uniq)
                uniq = torch.unique(torch.cat(pending))
                pending, pending_n = [], 0
        if pending:
            if uniq is not None:
                pending.append(uniq)
            uniq = torch.unique(torch.cat(pending))
        assert uniq is not None
        del pending
        self.keys = uniq  # sorted, int64
        self.m = int(uniq.numel())

        # Pass 2: per point, the vertex rows (index + 1: row 0 is the zero "missing" row).
        for i, s in enumerate(range(0, n, self.chunk)):
            e = min(n, s + self.chunk)
            if cache:
                keys, cached[i] = cached[i], torch.empty(0)
            else:
                keys, bary = self._simplex(feats[:, s:e], want_bary=True)
                self.bary_t[:, s:e] = bary
                del bary
            idx = torch.searchsorted(self.keys, keys)
            idx += 1
            self.offset_t[:, s:e] = idx
            del keys, idx
        del cached

        # Blur neighbours along each of the d+1 lattice directions (index + 1, 0 when the vertex does not exist).
        self.neighbours = []
        for j in range(d1):
            delta = self._direction_delta(j)
            self.neighbours.append((self._lookup(self.keys + delta), self._lookup(self.keys - delta)))
        del self.keys

    # ------------------------------------------------------------------ construction helpers
    def _setup_packing(self, feats: torch.Tensor) -> None:
        """Choose a mixed-radix packing of the d key coordinates from interval bounds of the elevated features."""
        d = self.d
        scale = torch.tensor(self._scale, dtype=torch.float64)
        lo_f = feats.amin(dim=1).double().cpu() * scale
        hi_f = feats.amax(dim=1).double().cpu() * scale
        # cf_i in [lo_f[i], hi_f[i]]; elevated[j] = sum_{i>=j} cf_i - j * cf_{j-1} (j >= 1), elevated[0] = sum cf_i.
        lows, highs = [], []
        for j in range(d):  # the key uses coordinates 0..d-1
            if j == 0:
                lo, hi = float(lo_f.sum()), float(hi_f.sum())
            else:
                lo = float(lo_f[j:].sum()) - j * float(hi_f[j - 1])
                hi = float(hi_f[j:].sum()) - j * float(lo_f[j - 1])
            lows.append(lo)
            highs.append(hi)
        margin = 3 * (d + 1) + 2  # rounding + wrap-around + simplex vertices + blur neighbours
        self._kmin = [math.floor(v) - margin for v in lows]
        radix = [math.ceil(h) + margin - kmin + 1 for h, kmin in zip(highs, self._kmin, strict=True)]
        total = 1
        strides = []
        for r in reversed(radix):
            strides.append(total)
            total *= r
        strides.reverse()
        if total >= 2**62:
            raise ValueError(
                "CRF features span too many lattice cells to index (the feature range divided by the kernel width "
                "is too large); use larger kernel widths or crop the volume"
            )
        self._strides = strides
        self._total = total

    def _direction_delta(self, j: int) -> int:
        """Packed-key offset of the neighbour along lattice direction ``j`` (key - 1 everywhere, + d at ``j``)."""
        delta = -sum(self._strides)
        if j < self.d:
            delta += (self.d + 1) * self._strides[j]
        return delta

    def _lookup(self, query: torch.Tensor) -> torch.Tensor:
        """Lattice rows (index + 1, 0 where absent; int64) of packed keys, with a leading 0 for the zero row."""
        idx = torch.searchsorted(self.keys, query)
        idx_c = idx.clamp(max=self.m - 1)
        found = self.keys[idx_c] == query
        out = torch.where(found, idx_c + 1, torch.zeros_like(idx_c))
        return torch.cat([torch.zeros(1, dtype=out.dtype, device=out.device), out])  # row 0 maps to the zero row

    def _simplex(self, f: torch.Tensor, want_bary: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Packed vertex keys ``(d+1, n)`` int64 and barycentric weights ``(d+1, n)`` of a chunk ``(d, n)``."""
        d, d1 = self.d, self.d + 1
        n = f.shape[1]
        dev = f.device
        # Elevate (float32, same order as the C++ loop).
        elevated = torch.empty((d1, n), dtype=torch.float32, device=dev)
        sm = torch.zeros(n, dtype=torch.float32, device=dev)
        for j in range(d, 0, -1):
            cf = f[j - 1] * self._scale[j - 1]
            elevated[j] = sm - float(j) * cf
            sm += cf
        elevated[0] = sm
        del sm, cf
        # Closest remainder-0 point: (d+1) * round-half-down(elevated / (d+1)), like the C++ code.
        v = elevated * self._down
        up = torch.ceil(v)
        up *= self._up
        down = torch.floor(v, out=v)
        down *= self._up
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        del up, down, v
        diff = elevated - rem0
        rem0_i = rem0.to(torch.int64)
        del rem0
        ssum = torch.div(rem0_i, d1, rounding_mode="floor").sum(dim=0)  # exact: rem0 is a multiple of d+1
        # Rank: for i < j, (e_i - r_i) < (e_j - r_j) -> rank_i++, else rank_j++ (ties go to the later one).
        rank = ssum.expand(d1, n).clone()  # plus the sum, to bring the point back onto the plane
        for i in range(d):
            for j in range(i + 1, d1):
                lt = diff[i] < diff[j]
                rank[i] += lt
                rank[j] += ~lt
        del diff
        adj = (rank < 0).to(torch.int64) - (rank > d).to(torch.int64)
        adj *= d1
        rank += adj
        rem0_i += adj
        del adj
        bary = None
        if want_bary:
            vb = elevated - rem0_i.to(torch.float32)
            vb *= self._down
            b = torch.zeros((d + 2, n), dtype=torch.float32, device=dev)
            b.scatter_add_(0, d - rank, vb)
            b.scatter_add_(0, d - rank + 1, vb.neg_())
            b[0] = (b[0].double() + (1.0 + b[d1].double())).to(torch.float32)
            bary = b[:d1]
            del vb
        del elevated
        # Vertex keys: key_i = rem0_i + r - (d+1) * (rank_i > d - r) for i < d, remainder r = 0..d, packed.
        base = torch.zeros(n, dtype=torch.int64, device=dev)
        for i in range(d):
            base += (rem0_i[i] - self._kmin[i]) * self._strides[i]
        stride_sum = sum(self._strides)
        keys = torch.empty((d1, n), dtype=torch.int64, device=dev)
        for r in range(d1):
            k = base + r * stride_sum
            for i in range(d):
                k -= (rank[i] > d - r).to(torch.int64) * (d1 * self._strides[i])
            keys[r] = k
        return keys, bary

    # ------------------------------------------------------------------ filtering
    def compute(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter ``values`` over the lattice (splat, blur, slice).

        Args:
            values: ``(V, N)`` signal (one row per channel) or ``(N,)``.

        Returns:
            Filtered float32 tensor of the same shape.
        """
        if values.ndim == 1:
            return self.compute(values[None])[0]
        vs, n = values.shape
        if n != self.n:
            raise ValueError(f"values have {n} points but the lattice was built on {self.n}")
        values = values.to(torch.float32)
        lat = torch.zeros((vs, self.m + 1), dtype=torch.float32, device=self.device)
        d1 = self.d + 1
        # Splat: lattice[:, vertex] += bary * value (int64 indices: much faster than int32 in scatter on CPU).
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            vals = values[:, s:e]
            for j in range(d1):
                idx = self.offset_t[j, s:e].to(torch.int64)
                lat.scatter_add_(1, idx.expand(vs, e - s), vals * self.bary_t[j, s:e])
        # Blur along each lattice direction in order: new = old + 0.5 * (n1 + n2), missing neighbours are zero.
        for n1, n2 in self.neighbours:
            new = lat.index_select(1, n1)
            new += lat.index_select(1, n2)
            new *= 0.5
            new += lat
            lat = new
        # Slice with the barycentric weights.
        out = torch.zeros((vs, n), dtype=torch.float32, device=self.device)
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            acc = out[:, s:e]
            for j in range(d1):
                idx = self.offset_t[j, s:e].to(torch.int64)
                acc += lat.index_select(1, idx) * self.bary_t[j, s:e]
        out *= self.alpha
        return out
