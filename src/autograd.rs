//! Reverse-mode autograd. Every op that runs with gradients enabled and has an input that
//! requires a gradient attaches a [`Node`]: its name, its inputs, and a hand-written
//! backward closure that maps the output gradient to one gradient per input. `backward()`
//! walks the nodes in reverse topological order and accumulates (`+=`) into leaves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::{Inner, Tensor};

// The node type, the grad mode and `record` live with the tensor that carries them (a
// tensor and the node that produced it refer to each other); this file walks the nodes.
pub(crate) use crate::tensor::record;
pub use crate::tensor::{enable_grad, grad_enabled, no_grad, NoGradGuard, Node};

/// Activation checkpointing: `f(x)`, keeping only `x` for the backward instead of every
/// activation inside `f`. The forward runs `f` without recording; the backward runs it
/// again with recording and backpropagates through that copy, so the gradients are the
/// ones the plain graph gives (the same ops in the same order). `params` are the leaves
/// `f` reads (a decoder layer's weights): the recomputed graph accumulates their
/// gradients into them directly. `f` must compute the same thing both times (dropout
/// masks from a seed, not from a running generator).
pub fn checkpoint(
    x: &Tensor,
    params: &[&Tensor],
    f: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !grad_enabled() || !(x.requires_grad() || params.iter().any(|p| p.requires_grad())) {
        return f(x);
    }
    let out = no_grad(|| f(&x.detach()))?;
    let saved = x.detach();
    let x_grad = x.requires_grad();
    let mut inputs = vec![x];
    inputs.extend_from_slice(params);
    let n = inputs.len();
    Ok(record(out, "checkpoint", &inputs, move |g| {
        // a fresh leaf for x, so that its gradient can be read back after the walk
        let xin = if x_grad {
            saved.clone().requires_grad_()
        } else {
            saved.clone()
        };
        let y = enable_grad(|| f(&xin))?;
        if y.requires_grad() {
            y.backward_with(g.clone())?;
        }
        let mut grads = vec![None; n];
        grads[0] = if x_grad { xin.grad() } else { None };
        Ok(grads)
    }))
}

impl Tensor {
    /// A leaf that accumulates gradients (a parameter).
    /// The handle gets a fresh id, so it never collides with other handles of the same
    /// storage in the graph walk.
    pub fn requires_grad_(self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: crate::tensor::next_id(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            dtype: self.0.dtype,
            node: None,
            requires_grad: true,
            grad: Mutex::new(None),
        }))
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap().clone()
    }

    /// Replace the accumulated gradient (used by the optimizer and gradient accumulation).
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap() = g;
    }

    /// Forget the accumulated gradient.
    pub fn zero_grad(&self) {
        self.set_grad(None);
    }

    /// The name of the op that produced this tensor (None for leaves).
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.node.as_ref().map(|n| n.op)
    }

    /// Backpropagate from a scalar (seed 1).
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a scalar, got shape {:?}; use backward_with(grad)",
                self.shape()
            )));
        }
        let seed = self.full_like(1.0)?;
        self.backward_with(seed)
    }

    /// Backpropagate with an explicit output gradient.
    pub fn backward_with(&self, grad: Tensor) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                "gradient shape differs from output",
                grad.shape(),
                self.shape(),
            ));
        }
        if !self.requires_grad() {
            return Err(Error::Autograd(
                "tensor does not require grad (no parameter feeds it)".into(),
            ));
        }
        let _ng = NoGradGuard::new();
        // Iterative post-order DFS: deep graphs (many layers) must not overflow the stack.
        let mut order: Vec<Tensor> = Vec::new();
        let mut visited: HashMap<u64, ()> = HashMap::new();
        let mut stack: Vec<(Tensor, bool)> = vec![(self.clone(), false)];
        while let Some((t, expanded)) = stack.pop() {
            if expanded {
                order.push(t);
                continue;
            }
            if visited.insert(t.id(), ()).is_some() {
                continue;
            }
            stack.push((t.clone(), true));
            if let Some(node) = &t.0.node {
                for inp in &node.inputs {
                    if inp.requires_grad() && !visited.contains_key(&inp.id()) {
                        stack.push((inp.clone(), false));
                    }
                }
            }
        }
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), grad);
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else {
                continue;
            };
            match &t.0.node {
                None => {
                    // A leaf: accumulate into its .grad.
                    let mut slot = t.0.grad.lock().unwrap();
                    let acc = match slot.take() {
                        Some(prev) => prev.add(&g)?,
                        None => g,
                    };
                    *slot = Some(acc);
                }
                Some(node) => {
                    // a checkpoint's recomputed ops are profiled one by one, not as one
                    let span = (node.op != "checkpoint")
                        .then(|| crate::backend::cpu::profile::span(node.op, true));
                    let in_grads = (node.backward)(&g)
                        .map_err(|e| Error::Autograd(format!("backward of {}: {e}", node.op)))?;
                    drop(span);
                    if in_grads.len() != node.inputs.len() {
                        panic!(
                            "backward of {} returned {} grads for {} inputs",
                            node.op,
                            in_grads.len(),
                            node.inputs.len()
                        );
                    }
                    for (inp, ig) in node.inputs.iter().zip(in_grads) {
                        let Some(ig) = ig else { continue };
                        if !inp.requires_grad() {
                            continue;
                        }
                        if ig.shape() != inp.shape() {
                            panic!(
                                "backward of {}: grad shape {:?} != input shape {:?}",
                                node.op,
                                ig.shape(),
                                inp.shape()
                            );
                        }
                        let acc = match grads.remove(&inp.id()) {
                            Some(prev) => prev.add(&ig)?,
                            None => ig,
                        };
                        grads.insert(inp.id(), acc);
                    }
                }
            }
        }
        Ok(())
    }
}
