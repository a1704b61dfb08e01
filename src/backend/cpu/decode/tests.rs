use super::*;
use crate::backend::cpu::attention_ref;

#[test]
fn decode_matches_the_f64_reference() {
    // (B, T, S, NH, NKV, HD, key ranges): one or a few queries over a cache, strided
    // rows as a narrowed cache gives them, a head dim with a remainder after 16 lanes,
    // and a row that sees nothing
    type Case = (usize, usize, usize, usize, usize, usize, Option<Vec<u32>>);
    let cases: &[Case] = &[
        (3, 1, 40, 9, 3, 64, Some(vec![5, 40, 0, 17, 39, 40])),
        (2, 2, 33, 4, 2, 20, None),
        (2, 1, 12, 2, 1, 8, Some(vec![12, 12, 0, 12])),
        // seven query heads per kv head (head sets of 3, 3 and 1 over the values),
        // three pieces of the head dim, a head dim of five 8-float chunks, each over
        // whole blocks of eight keys and a remainder
        (2, 1, 45, 14, 2, 64, Some(vec![0, 45, 3, 44])),
        (3, 2, 21, 6, 2, 96, None),
        (2, 1, 19, 4, 2, 40, None),
        // enough rows for a task per row (all kv heads at once)
        (
            40,
            1,
            30,
            9,
            3,
            64,
            Some((0..40).flat_map(|i| [i % 7, 30 - i % 3]).collect()),
        ),
    ];
    for (ci, (b, t, s, nh, nkv, hd, ranges)) in cases.iter().cloned().enumerate() {
        let cap = s + 7; // the cache's rows are longer than the positions read
        let q = crate::util::randn_vec(b * t * nh * hd, 1.5, 40 + ci as u64);
        let k = crate::util::randn_vec(b * cap * nkv * hd, 1.5, 50 + ci as u64);
        let v = crate::util::randn_vec(b * cap * nkv * hd, 1.0, 60 + ci as u64);
        let d = AttnDims {
            b,
            t,
            s,
            nh,
            nkv,
            hd,
            scale: 1.0 / (hd as f64).sqrt(),
            causal: true,
            q_str: (t * nh * hd, nh * hd, 0),
            k_str: (cap * nkv * hd, nkv * hd, 0),
            v_str: (cap * nkv * hd, nkv * hd, 0),
        };
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (o, l) = attention_decode(&d, &q, &k, &v, ranges.as_deref());
        let (ro, rl) = attention_ref(&d, &f64s(&q), &f64s(&k), &f64s(&v), ranges.as_deref());
        for (i, (a, b)) in o.iter().zip(&ro).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 2e-6 * (1.0 + b.abs()),
                "case {ci} out {i}: {a} vs {b}"
            );
        }
        for (i, (a, b)) in l.iter().zip(&rl).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 2e-6 * (1.0 + b.abs()),
                "case {ci} lse {i}: {a} vs {b}"
            );
        }
    }
}

/// Rows that name another row's positions read them there: with every copy but the
/// named one poisoned, the results are still those of the unpoisoned cache, bit for
/// bit. Names that point outside the batch or past the cache are ignored.
#[test]
fn rows_sharing_positions_read_the_named_row() {
    let threads = rayon::current_num_threads().max(1);
    let (b, s, nh, nkv, hd) = (8 * threads, 80, 9, 3, 64);
    let cap = s + 5;
    let d = AttnDims {
        b,
        t: 1,
        s,
        nh,
        nkv,
        hd,
        scale: 1.0 / (hd as f64).sqrt(),
        causal: true,
        q_str: (nh * hd, nh * hd, 0),
        k_str: (cap * nkv * hd, nkv * hd, 0),
        v_str: (cap * nkv * hd, nkv * hd, 0),
    };
    let q = crate::util::randn_vec(b * nh * hd, 1.5, 71);
    let mut k = crate::util::randn_vec(b * cap * nkv * hd, 1.5, 72);
    let mut v = crate::util::randn_vec(b * cap * nkv * hd, 1.0, 73);
    // groups of 4 rows; row r's keys start at r % 3, its first 41 positions copy the
    // group's first row's (41: five blocks of 8 keys and one more, a block of 32
    // values and 9 more). Row 9 sees only 35 of them, so its group shares 35, and
    // the other rows read the last 6 on their own.
    let (len, kvw) = (41, nkv * hd);
    let lo = |r: usize| r % 3;
    let pos = |r: usize, j: usize| (r * cap + j) * kvw;
    let mut ranges = Vec::new();
    let mut shared = Vec::new();
    for r in 0..b {
        let hi = if r == 9 { lo(r) + 35 } else { s };
        ranges.extend([lo(r) as u32, hi as u32]);
        let lead = r / 4 * 4;
        for j in 0..len {
            let (from, to) = (pos(lead, lo(lead) + j), pos(r, lo(r) + j));
            k.copy_within(from..from + kvw, to);
            v.copy_within(from..from + kvw, to);
        }
        shared.extend([lead as u32, lo(lead) as u32, len as u32]);
    }
    // two rows name no usable row: one out of the batch, one past the cache
    shared[3 * 5..3 * 5 + 3].copy_from_slice(&[b as u32, 0, 3]);
    shared[3 * 6..3 * 6 + 3].copy_from_slice(&[4, 70, 20]);
    let (o, l) = attention_decode(&d, &q, &k, &v, Some(&ranges));
    let (mut kp, mut vp) = (k.clone(), v.clone());
    for r in (0..b).filter(|r| r % 4 != 0 && *r != 5 && *r != 6) {
        let at = pos(r, lo(r));
        kp[at..at + len * kvw].fill(f32::NAN);
        vp[at..at + len * kvw].fill(f32::NAN);
    }
    let (os, ls) = attention_decode_shared(&d, &q, &kp, &vp, Some(&ranges), Some(&shared));
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&os), bits(&o));
    assert_eq!(bits(&ls), bits(&l));
    // and without the names, the poison shows
    let (op, _) = attention_decode(&d, &q, &kp, &vp, Some(&ranges));
    assert!(op.iter().any(|x| x.is_nan()));
}
