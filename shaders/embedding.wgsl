// Embedding gather out[n, j] = W[ids[n], j], and its backward, a scatter-add
// dW[ids[n], j] += g[n, j]. WGSL has no float atomics, so the add is a compare-exchange
// loop on the f32 bits; repeated ids may sum in any order.
// A table over the binding limit is bound in vocabulary blocks: one dispatch per block
// of rows v0..v0+vb, each handling only the ids inside it (ids past v gather zeros, in
// the block that starts at 0).

struct Params {
    n: u32,
    c: u32,
    v: u32,
    // this dispatch's vocabulary block, and where its row v0 starts in W (gather) or
    // DW (scatter_add)
    v0: u32,
    vb: u32,
    w_off: u32,
    // offsets of this dispatch's first id in IDS and first row in OUT (gather) or in
    // the gradient W (scatter_add): long sequences go in blocks of tokens too
    ids_off: u32,
    o_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
// W16: the table is stored in 16 bits (f16, or bf16 when BF16), two per u32 word.
#if W16
@group(0) @binding(1) var<storage, read> W: array<u32>;
fn load_w(i: u32) -> f32 {
    let h = (W[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
    if ({{BF16}}u == 1u) {
        return bitcast<f32>(h << 16u);
    }
    return unpack2x16float(h).x;
}
#else
@group(0) @binding(1) var<storage, read> W: array<f32>;
fn load_w(i: u32) -> f32 {
    return W[i];
}
#endif
@group(0) @binding(2) var<storage, read> IDS: array<u32>;
@group(0) @binding(3) var<storage, read_write> OUT: array<f32>;
@group(0) @binding(4) var<storage, read_write> DW: array<atomic<u32>>;

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n * P.c) {
        return;
    }
    let id = IDS[P.ids_off + i / P.c];
    if (id >= P.v) {
        if (P.v0 == 0u) {
            OUT[P.o_off + i] = 0.0;
        }
        return;
    }
    let local = id - P.v0; // wraps past vb when id < v0
    if (local < P.vb) {
        OUT[P.o_off + i] = load_w(P.w_off + local * P.c + i % P.c);
    }
}

// W holds g here.
@compute @workgroup_size(256)
fn scatter_add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n * P.c) {
        return;
    }
    let id = IDS[P.ids_off + i / P.c];
    let local = id - P.v0; // wraps past vb when id < v0
    if (id >= P.v || local >= P.vb) {
        return;
    }
    let dst = P.w_off + local * P.c + i % P.c;
    let g = load_w(P.o_off + i);
    var old = atomicLoad(&DW[dst]);
    loop {
        let next = bitcast<u32>(bitcast<f32>(old) + g);
        let r = atomicCompareExchangeWeak(&DW[dst], old, next);
        if (r.exchanged) {
            break;
        }
        old = r.old_value;
    }
}
