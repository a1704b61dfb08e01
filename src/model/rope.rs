//! Rotary tables. The inverse frequencies follow the config's rope type; the cos/sin
//! tables (positions x HD, halves duplicated as HF's `cat(freqs, freqs)`) feed the rope op.

use super::config::{Config, RopeScaling};
use crate::error::Result;
use crate::tensor::{Device, Tensor};

#[derive(Clone, Debug)]
pub struct Rope {
    /// HD/2 inverse frequencies.
    pub inv_freq: Vec<f32>,
    pub head_dim: usize,
}

impl Rope {
    pub fn new(cfg: &Config) -> Rope {
        let hd = cfg.head_dim;
        // inv_freq_i = 1 / theta^(2i / HD)
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / hd as f64))
            .collect();
        let inv: Vec<f64> = match cfg.rope_scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                // wavelengths above old/low are scaled down by `factor`, below old/high kept,
                // and in between blended by smooth = (old/wavelen - low) / (high - low)
                let (low_wl, high_wl) = (old / low_freq_factor, old / high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth =
                                (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        Rope {
            inv_freq: inv.into_iter().map(|f| f as f32).collect(),
            head_dim: hd,
        }
    }

    /// cos and sin tables `(B, T, HD)` for per-row positions `pos[b][t]`.
    pub fn tables(&self, pos: &[Vec<usize>], device: Device) -> Result<(Tensor, Tensor)> {
        let (b, t, hd) = (pos.len(), pos.first().map_or(0, |p| p.len()), self.head_dim);
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        for row in pos {
            for &p in row {
                // angle computed in f32 as HF does (position * inv_freq), halves duplicated
                let (c, sn): (Vec<f32>, Vec<f32>) = self
                    .inv_freq
                    .iter()
                    .map(|&f| ((p as f32 * f).cos(), (p as f32 * f).sin()))
                    .unzip();
                cos.extend(&c);
                cos.extend(&c);
                sin.extend(&sn);
                sin.extend(&sn);
            }
        }
        Ok((
            Tensor::from_vec(cos, &[b, t, hd], device)?,
            Tensor::from_vec(sin, &[b, t, hd], device)?,
        ))
    }
}
