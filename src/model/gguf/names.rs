//! Hugging Face tensor names <-> llama.cpp's, and llama.cpp's interleave of Llama's q/k
//! projection rows.
//!
//! | Hugging Face                                   | llama.cpp              |
//! |------------------------------------------------|------------------------|
//! | `model.embed_tokens.weight`                    | `token_embd.weight`    |
//! | `model.norm.weight`                            | `output_norm.weight`   |
//! | `lm_head.weight`                               | `output.weight`        |
//! | `model.layers.N.input_layernorm.weight`        | `blk.N.attn_norm.weight` |
//! | `model.layers.N.post_attention_layernorm.weight` | `blk.N.ffn_norm.weight` |
//! | `model.layers.N.self_attn.{q,k,v,o}_proj.*`    | `blk.N.attn_{q,k,v,output}.*` |
//! | `model.layers.N.mlp.{gate,up,down}_proj.*`     | `blk.N.ffn_{gate,up,down}.*` |

const GLOBAL: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

const LAYER: [(&str, &str); 9] = [
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Split `prefix N . rest` into (N, rest).
fn layer_of<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (n, rest) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    Some((n.parse().ok()?, rest))
}

/// llama.cpp's name for a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = GLOBAL.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (n, rest) = layer_of(hf, "model.layers.")?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, g) = LAYER.iter().find(|(h, _)| *h == module)?;
    Some(format!("blk.{n}.{g}.{kind}"))
}

/// The Hugging Face name of a llama.cpp tensor name.
pub fn hf_name(g: &str) -> Option<String> {
    if let Some((h, _)) = GLOBAL.iter().find(|(_, x)| *x == g) {
        return Some(h.to_string());
    }
    let (n, rest) = layer_of(g, "blk.")?;
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (h, _) = LAYER.iter().find(|(_, x)| *x == module)?;
    Some(format!("model.layers.{n}.{h}.{kind}"))
}

/// "q" or "k" when `hf` is a q_proj or k_proj weight or bias (whose rows llama.cpp
/// interleaves for Llama).
pub fn qk_of(hf: &str) -> Option<&'static str> {
    if hf.contains(".self_attn.q_proj.") {
        Some("q")
    } else if hf.contains(".self_attn.k_proj.") {
        Some("k")
    } else {
        None
    }
}

/// llama.cpp's conversion reorders each head's rows from Hugging Face's rotate-half layout
/// (the first half of the head dim, then the second) to interleaved pairs: Hugging Face
/// row `h*HD + s*HD/2 + i` (s = 0, 1) is stored at row `h*HD + 2*i + s`. This maps a
/// stored row index to its Hugging Face one. `shape` is (rows, ...); rows = heads * HD.
fn hf_row(stored: usize, hd: usize) -> usize {
    let (h, r) = (stored / hd, stored % hd);
    h * hd + (r % 2) * (hd / 2) + r / 2
}

/// Undo the interleave: rows in Hugging Face order.
pub fn unpermute_rows<T: Copy>(data: &[T], shape: &[usize], heads: usize) -> Vec<T> {
    reorder(data, shape, heads, true)
}

/// Apply the interleave: rows in llama.cpp's order.
pub fn permute_rows<T: Copy>(data: &[T], shape: &[usize], heads: usize) -> Vec<T> {
    reorder(data, shape, heads, false)
}

fn reorder<T: Copy>(data: &[T], shape: &[usize], heads: usize, to_hf: bool) -> Vec<T> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    assert!(
        heads > 0 && rows.is_multiple_of(heads) && (rows / heads).is_multiple_of(2),
        "q/k rows {rows} over {heads} heads"
    );
    let hd = rows / heads;
    let mut out = data.to_vec();
    for s in 0..rows {
        let h = hf_row(s, hd);
        let (from, to) = if to_hf { (s, h) } else { (h, s) };
        out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.29.post_attention_layernorm.weight",
            "model.layers.7.self_attn.q_proj.weight",
            "model.layers.7.self_attn.k_proj.bias",
            "model.layers.12.self_attn.o_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
        ] {
            let g = gguf_name(hf).unwrap();
            assert_eq!(hf_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(
            gguf_name("model.layers.3.mlp.gate_proj.weight").unwrap(),
            "blk.3.ffn_gate.weight"
        );
        assert_eq!(gguf_name("model.layers.03.mlp.gate_proj.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn interleave_is_llama_cpp_s() {
        // 2 heads of dim 4, one column: HF rows [h0: a0 a1 b0 b1][h1: ...], where a are the
        // first halves and b the second; llama.cpp stores (a0 b0 a1 b1) per head
        let hf: Vec<u32> = vec![0, 1, 10, 11, 20, 21, 30, 31];
        let stored = permute_rows(&hf, &[8, 1], 2);
        assert_eq!(stored, vec![0, 10, 1, 11, 20, 30, 21, 31]);
        assert_eq!(unpermute_rows(&stored, &[8, 1], 2), hf);
        // with columns, whole rows move
        let m: Vec<u32> = (0..24).collect();
        assert_eq!(unpermute_rows(&permute_rows(&m, &[4, 6], 1), &[4, 6], 1), m);
    }
}
