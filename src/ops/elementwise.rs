//! Elementwise unary and binary ops (with NumPy broadcasting), comparisons and `where`.

use super::{check, cpu_tensor, with_real};
use crate::autograd::record;
use crate::backend::{cpu, gpu::kernels, BinaryOp, UnaryOp};
use crate::error::Result;
use crate::shape::broadcast_shapes;
use crate::tensor::{Device, Tensor};

impl Tensor {
    /// y = f(x) for one of the [`UnaryOp`]s.
    pub fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let (dev, dt) = check(op.name(), &[self])?;
        let out = match dev {
            Device::Cpu => with_real!(op.name(), dt, T => {
                cpu_tensor(self.cpu_read(op.name(), |x: &[T]| cpu::unary(op, x))?, self.shape())?
            }),
            Device::Gpu => kernels::unary(op, self)?,
        };
        let x = self.clone();
        // backward of y = f(x): dx = g * f'(x)
        Ok(record(out, op.name(), &[self], move |g| {
            Ok(vec![Some(x.unary_grad(op, g)?)])
        }))
    }

    /// g * f'(self) for the unary op `op` (not recorded: backward only).
    pub(crate) fn unary_grad(&self, op: UnaryOp, g: &Tensor) -> Result<Tensor> {
        let (dev, dt) = check(op.name(), &[self, g])?;
        let g = g.contiguous()?;
        match dev {
            Device::Cpu => with_real!(op.name(), dt, T => {
                let v = self.cpu_read(op.name(), |x: &[T]| g.cpu_read(op.name(), |gs: &[T]| cpu::unary_grad(op, x, gs)))??;
                cpu_tensor(v, self.shape())
            }),
            Device::Gpu => kernels::unary_grad(op, &self.contiguous()?, &g),
        }
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Rsqrt)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Silu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }
    /// log(sigmoid(x)), computed stably.
    pub fn log_sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::LogSigmoid)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Abs)
    }
    /// x^p for a scalar p.
    pub fn powf(&self, p: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Powf(p))
    }
    /// a * x + b.
    pub fn affine(&self, a: f64, b: f64) -> Result<Tensor> {
        self.unary(UnaryOp::Affine(a, b))
    }
    /// x * s.
    pub fn scale(&self, s: f64) -> Result<Tensor> {
        self.affine(s, 0.0)
    }
    /// x + c.
    pub fn add_scalar(&self, c: f64) -> Result<Tensor> {
        self.affine(1.0, c)
    }

    /// c = a (op) b with broadcasting.
    pub fn binary(&self, op: BinaryOp, rhs: &Tensor) -> Result<Tensor> {
        let (dev, dt) = check(op.name(), &[self, rhs])?;
        let shape = broadcast_shapes(op.name(), self.shape(), rhs.shape())?;
        let la = self.layout().broadcast_to(&shape)?;
        let lb = rhs.layout().broadcast_to(&shape)?;
        let out = match dev {
            Device::Cpu => with_real!(op.name(), dt, T => {
                let v = self.cpu_strided(op.name(), |a: &[T], _| {
                    rhs.cpu_strided(op.name(), |b: &[T], _| cpu::binary(op, a, &la, b, &lb))
                })??;
                cpu_tensor(v, &shape)?
            }),
            Device::Gpu => kernels::binary(op, self, &la, rhs, &lb, &shape)?,
        };
        let (a, b) = (self.clone(), rhs.clone());
        let backward = move |g: &Tensor| -> Result<Vec<Option<Tensor>>> {
            let (ga, gb) = match op {
                // d(a+b) = (g, g);  d(a-b) = (g, -g)
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), g.neg()?),
                // d(ab) = (g b, g a)
                BinaryOp::Mul => (g.mul(&b)?, g.mul(&a)?),
                // d(a/b) = (g / b, -g a / b^2)
                BinaryOp::Div => {
                    let gb = g.div(&b)?;
                    let db = gb.mul(&a.div(&b)?)?.neg()?;
                    (gb, db)
                }
                // the larger input takes the gradient; ties split it (as PyTorch)
                BinaryOp::Max | BinaryOp::Min => {
                    let win = if op == BinaryOp::Max {
                        a.gt(&b)?
                    } else {
                        a.lt(&b)?
                    };
                    let mask = win.add(&a.eq_(&b)?.scale(0.5)?)?;
                    (g.mul(&mask)?, g.mul(&mask.affine(-1.0, 1.0)?)?)
                }
                _ => return Ok(vec![None, None]),
            };
            Ok(vec![
                Some(ga.sum_to(a.shape())?),
                Some(gb.sum_to(b.shape())?),
            ])
        };
        if matches!(
            op,
            BinaryOp::Gt | BinaryOp::Ge | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Eq
        ) {
            return Ok(out); // comparisons have no gradient
        }
        Ok(record(out, op.name(), &[self, rhs], backward))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, rhs)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, rhs)
    }
    /// Elementwise maximum.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Max, rhs)
    }
    /// Elementwise minimum.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Min, rhs)
    }
    /// 1.0 where a > b, else 0.0.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Gt, rhs)
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Ge, rhs)
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Lt, rhs)
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Le, rhs)
    }
    /// 1.0 where a == b (named `eq_` to keep `PartialEq`-like `eq` free).
    pub fn eq_(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Eq, rhs)
    }

    /// out = cond != 0 ? a : b, broadcasting all three. Gradients flow to a and b.
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (dev, dt) = check("where", &[cond, a, b])?;
        let shape = broadcast_shapes("where", a.shape(), b.shape())?;
        let shape = broadcast_shapes("where", cond.shape(), &shape)?;
        let (lc, la, lb) = (
            cond.layout().broadcast_to(&shape)?,
            a.layout().broadcast_to(&shape)?,
            b.layout().broadcast_to(&shape)?,
        );
        let out = match dev {
            Device::Cpu => with_real!("where", dt, T => {
                let v = cond.cpu_strided("where", |c: &[T], _| {
                    a.cpu_strided("where", |x: &[T], _| b.cpu_strided("where", |y: &[T], _| cpu::where_select(c, &lc, x, &la, y, &lb)))
                })???;
                cpu_tensor(v, &shape)?
            }),
            Device::Gpu => kernels::where_select(cond, &lc, a, &la, b, &lb, &shape)?,
        };
        let (c, ash, bsh) = (cond.clone(), a.shape().to_vec(), b.shape().to_vec());
        Ok(record(out, "where", &[a, b], move |g| {
            // d a = where(c, g, 0), d b = where(c, 0, g)
            let zero = g.zeros_like()?;
            let ga = Tensor::where_cond(&c, g, &zero)?.sum_to(&ash)?;
            let gb = Tensor::where_cond(&c, &zero, g)?.sum_to(&bsh)?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }
}
