//! CPU matrix multiply. `gemm_ref` is the plain triple loop (any [`Real`], any strides);
//! `gemm_f32` is the fast path: BLIS-style packing of A into MR-row panels and B into
//! NR-column panels, an FMA micro-kernel held in registers (AVX2 where the CPU has it,
//! portable Rust otherwise), and rayon threads over blocks of output rows. Each output
//! element is summed by one thread in a fixed order, so results do not depend on the
//! number of threads.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::gemm::{assume_init_vec, k_step, uninit, SharedOut, KC};
pub use super::gemm::{Gemm, Operand};
pub use super::microkernel::AsF32;
use super::microkernel::{Kernel, MR, NR};
use super::skinny;
use super::Real;

/// c[i, j] = sum_p a[i, p] b[p, j], the reference.
pub fn gemm_ref<T: Real>(g: &Gemm, a: &[T], b: &[T]) -> Vec<T> {
    let mut c = vec![T::zero(); g.batch * g.m * g.n];
    c.par_chunks_mut(g.n.max(1))
        .enumerate()
        .for_each(|(row, crow)| {
            let (bi, i) = (row / g.m.max(1), row % g.m.max(1));
            for p in 0..g.k {
                let av = a[g.a.off + bi * g.a.sb + i * g.a.sr + p * g.a.sc];
                let bo = g.b.off + bi * g.b.sb + p * g.b.sr;
                for (j, cv) in crow.iter_mut().enumerate() {
                    *cv += av * b[bo + j * g.b.sc];
                }
            }
        });
    c
}
const MC: usize = 96;
const NC: usize = 2048;

/// The fast f32 path (see the module comment).
pub fn gemm_f32<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return vec![0.0; g.batch * m * n];
    }
    if g.b.sr == 1 && skinny::applies(m, n, k) {
        if let Some(w) = B::f32_slice(b) {
            return skinny::gemm_skinny(g, a, w);
        }
        // a 16-bit weight: the same sums as an f32 copy's, for few rows
        if m < skinny::SKINNY_MIN_M {
            return skinny::gemm_few(g, a, b);
        }
    }
    if m <= SMALL_M && (g.b.sr == 1 || g.b.sc == 1) && n >= 64 {
        return gemm_small_m(g, a, b);
    }
    if m <= MC && n >= 2 * NR && m * n * k >= 64 * 64 * 64 {
        return gemm_wide(g, a, b);
    }
    if k == 0 {
        return vec![0.0; g.batch * m * n];
    }
    // the first KC step stores every element of C, so C is not zeroed first
    let mut c = uninit(g.batch * m * n);
    gemm_blocked(g, a, b, &mut c, false);
    // SAFETY: k > 0, so gemm_blocked stored every tile of every batch.
    unsafe { assume_init_vec(c) }
}

/// `c += A @ B` in place (`c` dense `(batch, m, n)`): the gradient sums of a backward.
/// Large products add each KC step's partial product straight into C, so no temporary
/// the size of C exists; the rounding then differs from `c + gemm_f32(..)` in the last
/// bits (still one fixed order, whatever the threads).
pub fn gemm_f32_acc<B: AsF32>(g: &Gemm, a: &[f32], b: &[B], c: &mut [f32]) {
    assert_eq!(
        c.len(),
        g.batch * g.m * g.n,
        "gemm_f32_acc: C has the wrong size"
    );
    if g.m <= MC || g.k == 0 {
        for (cv, x) in c.iter_mut().zip(gemm_f32(g, a, b)) {
            *cv += x;
        }
        return;
    }
    // SAFETY: f32 -> MaybeUninit<f32> keeps the layout, and only f32s are written back.
    let c = unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) };
    gemm_blocked(g, a, b, c, true);
}

/// The blocked path: C (+)= A @ B over KC x NC panels of B and MC x KC blocks of A.
/// Without `accumulate`, C may start unwritten: the first KC step stores each tile.
fn gemm_blocked<B: AsF32>(
    g: &Gemm,
    a: &[f32],
    b: &[B],
    c: &mut [MaybeUninit<f32>],
    accumulate: bool,
) {
    let (m, n, k) = (g.m, g.n, g.k);
    let kern = Kernel::detect();
    // Small problems: pack once, no threads.
    let parallel = m * n * k >= 64 * 64 * 64;
    let mut bpack = vec![0.0f32; KC * NC.min(n.div_ceil(NR) * NR)];
    for bi in 0..g.batch {
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            // units of work: (block of MC rows, chunk of about 512 columns), so that both
            // dimensions feed the threads (11 row blocks on 2 threads would idle one)
            let blocks = m.div_ceil(MC);
            let threads = rayon::current_num_threads().max(1);
            let chunks = if blocks % threads == 0 || blocks >= 8 * threads {
                1
            } else {
                nc.div_ceil(512)
            };
            let chunk = nc.div_ceil(chunks).div_ceil(NR) * NR;
            for pc in (0..k).step_by(k_step(k)) {
                let kc = k_step(k).min(k - pc);
                let panels = nc.div_ceil(NR);
                let pack = |(pi, panel): (usize, &mut [f32])| {
                    let jr = pi * NR;
                    pack_b(g, b, bi, pc, kc, jc + jr, NR.min(nc - jr), panel);
                };
                let live = &mut bpack[..panels * KC * NR];
                if parallel {
                    live.par_chunks_mut(KC * NR).enumerate().for_each(pack);
                } else {
                    live.chunks_mut(KC * NR).enumerate().for_each(pack);
                }
                let bp = &bpack[..];
                let out = SharedOut(cb.as_mut_ptr().cast::<f32>(), cb.len());
                let work = |unit: usize| {
                    let (blk, ch) = (unit / chunks, unit % chunks);
                    // one unit per row block: even blocks; otherwise full MC blocks (the
                    // column chunks already balance the threads)
                    let (ic, mc) = if chunks == 1 {
                        row_block(m, blocks, blk)
                    } else {
                        (blk * MC, MC.min(m - blk * MC))
                    };
                    // this unit's rows of A, packed where it computes (they stay in cache)
                    let mut apack = [0.0f32; KC * MC];
                    pack_a(g, a, bi, ic, mc, pc, kc, &mut apack);
                    let (j0, j1) = (ch * chunk, ((ch + 1) * chunk).min(nc));
                    for jr in (j0..j1).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let bpanel = &bp[(jr / NR) * KC * NR..];
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let apanel = &apack[(ir / MR) * KC * MR..];
                            let at = (ic + ir) * n + jc + jr;
                            let cptr = out.tile(at, (mr - 1) * n + nr);
                            // SAFETY: in bounds (checked by tile); units write disjoint tiles
                            // of C (their own rows x their own columns), each by one thread.
                            let acc = pc > 0 || accumulate;
                            unsafe { kern.run_raw(kc, apanel, bpanel, cptr, n, mr, nr, acc) };
                        }
                    }
                };
                if parallel {
                    super::threads::par_for(blocks * chunks, work);
                } else {
                    (0..blocks * chunks).for_each(work);
                }
            }
        }
    }
}

/// Rows `(first, count)` of block `blk` when `m` rows are split into `blocks` blocks of
/// whole MR panels as evenly as they go (341 rows in 4: 84, 84, 84, 89, not 96, 96, 96,
/// 53, which would leave one of two threads idle a fifth of the time). Each block has
/// at most MC rows when `blocks >= m / MC`.
fn row_block(m: usize, blocks: usize, blk: usize) -> (usize, usize) {
    let panels = m.div_ceil(MR);
    let at = |b: usize| (b * panels / blocks * MR).min(m);
    (at(blk), at(blk + 1) - at(blk))
}

/// Rows at or below which a product is a few matrix-vector products (decoding).
const SMALL_M: usize = 16;
/// Output columns per task in the small-M path.
const SMALL_N_CHUNK: usize = 64;

/// Few rows of A: no packing; threads split the output columns. Each B column (a weight
/// row for x @ W^T) is widened once and dotted with every row of A, or, for a row-major B,
/// whole B rows are scaled into the accumulators. Each output element is still summed by
/// one thread in a fixed order.
fn gemm_small_m<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let simd = Kernel::detect();
    let mut c = vec![0.0f32; g.batch * m * n];
    for bi in 0..g.batch {
        // A rows, contiguous
        let rows: Vec<Vec<f32>> = (0..m)
            .map(|i| {
                (0..k)
                    .map(|p| a[g.a.off + bi * g.a.sb + i * g.a.sr + p * g.a.sc])
                    .collect()
            })
            .collect();
        let bbase = g.b.off + bi * g.b.sb;
        // C^T for this batch: (n, m), split over column chunks
        let mut ct = vec![0.0f32; n * m];
        ct.par_chunks_mut(SMALL_N_CHUNK * m)
            .enumerate()
            .for_each(|(ci, out)| {
                let j0 = ci * SMALL_N_CHUNK;
                let width = out.len() / m;
                let mut col = vec![0.0f32; k];
                if g.b.sr == 1 {
                    simd.col_dots(
                        &rows,
                        &b[bbase + j0 * g.b.sc..],
                        g.b.sc,
                        width,
                        &mut col,
                        out,
                    );
                } else {
                    let mut acc = vec![0.0f32; width * m];
                    let mut brow = vec![0.0f32; width];
                    for p in 0..k {
                        let start = bbase + p * g.b.sr + j0;
                        for (d, v) in brow.iter_mut().zip(&b[start..start + width]) {
                            *d = v.as_f32();
                        }
                        for (i, row) in rows.iter().enumerate() {
                            let av = row[p];
                            for (jj, &bv) in brow.iter().enumerate() {
                                acc[jj * m + i] += av * bv;
                            }
                        }
                    }
                    out.copy_from_slice(&acc);
                }
            });
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        for j in 0..n {
            for i in 0..m {
                cb[i * n + j] = ct[j * m + i];
            }
        }
    }
    c
}

/// Output columns per task in [`gemm_wide`]: enough tasks for every thread to take
/// several (so that uneven ones balance), at least one NR panel, at most 256 columns.
fn wide_chunk(n: usize) -> usize {
    let tasks = 8 * rayon::current_num_threads().max(1);
    (n.div_ceil(tasks).div_ceil(NR) * NR).clamp(NR, 256)
}

/// At most one block of rows (decoding and small batches): all of A is packed once, and
/// threads split the output columns, so each task streams its panel of B once for every
/// row. The sums run in the same order as the blocked path's (KC steps of the
/// micro-kernel), whatever the chunking.
fn gemm_wide<B: AsF32>(g: &Gemm, a: &[f32], b: &[B]) -> Vec<f32> {
    let (m, n, k) = (g.m, g.n, g.k);
    let kern = Kernel::detect();
    let chunk = wide_chunk(n);
    let mut c = vec![0.0f32; g.batch * m * n];
    for bi in 0..g.batch {
        // A as MR-row panels over the whole of k: element (r, p) at (r/MR)*k*MR + p*MR + r%MR
        let mut apack = vec![0.0f32; m.div_ceil(MR) * MR * k];
        let abase = g.a.off + bi * g.a.sb;
        for r in 0..m {
            let panel = &mut apack[(r / MR) * k * MR..(r / MR + 1) * k * MR];
            for p in 0..k {
                panel[p * MR + r % MR] = a[abase + r * g.a.sr + p * g.a.sc];
            }
        }
        let parts: Vec<Vec<f32>> = (0..n.div_ceil(chunk))
            .into_par_iter()
            .map(|ci| {
                let (j0, w) = (ci * chunk, chunk.min(n - ci * chunk));
                let mut out = vec![0.0f32; m * w];
                let mut bpack = vec![0.0f32; KC * w.div_ceil(NR) * NR];
                for pc in (0..k).step_by(k_step(k)) {
                    let kc = k_step(k).min(k - pc);
                    pack_b(g, b, bi, pc, kc, j0, w, &mut bpack);
                    for jr in (0..w).step_by(NR) {
                        let bpanel = &bpack[(jr / NR) * KC * NR..];
                        for ir in (0..m).step_by(MR) {
                            let apanel = &apack[(ir / MR) * k * MR + pc * MR..];
                            let (mr, nr) = (MR.min(m - ir), NR.min(w - jr));
                            kern.run(
                                kc,
                                apanel,
                                bpanel,
                                &mut out[ir * w + jr..],
                                w,
                                mr,
                                nr,
                                pc > 0,
                            );
                        }
                    }
                }
                out
            })
            .collect();
        let cb = &mut c[bi * m * n..(bi + 1) * m * n];
        for (ci, out) in parts.iter().enumerate() {
            let (j0, w) = (ci * chunk, chunk.min(n - ci * chunk));
            for r in 0..m {
                cb[r * n + j0..r * n + j0 + w].copy_from_slice(&out[r * w..(r + 1) * w]);
            }
        }
    }
    c
}

/// Pack B[pc..pc+kc, jc..jc+nc] as panels of NR columns: panel-major, then p, then column.
/// Columns past the edge are zero.
#[allow(clippy::too_many_arguments)]
fn pack_b<B: AsF32>(
    g: &Gemm,
    b: &[B],
    bi: usize,
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    out: &mut [f32],
) {
    let base = g.b.off + bi * g.b.sb;
    for (pi, jr) in (0..nc).step_by(NR).enumerate() {
        let nr = NR.min(nc - jr);
        let panel = &mut out[pi * KC * NR..pi * KC * NR + kc * NR];
        if g.b.sr == 1 && g.b.sc != 1 && nr == NR {
            // B is a transposed row-major matrix (x @ W^T): read its NR columns (rows of
            // W) side by side and write the panel in order
            let cols: [&[B]; NR] = std::array::from_fn(|j| {
                let at = base + pc + (jc + jr + j) * g.b.sc;
                &b[at..at + kc]
            });
            for (p, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (d, col) in dst.iter_mut().zip(&cols) {
                    *d = col[p].as_f32();
                }
            }
            continue;
        }
        if g.b.sr == 1 && g.b.sc != 1 {
            // the last, narrower panel: walk each column along k
            panel.fill(0.0);
            for j in 0..nr {
                let col = base + pc + (jc + jr + j) * g.b.sc;
                for (p, v) in b[col..col + kc].iter().enumerate() {
                    panel[p * NR + j] = v.as_f32();
                }
            }
            continue;
        }
        for p in 0..kc {
            let row = base + (pc + p) * g.b.sr;
            let dst = &mut panel[p * NR..(p + 1) * NR];
            if g.b.sc == 1 && nr == NR {
                // a whole panel row: a fixed-size copy the compiler inlines (not a call)
                let s = row + jc + jr;
                let src: &[B; NR] = b[s..s + NR].try_into().unwrap();
                let dst: &mut [f32; NR] = dst.try_into().unwrap();
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = v.as_f32();
                }
                continue;
            } else if g.b.sc == 1 {
                let s = row + jc + jr;
                for (d, v) in dst[..nr].iter_mut().zip(&b[s..s + nr]) {
                    *d = v.as_f32();
                }
            } else {
                for j in 0..nr {
                    dst[j] = b[row + (jc + jr + j) * g.b.sc].as_f32();
                }
            }
            dst[nr..].fill(0.0);
        }
    }
}

/// Pack A[ic..ic+mc, pc..pc+kc] as panels of MR rows: panel-major, then p, then row.
#[allow(clippy::too_many_arguments)]
fn pack_a(
    g: &Gemm,
    a: &[f32],
    bi: usize,
    ic: usize,
    mc: usize,
    pc: usize,
    kc: usize,
    out: &mut [f32],
) {
    let base = g.a.off + bi * g.a.sb;
    for (pi, ir) in (0..mc).step_by(MR).enumerate() {
        let mr = MR.min(mc - ir);
        let panel = &mut out[pi * KC * MR..pi * KC * MR + kc * MR];
        if g.a.sr == 1 && mr == MR {
            // A is a transposed row-major matrix (dW = dY^T X): its MR rows at one k are
            // adjacent in memory, so read them together rather than striding down columns
            let first = base + (ic + ir) + pc * g.a.sc;
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let at = first + p * g.a.sc;
                dst.copy_from_slice(&a[at..at + MR]);
            }
            continue;
        }
        if g.a.sc == 1 && mr == MR {
            // A row-major (x @ W^T, dY @ W): read the MR rows side by side and write the
            // panel in order, one MR-wide column at a time
            let rows: [&[f32]; MR] = std::array::from_fn(|r| {
                let at = base + (ic + ir + r) * g.a.sr + pc;
                &a[at..at + kc]
            });
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                for (d, row) in dst.iter_mut().zip(&rows) {
                    *d = row[p];
                }
            }
            continue;
        }
        for r in 0..MR {
            if r >= mr {
                for p in 0..kc {
                    panel[p * MR + r] = 0.0;
                }
                continue;
            }
            let row = base + (ic + ir + r) * g.a.sr + pc * g.a.sc;
            for p in 0..kc {
                panel[p * MR + r] = a[row + p * g.a.sc];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(off: usize, sb: usize, sr: usize, sc: usize) -> Operand {
        Operand { off, sb, sr, sc }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros_on_every_path() {
        for (m, n) in [(1, 70), (12, 40), (64, 200), (100, 40), (300, 50)] {
            let g = Gemm {
                batch: 2,
                m,
                n,
                k: 0,
                a: op(0, 0, 0, 1),
                b: op(0, 0, 1, 0),
            };
            assert_eq!(gemm_f32::<f32>(&g, &[], &[]), vec![0.0; 2 * m * n]);
        }
    }

    /// 1 to 7 rows of A: a row's results hold the same bits as that row alone, for B^T
    /// (the skinny path's few-row kernel) and for a row-major B (the small-M loops). A
    /// decoding pool that drains to its last rows then gives each of them the logits it
    /// gets alone.
    #[test]
    fn few_rows_get_the_same_bits_as_each_row_alone() {
        let (n, k) = (200, 301);
        let a = crate::util::randn_vec(7 * k, 1.0, 31);
        let b = crate::util::randn_vec(k * n, 1.0, 32);
        for (sr, sc) in [(1, k), (n, 1)] {
            let prod = |rows: std::ops::Range<usize>| {
                let g = Gemm {
                    batch: 1,
                    m: rows.len(),
                    n,
                    k,
                    a: op(rows.start * k, 0, k, 1),
                    b: op(0, 0, sr, sc),
                };
                gemm_f32(&g, &a, &b)
            };
            let alone: Vec<Vec<f32>> = (0..7).map(|i| prod(i..i + 1)).collect();
            for m in 1..=7 {
                let c = prod(0..m);
                for (i, want) in alone.iter().enumerate().take(m) {
                    let got = &c[i * n..(i + 1) * n];
                    let diff = (0..n).find(|&j| got[j].to_bits() != want[j].to_bits());
                    assert!(
                        diff.is_none(),
                        "B strides ({sr}, {sc}): row {i} of {m} differs at column {diff:?}"
                    );
                }
            }
        }
    }

    /// A 16-bit weight (B = W^T) gives few rows of A the bits of its f32 copy: a model
    /// kept in bf16 and the same model saved in f32 decode alike.
    #[test]
    fn few_rows_of_a_16_bit_weight_match_its_f32_copy() {
        let (n, k) = (100, 301);
        let a = crate::util::randn_vec(7 * k, 1.0, 41);
        let w16: Vec<half::bf16> = crate::util::randn_vec(n * k, 1.0, 42)
            .into_iter()
            .map(half::bf16::from_f32)
            .collect();
        let w32: Vec<f32> = w16.iter().map(|x| x.to_f32()).collect();
        for m in 1..skinny::SKINNY_MIN_M {
            let g = Gemm {
                batch: 1,
                m,
                n,
                k,
                a: op(0, 0, k, 1),
                b: op(0, 0, 1, k),
            };
            let (x, y) = (gemm_f32(&g, &a, &w16), gemm_f32(&g, &a, &w32));
            let diff = (0..m * n).find(|&e| x[e].to_bits() != y[e].to_bits());
            assert!(diff.is_none(), "{m} rows: element {diff:?} differs");
        }
    }

    #[test]
    fn row_blocks_cover_every_row_once_within_mc() {
        for m in 1..400usize {
            let blocks = m.div_ceil(MC);
            let mut next = 0;
            for blk in 0..blocks {
                let (first, count) = row_block(m, blocks, blk);
                assert_eq!(first, next, "m {m} block {blk}");
                assert!(count <= MC && (count % MR == 0 || first + count == m));
                next = first + count;
            }
            assert_eq!(next, m);
        }
    }

    #[test]
    fn fast_path_matches_reference_on_awkward_shapes() {
        for &(bt, m, n, k) in &[
            (1, 1, 1, 1),
            (2, 7, 33, 129),
            // the few-row kernel (B^T): two sets of eight weight rows, a short last
            // block, k in several steps with a tail
            (1, 1, 70, 37),
            (2, 3, 45, 200),
            (1, 4, 300, 600),
            (1, 97, 17, 300),
            (3, 13, 40, 5),
            (1, 130, 2100, 20),
            // the decode-sized paths: few rows (B transposed or not), threads over columns
            (1, 64, 576, 300),
            (1, 16, 96, 70),
            (2, 5, 200, 64),
            (1, 64, 7, 600),
            (1, 37, 101, 200),
            (2, 17, 1000, 257),
            (1, 96, 33, 600),
            // a last A^T panel of exactly NR / 2 rows (the half kernel), odd k steps
            (1, 40, 64, 97),
            // the wide kernel's panel sets 3 + 2, and a last weight group with 2 rows
            (1, 80, 50, 400),
            // even row blocks (4 of 341 rows), and the long-K accumulate
            (1, 341, 50, 70),
            (1, 101, 40, 1100),
            // past SKINNY_M rows: the skinny path in row blocks (B^T), batched
            (2, 200, 60, 300),
        ] {
            let a = crate::util::randn_vec(bt * m * k + 3, 1.0, 1);
            let b = crate::util::randn_vec(bt * k * n + 5, 1.0, 2);
            // A transposed in memory, B row-major with an offset.
            let g = Gemm {
                batch: bt,
                m,
                n,
                k,
                a: op(3, m * k, 1, m),
                b: op(5, k * n, n, 1),
            };
            let fast = gemm_f32(&g, &a, &b);
            // and B as the transpose of a row-major (N, K) matrix (x @ W^T)
            let gt = Gemm {
                b: op(5, k * n, 1, k),
                ..g
            };
            let fast_t = gemm_f32(&gt, &a, &b);
            let slow_t = gemm_ref(
                &gt,
                &a.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &b.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            );
            for (x, y) in fast_t.iter().zip(&slow_t) {
                assert!(
                    (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f64).sqrt(),
                    "{bt}x{m}x{n}x{k} (B^T): {x} vs {y}"
                );
            }
            let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
            let b64: Vec<f64> = b.iter().map(|&x| x as f64).collect();
            // and A row-major, against both layouts of B
            for gr in [
                Gemm {
                    a: op(3, m * k, k, 1),
                    ..g
                },
                Gemm {
                    a: op(3, m * k, k, 1),
                    ..gt
                },
            ] {
                let (fast, slow) = (gemm_f32(&gr, &a, &b), gemm_ref(&gr, &a64, &b64));
                assert_eq!(fast.len(), slow.len());
                for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
                    assert!(
                        (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f64).sqrt(),
                        "{bt}x{m}x{n}x{k} (A row-major) at {i}: {x} vs {y}"
                    );
                }
            }
            let slow = gemm_ref(&g, &a64, &b64);
            for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (*x as f64 - y).abs() < 1e-4 * (1.0 + y.abs()) * (k as f64).sqrt(),
                    "{bt}x{m}x{n}x{k} at {i}: {x} vs {y}"
                );
            }
        }
    }
}
