// RMSNorm over rows of (rows, C):  rstd = 1 / sqrt(mean(x^2) + eps),  y = x * rstd * w.
// Backward, with gw = g * w:
//   dx_j = rstd * gw_j - x_j * rstd^3 * mean_i(gw_i x_i)     (one workgroup per row)
//   dw_j = sum_rows g_j x_j rstd                              (one thread per column)
// Over the binding limit the host binds blocks of whole rows, so every kernel still sees
// its rows from 0; dw's blocks after the first add in (ACC).

struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read> W: array<f32>;
@group(0) @binding(3) var<storage, read> G: array<f32>;
@group(0) @binding(4) var<storage, read_write> Y: array<f32>;
@group(0) @binding(5) var<storage, read_write> R: array<f32>;
@group(0) @binding(6) var<storage, read_write> DW: array<f32>;

@compute @workgroup_size(256)
fn rmsnorm_fwd(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.rows) {
        return;
    }
    let base = row * P.c;
    var ss = 0.0;
    for (var j = lid; j < P.c; j = j + 256u) {
        let x = X[base + j];
        ss = ss + x * x;
    }
    ss = wg_sum(ss, lid);
    let r = inverseSqrt(ss / f32(P.c) + P.eps);
    if (lid == 0u) {
        R[row] = r;
    }
    for (var j = lid; j < P.c; j = j + 256u) {
        Y[base + j] = X[base + j] * r * W[j];
    }
}

// Y holds dx here.
@compute @workgroup_size(256)
fn rmsnorm_bwd_dx(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.rows) {
        return;
    }
    let base = row * P.c;
    var dot = 0.0;
    for (var j = lid; j < P.c; j = j + 256u) {
        dot = dot + G[base + j] * W[j] * X[base + j];
    }
    dot = wg_sum(dot, lid) / f32(P.c);
    let r = R[row];
    let k = dot * r * r * r;
    for (var j = lid; j < P.c; j = j + 256u) {
        Y[base + j] = r * G[base + j] * W[j] - X[base + j] * k;
    }
}

@compute @workgroup_size(256)
fn rmsnorm_bwd_dw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = linear_id(gid, nwg);
    if (j >= P.c) {
        return;
    }
    var acc = 0.0;
    for (var row = 0u; row < P.rows; row = row + 1u) {
        let e = row * P.c + j;
        acc = acc + G[e] * X[e] * R[row];
    }
#if ACC
    // a later block of rows adds to the earlier ones
    DW[j] = DW[j] + acc;
#else
    DW[j] = acc;
#endif
}
