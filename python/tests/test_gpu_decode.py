"""mobagen.torch.decode on a GPU: a prompt appended to a paged cache and its last tokens decoded
one by one give the forward's rows (the same selection up to rare score ties, o and LSE within
bf16 rounding); device-side errors surface through PagedKVCache.check()."""
import unittest

import support
from support import torch

if torch is not None:
    import mobagen.torch as mt
    from mobagen.torch.decode import PagedKVCache, append, decode, truncate
    from mobagen.errors import ArgumentError
    from mobagen.errors import MobagenError


@support.needs_gpu
class Decode(unittest.TestCase):
    def test_decode_matches_forward(self):
        g = torch.Generator(device="cuda").manual_seed(7)
        hq, hkv, d, B, k, L, n = 8, 2, 128, 64, 4, 700, 5
        q = torch.randn(L, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
        kk = torch.randn(L, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(L, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        cu = torch.tensor([0, L], dtype=torch.int32, device="cuda")
        with torch.no_grad():
            out, lse, sel = mt.moba_attn_varlen(q, kk, v, cu, cu, L, L, block_size=B, top_k=k,
                                                return_lse=True, return_selection=True)
        page = 16
        cache = PagedKVCache.allocate(batch=1, n_pages=64, page_size=page, max_pages=48, hkv=hkv, head_dim=d,
                                      block_size=B, top_k=k, gqa_group=hq // hkv)
        cache.page_table.copy_(torch.randperm(64, generator=torch.Generator().manual_seed(1))[:48]
                               .to(torch.int32).view(1, 48))
        append(cache, kk[:L - n], v[:L - n], torch.tensor([0, L - n], dtype=torch.int32, device="cuda"), L - n)
        one = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
        swaps = 0
        for t in range(L - n, L):
            append(cache, kk[t:t + 1], v[t:t + 1], one, 1)
            o, l, s = decode(cache, q[t:t + 1], one, max_q_len=1, max_seqlen=L, return_selection=True)
            same = (s[0] == sel[t]).all(dim=-1)
            swaps += int((~same).sum())
            err = ((o[0] - out[t]).float().norm(dim=-1) / out[t].float().norm(dim=-1))[same]
            self.assertLess(float(err.max()), 2e-2)
            self.assertLess(float((l[0] - lse[t]).abs()[same].max()), 1e-3)
        self.assertLessEqual(swaps, 2)
        self.assertEqual(int(cache.seq_lens[0]), L)
        cache.check()

    def test_cuda_graph_replay_matches_eager(self):
        # A decode step (append one token, decode it) captured once and replayed: the cache's
        # lengths live on the device, so every replay appends at the next position; only the
        # host bound max_seqlen is baked in. A second cache stepped eagerly gives the reference.
        g = torch.Generator(device="cuda").manual_seed(11)
        hq, hkv, d, B, k, prompt, steps = 8, 2, 128, 32, 4, 300, 6
        total = prompt + steps + 1
        kk = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        q = torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
        w = 0.5 * torch.randn(hkv, 3, d, device="cuda", dtype=torch.bfloat16, generator=g)
        caches = []
        for _ in range(2):
            c = PagedKVCache.allocate(batch=1, n_pages=32, page_size=16, max_pages=32, hkv=hkv, head_dim=d,
                                      block_size=B, top_k=k, gqa_group=hq // hkv, conv_width=3)
            c.page_table.copy_(torch.arange(32, dtype=torch.int32, device="cuda").view(1, 32))
            append(c, kk[:prompt], v[:prompt], torch.tensor([0, prompt], dtype=torch.int32, device="cuda"),
                   prompt, conv_weight=w)
            caches.append(c)
        graphed, eager = caches
        one = torch.tensor([0, 1], dtype=torch.int32, device="cuda")
        k_in, v_in, q_in = kk[prompt:prompt + 1].clone(), v[prompt:prompt + 1].clone(), q[prompt:prompt + 1].clone()

        def step(cache):
            append(cache, k_in, v_in, one, 1, conv_weight=w)
            return decode(cache, q_in, one, max_q_len=1, max_seqlen=total)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):   # warm-up outside capture: builds and loads the decode kernels
            step(graphed)
        torch.cuda.current_stream().wait_stream(side)
        step(eager)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            o_graph, l_graph = step(graphed)
        for t in range(prompt + 1, prompt + 1 + steps):
            k_in.copy_(kk[t:t + 1])
            v_in.copy_(v[t:t + 1])
            q_in.copy_(q[t:t + 1])
            graph.replay()
            o_ref, l_ref = step(eager)
            torch.cuda.synchronize()
            err = float(((o_graph - o_ref).float().norm() / o_ref.float().norm()))
            self.assertLess(err, 1e-3, "step %d" % t)
            self.assertLess(float((l_graph - l_ref).abs().max()), 1e-4)
        self.assertEqual(int(graphed.seq_lens[0]), prompt + 1 + steps)
        self.assertEqual(int(eager.seq_lens[0]), prompt + 1 + steps)
        graphed.check()

    def test_truncate_equals_never_appended(self):
        # Speculative steps on one cache: real tokens plus drafts appended and decoded, then the
        # drafts (and sometimes real tokens, across blocks) truncated, by counts or by lengths;
        # then the same tokens in one prefill into a second cache. The caches are equal bit for
        # bit (the cut block's sum is recomputed in the appends' order) and decode the same.
        g = torch.Generator(device="cuda").manual_seed(5)
        gen = torch.Generator().manual_seed(5)
        batch, hq, hkv, d, B, k, W = 3, 8, 2, 64, 16, 4, 3
        lens = [90, 41, 0]
        total = sum(lens) + 64
        kk = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(total, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        w = 0.5 * torch.randn(hkv, W, d, device="cuda", dtype=torch.bfloat16, generator=g)
        starts = [0, lens[0], lens[0] + lens[1]]

        def new_cache():
            c = PagedKVCache.allocate(batch=batch, n_pages=3 * 8, page_size=16, max_pages=8, hkv=hkv, head_dim=d,
                                      block_size=B, top_k=k, gqa_group=hq // hkv, conv_width=W)
            c.page_table.copy_(torch.randperm(24, generator=gen).to(torch.int32).view(batch, 8))
            c.k_pages.fill_(float("nan"))
            c.centroid_sum.fill_(float("nan"))
            return c

        spec = new_cache()
        held = [0] * batch
        drafts = total - 64
        for step in range(14):
            keep = [min(int(torch.randint(0, 3, (1,), generator=gen)), lens[b] - held[b]) for b in range(batch)]
            junk = [int(torch.randint(0, 4 - keep[b], (1,), generator=gen)) if lens[b] else 0 for b in range(batch)]
            rows_k, rows_v, cu = [], [], [0]
            for b in range(batch):
                rows_k.append(kk[starts[b] + held[b]:starts[b] + held[b] + keep[b]])
                rows_v.append(v[starts[b] + held[b]:starts[b] + held[b] + keep[b]])
                rows_k.append(kk[drafts:drafts + junk[b]])
                rows_v.append(v[drafts:drafts + junk[b]])
                drafts += junk[b]
                cu.append(cu[-1] + keep[b] + junk[b])
            cu_t = torch.tensor(cu, dtype=torch.int32, device="cuda")
            append(spec, torch.cat(rows_k), torch.cat(rows_v), cu_t, 4, conv_weight=w)
            q = torch.randn(cu[-1], hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
            decode(spec, q, cu_t, max_q_len=4, max_seqlen=128)
            back = [0] * batch
            if step in (3, 7):
                back = [min(held[b] + keep[b], 2 * B + 3) for b in range(batch)]   # across blocks
            if step == 5:
                back = [held[b] + keep[b] for b in range(batch)]                    # to zero
            drop = [junk[b] + back[b] for b in range(batch)]
            held = [held[b] + keep[b] - back[b] for b in range(batch)]
            if step % 2:
                truncate(spec, drop=torch.tensor(drop, dtype=torch.int32, device="cuda"))
            else:
                truncate(spec, new_lens=torch.tensor(held, dtype=torch.int32, device="cuda"))
            self.assertEqual(spec.seq_lens.tolist(), held)
        spec.check()
        plain = new_cache()
        plain.page_table.copy_(spec.page_table)
        cu = torch.tensor([0, held[0], held[0] + held[1], sum(held)], dtype=torch.int32, device="cuda")
        append(plain, torch.cat([kk[starts[b]:starts[b] + held[b]] for b in range(batch)]),
               torch.cat([v[starts[b]:starts[b] + held[b]] for b in range(batch)]), cu, max(held), conv_weight=w)
        self.assertGreater(sum(held), 0)
        for b in range(batch):
            for j in range(-(-held[b] // B)):
                self.assertTrue(torch.equal(spec.centroid_sum[b, j], plain.centroid_sum[b, j]), (b, j))
        one = torch.tensor([0, 1, 2, 2], dtype=torch.int32, device="cuda")
        x = torch.randn(2, hkv, d, device="cuda", dtype=torch.bfloat16, generator=g)
        q = torch.randn(2, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
        outs = []
        for c in (spec, plain):
            append(c, x, x, one, 1, conv_weight=w)
            outs.append(decode(c, q, one, max_q_len=1, max_seqlen=128))
        self.assertTrue(torch.equal(outs[0][0], outs[1][0]))
        self.assertTrue(torch.equal(outs[0][1], outs[1][1]))
        # more than the length: flagged, nothing changes
        before = spec.seq_lens.clone()
        truncate(spec, drop=before + 1)
        with self.assertRaises(MobagenError) as e:
            spec.check()
        self.assertIn("truncation", str(e.exception))
        self.assertTrue(torch.equal(spec.seq_lens, before))
        with self.assertRaises(ArgumentError):
            truncate(spec)
        with self.assertRaises(ArgumentError):
            truncate(spec, drop=before.to(torch.int64))

    def test_bad_page_is_reported(self):
        cache = PagedKVCache.allocate(batch=1, n_pages=4, page_size=16, max_pages=4, hkv=1, head_dim=64,
                                      block_size=16, top_k=2)
        cache.page_table.fill_(9)   # outside the pool of 4 pages
        x = torch.randn(3, 1, 64, device="cuda", dtype=torch.bfloat16)
        append(cache, x, x, torch.tensor([0, 3], dtype=torch.int32, device="cuda"), 3)
        with self.assertRaises(MobagenError) as e:
            cache.check()
        self.assertIn("page table", str(e.exception))


if __name__ == "__main__":
    unittest.main()
