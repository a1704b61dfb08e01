//! The GEMM (`shaders/matmul.wgsl`): tiled, batched, f32 or 16-bit B, split over K and the
//! binding limit, with an accumulate mode.

use super::common::*;
#[allow(unused_imports)]
use super::*;
use crate::backend::gpu::{context, split, Uniform};
use crate::backend::Gemm;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The most K one matmul dispatch walks; a longer K goes in blocks that add into C.
/// llvmpipe (lavapipe) silently ends all loops of a shader invocation after 65,535
/// iterations in all, and a K tile costs up to ~50 of them (measured: K = 60,000 came
/// out wrong there, 20,000 right); elsewhere the extra dispatches cost nothing visible.
pub(super) const GEMM_MAX_K: usize = 16_384;

/// Tile configurations: (BM, BN, BK, TM, TN). Threads = (BM/TM) * (BN/TN) = 256.
pub(super) const TILES: [(u32, u32, u32, u32, u32); 3] =
    [(128, 128, 8, 8, 8), (64, 64, 16, 4, 4), (16, 64, 16, 1, 4)];

pub fn gemm(g: &Gemm, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = f32_out(&[g.batch, g.m, g.n])?;
    gemm_into(g, a, b, &out, false)?;
    Ok(out)
}

/// C += A B into `out`, a dense f32 (batch, m, n) from element 0: the GEMM's own
/// accumulate mode, so no product-sized temporary exists (a gradient summed over chunks).
pub fn gemm_acc(g: &Gemm, a: &Tensor, b: &Tensor, out: &Tensor) -> Result<()> {
    if out.dtype() != DType::F32
        || !out.is_contiguous()
        || out.layout().offset != 0
        || out.numel() != g.batch * g.m * g.n
    {
        return Err(Error::Gpu(
            "matmul accumulate: the output must be a dense f32 (batch, m, n)".into(),
        ));
    }
    gemm_into(g, a, b, out, true)
}

/// C = A B (`acc`: C += A B) into the dense `out`.
pub(super) fn gemm_into(g: &Gemm, a: &Tensor, b: &Tensor, out: &Tensor, acc: bool) -> Result<()> {
    require_f32("matmul", &[a])?;
    let ctx = context()?;
    // B's storage: f32, or 16-bit read natively (shader-f16) or unpacked from words.
    let (f32b, f16n, f16u, bf16) = match b.dtype() {
        DType::F32 => (1, 0, 0, 0),
        DType::F16 if ctx.use_f16() => (0, 1, 0, 0),
        DType::F16 => (0, 0, 1, 0),
        DType::BF16 => (0, 0, 0, 1),
        other => {
            return Err(Error::DTypeMismatch {
                op: "matmul",
                expected: DType::F32,
                got: other,
            })
        }
    };
    if g.m * g.n * g.batch * g.k == 0 {
        if g.m * g.n * g.batch > 0 && !acc {
            fill(out, 0.0)?;
        }
        return Ok(());
    }
    let storage = Storage16 {
        f32b,
        f16n,
        f16u,
        bf16,
    };
    let b_elt = if f32b == 1 { 4 } else { 2 };
    let limit = ctx.binding_limit();
    let (a_big, b_big, c_big) = (
        buf(a).size() > limit,
        buf(b).size() > limit,
        buf(out).size() > limit,
    );
    if !(a_big || b_big || c_big) && g.k <= GEMM_MAX_K {
        let blk = GemmBlock {
            m: g.m,
            n: g.n,
            k: g.k,
            batch: g.batch,
            a: (g.a.off, g.a.sb),
            b: (g.b.off, g.b.sb),
            c: (0, g.m * g.n),
            acc,
        };
        let binds = [(1, buf(a), None), (2, buf(b), None), (3, buf(out), None)];
        gemm_block(g, &storage, &blk, &binds)?;
        return Ok(());
    }
    // Split: blocks of (rows, columns, K) whose every big operand fits one window, one
    // batch at a time; the K blocks after the first add into C.
    let room = |elt: usize| (limit.saturating_sub(ctx.binding_align()) / elt as u64) as usize;
    let span = |n1: usize, s1: usize, n2: usize, s2: usize| (n1 - 1) * s1 + (n2 - 1) * s2 + 1;
    let halve = |x: &mut usize| *x = x.div_ceil(2);
    let (mut mb, mut nb, mut kb) = (g.m, g.n, g.k.min(GEMM_MAX_K));
    loop {
        let over_a = a_big && span(mb, g.a.sr, kb, g.a.sc) > room(4);
        let over_b = b_big && span(kb, g.b.sr, nb, g.b.sc) > room(b_elt);
        let over_c = c_big && span(mb, g.n, nb, 1) > room(4);
        if !(over_a || over_b || over_c) {
            break;
        }
        let before = (mb, nb, kb);
        if over_a {
            if (mb - 1) * g.a.sr >= (kb - 1) * g.a.sc && mb > 1 {
                halve(&mut mb)
            } else {
                halve(&mut kb)
            }
        } else if over_b {
            if (kb - 1) * g.b.sr >= (nb - 1) * g.b.sc && kb > 1 {
                halve(&mut kb)
            } else {
                halve(&mut nb)
            }
        } else if (mb - 1) * g.n >= nb - 1 && mb > 1 {
            halve(&mut mb)
        } else {
            halve(&mut nb)
        }
        if (mb, nb, kb) == before {
            return Err(Error::Gpu(format!(
                "split: no block of matmul {}x{}x{} fits a binding of {limit} bytes",
                g.m, g.n, g.k
            )));
        }
    }
    // whole tiles where the blocks are large enough
    let round = |x: usize, t: usize| if x >= t { x - x % t } else { x };
    let (mb, nb, kb) = (round(mb, 128), round(nb, 128), round(kb, 16));
    for z in 0..g.batch {
        for m0 in (0..g.m).step_by(mb) {
            for n0 in (0..g.n).step_by(nb) {
                for k0 in (0..g.k).step_by(kb) {
                    let (ml, nl, kl) = (mb.min(g.m - m0), nb.min(g.n - n0), kb.min(g.k - k0));
                    let af = g.a.off + z * g.a.sb + m0 * g.a.sr + k0 * g.a.sc;
                    let bf = g.b.off + z * g.b.sb + k0 * g.b.sr + n0 * g.b.sc;
                    let cf = z * g.m * g.n + m0 * g.n + n0;
                    let place = |t: &Tensor, big: bool, elt: usize, first: usize, last: usize| {
                        if big {
                            let (w, off) = split::window(buf(t), elt, first, last);
                            (Some(w), off)
                        } else {
                            (None, first)
                        }
                    };
                    let (aw, ao) = place(a, a_big, 4, af, af + span(ml, g.a.sr, kl, g.a.sc) - 1);
                    let (bw, bo) =
                        place(b, b_big, b_elt, bf, bf + span(kl, g.b.sr, nl, g.b.sc) - 1);
                    let (cw, co) = place(out, c_big, 4, cf, cf + span(ml, g.n, nl, 1) - 1);
                    let blk = GemmBlock {
                        m: ml,
                        n: nl,
                        k: kl,
                        batch: 1,
                        a: (ao, 0),
                        b: (bo, 0),
                        c: (co, 0),
                        acc: acc || k0 > 0,
                    };
                    let binds = [(1, buf(a), aw), (2, buf(b), bw), (3, buf(out), cw)];
                    gemm_block(g, &storage, &blk, &binds)?;
                }
            }
        }
    }
    Ok(())
}

/// How a matmul's B is stored: f32, f16 read natively, f16 or bf16 unpacked from words.
pub(super) struct Storage16 {
    f32b: u32,
    f16n: u32,
    f16u: u32,
    bf16: u32,
}

/// One matmul dispatch: sizes, (offset, batch stride) of A, B and C inside their
/// bindings, and whether it adds into C.
pub(super) struct GemmBlock {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
    acc: bool,
}

pub(super) fn gemm_block(
    g: &Gemm,
    s: &Storage16,
    blk: &GemmBlock,
    binds: &[crate::backend::gpu::Binding],
) -> Result<()> {
    let t = if blk.m >= 512 && blk.n >= 512 {
        TILES[0]
    } else if blk.m <= 16 {
        TILES[2]
    } else {
        TILES[1]
    };
    let (bm, bn, bk, tm, tn) = t;
    let spec = [
        ("BM", bm),
        ("BN", bn),
        ("BK", bk),
        ("TM", tm),
        ("TN", tn),
        // load order: walk k fastest when A's k stride is 1; n fastest when B's n stride is 1
        ("A_KFAST", (g.a.sc == 1) as u32),
        ("B_NFAST", (g.b.sc == 1 || g.b.sr != 1) as u32),
        ("B_F32", s.f32b),
        ("B_F16N", s.f16n),
        ("F16", s.f16n),
        ("B_F16U", s.f16u),
        ("B_BF16", s.bf16),
        ("ACC", blk.acc as u32),
    ];
    let u = Uniform::new()
        .u(blk.m)
        .u(blk.n)
        .u(blk.k)
        .u(0)
        .u(blk.a.0)
        .u(blk.a.1)
        .u(g.a.sr)
        .u(g.a.sc)
        .u(blk.b.0)
        .u(blk.b.1)
        .u(g.b.sr)
        .u(g.b.sc)
        .u(blk.c.0)
        .u(blk.c.1)
        .u(g.n)
        .u(0);
    let groups = [
        blk.n.div_ceil(bn as usize) as u32,
        blk.m.div_ceil(bm as usize) as u32,
        blk.batch as u32,
    ];
    // for the profiler: 2 M N K FLOPs; A and C once, B once per batch it is not shared by
    let b_elt = if s.f32b == 1 { 4.0 } else { 2.0 };
    let b_batches = if blk.b.1 == 0 { 1 } else { blk.batch };
    crate::backend::gpu::profile::cost(
        2.0 * (blk.batch * blk.m * blk.n) as f64 * blk.k as f64,
        4.0 * (blk.batch * blk.m * (blk.k + blk.n)) as f64
            + b_elt * (b_batches * blk.k * blk.n) as f64,
    );
    context()?.dispatch_bound("matmul", "gemm", &spec, &u.0, binds, groups)
}
