// Strided copy of 4-byte elements (any dtype, moved as raw u32 bits) and fill.

struct Params {
    n: u32,
    os: u32,
    od: u32,
    value: u32,
    shape: array<vec4<u32>, 2>,
    ss: array<vec4<u32>, 2>,
    sd: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> S: array<u32>;
@group(0) @binding(2) var<storage, read_write> D: array<u32>;

// dst[strided(i)] = src[strided(i)]
@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    var rem = i;
    var s = P.os;
    var d = P.od;
    for (var k = 7; k >= 0; k = k - 1) {
        let q = u32(k) / 4u;
        let r = u32(k) % 4u;
        let size = P.shape[q][r];
        let c = rem % size;
        rem = rem / size;
        s = s + c * P.ss[q][r];
        d = d + c * P.sd[q][r];
    }
    D[d] = S[s];
}

// dst[od + i] = value (raw bits)
@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= P.n) {
        return;
    }
    D[P.od + i] = P.value;
}
