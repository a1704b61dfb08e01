// Row-wise softmax / log_softmax over the last axis: one workgroup per row.
//   m = max_j x_j,  s = sum_j exp(x_j - m)
//   softmax_i = exp(x_i - m) / s,  log_softmax_i = x_i - m - log(s)

struct Params {
    rows: u32,
    n: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> X: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;

const LOG: u32 = {{LOG}}u;

@compute @workgroup_size(256)
fn softmax_rows(ids: RowIds) {
    let row = row_begin(ids);
    let lid = ids.lid;
    if (row >= P.rows) {
        return;
    }
    let base = row * P.n;
    var m = NEG_BIG;
    for (var j = lid; j < P.n; j = j + 256u) {
        m = max(m, X[base + j]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var j = lid; j < P.n; j = j + 256u) {
        s = s + exp(X[base + j] - m);
    }
    s = wg_sum(s, lid);
    let ls = log(s);
    for (var j = lid; j < P.n; j = j + 256u) {
        let x = X[base + j] - m;
        if (LOG == 1u) {
            Y[base + j] = x - ls;
        } else {
            Y[base + j] = exp(x) / s;
        }
    }
}
