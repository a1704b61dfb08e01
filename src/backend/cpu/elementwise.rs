//! Elementwise reference loops: unary and binary ops over strided operands, their
//! gradients, `where` and strided copies.

#[allow(unused_imports)]
use super::*;

/// y = f(x) elementwise.
pub fn unary<T: Real>(op: UnaryOp, x: &[T]) -> Vec<T> {
    let (p0, p1) = op.params();
    let (p0, p1) = (T::from_f64(p0), T::from_f64(p1));
    let f = |x: T| -> T {
        match op {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => T::one() / x.sqrt(),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sigmoid => sigmoid(x),
            // log sigmoid(x) = min(x, 0) - log(1 + e^-|x|)
            UnaryOp::LogSigmoid => x.minv(T::zero()) - (-x.abs()).exp().ln_1p(),
            UnaryOp::Relu => x.maxv(T::zero()),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Powf(_) => x.powf(p0),
            UnaryOp::Affine(..) => p0 * x + p1,
        }
    };
    // the affine map (scale, shift) is the hot one (gradient scaling): a loop of its own,
    // which vectorises, rather than a match per element
    if let UnaryOp::Affine(..) = op {
        return map1(x, move |v| p0 * v + p1);
    }
    map1(x, f)
}

/// `f` over every element, in blocks over the threads for large slices (each element
/// by one thread, the same value either way), monomorphised per `f` so that simple maps
/// vectorise.
#[inline(always)]
fn map1<T: Real>(x: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    if x.len() >= PAR_MIN {
        return par_blocks(x.len(), |at, out| {
            for (o, &v) in out.iter_mut().zip(&x[at..]) {
                o.write(f(v));
            }
        });
    }
    x.iter().map(|&v| f(v)).collect()
}

/// `f` over pairs of elements, as [`map1`] (as long as the shorter slice).
#[inline(always)]
fn map2<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    let n = a.len().min(b.len());
    if n >= PAR_MIN {
        return par_blocks(n, |at, out| {
            for ((o, &x), &y) in out.iter_mut().zip(&a[at..]).zip(&b[at..]) {
                o.write(f(x, y));
            }
        });
    }
    a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
}

/// Elements per task of [`par_blocks`]: a decode step's 96 x 576 activations are four.
const MAP_BLOCK: usize = 1 << 14;

/// A vector of `n` elements filled in blocks of [`MAP_BLOCK`] on the threads (which stay
/// awake between ops, unlike rayon's joins): `fill(at, part)` must write every element
/// of `part`, elements `at..at + part.len()`.
#[inline(always)]
fn par_blocks<T: Real>(
    n: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut y = super::gemm::uninit::<T>(n);
    let out = super::threads::Disjoint::new(&mut y);
    super::threads::par_runs(n, MAP_BLOCK, |r| {
        // SAFETY: the runs are disjoint and inside y, which outlives the tasks.
        fill(r.start, unsafe { out.part(r.start, r.len()) });
    });
    // SAFETY: every block wrote each of its elements (fill's contract).
    unsafe { super::gemm::assume_init_vec(y) }
}

/// `a (op) b` over contiguous slices (`b` of length 1 is a scalar), with one loop per op.
fn binary_dense<T: Real>(op: BinaryOp, a: &[T], b: &[T]) -> Vec<T> {
    macro_rules! per_op {
        ($($op:ident => $f:expr),* $(,)?) => {
            match op {
                $(BinaryOp::$op => {
                    let f = $f;
                    if b.len() == 1 && a.len() != 1 {
                        let y = b[0];
                        map1(a, move |x| f(x, y))
                    } else {
                        map2(a, b, f)
                    }
                })*
                _ => {
                    if b.len() == 1 && a.len() != 1 {
                        map1(a, |x| binary_scalar(op, x, b[0]))
                    } else {
                        map2(a, b, |x, y| binary_scalar(op, x, y))
                    }
                }
            }
        };
    }
    per_op!(
        Add => |x: T, y: T| x + y,
        Sub => |x: T, y: T| x - y,
        Mul => |x: T, y: T| x * y,
        Div => |x: T, y: T| x / y,
    )
}

/// dx = g * f'(x), the backward of [`unary`].
pub fn unary_grad<T: Real>(op: UnaryOp, x: &[T], g: &[T]) -> Vec<T> {
    let (p0, _) = op.params();
    let p0 = T::from_f64(p0);
    let half = T::from_f64(0.5);
    let df = |x: T| -> T {
        match op {
            UnaryOp::Neg => -T::one(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => T::one() / x,
            // d sqrt(x) = 1 / (2 sqrt(x))
            UnaryOp::Sqrt => half / x.sqrt(),
            // d x^-1/2 = -1/2 x^-3/2
            UnaryOp::Rsqrt => -half / (x * x.sqrt()),
            // d x s(x) = s + x s (1 - s)
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s + x * s * (T::one() - s)
            }
            UnaryOp::Sigmoid => {
                let s = sigmoid(x);
                s * (T::one() - s)
            }
            // d log s(x) = 1 - s(x) = s(-x)
            UnaryOp::LogSigmoid => sigmoid(-x),
            UnaryOp::Relu => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            UnaryOp::Abs => {
                if x > T::zero() {
                    T::one()
                } else if x < T::zero() {
                    -T::one()
                } else {
                    T::zero()
                }
            }
            // d x^p = p x^(p-1)
            UnaryOp::Powf(_) => p0 * x.powf(p0 - T::one()),
            UnaryOp::Affine(..) => p0,
        }
    };
    if x.len() >= PAR_MIN {
        return x.par_iter().zip(g).map(|(&x, &g)| g * df(x)).collect();
    }
    x.iter().zip(g).map(|(&x, &g)| g * df(x)).collect()
}

pub(super) fn binary_scalar<T: Real>(op: BinaryOp, a: T, b: T) -> T {
    let flag = |c: bool| if c { T::one() } else { T::zero() };
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.maxv(b),
        BinaryOp::Min => a.minv(b),
        BinaryOp::Gt => flag(a > b),
        BinaryOp::Ge => flag(a >= b),
        BinaryOp::Lt => flag(a < b),
        BinaryOp::Le => flag(a <= b),
        BinaryOp::Eq => flag(a == b),
    }
}

/// Storage offset of the start of every innermost row of `l` (row-major order), the row
/// length and the inner stride: strided loops walk rows, not elements.
pub(super) fn rows_of(l: &Layout) -> (Vec<usize>, usize, usize) {
    if l.rank() == 0 {
        return (vec![l.offset], 1, 1);
    }
    let r = l.rank();
    let outer = Layout {
        shape: l.shape[..r - 1].to_vec(),
        strides: l.strides[..r - 1].to_vec(),
        offset: l.offset,
    };
    (outer.indices().collect(), l.shape[r - 1], l.strides[r - 1])
}

/// c = a (op) b, where `la` and `lb` are already broadcast to the output shape.
pub fn binary<T: Real>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    if la.is_contiguous() && lb.is_contiguous() {
        let (a, b) = (
            &a[la.offset..la.offset + la.numel()],
            &b[lb.offset..lb.offset + lb.numel()],
        );
        return binary_dense(op, a, b);
    }
    // a dense tensor against one broadcast value (a scalar coefficient)
    if la.is_contiguous() && lb.strides.iter().all(|&s| s == 0) && la.numel() > 0 {
        return binary_dense(
            op,
            &a[la.offset..la.offset + la.numel()],
            &b[lb.offset..lb.offset + 1],
        );
    }
    let (ra, n, sa) = rows_of(la);
    let (rb, _, sb) = rows_of(lb);
    let mut out = vec![T::zero(); la.numel()];
    if n == 0 {
        return out;
    }
    let row = |(i, o): (usize, &mut [T])| {
        let (oa, ob) = (ra[i], rb[i]);
        for (j, c) in o.iter_mut().enumerate() {
            *c = binary_scalar(op, a[oa + j * sa], b[ob + j * sb]);
        }
    };
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(n).enumerate().for_each(row);
    } else {
        out.chunks_mut(n).enumerate().for_each(row);
    }
    out
}

/// out = cond != 0 ? a : b, all three broadcast to the output shape.
pub fn where_select<T: Real>(
    c: &[T],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
) -> Vec<T> {
    lc.indices()
        .zip(la.indices())
        .zip(lb.indices())
        .map(|((i, j), k)| if c[i] != T::zero() { a[j] } else { b[k] })
        .collect()
}

/// `ls` and `ld` (one shape) with their dims of size 1 dropped and each pair of
/// neighbouring dims that both lay out as one (outer stride = inner stride x inner size)
/// merged: the same elements in the same order, in as few and as long rows as the two
/// allow. A step's keys `(B, 1, NKV, HD)` into a window of a cache `(B, CAP, NKV, HD)`
/// become B rows of NKV x HD rather than B x NKV rows of HD.
fn merge_dims(ls: &Layout, ld: &Layout) -> (Layout, Layout) {
    let mut dims: Vec<(usize, usize, usize)> = Vec::with_capacity(ls.rank());
    for ((&n, &a), &b) in ls.shape.iter().zip(&ls.strides).zip(&ld.strides) {
        if n == 1 {
            continue;
        }
        match dims.last_mut() {
            Some(last) if last.1 == a * n && last.2 == b * n => *last = (last.0 * n, a, b),
            _ => dims.push((n, a, b)),
        }
    }
    if ls.shape.contains(&0) || dims.is_empty() {
        // nothing to move, or one element: keep one dim so that rows are defined
        let n = ls.shape.iter().product();
        dims = vec![(n, 1, 1)];
    }
    let part = |l: &Layout, pick: fn(&(usize, usize, usize)) -> usize| Layout {
        shape: dims.iter().map(|d| d.0).collect(),
        strides: dims.iter().map(pick).collect(),
        offset: l.offset,
    };
    (part(ls, |d| d.1), part(ld, |d| d.2))
}

/// Copy a strided view into a strided destination of the same shape.
pub fn copy_strided<S: Copy + Send + Sync>(src: &[S], ls: &Layout, dst: &mut [S], ld: &Layout) {
    let (ls, ld) = merge_dims(ls, ld);
    let (ls, ld) = (&ls, &ld);
    let (rs, n, ss) = rows_of(ls);
    let (rd, _, sd) = rows_of(ld);
    if n == 0 {
        return;
    }
    if ld.is_contiguous() {
        // rows of a dense destination are disjoint slices: fill them in parallel
        let dense = &mut dst[ld.offset..ld.offset + ld.numel()];
        let fill = |(i, o): (usize, &mut [S])| {
            let base = rs[i];
            if ss == 1 {
                o.copy_from_slice(&src[base..base + n]);
            } else {
                for (j, d) in o.iter_mut().enumerate() {
                    *d = src[base + j * ss];
                }
            }
        };
        if dense.len() >= PAR_MIN {
            dense.par_chunks_mut(n).enumerate().for_each(fill);
        } else {
            dense.chunks_mut(n).enumerate().for_each(fill);
        }
        return;
    }
    // rows of unit stride, each past the last one's end (a window of a KV cache being
    // filled): row copies, split over the threads when there are enough of them
    let ascending = rd.windows(2).all(|w| w[1] >= w[0] + n);
    if sd == 1 && ss == 1 && ascending {
        let end = rd.last().map_or(0, |&d| d + n);
        assert!(end <= dst.len(), "copy_strided: destination out of bounds");
        let out = super::threads::Disjoint::new(dst);
        let row = |i: usize| {
            let (s0, d0) = (rs[i], rd[i]);
            // SAFETY: d0 + n <= end <= dst.len() (rows ascend), and rows are disjoint,
            // so each task writes its own elements.
            unsafe { out.part(d0, n) }.copy_from_slice(&src[s0..s0 + n]);
        };
        if rs.len() * n >= PAR_MIN_ROWS {
            super::threads::par_for(rs.len(), row);
        } else {
            (0..rs.len()).for_each(row);
        }
        return;
    }
    for (&s0, &d0) in rs.iter().zip(&rd) {
        for j in 0..n {
            dst[d0 + j * sd] = src[s0 + j * ss];
        }
    }
}

/// Elements from which [`copy_strided`] splits rows of a strided destination over the
/// threads. A decode step's keys for 96 rows (96 x 3 heads x 64, 72 KiB) copy on one
/// thread: over 24 real questions x 4 samples at 48 new tokens, such copies took 9.8 us
/// each against 12.3 us split over two threads.
const PAR_MIN_ROWS: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked maps over the threads give every element, as the plain loops do: on
    /// both sides of PAR_MIN, with a ragged last block, a scalar operand, and pairs of
    /// unequal length (cut to the shorter).
    #[test]
    fn parallel_maps_match_plain_loops() {
        for n in [PAR_MIN - 1, PAR_MIN, 3 * MAP_BLOCK + 5] {
            let a = crate::util::randn_vec(n, 1.0, 11);
            let b = crate::util::randn_vec(n + 3, 1.0, 12);
            let sum = binary_dense(BinaryOp::Add, &a, &b[..n]);
            assert_eq!(sum.len(), n);
            assert!(sum
                .iter()
                .zip(a.iter().zip(&b))
                .all(|(s, (x, y))| *s == x + y));
            let scaled = binary_dense(BinaryOp::Mul, &a, &b[..1]);
            assert!(scaled.iter().zip(&a).all(|(s, x)| *s == x * b[0]));
            let cut = map2(&a, &b, |x, y| x - y);
            assert_eq!(cut.len(), n);
            assert!(cut
                .iter()
                .zip(a.iter().zip(&b))
                .all(|(s, (x, y))| *s == x - y));
            let neg = unary(UnaryOp::Neg, &a);
            assert!(neg.iter().zip(&a).all(|(s, x)| *s == -x));
        }
    }

    /// Every element of `l`'s view, in row-major order, read plainly.
    fn view(x: &[f32], l: &Layout) -> Vec<f32> {
        l.indices().map(|i| x[i]).collect()
    }

    #[test]
    fn copies_into_a_window_of_a_cache_touch_only_the_window() {
        // a step's keys (B, 1, NKV, HD) into position `at` of a (B, CAP, NKV, HD) cache,
        // from a dense source and from a transposed one; few rows and enough rows to split
        for (b, nkv, hd) in [(2, 3, 4), (96, 3, 64)] {
            let (cap, at) = (7, 5);
            let cache = Layout::contiguous(&[b, cap, nkv, hd]);
            let win = cache.narrow(1, at, 1).unwrap();
            let src = crate::util::randn_vec(b * nkv * hd, 1.0, 3);
            let dense = Layout::contiguous(&[b, 1, nkv, hd]);
            // the same values through a (HD, NKV) transpose: rows of stride NKV
            let mut src_t = vec![0.0f32; src.len()];
            for (i, &v) in src.iter().enumerate() {
                let (r, g, d) = (i / (nkv * hd), i / hd % nkv, i % hd);
                src_t[r * nkv * hd + d * nkv + g] = v;
            }
            let t = Layout::contiguous(&[b, 1, hd, nkv])
                .permute(&[0, 1, 3, 2])
                .unwrap();
            for (s, ls) in [(&src, &dense), (&src_t, &t)] {
                let before = crate::util::randn_vec(b * cap * nkv * hd, 1.0, 4);
                let mut dst = before.clone();
                copy_strided(s, ls, &mut dst, &win);
                assert_eq!(view(&dst, &win), src, "{b}x{nkv}x{hd}: the window");
                // everything outside the window is untouched
                let inside: std::collections::HashSet<usize> = win.indices().collect();
                for (i, (x, y)) in dst.iter().zip(&before).enumerate() {
                    if !inside.contains(&i) {
                        assert_eq!(x, y, "{b}x{nkv}x{hd}: element {i} outside the window");
                    }
                }
            }
        }
    }

    /// Views with dims of size 1, dims that merge and dims that do not (narrowed,
    /// permuted, broadcast) copy element for element as their indices say, and the merged
    /// rows are as long as the layouts allow.
    #[test]
    fn merged_dims_copy_what_the_indices_say() {
        let base = Layout::contiguous(&[4, 1, 6, 5]);
        let cases = [
            // dense into dense: one row
            (base.clone(), base.clone(), 120),
            // a window of positions 2..5 of dim 2, from a dense source
            (
                Layout::contiguous(&[4, 1, 3, 5]),
                base.narrow(2, 2, 3).unwrap(),
                15,
            ),
            // a transposed source: rows of the last dim only, at the source's stride 6
            (
                Layout::contiguous(&[4, 1, 5, 6])
                    .permute(&[0, 1, 3, 2])
                    .unwrap(),
                base.clone(),
                5,
            ),
            // a broadcast source row (stride 0)
            (
                Layout {
                    shape: vec![4, 1, 6, 5],
                    strides: vec![0, 0, 0, 1],
                    offset: 3,
                },
                base.clone(),
                5,
            ),
        ];
        for (ci, (ls, ld, row)) in cases.iter().enumerate() {
            let (ms, md) = merge_dims(ls, ld);
            assert_eq!(*ms.shape.last().unwrap(), *row, "case {ci}: row length");
            assert_eq!(
                ms.indices().collect::<Vec<_>>(),
                ls.indices().collect::<Vec<_>>()
            );
            assert_eq!(
                md.indices().collect::<Vec<_>>(),
                ld.indices().collect::<Vec<_>>()
            );
            let src = crate::util::randn_vec(200, 1.0, ci as u64);
            let mut dst = crate::util::randn_vec(200, 1.0, 9 + ci as u64);
            let before = dst.clone();
            copy_strided(&src, ls, &mut dst, ld);
            let mut want = before;
            for (i, j) in ls.indices().zip(ld.indices()) {
                want[j] = src[i];
            }
            assert_eq!(dst, want, "case {ci}");
        }
    }
}
