//! Shapes, strides and views. A [`Layout`] is a shape, element strides and an element
//! offset into the storage; reshape/permute/narrow/broadcast only build new layouts.

use crate::error::{Error, Result};

/// Most dimensions any kernel supports (strided GPU kernels carry 8 in a uniform).
pub const MAX_RANK: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
}

/// Row-major strides for a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for i in (0..shape.len()).rev() {
        strides[i] = s;
        s *= shape[i];
    }
    strides
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Resolve a possibly negative dimension index.
pub fn resolve_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let d = if dim < 0 { dim + rank as isize } else { dim };
    if d < 0 || d as usize >= rank {
        return Err(Error::DimOutOfRange { op, dim, rank });
    }
    Ok(d as usize)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(op, "shapes do not broadcast", a, b));
        };
    }
    Ok(out)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// Row-major with no gaps (the offset may be non-zero).
    pub fn is_contiguous(&self) -> bool {
        let mut s = 1;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 && self.strides[i] != s {
                return false;
            }
            s *= self.shape[i];
        }
        true
    }
    /// Largest storage index touched + 1 (0 for empty tensors).
    pub fn span(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(d, s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Layout> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                "element counts differ",
                &self.shape,
                shape,
            ));
        }
        if !self.is_contiguous() {
            return Err(Error::bad_shape(
                "reshape",
                "view is not contiguous; call .contiguous() first",
                &self.shape,
            ));
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: self.offset,
        })
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if dims.len() != r
            || dims
                .iter()
                .any(|&d| d >= r || std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::bad_shape(
                "permute",
                format!("{dims:?} is not a permutation of 0..{r}"),
                &self.shape,
            ));
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange {
                op: "narrow",
                dim: dim as isize,
                rank: self.rank(),
            });
        }
        if start
            .checked_add(len)
            .is_none_or(|end| end > self.shape[dim])
        {
            return Err(Error::bad_shape(
                "narrow",
                format!(
                    "range {start}..{} out of bounds for dim {dim}",
                    start.saturating_add(len)
                ),
                &self.shape,
            ));
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        if len > 0 {
            out.offset += start * self.strides[dim];
        }
        Ok(out)
    }

    /// Broadcast to `shape` with stride 0 on expanded dimensions.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        if shape.len() < self.rank() {
            return Err(Error::shape(
                "broadcast",
                "target has lower rank",
                &self.shape,
                shape,
            ));
        }
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            let (d, t) = (self.shape[i], shape[i + extra]);
            if d == t {
                strides[i + extra] = self.strides[i];
            } else if d == 1 {
                strides[i + extra] = 0;
            } else {
                return Err(Error::shape(
                    "broadcast",
                    "cannot broadcast",
                    &self.shape,
                    shape,
                ));
            }
        }
        Ok(Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        })
    }

    /// Storage index of every element, in row-major order of the view.
    pub fn indices(&self) -> StridedIter<'_> {
        StridedIter {
            layout: self,
            idx: vec![0; self.rank()],
            pos: self.offset,
            left: self.numel(),
        }
    }
}

/// Walks a strided view in row-major order, yielding storage indices.
pub struct StridedIter<'a> {
    layout: &'a Layout,
    idx: Vec<usize>,
    pos: usize,
    left: usize,
}

impl Iterator for StridedIter<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        let cur = self.pos;
        self.left -= 1;
        if self.left > 0 {
            let l = self.layout;
            for d in (0..l.rank()).rev() {
                self.idx[d] += 1;
                self.pos += l.strides[d];
                if self.idx[d] < l.shape[d] {
                    break;
                }
                self.pos -= l.strides[d] * l.shape[d];
                self.idx[d] = 0;
            }
        }
        Some(cur)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for StridedIter<'_> {}
