// Sum / max along one axis of x viewed as (outer, n, inner), and the max backward.
// OP: 0 = sum, 1 = max (also writes the index of the first maximum).

struct Params {
    outer: u32,
    n: u32,
    inner: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> V: array<f32>;
@group(0) @binding(3) var<storage, read_write> I: array<u32>;

const OP: u32 = {{OP}}u;

var<workgroup> sidx: array<u32, 256>;

// inner == 1: one workgroup per row, a tree reduction over its n elements.
@compute @workgroup_size(256)
fn reduce_rows(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.outer) {
        return;
    }
    let base = row * P.n;
    if (OP == 0u) {
        var acc = 0.0;
        for (var j = lid; j < P.n; j = j + 256u) {
            acc = acc + X[base + j];
        }
        let total = wg_sum(acc, lid);
        if (lid == 0u) {
            V[row] = total;
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
        V[row] = red_f[0];
        I[row] = sidx[0];
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
    let base = o * P.n * P.inner + i;
    if (OP == 0u) {
        var acc = 0.0;
        for (var j = 0u; j < P.n; j = j + 1u) {
            acc = acc + X[base + j * P.inner];
        }
        V[e] = acc;
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
        V[e] = best;
        I[e] = arg;
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
    V[e] = select(0.0, X[k], I[k] == j);
}
