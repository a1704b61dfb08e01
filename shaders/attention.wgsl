// Fused causal grouped-query attention (flash-attention style: K/V tiles in workgroup
// memory, an online softmax in registers, the T x S score matrix never stored).
// q (B, T, NH, HD), k and v (B, S, NKV, HD) with free batch/sequence strides; query t sits
// at absolute position t + S - T; query head h reads kv head h / (NH / NKV).
// Optional valid key ranges [start, end): has_ranges 1, one per batch row R[2b], R[2b+1]
// (padding); has_ranges 2, one per query R[2(bT + t)], R[2(bT + t) + 1] (sequences packed
// end to end, block-diagonal causal attention); has_ranges 3, one per query with a hole,
// R[4(bT + t) ..] = start, end, skip start, skip end (answers packed after one shared
// prompt: each sees the prompt and itself, not the answers between them).
//
// Forward (one thread per query row):
//   s_j = scale q.k_j;  online: m' = max(m, s_j), l = l e^(m-m') + e^(s_j-m'),
//   acc = acc e^(m-m') + e^(s_j-m') v_j;  out = acc / l;  lse = m + log l
// Backward, from the saved lse and D = dO.O:
//   p_j = exp(s_j - lse), dp_j = dO.v_j, ds_j = p_j (dp_j - D)
//   dq = scale sum_j ds_j k_j   (one thread per query row)
//   dk_j = scale sum_{h,t} ds q_t,  dv_j = sum_{h,t} p dO_t   (one thread per key row)

struct Params {
    b: u32,
    t: u32,
    s: u32,
    nh: u32,
    nkv: u32,
    scale: f32,
    causal: u32,
    has_ranges: u32,
    q_sb: u32,
    q_st: u32,
    q_off: u32,
    // attn_bwd_dkdv: the first of the hn query heads of the kv group this dispatch sums
    // over, and whether it adds to dk/dv (the dispatches after the first)
    hh: u32,
    k_sb: u32,
    k_st: u32,
    k_off: u32,
    acc: u32,
    v_sb: u32,
    v_st: u32,
    v_off: u32,
    hn: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> Q: array<f32>;
@group(0) @binding(2) var<storage, read> K: array<f32>;
@group(0) @binding(3) var<storage, read> V: array<f32>;
@group(0) @binding(4) var<storage, read> R: array<u32>;
@group(0) @binding(5) var<storage, read_write> O: array<f32>;
@group(0) @binding(6) var<storage, read_write> L: array<f32>;
@group(0) @binding(7) var<storage, read> ST: array<f32>;
@group(0) @binding(8) var<storage, read> DO: array<f32>;

const HD: u32 = {{HD}}u;
const BKV: u32 = {{BKV}}u;
const WQ: u32 = {{WQ}}u;
// U4 = 1 when HD is a multiple of 4: the per-key loops over a head's HD elements take
// four per iteration (same order of operations). This keeps a thread's loop iterations
// under llvmpipe's limiter: lavapipe ends every loop of an invocation, silently, once
// their iterations together reach 65,535 (a 448-token forward at HD 64 hit it).
const STEP: u32 = {{STEP}}u;

// Row stats for masked rows: exp(s - LSE_MASKED) == 0.
const LSE_MASKED: f32 = 1.0e30;

var<workgroup> T1: array<f32, BKV * HD>;
var<workgroup> T2: array<f32, BKV * HD>;
var<workgroup> RL: array<f32, BKV>;
var<workgroup> RD: array<f32, BKV>;
// Packed sequences (has_ranges 2 or 3): the workgroup's first key / last query, reduced with
// atomics and handed out uniformly, so tiles outside every thread's sequence are skipped.
var<workgroup> KMIN: atomic<u32>;
var<workgroup> KMAX: atomic<u32>;
var<workgroup> KOUT: u32;
// Answers after a shared prompt (has_ranges 3): the hole all the workgroup's queries share.
var<workgroup> HLO: atomic<u32>;
var<workgroup> HHI: atomic<u32>;
var<workgroup> HOUT: vec2<u32>;

// With per-query ranges, the least of the threads' `lo` (their first key; u32 max for a
// thread with none), the same value in every thread; 0 otherwise.
fn block_key_start(lo: u32, lid: u32) -> u32 {
    if (P.has_ranges < 2u) {
        return 0u;
    }
    if (lid == 0u) {
        atomicStore(&KMIN, 0xffffffffu);
    }
    workgroupBarrier();
    atomicMin(&KMIN, lo);
    workgroupBarrier();
    if (lid == 0u) {
        KOUT = atomicLoad(&KMIN);
    }
    return workgroupUniformLoad(&KOUT);
}

// With per-query ranges (each query's range is its own sequence, S = T), one past the
// last query that sees any of the workgroup's keys: the greatest of their sequences'
// ends (`end`, 0 for a thread with no key), the same value in every thread; T otherwise.
fn block_query_end(end: u32, lid: u32) -> u32 {
    if (P.has_ranges < 2u || P.s != P.t) {
        return P.t;
    }
    if (lid == 0u) {
        atomicStore(&KMAX, 0u);
    }
    workgroupBarrier();
    atomicMax(&KMAX, end);
    workgroupBarrier();
    if (lid == 0u) {
        KOUT = atomicLoad(&KMAX);
    }
    return min(workgroupUniformLoad(&KOUT), P.t);
}

// With holes in the key ranges (has_ranges 3), the keys no query of the workgroup sees
// between its first and last: the greatest of the threads' hole starts to the least of
// their hole ends (a thread without a query counts for nothing), the same value in every
// thread; an empty range otherwise.
fn block_hole(ks: vec2<u32>, live: bool, lid: u32) -> vec2<u32> {
    if (P.has_ranges != 3u) {
        return vec2<u32>(0u, 0u);
    }
    if (lid == 0u) {
        atomicStore(&HLO, 0u);
        atomicStore(&HHI, 0xffffffffu);
    }
    workgroupBarrier();
    if (live) {
        atomicMax(&HLO, ks.x);
        atomicMin(&HHI, ks.y);
    }
    workgroupBarrier();
    if (lid == 0u) {
        HOUT = vec2<u32>(atomicLoad(&HLO), atomicLoad(&HHI));
    }
    return workgroupUniformLoad(&HOUT);
}

// Valid keys [lo, hi) for query t of batch bi.
fn key_range(bi: u32, t: u32) -> vec2<u32> {
    var lo = 0u;
    var hi = P.s;
    if (P.has_ranges == 1u) {
        lo = R[2u * bi];
        hi = min(R[2u * bi + 1u], P.s);
    } else if (P.has_ranges == 2u) {
        let i = bi * P.t + t;
        lo = R[2u * i];
        hi = min(R[2u * i + 1u], P.s);
    } else if (P.has_ranges == 3u) {
        let i = bi * P.t + t;
        lo = R[4u * i];
        hi = min(R[4u * i + 1u], P.s);
    }
    if (P.causal == 1u) {
        hi = min(hi, t + P.s - P.t + 1u);
    }
    return vec2<u32>(lo, max(hi, lo));
}

// The hole [a, b) in query t's keys (has_ranges 3), else an empty one.
fn key_skip(bi: u32, t: u32) -> vec2<u32> {
    if (P.has_ranges == 3u) {
        let i = bi * P.t + t;
        return vec2<u32>(R[4u * i + 2u], R[4u * i + 3u]);
    }
    return vec2<u32>(0u, 0u);
}

// Whether key j is one query sees, given its range kr and hole ks.
fn sees(j: u32, kr: vec2<u32>, ks: vec2<u32>) -> bool {
    return j >= kr.x && j < kr.y && !(j >= ks.x && j < ks.y);
}

fn q_index(bi: u32, t: u32, h: u32) -> u32 {
    return P.q_off + bi * P.q_sb + t * P.q_st + h * HD;
}
fn k_index(bi: u32, j: u32, g: u32) -> u32 {
    return P.k_off + bi * P.k_sb + j * P.k_st + g * HD;
}
fn v_index(bi: u32, j: u32, g: u32) -> u32 {
    return P.v_off + bi * P.v_sb + j * P.v_st + g * HD;
}
// Dense (B, T, NH, HD) index of o / dO / dq.
fn o_index(bi: u32, t: u32, h: u32) -> u32 {
    return ((bi * P.t + t) * P.nh + h) * HD;
}

// Keys that any query of the block [t0, t0 + WQ) may see (workgroup-uniform).
fn block_key_end(t0: u32) -> u32 {
    if (P.causal == 1u) {
        let tl = min(t0 + WQ, P.t);
        return min(P.s, tl + P.s - P.t);
    }
    return P.s;
}

// Load keys j0.. of kv head g into T1 (K) and T2 (V).
fn load_kv(bi: u32, g: u32, j0: u32, lid: u32) {
    for (var e = lid; e < BKV * HD; e = e + WQ) {
        let j = j0 + e / HD;
        let d = e % HD;
        var kv = 0.0;
        var vv = 0.0;
        if (j < P.s) {
            kv = K[k_index(bi, j, g) + d];
            vv = V[v_index(bi, j, g) + d];
        }
        T1[e] = kv;
        T2[e] = vv;
    }
}

@compute @workgroup_size(WQ)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bi = wid.z;
    let h = wid.y;
    let t0 = wid.x * WQ;
    let t = t0 + lid;
    let g = h / (P.nh / P.nkv);
    let live = t < P.t;
    var q: array<f32, HD>;
    var acc: array<f32, HD>;
    var kr = vec2<u32>(0u, 0u);
    var ks = vec2<u32>(0u, 0u);
    if (live) {
        let qo = q_index(bi, t, h);
        for (var e = 0u; e < HD; e = e + 1u) {
            q[e] = Q[qo + e] * P.scale;
        }
        kr = key_range(bi, t);
        ks = key_skip(bi, t);
    }
    var m = -1.0e30;
    var l = 0.0;
    let kend = block_key_end(t0);
    var lo = 0xffffffffu;
    if (live && kr.x < kr.y) {
        lo = kr.x;
    }
    let kstart = block_key_start(lo, lid) / BKV * BKV;
    let hole = block_hole(ks, live, lid);
    for (var j0 = kstart; j0 < kend; j0 = j0 + BKV) {
        // a tile inside every query's hole (the answers before theirs) adds nothing
        if (j0 >= hole.x && j0 + BKV <= hole.y) {
            continue;
        }
        load_kv(bi, g, j0, lid);
        workgroupBarrier();
        let jn = min(BKV, kend - j0);
        for (var jj = 0u; jj < jn; jj = jj + 1u) {
            let j = j0 + jj;
            if (!sees(j, kr, ks)) {
                continue;
            }
            var sc = 0.0;
            for (var e = 0u; e < HD; e = e + STEP) {
                sc = sc + q[e] * T1[jj * HD + e];
#if U4
                sc = sc + q[(e + 1u)] * T1[jj * HD + (e + 1u)];
                sc = sc + q[(e + 2u)] * T1[jj * HD + (e + 2u)];
                sc = sc + q[(e + 3u)] * T1[jj * HD + (e + 3u)];
#endif
            }
            let mn = max(m, sc);
            let corr = exp(m - mn);
            let p = exp(sc - mn);
            l = l * corr + p;
            for (var e = 0u; e < HD; e = e + STEP) {
                acc[e] = acc[e] * corr + p * T2[jj * HD + e];
#if U4
                acc[(e + 1u)] = acc[(e + 1u)] * corr + p * T2[jj * HD + (e + 1u)];
                acc[(e + 2u)] = acc[(e + 2u)] * corr + p * T2[jj * HD + (e + 2u)];
                acc[(e + 3u)] = acc[(e + 3u)] * corr + p * T2[jj * HD + (e + 3u)];
#endif
            }
            m = mn;
        }
        workgroupBarrier();
    }
    if (live) {
        let oo = o_index(bi, t, h);
        let li = (bi * P.nh + h) * P.t + t;
        if (l > 0.0) {
            let inv = 1.0 / l;
            for (var e = 0u; e < HD; e = e + 1u) {
                O[oo + e] = acc[e] * inv;
            }
            L[li] = m + log(l);
        } else {
            for (var e = 0u; e < HD; e = e + 1u) {
                O[oo + e] = 0.0;
            }
            L[li] = LSE_MASKED;
        }
    }
}

// stats[2r] = lse[r], stats[2r+1] = D[r] = dO . O, for rows r = (b, h, t).
// Bindings: Q = O (forward output), K = lse, DO = dO, L = stats.
@compute @workgroup_size(WQ)
fn attn_bwd_pre(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.y * nwg.x * WQ + gid.x;
    if (r >= P.b * P.nh * P.t) {
        return;
    }
    let t = r % P.t;
    let h = (r / P.t) % P.nh;
    let bi = r / (P.t * P.nh);
    let oo = o_index(bi, t, h);
    var d = 0.0;
    for (var e = 0u; e < HD; e = e + 1u) {
        d = d + DO[oo + e] * Q[oo + e];
    }
    L[2u * r] = K[r];
    L[2u * r + 1u] = d;
}

// dq: one thread per query row; O holds dq.
@compute @workgroup_size(WQ)
fn attn_bwd_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bi = wid.z;
    let h = wid.y;
    let t0 = wid.x * WQ;
    let t = t0 + lid;
    let g = h / (P.nh / P.nkv);
    let live = t < P.t;
    var q: array<f32, HD>;
    var dout: array<f32, HD>;
    var dq: array<f32, HD>;
    var kr = vec2<u32>(0u, 0u);
    var ks = vec2<u32>(0u, 0u);
    var lse = 0.0;
    var dd = 0.0;
    if (live) {
        let qo = q_index(bi, t, h);
        let oo = o_index(bi, t, h);
        for (var e = 0u; e < HD; e = e + 1u) {
            q[e] = Q[qo + e] * P.scale;
            dout[e] = DO[oo + e];
        }
        kr = key_range(bi, t);
        ks = key_skip(bi, t);
        let r = (bi * P.nh + h) * P.t + t;
        lse = ST[2u * r];
        dd = ST[2u * r + 1u];
    }
    let kend = block_key_end(t0);
    var lo = 0xffffffffu;
    if (live && kr.x < kr.y) {
        lo = kr.x;
    }
    let kstart = block_key_start(lo, lid) / BKV * BKV;
    let hole = block_hole(ks, live, lid);
    for (var j0 = kstart; j0 < kend; j0 = j0 + BKV) {
        // a tile inside every query's hole (the answers before theirs) adds nothing
        if (j0 >= hole.x && j0 + BKV <= hole.y) {
            continue;
        }
        load_kv(bi, g, j0, lid);
        workgroupBarrier();
        let jn = min(BKV, kend - j0);
        for (var jj = 0u; jj < jn; jj = jj + 1u) {
            let j = j0 + jj;
            if (!sees(j, kr, ks)) {
                continue;
            }
            var sc = 0.0;
            var dp = 0.0;
            for (var e = 0u; e < HD; e = e + STEP) {
                sc = sc + q[e] * T1[jj * HD + e];
                dp = dp + dout[e] * T2[jj * HD + e];
#if U4
                sc = sc + q[(e + 1u)] * T1[jj * HD + (e + 1u)];
                dp = dp + dout[(e + 1u)] * T2[jj * HD + (e + 1u)];
                sc = sc + q[(e + 2u)] * T1[jj * HD + (e + 2u)];
                dp = dp + dout[(e + 2u)] * T2[jj * HD + (e + 2u)];
                sc = sc + q[(e + 3u)] * T1[jj * HD + (e + 3u)];
                dp = dp + dout[(e + 3u)] * T2[jj * HD + (e + 3u)];
#endif
            }
            let ds = exp(sc - lse) * (dp - dd);
            for (var e = 0u; e < HD; e = e + STEP) {
                dq[e] = dq[e] + ds * T1[jj * HD + e];
#if U4
                dq[(e + 1u)] = dq[(e + 1u)] + ds * T1[jj * HD + (e + 1u)];
                dq[(e + 2u)] = dq[(e + 2u)] + ds * T1[jj * HD + (e + 2u)];
                dq[(e + 3u)] = dq[(e + 3u)] + ds * T1[jj * HD + (e + 3u)];
#endif
            }
        }
        workgroupBarrier();
    }
    if (live) {
        let oo = o_index(bi, t, h);
        for (var e = 0u; e < HD; e = e + 1u) {
            O[oo + e] = dq[e] * P.scale;
        }
    }
}

// dk, dv: one thread per key row j of kv head g, summing over the query heads of its
// group and every query that sees it. O holds dk, L holds dv (both dense (B, S, NKV, HD)).
@compute @workgroup_size(WQ)
fn attn_bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bi = wid.z;
    let g = wid.y;
    let j0 = wid.x * WQ;
    let j = j0 + lid;
    let group = P.nh / P.nkv;
    var k: array<f32, HD>;
    var v: array<f32, HD>;
    var dk: array<f32, HD>;
    var dv: array<f32, HD>;
    var valid = j < P.s;
    if (valid) {
        let ko = k_index(bi, j, g);
        let vo = v_index(bi, j, g);
        for (var e = 0u; e < HD; e = e + 1u) {
            k[e] = K[ko + e] * P.scale;
            v[e] = V[vo + e];
        }
        if (P.has_ranges == 1u) {
            valid = j >= R[2u * bi] && j < R[2u * bi + 1u];
        }
    }
    // first query that can see key j0 (workgroup-uniform)
    var tstart = 0u;
    if (P.causal == 1u && j0 + P.t > P.s) {
        tstart = j0 + P.t - P.s;
    }
    // packed sequences: key j's own range is its sequence, whose queries alone see it
    var qend = 0u;
    if (j < P.s && P.has_ranges == 2u && P.s == P.t) {
        qend = R[2u * (bi * P.t + j) + 1u];
    } else if (j < P.s && P.has_ranges == 3u && P.s == P.t) {
        // the end of key j's group, whose queries alone see it
        qend = R[4u * (bi * P.t + j) + 1u];
    }
    let tend = block_query_end(qend, lid);
    for (var hh = P.hh; hh < P.hh + P.hn; hh = hh + 1u) {
        let h = g * group + hh;
        for (var ta = tstart; ta < tend; ta = ta + BKV) {
            // T1 = q rows, T2 = dO rows, RL/RD = their lse and D
            for (var e = lid; e < BKV * HD; e = e + WQ) {
                let tt = ta + e / HD;
                let d = e % HD;
                var qv = 0.0;
                var dov = 0.0;
                if (tt < P.t) {
                    qv = Q[q_index(bi, tt, h) + d];
                    dov = DO[o_index(bi, tt, h) + d];
                }
                T1[e] = qv;
                T2[e] = dov;
            }
            for (var e = lid; e < BKV; e = e + WQ) {
                let tt = ta + e;
                var lv = LSE_MASKED;
                var dv0 = 0.0;
                if (tt < P.t) {
                    let r = (bi * P.nh + h) * P.t + tt;
                    lv = ST[2u * r];
                    dv0 = ST[2u * r + 1u];
                }
                RL[e] = lv;
                RD[e] = dv0;
            }
            workgroupBarrier();
            if (valid) {
                let tn = min(BKV, tend - ta);
                for (var ti = 0u; ti < tn; ti = ti + 1u) {
                    let tt = ta + ti;
                    if (P.causal == 1u && j > tt + P.s - P.t) {
                        continue;
                    }
                    if (P.has_ranges >= 2u) {
                        if (!sees(j, key_range(bi, tt), key_skip(bi, tt))) {
                            continue;
                        }
                    }
                    var sc = 0.0;
                    var dp = 0.0;
                    for (var e = 0u; e < HD; e = e + STEP) {
                        sc = sc + T1[ti * HD + e] * k[e];
                        dp = dp + T2[ti * HD + e] * v[e];
#if U4
                        sc = sc + T1[ti * HD + (e + 1u)] * k[(e + 1u)];
                        dp = dp + T2[ti * HD + (e + 1u)] * v[(e + 1u)];
                        sc = sc + T1[ti * HD + (e + 2u)] * k[(e + 2u)];
                        dp = dp + T2[ti * HD + (e + 2u)] * v[(e + 2u)];
                        sc = sc + T1[ti * HD + (e + 3u)] * k[(e + 3u)];
                        dp = dp + T2[ti * HD + (e + 3u)] * v[(e + 3u)];
#endif
                    }
                    let p = exp(sc - RL[ti]);
                    let ds = p * (dp - RD[ti]);
                    for (var e = 0u; e < HD; e = e + STEP) {
                        dv[e] = dv[e] + p * T2[ti * HD + e];
                        dk[e] = dk[e] + ds * T1[ti * HD + e];
#if U4
                        dv[(e + 1u)] = dv[(e + 1u)] + p * T2[ti * HD + (e + 1u)];
                        dk[(e + 1u)] = dk[(e + 1u)] + ds * T1[ti * HD + (e + 1u)];
                        dv[(e + 2u)] = dv[(e + 2u)] + p * T2[ti * HD + (e + 2u)];
                        dk[(e + 2u)] = dk[(e + 2u)] + ds * T1[ti * HD + (e + 2u)];
                        dv[(e + 3u)] = dv[(e + 3u)] + p * T2[ti * HD + (e + 3u)];
                        dk[(e + 3u)] = dk[(e + 3u)] + ds * T1[ti * HD + (e + 3u)];
#endif
                    }
                }
            }
            workgroupBarrier();
        }
    }
    if (j < P.s) {
        let o = ((bi * P.s + j) * P.nkv + g) * HD;
        for (var e = 0u; e < HD; e = e + 1u) {
            var prev_k = 0.0;
            var prev_v = 0.0;
            if (P.acc == 1u) {
                prev_k = O[o + e];
                prev_v = L[o + e];
            }
            O[o + e] = prev_k + dk[e] * P.scale;
            L[o + e] = prev_v + dv[e];
        }
    }
}
