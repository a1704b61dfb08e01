//! Reverse-mode autograd. Every op that runs with gradients enabled and has an input that
//! requires a gradient attaches a [`Node`]: its name, its inputs, and a hand-written
//! backward closure that maps the output gradient to one gradient per input. `backward()`
//! walks the nodes in reverse topological order and accumulates (`+=`) into leaves.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::{Inner, Tensor};

pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

pub struct Node {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: BackwardFn,
}

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops record autograd nodes right now on this thread.
pub fn grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// Run `f` without recording any autograd node (used for the frozen DPO reference).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// While alive, ops on this thread record nothing.
pub struct NoGradGuard(());

impl NoGradGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
        NoGradGuard(())
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Attach a backward node to `out` when gradients are enabled and an input needs one.
pub(crate) fn record(
    out: Tensor,
    op: &'static str,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Tensor {
    if !grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return out;
    }
    let node = Node {
        op,
        inputs: inputs.iter().map(|t| (*t).clone()).collect(),
        backward: Box::new(backward),
    };
    Tensor(Arc::new(Inner {
        id: out.0.id,
        storage: out.0.storage.clone(),
        layout: out.0.layout.clone(),
        dtype: out.0.dtype,
        node: Some(Arc::new(node)),
        requires_grad: true,
        grad: Mutex::new(None),
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
                    let in_grads = (node.backward)(&g)
                        .map_err(|e| Error::Autograd(format!("backward of {}: {e}", node.op)))?;
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
