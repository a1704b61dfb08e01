// The next token of each row of logits (rows, V), on the device: the rules of
// src/model/sampling.rs (greedy; temperature with top-k, top-p and min-p as one prefix
// cut in (logit descending, id ascending) order; an inverse-CDF draw in id order with
// the row's uniform U). One 256-thread workgroup per row; nothing is sorted:
// - top-k: the k-th largest logit by a binary search over the order-preserving u32 image
//   of the floats (32 counting passes);
// - top-p: the cut logit by the same search over the kept mass, then ties at it walked in
//   id order;
// - the draw: each thread sums the kept weights of its contiguous slice of ids, thread 0
//   scans the 256 partial sums, and the slice holding the goal walks its ids.
// Per row only the id and its untempered log-probability come back: OUT[2 row] = id,
// OUT[2 row + 1] = bits of log_softmax(x)[id]. FORCED[row] < V takes that id instead.

struct Params {
    rows: u32,
    v: u32,
    top_k: u32,
    greedy: u32,
    inv_t: f32,
    top_p: f32,
    // T ln(min_p), or NEG_BIG when min-p is off
    min_p_log: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> U: array<f32>;
@group(0) @binding(3) var<storage, read> FORCED: array<u32>;
@group(0) @binding(4) var<storage, read_write> OUT: array<u32>;

const ALL: u32 = 0xffffffffu;

var<workgroup> part_f: array<f32, 256>;
var<workgroup> part_u: array<u32, 256>;
var<workgroup> found: vec2<u32>;
var<workgroup> found_left: f32;
var<workgroup> forced_id: u32;

// Floats to u32 keys with the same order.
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn unkey(k: u32) -> f32 {
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}

// Token j stays under the cut (theta, last).
fn keeps(x: f32, j: u32, theta: f32, last: u32) -> bool {
    return x > theta || (x == theta && j <= last);
}

// Workgroup reductions whose results are uniform (loaded with workgroupUniformLoad), so
// that loops and branches around later barriers may depend on them.
fn u_sum(v: u32, lid: u32) -> u32 {
    part_u[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            part_u[lid] = part_u[lid] + part_u[lid + s];
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&part_u[0]);
    workgroupBarrier();
    return r;
}

fn f_sum(v: f32, lid: u32) -> f32 {
    part_f[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            part_f[lid] = part_f[lid] + part_f[lid + s];
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&part_f[0]);
    workgroupBarrier();
    return r;
}

fn f_max(v: f32, lid: u32) -> f32 {
    part_f[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            part_f[lid] = max(part_f[lid], part_f[lid + s]);
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&part_f[0]);
    workgroupBarrier();
    return r;
}

// First maximum (smallest id among equal values).
fn wg_argmax(v: f32, j: u32, lid: u32) -> u32 {
    part_f[lid] = v;
    part_u[lid] = j;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = part_f[lid + s];
            let oj = part_u[lid + s];
            if (ov > part_f[lid] || (ov == part_f[lid] && oj < part_u[lid])) {
                part_f[lid] = ov;
                part_u[lid] = oj;
            }
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&part_u[0]);
    workgroupBarrier();
    return r;
}

// The first id of `slice` order at which the running sum of the weights of the tokens
// `mode` selects passes `goal` (strictly when `strict`, else reaching it): mode 0 the
// tokens the cut keeps, mode 1 those equal to `tie` that it keeps. Falls back to the last
// selected positive weight.
fn walk(base: u32, m: f32, theta: f32, last: u32, mode: u32, tie: f32, goal: f32, strict: bool, lid: u32) -> u32 {
    let chunk = (P.v + 255u) / 256u;
    let lo = min(lid * chunk, P.v);
    let hi = min(lo + chunk, P.v);
    var s = 0.0;
    for (var j = lo; j < hi; j = j + 1u) {
        let x = X[base + j];
        if (keeps(x, j, theta, last) && (mode == 0u || x == tie)) {
            s = s + exp((x - m) * P.inv_t);
        }
    }
    part_f[lid] = s;
    workgroupBarrier();
    if (lid == 0u) {
        var cum = 0.0;
        var owner = ALL;
        var last_pos = ALL;
        for (var i = 0u; i < 256u; i = i + 1u) {
            let p = part_f[i];
            if (p > 0.0) {
                last_pos = i;
                let passes = select(cum + p >= goal, cum + p > goal, strict);
                if (owner == ALL && passes) {
                    owner = i;
                    found_left = goal - cum;
                }
            }
            cum = cum + p;
        }
        if (owner == ALL) {
            owner = last_pos;
            found_left = 3.0e38;
        }
        found = vec2<u32>(owner, ALL);
    }
    let owner = workgroupUniformLoad(&found).x;
    if (lid == owner) {
        var left = found_left;
        var pick = ALL;
        var last_j = ALL;
        for (var j = lo; j < hi; j = j + 1u) {
            let x = X[base + j];
            if (keeps(x, j, theta, last) && (mode == 0u || x == tie)) {
                let w = exp((x - m) * P.inv_t);
                if (w > 0.0) {
                    last_j = j;
                    let passes = select(w >= left, w > left, strict);
                    if (passes) {
                        pick = j;
                        break;
                    }
                }
                left = left - w;
            }
        }
        if (pick == ALL) {
            pick = last_j;
        }
        found = vec2<u32>(owner, pick);
    }
    let r = workgroupUniformLoad(&found).y;
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn sample_rows(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.rows) {
        return;
    }
    let base = row * P.v;
    var mx = NEG_BIG;
    for (var j = lid; j < P.v; j = j + 256u) {
        mx = max(mx, X[base + j]);
    }
    let m = f_max(mx, lid);
    var z = 0.0;
    for (var j = lid; j < P.v; j = j + 256u) {
        z = z + exp(X[base + j] - m);
    }
    let lse = m + log(f_sum(z, lid));
    if (lid == 0u) {
        forced_id = FORCED[row];
    }
    var id = workgroupUniformLoad(&forced_id);
    if (id >= P.v && P.greedy == 1u) {
        var bv = NEG_BIG;
        var bj = ALL;
        for (var j = lid; j < P.v; j = j + 256u) {
            let x = X[base + j];
            if (bj == ALL || x > bv) {
                bv = x;
                bj = j;
            }
        }
        id = wg_argmax(bv, bj, lid);
    } else if (id >= P.v) {
        var theta = NEG_BIG;
        var last = ALL;
        if (P.top_k > 0u && P.top_k < P.v) {
            // the largest key t with at least k logits >= t is the k-th largest
            var lo = 0u;
            var hi = ALL;
            for (var it = 0u; it < 32u && lo < hi; it = it + 1u) {
                let mid = lo + (hi - lo) / 2u + 1u;
                var c = 0u;
                for (var j = lid; j < P.v; j = j + 256u) {
                    c = c + select(0u, 1u, key(X[base + j]) >= mid);
                }
                if (u_sum(c, lid) >= P.top_k) {
                    lo = mid;
                } else {
                    hi = mid - 1u;
                }
            }
            theta = unkey(lo);
        }
        if (P.top_p < 1.0) {
            var kept = 0.0;
            for (var j = lid; j < P.v; j = j + 256u) {
                let x = X[base + j];
                if (keeps(x, j, theta, last)) {
                    kept = kept + exp((x - m) * P.inv_t);
                }
            }
            let goal = P.top_p * f_sum(kept, lid);
            // the largest key t whose kept tokens >= t hold the goal mass
            var lo = key(theta);
            var hi = key(m);
            for (var it = 0u; it < 33u && lo < hi; it = it + 1u) {
                let mid = lo + (hi - lo) / 2u + 1u;
                var s = 0.0;
                for (var j = lid; j < P.v; j = j + 256u) {
                    let x = X[base + j];
                    if (key(x) >= mid && keeps(x, j, theta, last)) {
                        s = s + exp((x - m) * P.inv_t);
                    }
                }
                if (f_sum(s, lid) >= goal) {
                    lo = mid;
                } else {
                    hi = mid - 1u;
                }
            }
            let tp = unkey(lo);
            // the mass above the cut logit, then its ties in id order until the goal
            var above = 0.0;
            for (var j = lid; j < P.v; j = j + 256u) {
                let x = X[base + j];
                if (x > tp && keeps(x, j, theta, last)) {
                    above = above + exp((x - m) * P.inv_t);
                }
            }
            let need = goal - f_sum(above, lid);
            let tl = walk(base, m, theta, last, 1u, tp, need, false, lid);
            if (tp > theta || (tp == theta && tl < last)) {
                theta = tp;
                last = tl;
            }
        }
        if (P.min_p_log > NEG_BIG) {
            let tm = m + P.min_p_log;
            if (tm > theta) {
                theta = tm;
                last = ALL;
            }
        }
        var kept = 0.0;
        for (var j = lid; j < P.v; j = j + 256u) {
            let x = X[base + j];
            if (keeps(x, j, theta, last)) {
                kept = kept + exp((x - m) * P.inv_t);
            }
        }
        let total = f_sum(kept, lid);
        id = walk(base, m, theta, last, 0u, 0.0, U[row] * total, true, lid);
    }
    if (lid == 0u) {
        OUT[2u * row] = id;
        OUT[2u * row + 1u] = bitcast<u32>(X[base + id] - lse);
    }
}
