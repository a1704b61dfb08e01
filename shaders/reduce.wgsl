// Sum / max along one axis of x viewed as (outer, n, inner), and the max backward.
// OP: 0 = sum, 1 = max (also writes the index of the first maximum).

struct Params {
    outer: u32,
    n: u32,
    inner: u32,
    // element offsets of X and of V/I inside their bindings (split dispatches)
    x_off: u32,
    v_off: u32,
    // scatter_dim only: I's offset (the reductions write I beside V, at v_off)
    i_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> V: array<f32>;
@group(0) @binding(3) var<storage, read_write> I: array<u32>;

const OP: u32 = {{OP}}u;
// ACC = 1: a sum adds into V (the later blocks of a slice split over the binding limit)
const ACC: u32 = {{ACC}}u;
// SQ = 1: a sum of squares (the gradient norm)
const SQ: u32 = {{SQ}}u;

fn term(x: f32) -> f32 {
    if (SQ == 1u) {
        return x * x;
    }
    return x;
}

var<workgroup> sidx: array<u32, 256>;

// inner == 1: one workgroup per row, a tree reduction over its n elements.
@compute @workgroup_size(256)
fn reduce_rows(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.outer) {
        return;
    }
    let base = P.x_off + row * P.n;
    if (OP == 0u) {
        var acc = 0.0;
        for (var j = lid; j < P.n; j = j + 256u) {
            acc = acc + term(X[base + j]);
        }
        let total = wg_sum(acc, lid);
        if (lid == 0u) {
            if (ACC == 1u) {
                V[P.v_off + row] = V[P.v_off + row] + total;
            } else {
                V[P.v_off + row] = total;
            }
        }
        return;
    }
    var best = NEG_BIG;
    var arg = 0xffffffffu;
    for (var j = lid; j < P.n; j = j + 256u) {
        let v = X[base + j];
        if (v > best || arg == 0xffffffffu) {
            best = v;
            arg = j;
        }
    }
    red_f[lid] = best;
    sidx[lid] = arg;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = red_f[lid + s];
            let oi = sidx[lid + s];
            let better = oi != 0xffffffffu && (sidx[lid] == 0xffffffffu || ov > red_f[lid] || (ov == red_f[lid] && oi < sidx[lid]));
            if (better) {
                red_f[lid] = ov;
                sidx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        V[P.v_off + row] = red_f[0];
        I[P.v_off + row] = sidx[0];
    }
}

// inner > 1: one thread per output (o, i), walking n with stride inner.
@compute @workgroup_size(256)
fn reduce_cols(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_id(gid, nwg);
    if (e >= P.outer * P.inner) {
        return;
    }
    let o = e / P.inner;
    let i = e % P.inner;
    let base = P.x_off + o * P.n * P.inner + i;
    if (OP == 0u) {
        var acc = 0.0;
        for (var j = 0u; j < P.n; j = j + 1u) {
            acc = acc + term(X[base + j * P.inner]);
        }
        if (ACC == 1u) {
            V[P.v_off + e] = V[P.v_off + e] + acc;
        } else {
            V[P.v_off + e] = acc;
        }
    } else {
        var best = X[base];
        var arg = 0u;
        for (var j = 1u; j < P.n; j = j + 1u) {
            let v = X[base + j * P.inner];
            if (v > best) {
                best = v;
                arg = j;
            }
        }
        V[P.v_off + e] = best;
        I[P.v_off + e] = arg;
    }
}

// dx[o, j, i] = g[o, i] if j == argmax[o, i] else 0   (X = g, I = argmax, V = dx)
@compute @workgroup_size(256)
fn scatter_dim(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let e = linear_id(gid, nwg);
    if (e >= P.outer * P.n * P.inner) {
        return;
    }
    let i = e % P.inner;
    let j = (e / P.inner) % P.n;
    let o = e / (P.inner * P.n);
    let k = o * P.inner + i;
    V[P.v_off + e] = select(0.0, X[P.x_off + k], I[P.i_off + k] == j);
}
