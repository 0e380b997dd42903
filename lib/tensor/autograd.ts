// Reverse-mode autograd over the nodes that ops attach with `record`.

import { forcedVariant } from "../gpu/autotune.ts";
import { copyValues, keep, noGrad, Tensor } from "./tensor.ts";
import { add, axpyInPlace } from "./ops/elementwise.ts";
import { ones } from "./ops/creation.ts";

/** Tensors reachable from `root` through autograd nodes, inputs before outputs. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS: graphs of deep networks overflow a recursive walk.
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t.node?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const next = inputs[i];
      if (t.node!.needsGrad[i] && !seen.has(next)) {
        seen.add(next);
        stack.push([next, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  return order;
}

/**
 * Backpropagates from `root` (a scalar, unless `seed` is given) and accumulates gradients into the
 * `.grad` of every leaf that requires one. Leaf gradients are kept across scopes; call
 * `zeroGrad`/dispose them between steps.
 */
export function backward(root: Tensor, seed?: Tensor): void {
  if (!root.requiresGrad) {
    throw new Error(`peco: backward() on ${root.describe()}, which needs no gradient`);
  }
  if (!seed && root.size !== 1) {
    throw new Error(`peco: backward() needs a seed gradient for non-scalar ${root.describe()}`);
  }
  noGrad(() => {
    const grads = new Map<Tensor, Tensor>();
    grads.set(root, seed ?? ones(root.shape));
    const order = topoOrder(root);
    for (let k = order.length - 1; k >= 0; k--) {
      const t = order[k];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      if (!t.node) {
        accumulateLeaf(t, g);
        continue;
      }
      const { inputs, needsGrad } = t.node;
      // An accumulating op adds each input's prior gradient itself (see Node.accumulates), unless
      // `forceVariant("gradAccumulate", "add")` (tests compare) leaves every sum to an addition.
      const accumulates = t.node.accumulates && forcedVariant("gradAccumulate") !== "add";
      const prior = inputs.map((input, i) =>
        accumulates && needsGrad[i] && inputs.indexOf(input) === inputs.lastIndexOf(input)
          ? grads.get(input) ?? null
          : null
      );
      const inputGrads = t.node.backward(g, prior);
      inputs.forEach((input, i) => {
        const gi = inputGrads[i];
        if (!gi || !needsGrad[i]) return;
        if (gi.size !== input.size) {
          throw new Error(
            `peco: backward of ${t.node!.op} gave [${gi.shape}] for input ${input.describe()}`,
          );
        }
        const previous = prior[i] ? null : grads.get(input);
        grads.set(input, previous ? add(previous, gi) : gi);
      });
    }
  });
}

function accumulateLeaf(t: Tensor, g: Tensor): void {
  if (t.grad) {
    axpyInPlace(t.grad, g, 1);
  } else {
    // The gradient outlives the step's scope: a private kept copy shaped like the leaf, written
    // into the leaf's gradient home when it has one (a packed parameter: see param_arena.ts). A
    // buffer copy, not a dispatch.
    const own = keep(t.gradHome ? t.gradHome.view(t.shape) : new Tensor(t.shape, "f32"));
    copyValues(own, g);
    own.name = `${t.name || "leaf"}.grad`;
    t.grad = own;
  }
}

/** Releases the gradients of `params` (the next backward allocates fresh ones). */
export function zeroGrad(params: Iterable<Tensor>): void {
  for (const p of params) {
    p.grad?.dispose();
    p.grad = null;
  }
}
